"""seqio preprocessors for prompted (promptsource) tasks.

Two text-to-text steps, used by every prompted registry before
`seqio.preprocessors.tokenize` / `append_eos`:

* `apply_template` — raw example (any features) → `{'inputs', 'targets'[,
  'answer_choices']}` strings, rendered by a promptsource template inside the
  tf.data pipeline (`tf.numpy_function`, sequential and deterministic). An example
  the template cannot render is skipped, counted in `get_counts()` and reported
  with an absl warning; it never stops the pipeline.
* `score_eval_expand` — the `_score_eval` (rank classification) expansion as in
  T0 / `t5.data.preprocessors.rank_classification`: an example with `n` answer
  choices becomes `n` rows `{'idx': [example, choice] int32, 'inputs',
  'targets': choice, 'is_correct': bool, 'weight': 1.0 float32}`. Examples whose
  target is not exactly one of their choices are dropped and counted.

Typical task (what `spt_tasks/sample.py` and `spt_tasks/t0.py` do):

  preprocessors = [
      functools.partial(apply_template, template=t, counter_name=name),
      seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
  score_preprocessors = [
      functools.partial(apply_template, template=t, counter_name=name),
      score_eval_expand,
      seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]

Counting happens in Python when the pipeline runs; counts are per process and
per `counter_name` (default: the template name).
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from spt_tasks import templates as templates_lib

_COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_COUNTS_LOCK = threading.Lock()


def get_counts(counter_name: Optional[str] = None):
  """Counts seen so far in this process.

  Keys of each counter: 'rendered', 'template_failed' (apply_template),
  'score_eval_examples', 'score_eval_dropped' (score_eval_expand).

  Args:
    counter_name: one counter; None returns all as {name: Counter}.
  """
  with _COUNTS_LOCK:
    if counter_name is not None:
      return collections.Counter(_COUNTS.get(counter_name, {}))
    return {k: collections.Counter(v) for k, v in _COUNTS.items()}


def reset_counts() -> None:
  """Forgets every count (tests call this first)."""
  with _COUNTS_LOCK:
    _COUNTS.clear()


def _count(counter_name: str, key: str) -> int:
  with _COUNTS_LOCK:
    _COUNTS[counter_name][key] += 1
    return _COUNTS[counter_name][key]


def to_python(value: Any) -> Any:
  """A numpy value from `tf.numpy_function` as the Python value HF would give.

  bytes → str (UTF-8), numpy scalars → int/float/bool, arrays → (nested) lists.
  """
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return to_python(value.item())
    return [to_python(v) for v in value]
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode('utf-8')
  if isinstance(value, np.generic):
    return value.item()
  return value


def _check_specs(element_spec) -> None:
  for spec in tf.nest.flatten(element_spec):
    if not isinstance(spec, tf.TensorSpec):
      raise TypeError(
          f'apply_template needs dense tensors, got {spec!r}. Convert ragged or '
          'sparse features to dense (e.g. `.to_tensor()`) in a preprocessor before it.')


def apply_template(dataset: tf.data.Dataset,
                   template,
                   *,
                   example_fn: Optional[Callable[[dict[str, Any]], Mapping[str, Any]]] = None,
                   counter_name: Optional[str] = None) -> tf.data.Dataset:
  """Renders each example through a promptsource template (seqio preprocessor).

  Args:
    dataset: examples with any (dense) features, e.g. TFDS `super_glue/rte`
      `{'premise': str, 'hypothesis': str, 'idx': int32, 'label': int64}`.
    template: a promptsource `Template` (see `templates.get_template`).
    example_fn: optional Python function applied to the decoded example (a dict
      of Python values) before rendering, to map a source's schema onto the HF
      `datasets` schema the template expects (e.g. TFDS anli `context` →
      `premise`). It may raise to skip an example (counted as a failure).
    counter_name: key in `get_counts()`; default the template's name. Use the
      task name so that counts of different tasks stay apart.

  Returns:
    Dataset of `{'inputs': tf.string [], 'targets': tf.string []}` plus
    `'answer_choices': tf.string [n]` when the template defines answer choices.
    Examples that fail to render (jinja error, no '|||' split, empty inputs or
    targets) are dropped and counted as 'template_failed'.
  """
  _check_specs(dataset.element_spec)
  name = counter_name or template.get_name()
  has_choices = template.get_answer_choices_expr() is not None
  element_spec = dataset.element_spec

  def render_np(*flat):
    example = tf.nest.pack_sequence_as(element_spec, [to_python(v) for v in flat])
    try:
      if example_fn is not None:
        example = example_fn(example)
      rendered = templates_lib.render(template, example)
    except Exception as e:  # pylint: disable=broad-except  # skip, never fail the pipeline.
      if _count(name, 'template_failed') == 1:
        logging.warning('%s: skipping examples the template cannot render (first: %s: %s); '
                        'further skips are counted, not logged (get_counts(%r)).',
                        name, type(e).__name__, e, name)
      return b'', b'', np.zeros([0], dtype=object)
    _count(name, 'rendered')
    choices = rendered.answer_choices or []
    return (rendered.inputs.encode('utf-8'), rendered.targets.encode('utf-8'),
            np.array([c.encode('utf-8') for c in choices], dtype=object))

  # Two traced functions per task, not converted by autograph: a mixture traces them once
  # per task (313 in the T0 training mixture), and tracing is most of its start-up.
  @tf.autograph.experimental.do_not_convert
  def map_fn(ex):
    inputs, targets, choices = tf.numpy_function(
        render_np, tf.nest.flatten(ex), [tf.string, tf.string, tf.string],
        stateful=True, name='apply_template')
    inputs.set_shape([])
    targets.set_shape([])
    choices.set_shape([None])
    out = {'inputs': inputs, 'targets': targets}
    if has_choices:
      out['answer_choices'] = choices
    return out

  dataset = dataset.map(map_fn)  # sequential: deterministic order and counts
  # A rendered example has non-empty inputs (`templates.render` raises otherwise), so empty
  # inputs mark exactly the examples that failed.
  return dataset.filter(
      tf.autograph.experimental.do_not_convert(lambda ex: tf.strings.length(ex['inputs']) > 0))


def score_eval_expand(dataset: tf.data.Dataset,
                      *,
                      counter_name: str = 'score_eval') -> tf.data.Dataset:
  """Expands each example into one row per answer choice (rank classification).

  Args:
    dataset: `{'inputs': tf.string [], 'targets': tf.string [],
      'answer_choices': tf.string [n]}` (the output of `apply_template` for a
      template with answer choices); other features are dropped.
    counter_name: key in `get_counts()`.

  Returns:
    Dataset of rows `{'idx': int32 [2] = [example index, choice index],
    'inputs': tf.string [] (repeated), 'targets': tf.string [] (the choice),
    'is_correct': tf.bool [], 'weight': tf.float32 [] (1.0)}`; an example gives
    exactly `n` consecutive rows of which exactly one is correct. The example
    index counts the incoming examples (from 0), so dropped examples leave gaps.
    Examples whose stripped target matches no choice or several choices are
    dropped and counted as 'score_eval_dropped' (kept ones as
    'score_eval_examples').

  Raises:
    ValueError: the dataset has no 'answer_choices' feature.
  """
  if 'answer_choices' not in dataset.element_spec:
    raise ValueError(
        'score_eval_expand needs an "answer_choices" feature: use a template whose '
        'answer_choices expression is set (TemplateInfo.has_answer_choices), and '
        f'run apply_template first. Features: {sorted(dataset.element_spec)}.')

  def check_np(num_correct, targets):
    if num_correct == 1:
      _count(counter_name, 'score_eval_examples')
      return True
    if _count(counter_name, 'score_eval_dropped') == 1:
      logging.warning('%s: dropping examples whose target does not match exactly one answer '
                      'choice (first: target %r matches %d); further drops are counted, not '
                      'logged (get_counts(%r)).', counter_name, to_python(targets),
                      int(num_correct), counter_name)
    return False

  def add_correct(index, ex):
    is_correct = tf.equal(ex['answer_choices'], tf.strings.strip(ex['targets']))
    return {
        'index': tf.cast(index, tf.int32),
        'inputs': ex['inputs'],
        'targets': ex['targets'],
        'answer_choices': ex['answer_choices'],
        'is_correct': is_correct,
    }

  def keep(ex):
    num_correct = tf.reduce_sum(tf.cast(ex['is_correct'], tf.int32))
    ok = tf.numpy_function(check_np, [num_correct, ex['targets']], tf.bool,
                           stateful=True, name='score_eval_check')
    ok.set_shape([])
    return ok

  def rows(ex):
    n = tf.size(ex['answer_choices'])
    return {
        'idx': tf.stack([tf.fill([n], ex['index']), tf.range(n, dtype=tf.int32)], axis=1),
        'inputs': tf.fill([n], ex['inputs']),
        'targets': ex['answer_choices'],
        'is_correct': ex['is_correct'],
        'weight': tf.ones([n], tf.float32),
    }

  dataset = dataset.enumerate().map(add_correct).filter(keep).map(rows)
  return dataset.unbatch()
