"""bigscience P3 as seqio tasks: train on pre-rendered prompts, no promptsource needed.

P3 (huggingface.co/datasets/bigscience/P3, revisions before its March 2024
Parquet conversion) is T0's training data already rendered and tokenized with the
T5 vocabulary: a seqio 0.0.6 task cache. Layout under the root:

    data/<task>/COMPLETED
    data/<task>/info.<split>.json      {"features": {name: {"dtype", "shape"}}, ...}
                                        or {} for an empty split
    data/<task>/stats.<split>.json     {"examples": n, ...}
    data/<task>/<split>.tfrecord-00000-of-00001   tf.train.Example records

Ordinary tasks hold `inputs` (int32 ids, no EOS), `targets` (ids + EOS),
`inputs_pretokenized`, `targets_pretokenized` and, when the template has choices,
`answer_choices` (strings). `<task>_score_eval` tasks hold one row per choice:
`idx` [example, choice], `inputs`, `targets`, `is_correct`, `weight`. Integers and
bools are stored as int64 and cast back here (seqio's TFExampleDataSource would
not cast).

Registration (at import, and again whenever `register()` is called), one task
`p3_<task>` per P3 task:

1. With a P3 directory configured (env `SPT_P3_DIR`, the root or its `data/`
   folder; gin `spt_tasks.p3.p3_dir.path` (registered by spt_tasks.gin_configurables)
   can only be bound after this module is imported, so it takes effect through
   `register(configured_data_dir())`):
   one task per `data/<task>/` folder holding `COMPLETED`, its splits and
   `num_input_examples` read from the `stats.<split>.json` files (one directory
   listing plus small JSON reads; local paths or `gs://`).
2. Otherwise, without touching the disk: one task per name our own registries
   produce with T0's naming, which P3 shares — every template task of the
   `train` and `heldout` rows of `spt_tasks/datasets.csv` (`spt_tasks.t0`) and the
   `_score_eval` twins of the held-out rows — declared with the row's split
   names and no sizes. Reading a task P3 lacks (StoryCloze, a few non-original
   held-out templates) fails with the missing folder and the download steps.

In both cases the directory is (re)resolved when a dataset is read, so setting
`SPT_P3_DIR` after import works for the names of case 2. Mixtures:

* `spt_p3_t0_train`: the P3 twins of the `spt_t0_train` tasks (same datasets,
  `spt_tasks.t0.train_datasets`), at T0's rates from `datasets.csv`'s `train_size`
  (`spt_tasks.mixing.t0_rates`), i.e. the same rates as `spt_t0_train`. Templates
  not registered (absent from a partial download) are skipped with a warning.
* `spt_p3_heldout_score_eval`: P3's `_score_eval` tasks of the held-out
  original-task templates (StoryCloze is not in P3).

P3 gaps (from its own documentation): no StoryCloze, no `_score_eval` for
training datasets, some empty splits (e.g. adversarial_qa test), placeholder
targets on unlabeled test splits.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
from typing import Any, Iterable, Mapping, Optional

from absl import logging
import seqio
import tensorflow as tf

from spt_jax import metrics as metrics_lib
from spt_tasks import mixing
from spt_tasks import sources

PREFIX = 'p3_'
SCORE_EVAL_SUFFIX = '_score_eval'
P3_T0_TRAIN_MIXTURE = 'spt_p3_t0_train'
P3_HELDOUT_MIXTURE = 'spt_p3_heldout_score_eval'
COMPLETED = 'COMPLETED'
# Datasets of our registries that P3 does not contain at all (P3's documentation):
# {T0 task-name prefix: (dataset key, display name)}. Their `p3_*` names exist in
# case 2 (so the error can say why) but never enter a P3 mixture.
ABSENT_FROM_P3 = {'story_cloze_': ('story_cloze/2016', 'StoryCloze')}

DOWNLOAD_HELP = (
    'Download bigscience/P3 at a revision before its 2024 Parquet conversion (git lfs: '
    '`GIT_LFS_SKIP_SMUDGE=1 git clone https://huggingface.co/datasets/bigscience/P3`, '
    '`git checkout 255b4bb51b0eeceec18b06cb372b73f2b5910550`, `git lfs pull --include '
    '"data/<task>/*"` per task or without --include for all) '
    'and set env SPT_P3_DIR (or gin spt_tasks.p3.p3_dir.path) to its root.')

_TF_DTYPES = {'int32': tf.int32, 'int64': tf.int64, 'string': tf.string,
              'bool': tf.bool, 'float32': tf.float32}
# What each stored dtype is parsed as (tf.train.Example has int64/float/bytes lists).
_PARSE_DTYPES = {tf.int32: tf.int64, tf.int64: tf.int64, tf.bool: tf.int64,
                 tf.string: tf.string, tf.float32: tf.float32}
# Features of an ordinary task, used to type a split whose info is `{}` when no
# other split of the task says better.
_DEFAULT_FEATURES = {
    'inputs': {'dtype': 'int32', 'shape': [None]},
    'targets': {'dtype': 'int32', 'shape': [None]},
    'inputs_pretokenized': {'dtype': 'string', 'shape': []},
    'targets_pretokenized': {'dtype': 'string', 'shape': []},
}
# Parallel reads of the stats files (thousands of tiny files; slow one by one on GCS).
_STATS_READERS = 32

# Names of the `p3_*` tasks the last `register()` added, so the next one can drop them.
_REGISTERED: set[str] = set()


class P3NotConfiguredError(FileNotFoundError):
  """No P3 directory is configured (neither gin `spt_tasks.p3.p3_dir.path` nor `SPT_P3_DIR`)."""


def p3_dir(path: Optional[str] = None) -> str:
  """The P3 `data/` folder: gin `path`, else env `SPT_P3_DIR` (root or its data/).

  Raises:
    P3NotConfiguredError: neither is set.
    FileNotFoundError: the folder does not exist.
  """
  path = path or os.environ.get('SPT_P3_DIR')
  if not path:
    raise P3NotConfiguredError('P3 tasks need the P3 data. ' + DOWNLOAD_HELP)
  data = os.path.join(path, 'data')
  if tf.io.gfile.isdir(data):
    return data
  if tf.io.gfile.isdir(path):
    return path
  raise FileNotFoundError(f'P3 directory {path!r} (SPT_P3_DIR / gin) does not exist.')


def configured_data_dir() -> Optional[str]:
  """`p3_dir()` if a P3 directory is configured and exists, else None.

  A configured path that does not exist is logged (not raised: importing
  spt_tasks.p3 must not fail); reading a task later raises the same error.
  """
  try:
    return p3_dir()
  except P3NotConfiguredError:
    return None
  except FileNotFoundError as e:
    logging.warning('%s Registering P3 tasks by name only (no sizes).', e)
    return None


def read_info(task_dir: str, split: str) -> dict[str, Any]:
  """The `info.<split>.json` of a task folder ({} for an empty split)."""
  path = os.path.join(task_dir, f'info.{split}.json')
  if not tf.io.gfile.exists(path):
    have = sorted(os.path.basename(p)[len('info.'):-len('.json')]
                  for p in tf.io.gfile.glob(os.path.join(task_dir, 'info.*.json')))
    raise FileNotFoundError(f'P3 task folder {task_dir} has no split {split!r} '
                            f'(no {os.path.basename(path)}); splits there: {have}.')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def task_features(task_dir: str, split: str) -> dict[str, dict[str, Any]]:
  """Feature specs of a split; an empty split (`{}`) borrows another split's."""
  info = read_info(task_dir, split)
  if info.get('features'):
    return info['features']
  for path in sorted(tf.io.gfile.glob(os.path.join(task_dir, 'info.*.json'))):
    with tf.io.gfile.GFile(path) as f:
      other = json.load(f)
    if other.get('features'):
      return other['features']
  return dict(_DEFAULT_FEATURES)


def parse_spec(features: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """tf.train.Example parse spec: [null] → FixedLenSequence, [] → FixedLen."""
  spec = {}
  for name, f in features.items():
    if f['dtype'] not in _TF_DTYPES:
      raise ValueError(f'P3 feature {name!r} has unsupported dtype {f["dtype"]!r}.')
    parse_dtype = _PARSE_DTYPES[_TF_DTYPES[f['dtype']]]
    if list(f['shape']) == []:
      spec[name] = tf.io.FixedLenFeature([], parse_dtype)
    elif len(f['shape']) == 1:
      spec[name] = tf.io.FixedLenSequenceFeature([], parse_dtype, allow_missing=True)
    else:
      raise ValueError(f'P3 feature {name!r}: shape {f["shape"]} is not [] or [null].')
  return spec


def read_p3_split(task_dir: str, split: str) -> tf.data.Dataset:
  """The examples of one split of a P3 task folder, with the stored dtypes."""
  features = task_features(task_dir, split)
  files = sorted(tf.io.gfile.glob(os.path.join(task_dir, f'{split}.tfrecord-*')))
  if not files:
    raise FileNotFoundError(f'P3 task folder {task_dir}: no {split}.tfrecord-* file.')
  spec = parse_spec(features)
  dtypes = {name: _TF_DTYPES[f['dtype']] for name, f in features.items()}

  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    return {k: tf.cast(v, dtypes[k]) if v.dtype != dtypes[k] else v for k, v in ex.items()}

  return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _absent_dataset(task: str) -> Optional[tuple[str, str]]:
  """(dataset key, display name) if `task` belongs to a dataset P3 lacks, else None."""
  for prefix, dataset in ABSENT_FROM_P3.items():
    if task.startswith(prefix):
      return dataset
  return None


def missing_task_message(task: str, task_dir: str) -> str:
  """Why P3 task `task` cannot be read from `task_dir`, and what to do."""
  message = f'P3 task {task!r} not found: no folder {task_dir}.'
  absent = _absent_dataset(task)
  if absent:
    key, display = absent
    return (f'{message} P3 does not contain {display} at all; use our own task '
            f'{task!r} (spt_tasks.heldout, raw {key} data) instead.')
  return (f'{message} Is SPT_P3_DIR the P3 root, and is this task downloaded (P3 also '
          f'lacks a few templates of our registries)? {DOWNLOAD_HELP}')


def p3_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None,
                  *, task: str) -> tf.data.Dataset:
  """seqio dataset_fn of one P3 task (a single shard: nothing to shuffle at file level)."""
  del shuffle_files, seed
  root = p3_dir()
  task_dir = os.path.join(root, task)
  if not tf.io.gfile.isdir(task_dir):
    raise FileNotFoundError(missing_task_message(task, task_dir))
  return read_p3_split(task_dir, split)


def _add_task(name: str, **kwargs) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)


def register_p3_task(task: str, splits: Iterable[str],
                     sizes: Optional[Mapping[str, int]] = None) -> str:
  """Registers `p3_<task>` (pre-tokenized: no preprocessors); returns its name.

  Args:
    task: P3's task name (its folder under `data/`).
    splits: the split names the task declares (a mixture skips a task without
      the requested split).
    sizes: {split: examples} (seqio's `num_input_examples`), or None if unknown.
  """
  vocab = sources.get_vocabulary()
  features = {
      'inputs': seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
  }
  source = seqio.FunctionDataSource(
      functools.partial(p3_dataset_fn, task=task), splits=list(splits),
      num_input_examples=dict(sizes) if sizes is not None else None)
  if task.endswith(SCORE_EVAL_SUFFIX):
    kwargs = dict(metric_fns=[metrics_lib.rank_classification],
                  postprocess_fn=metrics_lib.rank_classification_postprocessor)
  else:
    kwargs = dict(metric_fns=[], postprocess_fn=None)
  name = PREFIX + task
  _add_task(name, source=source, output_features=features, preprocessors=[], **kwargs)
  _REGISTERED.add(name)
  return name


def _read_examples(path: str) -> int:
  with tf.io.gfile.GFile(path) as f:
    stats = json.load(f)
  if not isinstance(stats, dict) or not isinstance(stats.get('examples'), int):
    raise ValueError(f'P3 stats file {path} has no integer "examples" field (got '
                     f'{str(stats)[:80]}); the download is incomplete or corrupt.')
  return stats['examples']


def scan_data_dir(data_dir: str) -> dict[str, dict[str, int]]:
  """{task: {split: examples}} of every completed task folder under P3's `data/`.

  A folder without `COMPLETED` (an interrupted download or cache job) is
  skipped. Splits are the `stats.<split>.json` files of the folder.

  Raises:
    ValueError: a stats file without an integer `examples` count.
  """
  completed = {os.path.basename(os.path.dirname(p))
               for p in tf.io.gfile.glob(os.path.join(data_dir, '*', COMPLETED))}
  stats = {}
  for path in tf.io.gfile.glob(os.path.join(data_dir, '*', 'stats.*.json')):
    task = os.path.basename(os.path.dirname(path))
    if task in completed:
      stats[(task, os.path.basename(path)[len('stats.'):-len('.json')])] = path
  with concurrent.futures.ThreadPoolExecutor(_STATS_READERS) as pool:
    examples = dict(zip(stats, pool.map(_read_examples, stats.values())))
  sizes = {task: {} for task in sorted(completed)}
  for (task, split), n in sorted(examples.items()):
    sizes[task][split] = n
  return sizes


def our_task_splits() -> dict[str, tuple[str, ...]]:
  """{T0 task name: split names} of the tasks P3 may hold, from our registries only.

  Every template task of the `train` and `heldout` rows, plus the `_score_eval`
  twins of the held-out rows (P3 has none for training rows). Splits are the
  row's split names and its source's (wiki_bio's validation is P3's `val`); a
  declared split P3 lacks (social_i_qa has no test there) fails when read, with
  the splits the folder has.
  """
  from spt_tasks import t0  # pylint: disable=g-import-not-at-top
  out = {}
  for role, score_eval in (('train', False), ('heldout', False), ('heldout', True)):
    for spec in sources.specs_with_role(role):
      splits = tuple(dict.fromkeys([*spec.splits, *spec.splits.values()]))
      for name in t0.task_names(spec, score_eval=score_eval):
        out[name] = splits
  return out


def _add_mixture(name: str, tasks_and_rates) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  if not tasks_and_rates:
    logging.warning('Mixture %s is not registered: none of its P3 tasks is registered '
                    '(is the P3 download complete?).', name)
    return
  seqio.MixtureRegistry.add(name, tasks_and_rates)


def p3_t0_train_mixture(name: str = P3_T0_TRAIN_MIXTURE, specs=None,
                        cap: int = mixing.MAX_EXAMPLES_PER_DATASET,
                        split_uncapped: bool = False) -> str:
  """Registers the P3 twin of `spt_t0_train` (same rows and rates); returns its name.

  Rows default to `spt_tasks.t0.train_datasets()` (gin include/exclude). Rates come
  from `datasets.csv`'s `train_size`, as for `spt_t0_train`. Templates whose
  `p3_*` task is not registered (a partial P3 download) are skipped, with a
  warning, and the dataset's capped rate is shared by the templates present.
  """
  from spt_tasks import t0  # pylint: disable=g-import-not-at-top
  specs = t0.train_datasets() if specs is None else specs
  by_dataset, skipped = {}, []
  for spec in specs:
    names = [PREFIX + spec.task_name(i.name) for i in t0.usable_templates(spec)]
    by_dataset[spec.key] = [n for n in names if n in _REGISTERED]
    skipped += [n for n in names if n not in _REGISTERED]
  if skipped:
    logging.warning('%s: %d training templates have no P3 task and are skipped: %s', name,
                    len(skipped), ', '.join(skipped[:20]) + (' ...' if len(skipped) > 20 else ''))
  rates = mixing.t0_rates({s.key: s.train_size for s in specs}, by_dataset, cap, split_uncapped)
  _add_mixture(name, [(t, float(r)) for t, r in rates.items()])
  return name


def p3_heldout_mixture(name: str = P3_HELDOUT_MIXTURE) -> str:
  """Registers P3's scored held-out `_score_eval` tasks (rate 1); returns its name."""
  from spt_tasks import heldout  # pylint: disable=g-import-not-at-top
  scored = []
  for spec in heldout.heldout_specs():
    for task in heldout.scored_tasks(spec):
      if PREFIX + task in _REGISTERED and not _absent_dataset(task):
        scored.append((PREFIX + task, 1.0))
  _add_mixture(name, scored)
  return name


def register(data_dir: Optional[str] = None) -> list[str]:
  """(Re-)registers every `p3_*` task and the two P3 mixtures; returns the task names.

  Args:
    data_dir: P3's `data/` folder (see `p3_dir`): one task per completed folder,
      with sizes. None: the names our registries produce, without sizes, and no
      disk access. A folder without any completed task falls back to None, with
      a warning.
  """
  sizes = scan_data_dir(data_dir) if data_dir is not None else {}
  if data_dir is not None and not sizes:
    logging.warning('P3 directory %s holds no task folder with %s; registering P3 tasks by '
                    'name only.', data_dir, COMPLETED)
  for name in _REGISTERED:
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
  _REGISTERED.clear()
  if sizes:
    for task, task_sizes in sizes.items():
      register_p3_task(task, task_sizes, task_sizes)
    logging.info('Registered %d P3 tasks from %s.', len(sizes), data_dir)
  else:
    for task, splits in our_task_splits().items():
      register_p3_task(task, splits)
  p3_t0_train_mixture()
  p3_heldout_mixture()
  return sorted(_REGISTERED)


register(configured_data_dir())
