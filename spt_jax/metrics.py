"""Evaluation metrics with T5 semantics, written here so `t5` need not be installed.

The `t5` package cannot be a dependency of this project (it replaces seqio and
tensorflow-datasets with nightlies), yet our evaluation must report the numbers a
T5 / T0 paper reports. This module re-implements the metrics we need with the same
input format, output keys and scale (percent) as `t5.evaluation.metrics`:

* `rank_classification` + `rank_classification_postprocessor`: zero-shot
  evaluation by scoring every answer choice (T0 style). Each answer choice of an
  example is one row of a seqio `_score_eval` task with features `idx = [example,
  choice]`, `is_correct`, `weight`; the model scores each row (sum of target
  log-likelihoods) and the metric takes the arg-max choice per example.
* SuperGLUE: `accuracy`, `f1_binary`, `mean_multiclass_f1` (CB),
  `exact_match_and_f1` (SQuAD normalisation, for ReCoRD / MultiRC-like answers),
  and for MultiRC `multirc_f1_over_all_answers` + `mean_group_metric(all_match)`.
* `rouge` (rouge1 / rouge2 / rougeLsum via `rouge_score`) for generative tasks.

Every function has a seqio-compatible signature: score metrics take
`(targets, scores)`, prediction metrics `(targets, predictions)`; seqio routes a
metric by these argument names. `sklearn` is not installed here, so the few
classification statistics (F1, ROC AUC, average precision) are implemented with
numpy, following sklearn's definitions (including sample weights and ties).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np

# ((example_idx, choice_idx), is_correct, weight, target_length)
RankTarget = Tuple[Tuple[int, int], bool, float, int]


# ----------------------------------------------------------------------------
# Rank classification.
# ----------------------------------------------------------------------------


def rank_classification_postprocessor(output: Any,
                                      example: Optional[Mapping[str, Any]] = None,
                                      is_target: bool = False) -> Any:
  """seqio postprocessor for rank-classification (`_score_eval`) tasks.

  For targets, turns the example's rank-classification features into the tuple
  `rank_classification` expects; model scores pass through unchanged.

  Args:
    output: the decoded target string (when `is_target`) or the model score.
    example: the (numpy) example, with `idx` `[2]` = (example index, choice
      index), `is_correct` (bool), optional `weight` (float, default 1.0) and
      `targets` (token ids of this answer choice).
    is_target: whether `output` is a target.

  Returns:
    `(tuple(idx), is_correct, weight, len(targets))` for targets, else `output`.
  """
  if is_target:
    if example is None:
      raise ValueError(
          'rank_classification_postprocessor needs `example` for targets; seqio '
          'passes it as a keyword argument (postprocess_fn(target, example=ex, '
          'is_target=True)).')
    missing = [k for k in ('idx', 'is_correct', 'targets') if k not in example]
    if missing:
      raise ValueError(
          f'rank_classification_postprocessor: example lacks features {missing}; '
          'use it only on `_score_eval` tasks whose examples carry `idx` [2], '
          '`is_correct` and `targets` (one row per answer choice).')
    return (tuple(int(i) for i in example['idx']), bool(example['is_correct']),
            float(example.get('weight', 1.0)), len(example['targets']))
  return output


def rank_classification(targets: Sequence[RankTarget],
                        scores: Sequence[float],
                        num_classes: Optional[int] = None,
                        normalize_by_target_length: bool = False
                       ) -> Dict[str, float]:
  """Accuracy (and F1 / AUC for two classes) of arg-max-likelihood choices.

  Same input format, output keys and numbers as T5's
  `t5.evaluation.metrics.rank_classification`. Rows may come in any order; they
  are grouped by example index and ordered by choice index, and the choice with
  the highest score is the prediction (the lower choice index wins a tie).

  Args:
    targets: one item per answer choice, `((example_idx, choice_idx), is_correct,
      weight, target_length)` (what `rank_classification_postprocessor` returns).
      `weight` is an example weight; the weight of the example's first choice is
      used (T5 takes that of the predicted choice when `num_classes` is None;
      both are the same for per-example weights).
    scores: `[len(targets)]` the log-likelihood of each row, in the same order.
    num_classes: the fixed number of choices per example, or None when it varies
      (then only accuracy is reported). With 2 classes, also `f1` (choice 1 is
      the positive class), `auc-roc` and `auc-pr` (from the softmax over the two
      scores); with more than 2, `mean_{n}class_f1` (macro F1). If an example has
      several correct choices, a prediction matching any counts as correct and
      only accuracy is reported.
    normalize_by_target_length: divide each score by its target length first.

  Returns:
    `{'accuracy': percent, ...}` as described above.

  Raises:
    ValueError: on malformed targets, mismatched lengths, or examples whose
      number of choices differs from `num_classes`.
  """
  targets = list(targets)
  scores = [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
  if len(targets) != len(scores):
    raise ValueError(
        f'rank_classification: got {len(targets)} targets but {len(scores)} '
        'scores; the score function must return one score per answer-choice row.')
  if not targets:
    raise ValueError('rank_classification: no examples to evaluate.')
  for t in targets:
    if len(t) != 4:
      raise ValueError(
          '`targets` items should be ((example_idx, choice_idx), is_correct, '
          f'weight, target_length) with 4 elements, got {t!r}; postprocess with '
          'rank_classification_postprocessor.')
    if not hasattr(t[0], '__len__') or len(t[0]) != 2:
      raise ValueError(
          "The first element of `targets` ('idx') should be 2-dimensional "
          f'(example index, choice index). Got {t[0]!r}.')

  if normalize_by_target_length:
    scores = [s / t[3] for t, s in zip(targets, scores)]

  # Group rows by example, choices ordered by choice index.
  groups = collections.defaultdict(list)
  for (idx, is_correct, weight, _), score in zip(targets, scores):
    groups[int(idx[0])].append((int(idx[1]), bool(is_correct), float(weight),
                                score))
  example_ids = sorted(groups)
  for ex in example_ids:
    groups[ex].sort(key=lambda row: row[0])

  labels, weights, logits = [], [], []
  for ex in example_ids:
    rows = groups[ex]
    if num_classes and len(rows) != num_classes:
      raise ValueError(
          f'rank_classification: example {ex} has {len(rows)} answer choices but '
          f'num_classes={num_classes}; pass num_classes=None for tasks whose '
          'number of choices varies.')
    labels.append(np.array([r[1] for r in rows], dtype=bool))
    weights.append(rows[0][2])
    logits.append(np.array([r[3] for r in rows], dtype=np.float64))
  weights = np.asarray(weights, dtype=np.float64)
  # np.argmax returns the first maximum: the lower choice index wins ties.
  predictions = np.array([int(np.argmax(l)) for l in logits])
  hits = np.array([lab[p] for lab, p in zip(labels, predictions)], dtype=np.float64)
  accuracy = 100.0 * _weighted_mean(hits, weights)

  if not num_classes:
    return {'accuracy': accuracy}

  labels = np.stack(labels)
  logits = np.stack(logits)
  if np.any(labels.sum(-1) > 1):
    logging.info('rank_classification: multiple correct choices detected; a '
                 'prediction matching any of them counts as correct.')
    return {'accuracy': accuracy}

  label_ids = labels.argmax(-1)
  metrics = {'accuracy': accuracy}
  if num_classes > 2:
    metrics[f'mean_{num_classes}class_f1'] = 100.0 * _macro_f1(
        label_ids, predictions, num_classes, weights)
  else:
    metrics['f1'] = 100.0 * _binary_f1(label_ids, predictions, weights)
    probs = _softmax(logits)[:, 1]
    metrics['auc-roc'] = 100.0 * _roc_auc(label_ids, probs, weights)
    metrics['auc-pr'] = 100.0 * _average_precision(label_ids, probs, weights)
  return metrics


# ----------------------------------------------------------------------------
# SuperGLUE classification metrics (targets / predictions are labels).
# ----------------------------------------------------------------------------


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """Percent of predictions equal to their target (T5's `accuracy`)."""
  _check_lengths(targets, predictions, 'accuracy')
  hits = [t == p for t, p in zip(targets, predictions)]
  return {'accuracy': 100.0 * float(np.mean(hits)) if hits else float('nan')}


def f1_binary(targets: Sequence[int], predictions: Sequence[Any]
             ) -> Dict[str, float]:
  """F1 of the positive class 1, in percent (T5's `f1_score_with_invalid`).

  A prediction that is neither 0 nor 1 (e.g. an unparseable generation mapped to
  -1 by a postprocessor) counts as wrong: it is replaced by the opposite of its
  target, as T5 does.
  """
  _check_lengths(targets, predictions, 'f1_binary')
  t = np.asarray(targets, dtype=np.int64)
  p = np.asarray([x if x in (0, 1) else -1 for x in predictions], dtype=np.int64)
  invalid = p == -1
  p[invalid] = 1 - t[invalid]
  return {'f1': 100.0 * _binary_f1(t, p, np.ones(len(t)))}


def mean_multiclass_f1(num_classes: int,
                       sample_weight: Optional[Sequence[float]] = None
                      ) -> Callable[..., Dict[str, float]]:
  """Returns a metric: macro-averaged F1 over `num_classes` labels (CB).

  T5's `mean_multiclass_f1`: per-class F1 (a class never predicted nor present
  scores 0, as sklearn's default `zero_division`), averaged; key
  `mean_{num_classes}class_f1`, percent.
  """

  def metric_fn(targets: Sequence[int], predictions: Sequence[int]
               ) -> Dict[str, float]:
    _check_lengths(targets, predictions, 'mean_multiclass_f1')
    w = (np.ones(len(targets)) if sample_weight is None else
         np.asarray(sample_weight, dtype=np.float64))
    return {f'mean_{num_classes}class_f1': 100.0 * _macro_f1(
        np.asarray(targets), np.asarray(predictions), num_classes, w)}

  metric_fn.__name__ = f'mean_{num_classes}class_f1'
  return metric_fn


# ----------------------------------------------------------------------------
# Span metrics (ReCoRD, MultiRC-like answers).
# ----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
  """SQuAD answer normalisation: lower case, no punctuation/articles/extra spaces."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  target_tokens = normalize_answer(target).split()
  prediction_tokens = normalize_answer(prediction).split()
  common = collections.Counter(target_tokens) & collections.Counter(
      prediction_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(prediction_tokens)
  recall = num_same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def exact_match_and_f1(targets: Sequence[Any], predictions: Sequence[str]
                      ) -> Dict[str, float]:
  """SQuAD exact match and token F1 (T5's `squad`), max over gold answers.

  Args:
    targets: per example, a gold answer string or a list of acceptable answers
      (ReCoRD has several entity mentions).
    predictions: per example, the predicted answer string.

  Returns:
    `{'em': percent, 'f1': percent}`, means over examples.
  """
  _check_lengths(targets, predictions, 'exact_match_and_f1')
  ems, f1s = [], []
  for target, prediction in zip(targets, predictions):
    answers = [target] if isinstance(target, (str, bytes)) else list(target)
    answers = [a.decode() if isinstance(a, bytes) else a for a in answers]
    if not answers:
      raise ValueError('exact_match_and_f1: an example has no gold answer.')
    ems.append(max(float(normalize_answer(a) == normalize_answer(prediction))
                   for a in answers))
    f1s.append(max(_token_f1(a, prediction) for a in answers))
  return {'em': 100.0 * float(np.mean(ems)), 'f1': 100.0 * float(np.mean(f1s))}


def all_match(targets: Sequence[Any], predictions: Sequence[Any]
             ) -> Dict[str, float]:
  """100 if every prediction equals its target, else 0 (T5's `all_match`)."""
  _check_lengths(targets, predictions, 'all_match')
  return {'exact_match': 100.0 * float(
      all(t == p for t, p in zip(targets, predictions)))}


def mean_group_metric(metric_fn: Callable[..., Mapping[str, float]],
                      group_key: str = 'group', value_key: str = 'value'
                     ) -> Callable[..., Dict[str, float]]:
  """Returns a metric averaging `metric_fn` over groups (T5's `mean_group_metric`).

  Targets and predictions are dicts `{group_key: group id, value_key: value}`
  (as a MultiRC postprocessor emits, one per answer, grouped by question);
  `metric_fn` runs on each group's values and its outputs are averaged over
  groups. With `all_match` this is MultiRC's exact match.
  """

  def metric(targets: Sequence[Mapping[str, Any]],
             predictions: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    _check_lengths(targets, predictions, 'mean_group_metric')
    grouped = collections.defaultdict(lambda: ([], []))
    for t, p in zip(targets, predictions):
      group = t[group_key]
      group = tuple(np.asarray(group).reshape(-1).tolist()) if np.ndim(group) else group
      grouped[group][0].append(t[value_key])
      grouped[group][1].append(p[value_key])
    per_group = collections.defaultdict(list)
    for group_targets, group_predictions in grouped.values():
      for key, value in metric_fn(group_targets, group_predictions).items():
        per_group[key].append(value)
    return {key: float(np.mean(values)) for key, values in per_group.items()}

  metric.__name__ = f'mean_group_{getattr(metric_fn, "__name__", "metric")}'
  return metric


def multirc_f1_over_all_answers(targets: Sequence[Mapping[str, Any]],
                                predictions: Sequence[Mapping[str, Any]]
                               ) -> Dict[str, float]:
  """MultiRC F1a: binary F1 over all answer options (`{'value': 0/1}` dicts)."""
  return f1_binary([t['value'] for t in targets],
                   [p['value'] for p in predictions])


# ----------------------------------------------------------------------------
# ROUGE.
# ----------------------------------------------------------------------------


def _prepare_summary(summary: str) -> str:
  # rougeLsum splits summaries into sentences at newlines (as T5 does).
  return summary.replace(' . ', ' .\n')


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ('rouge1', 'rouge2', 'rougeLsum'),
          use_stemmer: bool = False) -> Dict[str, float]:
  """ROUGE F-measures in percent via `rouge_score`, mean over examples.

  T5 aggregates with `rouge_score`'s BootstrapAggregator and reports the `mid`
  estimate, which is random; we report the plain mean over examples, which the
  bootstrap mid estimates, so results are deterministic.
  """
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  _check_lengths(targets, predictions, 'rouge')
  scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=use_stemmer)
  totals = {k: [] for k in score_keys}
  for target, prediction in zip(targets, predictions):
    if 'rougeLsum' in score_keys:
      target, prediction = _prepare_summary(target), _prepare_summary(prediction)
    result = scorer.score(target=target, prediction=prediction)
    for k in score_keys:
      totals[k].append(result[k].fmeasure)
  return {k: 100.0 * float(np.mean(v)) if v else float('nan')
          for k, v in totals.items()}


# ----------------------------------------------------------------------------
# Helpers (sklearn definitions, numpy implementation).
# ----------------------------------------------------------------------------


def _check_lengths(targets, predictions, name):
  if len(targets) != len(predictions):
    raise ValueError(f'{name}: got {len(targets)} targets but '
                     f'{len(predictions)} predictions.')


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
  total = weights.sum()
  if total <= 0:
    raise ValueError('rank_classification: the example weights sum to '
                     f'{total}; weights must be non-negative and not all zero.')
  return float((values * weights).sum() / total)


def _softmax(x: np.ndarray) -> np.ndarray:
  y = np.exp(x - x.max(-1, keepdims=True))
  return y / y.sum(-1, keepdims=True)


def _f1_from_counts(tp: float, fp: float, fn: float) -> float:
  denominator = 2 * tp + fp + fn
  return 0.0 if denominator == 0 else 2 * tp / denominator


def _binary_f1(labels: np.ndarray, predictions: np.ndarray,
               weights: np.ndarray) -> float:
  """sklearn `f1_score(labels, predictions, sample_weight=weights)`, pos_label 1."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  tp = weights[(labels == 1) & (predictions == 1)].sum()
  fp = weights[(labels != 1) & (predictions == 1)].sum()
  fn = weights[(labels == 1) & (predictions != 1)].sum()
  return _f1_from_counts(tp, fp, fn)


def _macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
              weights: np.ndarray) -> float:
  """Unweighted mean over classes 0..n-1 of the per-class (weighted-count) F1."""
  f1s = []
  for c in range(num_classes):
    tp = weights[(labels == c) & (predictions == c)].sum()
    fp = weights[(labels != c) & (predictions == c)].sum()
    fn = weights[(labels == c) & (predictions != c)].sum()
    f1s.append(_f1_from_counts(tp, fp, fn))
  return float(np.mean(f1s))


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray,
                       weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Weighted true/false positive counts at each distinct threshold, high to low."""
  order = np.argsort(-scores, kind='mergesort')
  scores, labels, weights = scores[order], labels[order], weights[order]
  last_of_threshold = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
  tps = np.cumsum(weights * (labels == 1))[last_of_threshold]
  fps = np.cumsum(weights * (labels != 1))[last_of_threshold]
  return tps, fps


def _roc_auc(labels: np.ndarray, scores: np.ndarray,
             weights: np.ndarray) -> float:
  """Area under the ROC curve (trapezoids, ties as one threshold), as sklearn."""
  tps, fps = _cumulative_counts(labels, scores, weights)
  if tps[-1] <= 0 or fps[-1] <= 0:
    logging.warning('ROC AUC is undefined when only one class is present; '
                    'returning nan.')
    return float('nan')
  tpr = np.r_[0.0, tps / tps[-1]]
  fpr = np.r_[0.0, fps / fps[-1]]
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _average_precision(labels: np.ndarray, scores: np.ndarray,
                       weights: np.ndarray) -> float:
  """sklearn `average_precision_score`: sum_n (R_n - R_{n-1}) P_n."""
  tps, fps = _cumulative_counts(labels, scores, weights)
  if tps[-1] <= 0:
    logging.warning('Average precision is undefined without positive examples; '
                    'returning nan.')
    return float('nan')
  precision = tps / (tps + fps)
  recall = tps / tps[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
