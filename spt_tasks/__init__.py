"""seqio registries of spt_jax.

Importing the package registers nothing; import the registry module you need
(`spt_tasks.sample`, `spt_tasks.sample_fewshot`, `spt_tasks.t0`, `spt_tasks.heldout`,
`spt_tasks.glue`, `spt_tasks.super_glue`, `spt_tasks.p3`). Shared building blocks: `spt_tasks.templates` (promptsource listing,
T0 names, rendering) and `spt_tasks.preprocessors` (template rendering in tf.data,
the `_score_eval` expansion).
"""
