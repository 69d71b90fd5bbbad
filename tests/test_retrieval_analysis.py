"""Retrieval statistics on hand-made logs with hand-computed values."""

import json
import math

import numpy as np
import pytest

from spt_jax import retrieval_analysis as ra

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_slot_usage_and_errors():
  np.testing.assert_array_equal(ra.slot_usage([[0, 1], [1, 3]], 5), [1, 2, 0, 1, 0])
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    ra.slot_usage([[0, 4]], 4)
  with pytest.raises(ValueError, match='memory_size'):
    ra.slot_usage([[0]], 0)


@pytest.mark.parametrize('indices,memory_size,entropy,unused', [
    ([[0, 1], [2, 3]], 4, 1.0, 0.0),          # uniform
    ([[0, 0], [0, 0]], 4, 0.0, 0.75),         # collapse onto one slot
    ([[0, 1], [0, 1]], 4, 0.5, 0.5),          # log 2 / log 4
    ([[0, 0, 0], [1, 2, 3]], 4, None, 0.0),   # p = (1/2, 1/6, 1/6, 1/6)
])
def test_health(indices, memory_size, entropy, unused):
  if entropy is None:
    p = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    entropy = -(p * np.log(p)).sum() / math.log(4)
  h = ra.health(indices, memory_size)
  assert h['entropy_ratio'] == pytest.approx(entropy)
  assert h['unused_fraction'] == pytest.approx(unused)
  assert h['num_retrievals'] == np.size(indices)


def test_entropy_of_empty_log_is_nan():
  assert math.isnan(ra.normalized_entropy(np.zeros(4)))


def test_overlap_known_values():
  p = [2, 2, 0, 0]           # (.5, .5, 0, 0)
  q = [0, 1, 3, 0]           # (0, .25, .75, 0)
  assert ra.overlap(p, q) == pytest.approx(0.25)
  assert ra.overlap(p, q, 'cosine') == pytest.approx(
      0.125 / (math.sqrt(0.5) * math.sqrt(0.625)))
  assert ra.overlap(p, p) == pytest.approx(1.0)
  assert ra.overlap([1, 0], [0, 1]) == 0.0
  with pytest.raises(ValueError, match='unknown overlap method'):
    ra.overlap(p, q, 'kl')


def test_overlap_matrix_from_labelled_log():
  indices = np.array([[0, 1], [0, 1], [2, 3], [3, 3]])
  clusters = ra.usage_by_label(indices, ['qa', 'qa', 'sent', 'sent'], 4)
  np.testing.assert_array_equal(clusters['qa'], [2, 2, 0, 0])
  np.testing.assert_array_equal(clusters['sent'], [0, 0, 1, 3])
  heldout = {'nli': [1, 1, 0, 0], 'coref': [0, 0, 0, 4]}
  rows, cols, m = ra.overlap_matrix(heldout, clusters)
  assert rows == ['nli', 'coref'] and cols == ['qa', 'sent']
  np.testing.assert_allclose(m, [[1.0, 0.0], [0.0, 0.75]])
  with pytest.raises(ValueError, match='one label per example'):
    ra.usage_by_label(indices, ['qa'], 4)


def test_most_used_slots():
  np.testing.assert_array_equal(ra.most_used_slots([5, 1, 3, 1], 0.5), [0])
  np.testing.assert_array_equal(ra.most_used_slots([5, 1, 3, 1], 0.6), [0, 2])
  # Ties: lower slot id first.
  np.testing.assert_array_equal(ra.most_used_slots([2, 2, 2, 2], 0.5), [0, 1])
  np.testing.assert_array_equal(ra.most_used_slots([1, 2, 2, 5], 1.0), [0, 1, 2, 3])
  assert ra.most_used_slots([0, 0], 0.5).size == 0


def test_share_in_top_slots_and_resemblance():
  share = ra.share_in_top_slots([1, 1, 1, 1], [5, 1, 3, 1], mass=0.6)
  assert share == {'share': 0.5, 'num_slots': 2, 'chance': 0.5}
  report = ra.resemblance_report(
      heldout_usage={'nli': [3, 0, 1, 0], 'other': [1, 1, 1, 1]},
      cluster_usage={'qa': [6, 0, 0, 0], 'sent': [0, 0, 2, 2]},
      resembles={'nli': 'qa'})
  assert list(report) == ['nli']
  assert report['nli']['share'] == pytest.approx(0.75)     # slot 0 holds 3 of 4
  assert report['nli']['num_slots'] == 1
  assert report['nli']['shares']['sent'] == pytest.approx(0.25)   # top slots {2}
  assert report['nli']['other_clusters_max_share'] == pytest.approx(0.25)
  with pytest.raises(ValueError, match='no retrieval log'):
    ra.resemblance_report({'nli': [1, 0]}, {'qa': [1, 0]}, {'nli': 'missing'})


def test_summarize_is_json_and_heatmaps_write_png(tmp_path):
  summary = ra.summarize(
      train_indices=[[0, 1], [2, 3]], train_labels=['qa', 'sent'],
      eval_indices=[[0, 1], [0, 0]], eval_labels=['nli', 'coref'], memory_size=4,
      resembles={'nli': 'qa', 'coref': 'qa'})
  json.dumps(summary)
  assert summary['train']['entropy_ratio'] == pytest.approx(1.0)
  assert summary['overlap']['matrix'] == [[1.0, 0.0], [0.5, 0.0]]
  assert summary['resemblance']['coref']['share'] == pytest.approx(1.0)
  path = ra.plot_overlap_heatmap({'nli': [1, 1, 0, 0]},
                                 {'qa': [2, 2, 0, 0], 'sent': [0, 0, 1, 3]},
                                 tmp_path / 'sub' / 'overlap.png')
  assert path.read_bytes()[:8] == PNG_MAGIC
  with pytest.raises(ValueError, match='row labels'):
    ra.plot_heatmap(np.zeros((2, 2)), ['a'], None, tmp_path / 'x.png')
