r"""Offline cache of seqio tasks, in seqio's own cached-task format, without Apache Beam.

seqio reads a cached task (`seqio.get_dataset(..., use_cached=True)`, our trainer's
`USE_CACHED_TASKS = True`) from `<cache root>/<task name>/`:

  {split}.tfrecord-00000-of-00001   tf.train.Example per example, in source order
  info.{split}.json                 {"num_shards", "features": {name: {shape, dtype}},
                                     "seqio_version"}
  stats.{split}.json                {"examples", "<feature>_tokens", "<feature>_max_tokens"}
  COMPLETED                         written last: a half-written cache is never read

What is stored is the task's output just before its `seqio.CacheDatasetPlaceholder()`
(`Task.preprocess_precache`): rendered and tokenized examples, so a cached read runs no
Python (no template rendering, no tokenizer) and only the preprocessors after the
placeholder (none for the sample tasks, which cache their EOS too). seqio's own writer
(`seqio.scripts.cache_tasks_main`) needs Apache Beam; this one writes the same layout from a
plain loop, keeps the source order (Beam reshuffles) and writes each task into a temporary
folder renamed into place when complete.

  python -m spt_tasks.cache --module=spt_tasks.sample --tasks='sample_.*' \
    --cache_dir=/tmp/seqio_cache
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

COMPLETED = 'COMPLETED'


def _feature_info(element_spec: Mapping[str, tf.TensorSpec]) -> dict[str, dict[str, Any]]:
  """seqio's info.json feature entries: shape with a None first axis unless scalar."""
  info = {}
  for name, spec in element_spec.items():
    shape = spec.shape.as_list()
    if shape:
      shape = [None] + shape[1:]
    info[name] = {'shape': shape, 'dtype': spec.dtype.name}
  return info


def _to_feature(value: np.ndarray) -> tf.train.Feature:
  """One numpy value as a tf.train.Feature (ints and bools as int64, as seqio stores them)."""
  flat = np.ravel(value)
  if flat.dtype.kind in ('S', 'O', 'U'):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode('utf-8') if isinstance(v, str) else bytes(v) for v in flat]))
  if flat.dtype.kind == 'f':
    return tf.train.Feature(float_list=tf.train.FloatList(value=flat.tolist()))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist()))


def _serialize(example: Mapping[str, np.ndarray]) -> bytes:
  return tf.train.Example(features=tf.train.Features(
      feature={k: _to_feature(v) for k, v in example.items()})).SerializeToString()


def task_cache_dir(cache_root: str, task_name: str) -> str:
  """Where seqio looks for `task_name` under a global cache directory."""
  return os.path.join(cache_root, seqio.utils.get_task_dir_from_name(task_name))


def is_cached(cache_root: str, task_name: str) -> bool:
  return os.path.exists(os.path.join(task_cache_dir(cache_root, task_name), COMPLETED))


def write_task_cache(task: seqio.Task, cache_root: str,
                     splits: Optional[Sequence[str]] = None, seed: int = 0,
                     overwrite: bool = True) -> str:
  """Writes `task`'s pre-placeholder output for `splits` (default: all) under `cache_root`.

  Args:
    task: a seqio Task with a `seqio.CacheDatasetPlaceholder()` in its preprocessors.
    cache_root: a seqio global cache directory (`seqio.add_global_cache_dirs`).
    splits: the splits to write; default every split of the task's source.
    seed: seed for the pre-placeholder preprocessors (seqio's map seed).
    overwrite: replace a complete cache of the task found at the end (False: keep it, e.g.
      one another process wrote meanwhile).

  Returns:
    The task's cache folder.

  Raises:
    ValueError: the task has no CacheDatasetPlaceholder (nothing says where to cut).
  """
  if not task.supports_caching:
    raise ValueError(
        f'Task {task.name!r} has no seqio.CacheDatasetPlaceholder() in its preprocessors, so '
        'there is no point at which to cache it; add one after the tokenizer (and '
        'append_eos), as spt_tasks.sample does.')
  final = task_cache_dir(cache_root, task.name)
  tmp = f'{final}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  token_features = [k for k, f in task.output_features.items() if f.dtype == tf.int32]
  for split in splits or task.source.splits:
    ds = task.source.get_dataset(split=split, shuffle=False, seed=seed)
    ds = task.preprocess_precache(ds, seed=seed)
    prefix = seqio.utils.get_cached_tfrecord_prefix(tmp, split)
    count = 0
    tokens = {k: 0 for k in token_features}
    max_tokens = {k: 0 for k in token_features}
    with tf.io.TFRecordWriter(f'{prefix}-00000-of-00001') as writer:
      for example in ds.as_numpy_iterator():
        writer.write(_serialize(example))
        count += 1
        for k in token_features:
          n = int(np.count_nonzero(example[k]))
          tokens[k] += n
          max_tokens[k] = max(max_tokens[k], n)
    info = {'num_shards': 1, 'features': _feature_info(ds.element_spec),
            'seqio_version': seqio.__version__}
    stats = {'examples': count}
    for k in token_features:
      stats[f'{k}_tokens'] = tokens[k]
      stats[f'{k}_max_tokens'] = max_tokens[k]
    with open(seqio.utils.get_cached_info_path(tmp, split), 'w') as f:
      json.dump(info, f, indent=2, sort_keys=True)
    with open(seqio.utils.get_cached_stats_path(tmp, split), 'w') as f:
      json.dump(stats, f, indent=2, sort_keys=True)
  with open(os.path.join(tmp, COMPLETED), 'w') as f:
    f.write('')
  if not overwrite and os.path.exists(os.path.join(final, COMPLETED)):
    # Another process finished the same task meanwhile (same source, same bytes): keep it.
    shutil.rmtree(tmp, ignore_errors=True)
    return final
  shutil.rmtree(final, ignore_errors=True)  # an incomplete earlier attempt
  os.replace(tmp, final)
  return final


def _write_one(name: str, cache_root: str, seed: int, overwrite: bool) -> str:
  start = time.time()
  write_task_cache(seqio.get_mixture_or_task(name), cache_root, seed=seed, overwrite=overwrite)
  logging.info('cached %s in %.1f s', name, time.time() - start)
  return name


def _import_modules(modules: Sequence[str]) -> None:
  import importlib  # pylint: disable=g-import-not-at-top
  from spt_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  for module in modules:
    importlib.import_module(module)


def write_cache(task_names: Iterable[str], cache_root: str, overwrite: bool = False,
                seed: int = 0, num_workers: int = 1,
                registry_modules: Sequence[str] = ()) -> list[str]:
  """Caches every named task not cached yet (all of them with `overwrite`).

  Args:
    task_names: registered seqio tasks.
    cache_root: the seqio global cache directory to write under.
    overwrite: rewrite tasks that are cached already.
    seed: seqio map seed of the pre-placeholder preprocessors.
    num_workers: processes writing tasks in parallel (each task is written by one process;
      workers are spawned fresh and import `registry_modules` to find the tasks).
    registry_modules: modules that register the tasks (needed when num_workers > 1).

  Returns:
    The names of the tasks written.
  """
  os.makedirs(cache_root, exist_ok=True)
  todo = [n for n in task_names if overwrite or not is_cached(cache_root, n)]
  if num_workers <= 1 or len(todo) <= 1:
    return [_write_one(n, cache_root, seed, overwrite) for n in todo]
  import multiprocessing  # pylint: disable=g-import-not-at-top
  ctx = multiprocessing.get_context('spawn')  # TF and threads do not survive fork
  with ctx.Pool(min(num_workers, len(todo)), initializer=_import_modules,
                initargs=(tuple(registry_modules),)) as pool:
    return pool.starmap(_write_one, [(n, cache_root, seed, overwrite) for n in todo],
                        chunksize=1)


def main(argv: Sequence[str]) -> None:
  import importlib  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for module in _MODULES.value:
    importlib.import_module(module)
  pattern = re.compile(_TASKS.value)
  names = sorted(n for n in seqio.TaskRegistry.names() if pattern.fullmatch(n))
  if not names:
    raise app.UsageError(f'No registered task matches --tasks={_TASKS.value!r} after importing '
                         f'{_MODULES.value}.')
  written = write_cache(names, _CACHE_DIR.value, overwrite=_OVERWRITE.value,
                        num_workers=_WORKERS.value, registry_modules=_MODULES.value)
  logging.info('%d of %d tasks written to %s (%d were cached already).', len(written),
               len(names), _CACHE_DIR.value, len(names) - len(written))


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  _MODULES = flags.DEFINE_multi_string('module', ['spt_tasks.sample'],
                                       'registry module(s) to import')
  _TASKS = flags.DEFINE_string('tasks', '.*', 'regex over task names to cache')
  _CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'seqio global cache directory',
                                   required=True)
  _OVERWRITE = flags.DEFINE_bool('overwrite', False, 'rewrite tasks that are cached already')
  _WORKERS = flags.DEFINE_integer('num_workers', os.cpu_count() or 1, 'parallel processes')
  app.run(main)
