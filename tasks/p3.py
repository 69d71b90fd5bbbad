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

Every task listed in P3's size table (`tasks/p3_split_sizes.csv`, 660 tasks) is
registered as `p3_<task>` at import, without touching the disk; the directory is
read when a dataset is requested, from gin `tasks.p3.p3_dir.path` or env
`SPT_P3_DIR` (the root, or its `data/` folder). Mixtures:

* `spt_p3_t0_train`: the P3 twins of the `spt_t0_train` tasks (same datasets,
  `tasks.t0.train_datasets`), at T0's rates.
* `spt_p3_heldout_score_eval`: P3's `_score_eval` tasks of the held-out
  original-task templates (StoryCloze is not in P3).

P3 gaps (from its own documentation): no StoryCloze, no `_score_eval` for
training datasets, some empty splits (e.g. adversarial_qa test), placeholder
targets on unlabeled test splits.
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any, Mapping, Optional

import gin
import seqio
import tensorflow as tf

from spt_jax import metrics as metrics_lib
from tasks import mixing
from tasks import sources

P3_SPLIT_SIZES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'p3_split_sizes.csv')
PREFIX = 'p3_'
SCORE_EVAL_SUFFIX = '_score_eval'
P3_T0_TRAIN_MIXTURE = 'spt_p3_t0_train'
P3_HELDOUT_MIXTURE = 'spt_p3_heldout_score_eval'

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


@gin.configurable
def p3_dir(path: Optional[str] = None) -> str:
  """The P3 `data/` folder: gin `path`, else env `SPT_P3_DIR` (root or its data/).

  Raises:
    FileNotFoundError: neither is set, or the folder does not exist.
  """
  path = path or os.environ.get('SPT_P3_DIR')
  if not path:
    raise FileNotFoundError(
        'P3 tasks need the P3 data: download bigscience/P3 (git lfs, a revision before '
        'the 2024 Parquet conversion, e.g. 255b4bb51b0eeceec18b06cb372b73f2b5910550) and '
        'set env SPT_P3_DIR (or gin tasks.p3.p3_dir.path) to its root.')
  data = os.path.join(path, 'data')
  if os.path.isdir(data):
    return data
  if os.path.isdir(path):
    return path
  raise FileNotFoundError(f'P3 directory {path!r} (SPT_P3_DIR / gin) does not exist.')


@functools.lru_cache(maxsize=None)
def load_split_sizes(path: str = P3_SPLIT_SIZES) -> dict[str, dict[str, int]]:
  """P3's size table: {task: {split: examples}} (file format `task|{json}`)."""
  sizes = {}
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith('Data('):
        continue
      task, sep, blob = line.partition('|')
      if not sep:
        raise ValueError(f'{path}:{line_no}: expected "task|{{json sizes}}", got {line[:80]!r}.')
      sizes[task] = {k: int(v) for k, v in json.loads(blob).items()}
  return sizes


def read_info(task_dir: str, split: str) -> dict[str, Any]:
  """The `info.<split>.json` of a task folder ({} for an empty split)."""
  path = os.path.join(task_dir, f'info.{split}.json')
  if not os.path.isfile(path):
    have = sorted(os.path.basename(p)[len('info.'):-len('.json')]
                  for p in glob.glob(os.path.join(task_dir, 'info.*.json')))
    raise FileNotFoundError(f'P3 task folder {task_dir} has no split {split!r} '
                            f'(no {os.path.basename(path)}); splits there: {have}.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def task_features(task_dir: str, split: str) -> dict[str, dict[str, Any]]:
  """Feature specs of a split; an empty split (`{}`) borrows another split's."""
  info = read_info(task_dir, split)
  if info.get('features'):
    return info['features']
  for path in sorted(glob.glob(os.path.join(task_dir, 'info.*.json'))):
    with open(path, encoding='utf-8') as f:
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
  files = sorted(glob.glob(os.path.join(task_dir, f'{split}.tfrecord-*')))
  if not files:
    raise FileNotFoundError(f'P3 task folder {task_dir}: no {split}.tfrecord-* file.')
  spec = parse_spec(features)
  dtypes = {name: _TF_DTYPES[f['dtype']] for name, f in features.items()}

  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    return {k: tf.cast(v, dtypes[k]) if v.dtype != dtypes[k] else v for k, v in ex.items()}

  return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def p3_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None,
                  *, task: str) -> tf.data.Dataset:
  """seqio dataset_fn of one P3 task (a single shard: nothing to shuffle at file level)."""
  del shuffle_files, seed
  root = p3_dir()
  task_dir = os.path.join(root, task)
  if not os.path.isdir(task_dir):
    raise FileNotFoundError(f'P3 task {task!r} not found: no folder {task_dir}. Is '
                            'SPT_P3_DIR the P3 root, and is this task downloaded?')
  return read_p3_split(task_dir, split)


def _add_task(name: str, **kwargs) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)


def register_p3_task(task: str, sizes: Mapping[str, int]) -> str:
  """Registers `p3_<task>` (pre-tokenized: no preprocessors); returns its name."""
  vocab = sources.get_vocabulary()
  features = {
      'inputs': seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
  }
  source = seqio.FunctionDataSource(
      functools.partial(p3_dataset_fn, task=task), splits=list(sizes),
      num_input_examples=dict(sizes))
  if task.endswith(SCORE_EVAL_SUFFIX):
    kwargs = dict(metric_fns=[metrics_lib.rank_classification],
                  postprocess_fn=metrics_lib.rank_classification_postprocessor)
  else:
    kwargs = dict(metric_fns=[], postprocess_fn=None)
  name = PREFIX + task
  _add_task(name, source=source, output_features=features, preprocessors=[], **kwargs)
  return name


def _add_mixture(name: str, tasks_and_rates) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks_and_rates)


@gin.configurable
def p3_t0_train_mixture(name: str = P3_T0_TRAIN_MIXTURE, specs=None,
                        cap: int = mixing.MAX_EXAMPLES_PER_DATASET,
                        split_uncapped: bool = False) -> str:
  """Registers the P3 twin of `spt_t0_train` (same rows and rates); returns its name.

  Rows default to `tasks.t0.train_datasets()` (gin include/exclude). Templates
  missing from P3 are skipped.
  """
  from tasks import t0  # pylint: disable=g-import-not-at-top
  specs = t0.train_datasets() if specs is None else specs
  sizes = load_split_sizes()
  by_dataset = {}
  for spec in specs:
    names = [spec.task_name(i.name) for i in t0.usable_templates(spec)]
    by_dataset[spec.key] = [PREFIX + n for n in names if n in sizes]
  rates = mixing.t0_rates({s.key: s.train_size for s in specs}, by_dataset, cap, split_uncapped)
  _add_mixture(name, [(t, float(r)) for t, r in rates.items()])
  return name


def register() -> None:
  """Registers every P3 task of the size table and the two P3 mixtures."""
  from tasks import heldout  # pylint: disable=g-import-not-at-top
  sizes = load_split_sizes()
  for task, task_sizes in sizes.items():
    register_p3_task(task, task_sizes)
  p3_t0_train_mixture()
  scored = []
  for spec in heldout.heldout_specs():
    for task in heldout.scored_tasks(spec):
      if task in sizes:
        scored.append((PREFIX + task, 1.0))
  _add_mixture(P3_HELDOUT_MIXTURE, scored)


register()
