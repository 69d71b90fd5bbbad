"""seqio registries of spt_jax.

Importing the package registers nothing; import the registry module you need
(`tasks.sample`, `tasks.t0`, `tasks.heldout`, `tasks.glue`, `tasks.super_glue`,
`tasks.p3`). Shared building blocks: `tasks.templates` (promptsource listing,
T0 names, rendering) and `tasks.preprocessors` (template rendering in tf.data,
the `_score_eval` expansion).
"""
