"""spt_tasks.cache: our Beam-free writer of seqio's cached-task format, read back by seqio."""
import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spt_tasks import cache
from spt_tasks import sample


def _register_toy_task(name):
  vocab = seqio.test_utils.sentencepiece_vocab()

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    n = {'train': 7, 'validation': 3}[split]
    return tf.data.Dataset.from_tensor_slices({
        'inputs': [f'{split} input number {i}' for i in range(n)],
        'targets': [f'target {i % 2}' for i in range(n)],
        'choices': [[f'a{i}', f'b{i}'] for i in range(n)],
        'idx': [[i, i + 1] for i in range(n)],
        'weight': [float(i) / 2 for i in range(n)]})

  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=('train', 'validation')),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos],
      output_features={'inputs': seqio.Feature(vocab, add_eos=False),
                       'targets': seqio.Feature(vocab, add_eos=True)})


def _examples(task, split, use_cached):
  ds = task.get_dataset({'inputs': 32, 'targets': 8}, split=split, use_cached=use_cached,
                        shuffle=False)
  return list(ds.as_numpy_iterator())


def _assert_same(a, b):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      assert np.asarray(x[k]).dtype == np.asarray(y[k]).dtype, k
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_cached_task_reads_back_identical_to_on_the_fly(tmp_path):
  task = _register_toy_task('spt_test_cache_toy')
  root = str(tmp_path / 'cache')
  written = cache.write_cache([task.name], root)
  assert written == [task.name] and cache.is_cached(root, task.name)
  assert cache.write_cache([task.name], root) == []          # idempotent
  task_dir = cache.task_cache_dir(root, task.name)
  stats = json.load(open(os.path.join(task_dir, 'stats.train.json')))
  assert stats['examples'] == 7
  info = json.load(open(os.path.join(task_dir, 'info.validation.json')))
  assert info['features']['idx'] == {'shape': [None], 'dtype': 'int32'}
  assert not [p for p in os.listdir(root) if '.tmp-' in p]    # no temporary left behind
  seqio.add_global_cache_dirs([root])
  for split in ('train', 'validation'):
    _assert_same(_examples(task, split, use_cached=True), _examples(task, split, False))


def test_task_without_placeholder_is_a_clear_error(tmp_path):
  vocab = seqio.test_utils.sentencepiece_vocab()
  seqio.TaskRegistry.remove('spt_test_cache_noplaceholder')
  task = seqio.TaskRegistry.add(
      'spt_test_cache_noplaceholder',
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {'inputs': ['x'], 'targets': ['y']}), splits=('train',)),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})
  with pytest.raises(ValueError, match='CacheDatasetPlaceholder'):
    cache.write_task_cache(task, str(tmp_path))


@pytest.mark.parametrize('task_name', [sample.TRAIN_TASKS[0], sample.HELDOUT_SCORE_EVAL_TASKS[0]])
def test_sample_cache_equals_rendering_on_the_fly(task_name, sample_cache):
  """The shipped-at-setup cache holds exactly what the templates render (first 200 rows)."""
  task = seqio.get_mixture_or_task(task_name)
  assert task.cache_dir and str(sample_cache) in task.cache_dir
  cached = _examples(task, 'validation', use_cached=True)[:200]
  fresh = _examples(task, 'validation', use_cached=False)[:200]
  _assert_same(cached, fresh)


def test_premixed_task_is_the_mixture_stream(sample_cache):
  """What runs/local.gin trains on: the first examples of seqio's own mixing of the sample
  mixture (seed PREMIX_SEED), cached as one task."""
  task = seqio.get_mixture_or_task(sample.PREMIXED_TRAIN_TASK)
  assert task.cache_dir and str(sample_cache) in task.cache_dir
  stats = json.load(open(os.path.join(task.cache_dir, 'stats.train.json')))
  assert stats['examples'] == sample.PREMIXED_EXAMPLES
  premixed = list(task.get_dataset(None, split='train', use_cached=True, shuffle=False)
                  .take(300).as_numpy_iterator())
  mixture = seqio.get_mixture_or_task(sample.TRAIN_MIXTURE)
  mixed = list(mixture.get_dataset(None, split='train', use_cached=True, shuffle=True,
                                   seed=sample.PREMIX_SEED, log_mixing_proportions=False)
               .take(300).as_numpy_iterator())
  _assert_same(premixed, mixed)
  # Many tasks' rows (a prefix of 6 pieces is a template's opening words), not one task's.
  assert len({tuple(ex['inputs'][:6]) for ex in premixed}) > 40


def test_use_cached_without_a_cache_names_the_fix(tmp_path):
  """runner.check_cached: the error names the task and the command that builds the cache;
  after building it and passing its folder (--seqio_additional_cache_dirs) the check passes."""
  from spt_jax import runner  # pylint: disable=g-import-not-at-top
  task = _register_toy_task('spt_test_cache_missing')
  with pytest.raises(ValueError, match=r'spt_test_cache_missing.*python -m spt_tasks.cache.*'
                     r'--seqio_additional_cache_dirs'):
    runner.check_cached(task.name)
  root = str(tmp_path / 'built')
  cache.write_cache([task.name], root)
  runner.add_seqio_cache_dirs([root])
  runner.check_cached(task.name)
