"""Gin registration of spt_tasks's configurables: the package's one gin registry.

The registry modules (sources, t0, p3, sample) know nothing of gin; this module registers,
with `gin.external_configurable`, under the names users and gin files bind:

  spt_tasks.sources.get_vocabulary, spt_tasks.sources.tfds_settings,
  spt_tasks.sources.story_cloze_dir, spt_tasks.t0.train_datasets,
  spt_tasks.t0.t0_train_mixture, spt_tasks.p3.p3_dir, spt_tasks.p3.p3_t0_train_mixture
  (gin also accepts the shorter `t0.train_datasets`, `sources.tfds_settings`, ...), and
  sample.with_vocabulary (gin/runs/sample_vocabulary.gin).

The `spt_tasks.*` functions are settings the registries read themselves (e.g. every TFDS
source calls `tfds_settings()`; `t0_train_mixture()` calls `train_datasets()`), so each is
also put back in its module in place of the plain function, exactly what `@gin.configurable`
on its definition would do: the module's own calls then see the bindings. Functions only a
gin file calls (`sample.with_vocabulary`) are registered and left alone.

Import it from a gin file (`import spt_tasks.gin_configurables`) before binding any of
these, or from Python before `gin.parse_config`. Python's module cache makes that one
registration per process, also for a registry module run as `python -m spt_tasks.sample`.
Importing it imports (and so registers the seqio tasks of) sources, t0, p3 and sample.
"""
import gin

from spt_tasks import p3
from spt_tasks import sample
from spt_tasks import sources
from spt_tasks import t0

# Read by the registries' own code: each module's attribute becomes the configurable.
_SETTINGS = {
    sources: ('get_vocabulary', 'tfds_settings', 'story_cloze_dir'),
    t0: ('train_datasets', 't0_train_mixture'),
    p3: ('p3_dir', 'p3_t0_train_mixture'),
}
for _module, _names in _SETTINGS.items():
  for _name in _names:
    setattr(_module, _name,
            gin.external_configurable(getattr(_module, _name), module=_module.__name__))

with_vocabulary = gin.external_configurable(sample.with_vocabulary, name='with_vocabulary',
                                            module='sample')
