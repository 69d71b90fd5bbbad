"""Tests for spt_jax.metrics: hand-computed cases and the real seqio Evaluator."""

import functools
import random

import numpy as np
import pytest

from spt_jax import metrics


def _rows(examples):
  """[(scores, correct_choice(s), weight)] -> (targets, scores) in T5 format."""
  targets, scores = [], []
  for ex, (ex_scores, correct, weight) in enumerate(examples):
    correct = {correct} if isinstance(correct, int) else set(correct)
    for choice, score in enumerate(ex_scores):
      targets.append(((ex, choice), choice in correct, weight, 3))
      scores.append(score)
  return targets, scores


def _shuffle(targets, scores, seed=0):
  pairs = list(zip(targets, scores))
  random.Random(seed).shuffle(pairs)
  return [p[0] for p in pairs], [p[1] for p in pairs]


class TestRankClassification:

  def test_unequal_choices_ties_weights_any_order(self):
    targets, scores = _rows([
        ([-1.0, -0.5, -2.0], 1, 1.0),         # predicts 1: right
        ([-1.0, -1.0], 1, 2.0),               # tie -> choice 0 wins: wrong
        ([-3.0, -2.0, -1.0, -4.0], 2, 1.0),   # predicts 2: right
    ])
    # Weighted: (1 + 0 + 1) / (1 + 2 + 1).
    assert metrics.rank_classification(targets, scores) == {'accuracy': 50.0}
    shuffled = _shuffle(targets, scores)
    assert metrics.rank_classification(*shuffled) == {'accuracy': 50.0}

  def test_unweighted_and_multiple_correct(self):
    targets, scores = _rows([
        ([-1.0, -0.5, -2.0], (0, 1), 1.0),   # predicts 1, which is one of two answers
        ([-0.1, -1.0], 1, 1.0),              # wrong
        ([-3.0, -2.0, -1.0], 2, 1.0),        # right
    ])
    out = metrics.rank_classification(targets, scores)
    assert out['accuracy'] == pytest.approx(200 / 3)
    fixed = metrics.rank_classification(*_rows([
        ([-1.0, -0.5], (0, 1), 1.0), ([-0.1, -1.0], 1, 1.0)]), num_classes=2)
    assert fixed == {'accuracy': 50.0}   # multiple answers: accuracy only

  def test_binary_accuracy_f1_auc(self):
    targets, scores = _rows([
        ([-1.0, -2.0], 0, 1.0),   # pred 0, right  p1 = sigmoid(-1)
        ([-2.0, -1.0], 1, 1.0),   # pred 1, right  p1 = sigmoid(1)
        ([-1.0, -1.0], 1, 1.0),   # tie -> 0, wrong p1 = 0.5
        ([-3.0, -1.0], 0, 1.0),   # pred 1, wrong  p1 = sigmoid(2)
    ])
    out = metrics.rank_classification(*_shuffle(targets, scores, 3),
                                      num_classes=2)
    assert out['accuracy'] == pytest.approx(50.0)
    assert out['f1'] == pytest.approx(50.0)        # tp 1, fp 1, fn 1
    assert out['auc-roc'] == pytest.approx(50.0)   # 2 of 4 pos/neg pairs ordered
    # Descending: neg, pos, pos, neg -> AP = .5 * 1/2 + .5 * 2/3.
    assert out['auc-pr'] == pytest.approx(100 * (0.25 + 1 / 3))

  def test_binary_weights(self):
    targets, scores = _rows([
        ([-1.0, -2.0], 0, 3.0),   # right, weight 3
        ([-1.0, -2.0], 1, 1.0),   # wrong (fn), weight 1
    ])
    out = metrics.rank_classification(targets, scores, num_classes=2)
    assert out['accuracy'] == pytest.approx(75.0)
    assert out['f1'] == pytest.approx(0.0)

  def test_multiclass_f1(self):
    # labels [0, 1, 2, 0], predictions [0, 1, 1, 2]:
    # F1 class 0 = 2/3, class 1 = 2/3, class 2 = 0 -> 4/9.
    targets, scores = _rows([
        ([0.0, -1.0, -1.0], 0, 1.0), ([-1.0, 0.0, -1.0], 1, 1.0),
        ([-1.0, 0.0, -1.0], 2, 1.0), ([-1.0, -1.0, 0.0], 0, 1.0)])
    out = metrics.rank_classification(targets, scores, num_classes=3)
    assert out['accuracy'] == pytest.approx(50.0)
    assert out['mean_3class_f1'] == pytest.approx(400 / 9)

  def test_normalize_by_target_length(self):
    targets = [((0, 0), True, 1.0, 1), ((0, 1), False, 1.0, 4)]
    scores = [-2.0, -4.0]   # raw: choice 0 wins; per token: -2 vs -1 -> choice 1
    assert metrics.rank_classification(targets, scores)['accuracy'] == 100.0
    assert metrics.rank_classification(
        targets, scores, normalize_by_target_length=True)['accuracy'] == 0.0

  def test_errors(self):
    targets, scores = _rows([([-1.0, -2.0, -3.0], 0, 1.0)])
    with pytest.raises(ValueError, match='num_classes=2'):
      metrics.rank_classification(targets, scores, num_classes=2)
    with pytest.raises(ValueError, match='3 targets but 2 scores'):
      metrics.rank_classification(targets, scores[:2])
    with pytest.raises(ValueError, match='4 elements'):
      metrics.rank_classification([((0, 0), True, 1.0)], [0.0])
    with pytest.raises(ValueError, match='2-dimensional'):
      metrics.rank_classification([(0, True, 1.0, 1)], [0.0])

  def test_postprocessor(self):
    example = {'idx': np.array([4, 1], np.int32), 'is_correct': np.bool_(True),
               'targets': np.array([5, 6, 1], np.int32)}
    assert metrics.rank_classification_postprocessor(
        'yes', example=example, is_target=True) == ((4, 1), True, 1.0, 3)
    example['weight'] = np.float32(0.5)
    assert metrics.rank_classification_postprocessor(
        'yes', example=example, is_target=True)[2] == 0.5
    assert metrics.rank_classification_postprocessor(-1.25, example=example) == -1.25
    with pytest.raises(ValueError, match='idx'):
      metrics.rank_classification_postprocessor('x', example={}, is_target=True)


class TestSuperGlueMetrics:

  def test_accuracy(self):
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 0, 2]) == {'accuracy': 75.0}

  def test_f1_binary_with_invalid(self):
    # Predictions [1, 0(invalid -> wrong), 1, 0] vs targets [1, 1, 0, 0]:
    # tp 1, fn 1, fp 1 -> F1 = 2 / 4.
    assert metrics.f1_binary([1, 1, 0, 0], [1, -1, 1, 0])['f1'] == pytest.approx(50.0)
    # Invalid prediction on a negative target is a false positive.
    assert metrics.f1_binary([1, 0], [1, 'junk'])['f1'] == pytest.approx(200 / 3)

  def test_mean_multiclass_f1(self):
    fn = metrics.mean_multiclass_f1(num_classes=3)
    assert fn([0, 1, 2, 0], [0, 1, 1, 2]) == {'mean_3class_f1': pytest.approx(400 / 9)}
    # A class absent from both targets and predictions scores 0 (sklearn default).
    assert fn([0, 0], [0, 0])['mean_3class_f1'] == pytest.approx(100 / 3)

  def test_exact_match_and_f1(self):
    out = metrics.exact_match_and_f1(
        [['The Eiffel Tower', 'Eiffel'], 'a red car'],
        ['eiffel tower!', 'blue car'])
    # Example 1: EM 1 (articles/punctuation dropped), F1 1.
    # Example 2: 'red car' vs 'blue car': P = R = 1/2 -> F1 1/2, EM 0.
    assert out['em'] == pytest.approx(50.0)
    assert out['f1'] == pytest.approx(75.0)

  def test_multirc_group_metrics(self):
    targets = [{'group': 0, 'value': 1}, {'group': 0, 'value': 0},
               {'group': 1, 'value': 1}, {'group': 2, 'value': 0}]
    predictions = [{'group': 0, 'value': 1}, {'group': 0, 'value': 1},
                   {'group': 1, 'value': 1}, {'group': 2, 'value': 0}]
    # Question 0 has a wrong answer, questions 1 and 2 are all right.
    em = metrics.mean_group_metric(metrics.all_match)(targets, predictions)
    assert em == {'exact_match': pytest.approx(200 / 3)}
    # tp 2, fp 1, fn 0 -> F1 4/5.
    assert metrics.multirc_f1_over_all_answers(targets, predictions) == {
        'f1': pytest.approx(80.0)}

  def test_rouge(self):
    out = metrics.rouge(['the cat sat on the mat'], ['the cat sat on the mat'])
    assert out == {'rouge1': 100.0, 'rouge2': 100.0, 'rougeLsum': 100.0}
    out = metrics.rouge(['a b c d'], ['a b x y'])
    assert out['rouge1'] == pytest.approx(50.0)
    assert out['rouge2'] == pytest.approx(100 / 3)   # 1 of 3 bigrams


class TestThroughSeqio:
  """The metric and postprocessor run inside the real seqio Evaluator."""

  @pytest.mark.parametrize('num_classes', [None, 2])
  def test_score_eval_task_reports_expected_accuracy(self, num_classes):
    seqio = pytest.importorskip('seqio')
    import tensorflow as tf   # pylint: disable=g-import-not-at-top
    from seqio import test_utils   # pylint: disable=g-import-not-at-top

    vocab = test_utils.sentencepiece_vocab()
    name = 'spt_test_metrics_score_eval'

    def unbatch(ds):
      return ds.unbatch()

    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensors({}),
            splits=['validation']),
        preprocessors=[unbatch, seqio.preprocessors.tokenize],
        output_features={
            'inputs': seqio.Feature(vocab, add_eos=True),
            'targets': seqio.Feature(vocab, add_eos=True)},
        postprocess_fn=metrics.rank_classification_postprocessor,
        # With num_classes: how a task registry fixes the number of classes
        # (seqio routes a partial by its remaining argument names).
        metric_fns=[functools.partial(metrics.rank_classification,
                                      num_classes=num_classes)])
    try:
      # Three examples of 2 choices; one row per choice as a `_score_eval` task has.
      raw = {
          'inputs': ['premise one', 'premise one', 'two', 'two', 'three', 'three'],
          'targets': ['yes', 'no', 'yes', 'no', 'yes', 'no'],
          'idx': [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]],
          'is_correct': [True, False, False, True, False, True],
          'weight': [1.0] * 6,
      }
      # Example 0 -> choice 0 (right), 1 -> choice 1 (right), 2 -> tie -> 0 (wrong).
      scores = [-1.0, -3.0, -5.0, -2.0, -4.0, -4.0]
      result = test_utils.test_postprocessing(
          name, {'validation': raw}, score_output=scores,
          sequence_length={'inputs': 16, 'targets': 8})
      assert result['accuracy'] == pytest.approx(200 / 3)
      if num_classes is None:
        assert set(result) == {'accuracy'}
        return
      # Binary: tp 1, fn 1, fp 0 -> F1 2/3; P(choice 1) ranks both positives
      # (sigmoid(3), 0.5) above the negative (sigmoid(-2)) -> AUC 1.
      assert result['f1'] == pytest.approx(200 / 3)
      assert result['auc-roc'] == pytest.approx(100.0)
    finally:
      seqio.TaskRegistry.remove(name)

