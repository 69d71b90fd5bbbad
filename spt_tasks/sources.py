"""Where raw examples come from: the dataset table, TFDS / HF / manual sources.

Every prompted task renders an example through a promptsource template, and
promptsource templates are written against HF `datasets` field names. This module
turns each row of `spt_tasks/datasets.csv` into a seqio `DataSource` plus an
`example_fn` (a Python function from a decoded source example to the HF-schema
example the template expects); `spt_tasks.preprocessors.apply_template` calls
`example_fn` just before rendering.

Sources (the `source` column of `datasets.csv`):

* `tfds`: a `seqio.FunctionDataSource` over `tfds.load(name:version, split=...,
  download=False)`. (Not `seqio.TfdsDataSource`: a FunctionDataSource also works
  under `tfds.testing.mock_data`, which the tests use.) Missing data raises
  `DataNotFoundError` naming the dataset and the `tfds build` command that
  prepares it. Where TFDS and HF disagree, `FIELD_MAPS` rewrites the example:
  anli (`context` → `premise`), winogrande (ClassLabel 0/1 → `answer` '1'/'2'),
  paws (adds HF's `id`), hellaswag (`context` → `ctx`, int label → str; lossy,
  see `_hellaswag_to_hf`, so the table reads hellaswag from HF by default).
* `hf`: HF `datasets.load_dataset(hf_name, hf_subset, split=...)`, imported
  lazily (it is not a dependency of this project; it needs network on first
  use). HF examples hold nested lists of dicts that tf.data cannot carry densely,
  so each example travels as one JSON string feature `hf_json` and `example_fn`
  decodes it: the template sees exactly the Python object HF gave.
* `manual_csv`: StoryCloze, whose data must be requested by hand from its
  authors. We read the released CSV files (`cloze_test_val__spring2016.csv`,
  `cloze_test_test__spring2016.csv`) from `SPT_STORY_CLOZE_DIR` straight into
  HF's layout (`input_sentence_1..4`, `sentence_quiz1/2`, `answer_right_ending`).
  We do not use TFDS `story_cloze`: it joins the four story sentences into one
  `context` string, which cannot be split back exactly, and most StoryCloze
  templates print the sentences on separate lines.

The vocabulary (`get_vocabulary`) is the T5 SentencePiece model, path from gin or
env `SPT_T5_VOCAB`; seqio loads it lazily, so registering tasks touches neither
the vocabulary file nor the network.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from spt_tasks import vocabularies

DATASETS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'datasets.csv')
DEFAULT_T5_VOCAB = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
ROLES = ('train', 'heldout', 'glue', 'super_glue')
SOURCES = ('tfds', 'hf', 'manual_csv')
HF_JSON_FEATURE = 'hf_json'
# HF examples serialised per call of the source's generator (the order is unchanged).
_HF_CHUNK = 64

STORY_CLOZE_FILES = {'validation': 'cloze_test_val__spring2016.csv',
                   'test': 'cloze_test_test__spring2016.csv'}


class DataNotFoundError(FileNotFoundError):
  """The raw data of a dataset is not on this machine; the message says how to get it."""


# ----------------------------------------------------------------------------
# Vocabulary.
# ----------------------------------------------------------------------------


def get_vocabulary(path: Optional[str] = None, extra_ids: int = 100) -> seqio.Vocabulary:
  """The T5 vocabulary (32000 SentencePiece pieces + 100 sentinels = 32100).

  Args:
    path: SentencePiece model; default env `SPT_T5_VOCAB`, else T5's public
      `gs://t5-data/vocabs/cc_all.32000/sentencepiece.model`. Not read here:
      the vocabulary (`vocabularies.SentencePieceVocabulary`, seqio's with one
      shared tokenize function) loads it on first use.
    extra_ids: sentinel ids appended (T5: 100).
  """
  path = path or os.environ.get('SPT_T5_VOCAB') or DEFAULT_T5_VOCAB
  return _vocabulary(path, extra_ids)


@functools.lru_cache(maxsize=None)
def _vocabulary(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  return vocabularies.SentencePieceVocabulary(path, extra_ids=extra_ids)


def output_features() -> dict[str, seqio.Feature]:
  """seqio output features of a prompted task (T0: no EOS on inputs, EOS on targets)."""
  vocab = get_vocabulary()
  return {
      'inputs': seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
  }


# ----------------------------------------------------------------------------
# The dataset table.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One row of `datasets.csv`: a (dataset, subset) and where its data comes from.

  Attributes:
    dataset: HF dataset name, also the promptsource folder, e.g. 'super_glue'.
    subset: HF config, e.g. 'rte', or None. For anli it is the round ('r1'),
      which is a split suffix in HF and a config in TFDS.
    cluster: task cluster, e.g. 'multiple_choice_qa', 'nli'.
    roles: subset of ('train', 'heldout', 'glue', 'super_glue').
    source: 'tfds' | 'hf' | 'manual_csv'.
    tfds_name: 'name[/config]:version', e.g. 'super_glue/rte:1.0.2'.
    hf_name, hf_subset: `datasets.load_dataset` arguments.
    splits: our split name -> the source's split name, e.g. winogrande
      {'train': 'train_xl', ...}.
    templates: promptsource (dataset, subset) holding the templates.
    train_size: training examples (from P3's split sizes, or GLUE's); drives
      the T0 mixing rate. None if unknown.
    default_train: member of the default `spt_t0_train` mixture.
    notes: free text (field maps, caveats).
  """
  dataset: str
  subset: Optional[str]
  cluster: str
  roles: tuple[str, ...]
  source: str
  tfds_name: str
  hf_name: str
  hf_subset: Optional[str]
  splits: Mapping[str, str]
  templates: tuple[str, Optional[str]]
  train_size: Optional[int]
  default_train: bool
  notes: str = ''

  @property
  def key(self) -> str:
    """'dataset/subset' or 'dataset': the name used in include/exclude lists."""
    return f'{self.dataset}/{self.subset}' if self.subset else self.dataset

  @property
  def is_anli(self) -> bool:
    return self.dataset == 'anli'

  def task_name(self, template_name: str) -> str:
    """T0 task name of one template: `{dataset}_{subset}_{template}`.

    anli keeps T0's special form `anli_{template}_{round}` (templates are shared by
    the rounds, which are splits in HF).
    """
    from spt_tasks import templates as templates_lib  # pylint: disable=g-import-not-at-top
    if self.is_anli:
      return templates_lib.task_name('anli', None, template_name) + f'_{self.subset}'
    return templates_lib.task_name(self.dataset, self.subset, template_name)


def _parse_splits(text: str, where: str) -> dict[str, str]:
  splits = {}
  for part in filter(None, (p.strip() for p in text.split(';'))):
    if '=' not in part:
      raise ValueError(f'{where}: split mapping {part!r} is not "ours=source" '
                       '(e.g. "train=train_xl;validation=validation").')
    ours, theirs = (s.strip() for s in part.split('=', 1))
    splits[ours] = theirs
  if not splits:
    raise ValueError(f'{where}: empty split mapping.')
  return splits


def _parse_row(row: Mapping[str, str], where: str) -> DatasetSpec:
  roles = tuple(r.strip() for r in row['roles'].split('|') if r.strip())
  bad = [r for r in roles if r not in ROLES]
  if bad or not roles:
    raise ValueError(f'{where}: roles {row["roles"]!r}: each must be one of {ROLES}.')
  if row['source'] not in SOURCES:
    raise ValueError(f'{where}: source {row["source"]!r} must be one of {SOURCES}.')
  if row['source'] == 'tfds' and ':' not in row['tfds_name']:
    raise ValueError(f'{where}: tfds_name {row["tfds_name"]!r} needs a version, '
                     'e.g. "super_glue/rte:1.0.2".')
  prefix = 'promptsource:'
  if not row['templates'].startswith(prefix):
    raise ValueError(f'{where}: templates {row["templates"]!r} must look like '
                     '"promptsource:dataset[/subset]".')
  ps_dataset, _, ps_subset = row['templates'][len(prefix):].partition('/')
  default = row['default_train'].strip().lower()
  if default not in ('', 'yes', 'no'):
    raise ValueError(f'{where}: default_train must be "yes", "no" or empty, got {default!r}.')
  if default == 'yes' and 'train' not in roles:
    raise ValueError(f'{where}: default_train=yes needs the "train" role.')
  return DatasetSpec(
      dataset=row['dataset'],
      subset=row['subset'] or None,
      cluster=row['cluster'],
      roles=roles,
      source=row['source'],
      tfds_name=row['tfds_name'],
      hf_name=row['hf_name'],
      hf_subset=row['hf_subset'] or None,
      splits=_parse_splits(row['splits'], where),
      templates=(ps_dataset, ps_subset or None),
      train_size=int(row['train_size']) if row['train_size'].strip() else None,
      default_train=default == 'yes',
      notes=row.get('notes', ''),
  )


@functools.lru_cache(maxsize=None)
def load_specs(path: str = DATASETS_CSV) -> dict[str, DatasetSpec]:
  """All rows of the dataset table, keyed by `DatasetSpec.key`, in file order.

  Raises:
    ValueError: a malformed row (the message names the line and the fix) or a
      duplicate (dataset, subset).
  """
  specs = {}
  with open(path, newline='') as f:
    for line_no, row in enumerate(csv.DictReader(f), start=2):
      spec = _parse_row(row, f'{path}:{line_no}')
      if spec.key in specs:
        raise ValueError(f'{path}:{line_no}: duplicate dataset {spec.key!r}.')
      specs[spec.key] = spec
  return specs


def get_spec(key: str, path: str = DATASETS_CSV) -> DatasetSpec:
  """The row for 'dataset/subset' (or 'dataset'); unknown → error with close matches."""
  specs = load_specs(path)
  if key not in specs:
    raise ValueError(unknown_dataset_message(key, specs))
  return specs[key]


def unknown_dataset_message(key: str, known: Iterable[str]) -> str:
  known = sorted(known)
  close = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
  hint = f'Did you mean {close}?' if close else f'Known: {known}.'
  return (f'Unknown dataset {key!r} (not a row of {os.path.basename(DATASETS_CSV)}; '
          f'use "dataset/subset" keys). {hint}')


def specs_with_role(role: str, path: str = DATASETS_CSV) -> list[DatasetSpec]:
  if role not in ROLES:
    raise ValueError(f'role {role!r} must be one of {ROLES}.')
  return [s for s in load_specs(path).values() if role in s.roles]


# ----------------------------------------------------------------------------
# TFDS → HF field maps (Python, applied by apply_template's example_fn).
# ----------------------------------------------------------------------------


def _anli_to_hf(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS anli {uid, context, hypothesis, label} → HF {uid, premise, hypothesis, label, reason}."""
  return {'uid': ex['uid'], 'premise': ex['context'], 'hypothesis': ex['hypothesis'],
          'label': ex['label'], 'reason': ''}


def _hellaswag_to_hf(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS hellaswag → HF hellaswag (lossy: only for `source=tfds` rows).

  TFDS keeps only HF's `ctx` (as `context`), not its parts `ctx_a` / `ctx_b`
  (HF: `ctx = ctx_a + ' ' + ctx_b`). We set `ctx_a = ctx`, `ctx_b = ''`, which is
  exact for WikiHow examples with an empty `ctx_b` and approximate otherwise. Three
  templates print the parts: 'Appropriate continuation - Yes or No', 'Reversed appropriate continuation - Yes or No' and the original-task
  'complete_first_then' (one of hellaswag's 4 scored templates), which is why
  `datasets.csv` reads hellaswag from HF. HF's label is a string ('0'..'3', ''
  when unlabeled).
  """
  label = int(ex['label'])
  return {'ind': 0, 'activity_label': ex['activity_label'], 'ctx_a': ex['context'],
          'ctx_b': '', 'ctx': ex['context'], 'endings': list(ex['endings']),
          'source_id': ex['source_id'], 'split': '', 'split_type': ex['split_type'],
          'label': str(label) if label >= 0 else ''}


def _winogrande_to_hf(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS winogrande ClassLabel(['1','2']) index → HF `answer` '1' / '2' ('' unlabeled)."""
  label = int(ex['label'])
  return {'sentence': ex['sentence'], 'option1': ex['option1'], 'option2': ex['option2'],
          'answer': str(label + 1) if label >= 0 else ''}


def _paws_to_hf(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS paws_wiki lacks HF's `id` (no template reads it); -1 stands in."""
  return {'id': -1, **ex}


# TFDS builder name (before '/' and ':') → field map. Builders not listed here
# (glue, super_glue, cos_e, imdb_reviews) already use HF's field names.
FIELD_MAPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    'anli': _anli_to_hf,
    'hellaswag': _hellaswag_to_hf,
    'winogrande': _winogrande_to_hf,
    'paws_wiki': _paws_to_hf,
}


def _decode_hf_json(ex: dict[str, Any]) -> dict[str, Any]:
  return json.loads(ex[HF_JSON_FEATURE])


def tfds_builder_name(tfds_name: str) -> str:
  return tfds_name.split(':')[0].split('/')[0]


def example_fn(spec: DatasetSpec) -> Optional[Callable[[dict[str, Any]], dict[str, Any]]]:
  """The source → HF-schema map for `apply_template(example_fn=...)`; None if identity."""
  if spec.source == 'hf':
    return _decode_hf_json
  if spec.source == 'tfds':
    return FIELD_MAPS.get(tfds_builder_name(spec.tfds_name))
  return None


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


def tfds_settings(data_dir: Optional[str] = None, download: bool = False) -> dict[str, Any]:
  """TFDS options shared by every TFDS-backed task.

  Args:
    data_dir: TFDS data dir; default TFDS's own (`TFDS_DATA_DIR` or ~/tensorflow_datasets).
    download: let `tfds.load` download and prepare missing data (needs network).
      Off by default so that a training job never starts a download by surprise;
      missing data then fails with the command that prepares it.
  """
  return {'data_dir': data_dir, 'download': download}


def _tfds_missing_message(tfds_name: str, data_dir: Optional[str], cause: Exception) -> str:
  name = tfds_name.split(':')[0]
  builder = tfds_builder_name(tfds_name)
  where = f' --data_dir={data_dir}' if data_dir else ''
  msg = (f'TFDS dataset {tfds_name!r} is not prepared{" in " + data_dir if data_dir else ""} '
         f'({type(cause).__name__}: {str(cause)[:200]}). Prepare it with '
         f'`tfds build {name}{where}` (needs network), or pass download=True via gin '
         '(`spt_tasks.sources.tfds_settings.download = True`).')
  if builder == 'story_cloze':
    msg += (' StoryCloze needs a manual download first: request the data at '
            'https://www.cs.rochester.edu/nlp/rocstories/ and put the CSV files in the '
            'TFDS manual dir (~/tensorflow_datasets/downloads/manual).')
  return msg


def tfds_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None,
                    *, tfds_name: str, splits: Mapping[str, str]) -> tf.data.Dataset:
  """`tfds.load` of one mapped split (a seqio FunctionDataSource dataset_fn).

  Raises:
    DataNotFoundError: the data is not prepared; names the `tfds build` command.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  settings = tfds_settings()
  read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
  try:
    return tfds.load(tfds_name, split=splits[split], shuffle_files=shuffle_files,
                     data_dir=settings['data_dir'], download=settings['download'],
                     read_config=read_config)
  except (AssertionError, tfds.core.DatasetNotFoundError, FileNotFoundError,
          tf.errors.NotFoundError) as e:
    raise DataNotFoundError(_tfds_missing_message(tfds_name, settings['data_dir'], e)) from e


# ---- HF `datasets`.

# Tests replace this: (hf_name, hf_subset, split) -> iterable of HF examples.
_HF_INJECTED: dict[tuple[str, Optional[str], str], Sequence[Mapping[str, Any]]] = {}


class inject_hf_examples:  # pylint: disable=invalid-name
  """Context manager: serve given examples instead of calling HF `datasets`.

  The examples still go through the real path (JSON feature → `example_fn` →
  template), so tests exercise everything but the download.

    with sources.inject_hf_examples({('imdb', None, 'train'): [{'text': 'x', 'label': 1}]}):
      ...
  """

  def __init__(self, data: Mapping[tuple[str, Optional[str], str], Sequence[Mapping[str, Any]]]):
    self._data = dict(data)
    self._saved = None

  def __enter__(self):
    self._saved = dict(_HF_INJECTED)
    _HF_INJECTED.update(self._data)
    return self

  def __exit__(self, *exc):
    _HF_INJECTED.clear()
    _HF_INJECTED.update(self._saved)


def _import_hf_datasets():
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'This task reads its raw data with Hugging Face `datasets`, which is not '
        'installed: `pip install datasets` (downloads need network access on first '
        'use). Alternatively train from pre-rendered P3 (spt_tasks.p3, env SPT_P3_DIR).') from e
  return datasets


def _hf_examples(hf_name: str, hf_subset: Optional[str], split: str) -> Iterator[Mapping[str, Any]]:
  datasets = _import_hf_datasets()
  yield from datasets.load_dataset(hf_name, hf_subset, split=split)


def _json_default(value):
  """JSON for the few non-JSON types HF examples may hold (numpy, bytes)."""
  if hasattr(value, 'tolist'):
    return value.tolist()
  if isinstance(value, bytes):
    return value.decode('utf-8')
  raise TypeError(f'cannot serialise {type(value).__name__} from an HF example')


def hf_dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None,
                  *, hf_name: str, hf_subset: Optional[str],
                  splits: Mapping[str, str]) -> tf.data.Dataset:
  """HF `datasets` split as `{'hf_json': tf.string []}` examples (one JSON per example).

  HF has no file-level shuffling (T0 ignored `shuffle_files` too); seqio's
  example shuffle buffer still applies.

  Injected examples (`inject_hf_examples`) are serialised here, once, into a
  `from_tensor_slices` dataset: seqio repeats a training split by re-iterating its
  source, and re-entering a Python generator costs ~1 ms per pass, which dominated
  the first batch of the T0 mixture over the one-example splits of
  `spt_tasks.mock_data`. The elements are the same strings either way.
  """
  del shuffle_files, seed
  hf_split = splits[split]
  key = (hf_name, hf_subset, hf_split)
  if key in _HF_INJECTED:
    rows = [json.dumps(dict(ex), default=_json_default) for ex in _HF_INJECTED[key]]
    return tf.data.Dataset.from_tensor_slices(
        {HF_JSON_FEATURE: tf.constant(rows, dtype=tf.string, shape=[len(rows)])})
  _import_hf_datasets()  # fail here, with the fix, not later inside tf.data

  def gen():  # chunks: from_generator's per-element Python call costs more than the JSON
    chunk = []
    for ex in _hf_examples(hf_name, hf_subset, hf_split):
      chunk.append(json.dumps(dict(ex), default=_json_default))
      if len(chunk) == _HF_CHUNK:
        yield {HF_JSON_FEATURE: chunk}
        chunk = []
    if chunk:
      yield {HF_JSON_FEATURE: chunk}

  return tf.data.Dataset.from_generator(
      gen, output_signature={HF_JSON_FEATURE: tf.TensorSpec([None], tf.string)}).unbatch()


# ---- StoryCloze (manual download).


def story_cloze_dir(path: Optional[str] = None) -> Optional[str]:
  """Folder with the StoryCloze 2016 CSVs; default env `SPT_STORY_CLOZE_DIR`."""
  return path or os.environ.get('SPT_STORY_CLOZE_DIR')


def _story_cloze_missing(path: Optional[str], split: str) -> str:
  return (f'StoryCloze 2016 {split} data not found'
          f'{" at " + path if path else " (SPT_STORY_CLOZE_DIR is not set)"}. It needs a manual '
          'download: fill in the form at https://www.cs.rochester.edu/nlp/rocstories/ , '
          'save the 2016 files as cloze_test_val__spring2016.csv and '
          'cloze_test_test__spring2016.csv in one folder, and set SPT_STORY_CLOZE_DIR to it '
          '(or gin `spt_tasks.sources.story_cloze_dir.path`).')


def read_story_cloze_csv(path: str) -> list[dict[str, Any]]:
  """Rows of a StoryCloze CSV in HF `story_cloze` layout."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  return [{
      'story_id': r['InputStoryid'],
      'input_sentence_1': r['InputSentence1'],
      'input_sentence_2': r['InputSentence2'],
      'input_sentence_3': r['InputSentence3'],
      'input_sentence_4': r['InputSentence4'],
      'sentence_quiz1': r['RandomFifthSentenceQuiz1'],
      'sentence_quiz2': r['RandomFifthSentenceQuiz2'],
      'answer_right_ending': int(r.get('AnswerRightEnding') or -1),
  } for r in rows]


_STORY_CLOZE_SPEC = {
    'story_id': tf.TensorSpec([], tf.string),
    **{f'input_sentence_{i}': tf.TensorSpec([], tf.string) for i in range(1, 5)},
    'sentence_quiz1': tf.TensorSpec([], tf.string),
    'sentence_quiz2': tf.TensorSpec([], tf.string),
    'answer_right_ending': tf.TensorSpec([], tf.int32),
}


def story_cloze_dataset_fn(split: str, shuffle_files: bool = False,
                           seed: Optional[int] = None) -> tf.data.Dataset:
  """StoryCloze 2016 validation/test from the manual CSVs (HF field names).

  Raises:
    DataNotFoundError: the files are missing; the message says how to get them.
  """
  del shuffle_files, seed
  folder = story_cloze_dir()
  if split not in STORY_CLOZE_FILES:
    raise ValueError(f'StoryCloze has splits {sorted(STORY_CLOZE_FILES)}, not {split!r}.')
  path = os.path.join(folder, STORY_CLOZE_FILES[split]) if folder else None
  if not path or not os.path.isfile(path):
    raise DataNotFoundError(_story_cloze_missing(path, split))
  rows = read_story_cloze_csv(path)
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=_STORY_CLOZE_SPEC)


def make_source(spec: DatasetSpec) -> seqio.DataSource:
  """The seqio data source of a dataset row (see the module docstring)."""
  splits = dict(spec.splits)
  if spec.source == 'tfds':
    fn = functools.partial(tfds_dataset_fn, tfds_name=spec.tfds_name, splits=splits)
  elif spec.source == 'hf':
    fn = functools.partial(hf_dataset_fn, hf_name=spec.hf_name, hf_subset=spec.hf_subset,
                           splits=splits)
  elif spec.source == 'manual_csv':
    if spec.dataset != 'story_cloze':
      raise ValueError(f'{spec.key}: source manual_csv is only implemented for story_cloze.')
    fn = story_cloze_dataset_fn
  else:
    raise ValueError(f'{spec.key}: unknown source {spec.source!r}; use one of {SOURCES}.')
  return seqio.FunctionDataSource(fn, splits=list(splits))
