"""T0's mixing rule (spt_tasks.mixing): size-proportional, 500k cap split over templates."""
import pytest

from spt_tasks import mixing


def test_uncapped_dataset_gives_each_template_its_full_size():
  assert mixing.t0_template_rate(3668, 7) == 3668
  assert mixing.t0_template_rate(500_000, 10) == 500_000  # the cap is "over 500k"


def test_capped_dataset_splits_500k_over_its_templates():
  assert mixing.t0_template_rate(3_803_957, 9) == 500_000 // 9
  assert mixing.t0_template_rate(500_001, 10) == 50_000
  assert mixing.t0_template_rate(10**9, 1, cap=1000) == 1000


def test_split_uncapped_reading():
  assert mixing.t0_template_rate(3668, 7, split_uncapped=True) == 3668 // 7
  assert mixing.t0_template_rate(3_803_957, 9, split_uncapped=True) == 500_000 // 9


def test_rates_for_a_mixture():
  rates = mixing.t0_rates({'a': 100, 'big': 1_000_000},
                          {'a': ['a_t1', 'a_t2'], 'big': ['b_t1', 'b_t2', 'b_t3', 'b_t4']})
  assert rates == {'a_t1': 100, 'a_t2': 100, 'b_t1': 125_000, 'b_t2': 125_000,
                   'b_t3': 125_000, 'b_t4': 125_000}
  assert sum(r for t, r in rates.items() if t.startswith('b_')) == 500_000


def test_bad_inputs():
  with pytest.raises(ValueError, match='num_templates must be > 0'):
    mixing.t0_template_rate(10, 0)
  with pytest.raises(ValueError, match='train_size must be >= 0'):
    mixing.t0_template_rate(-1, 3)
  with pytest.raises(ValueError, match="No training size for dataset 'x'.*train_size column"):
    mixing.t0_rates({}, {'x': ['x_t']})
  with pytest.raises(ValueError, match='listed under two datasets'):
    mixing.t0_rates({'a': 1, 'b': 2}, {'a': ['t'], 'b': ['t']})


def test_rate_fn_looks_tasks_up_by_name():
  class Task:
    def __init__(self, name):
      self.name = name
  fn = mixing.rate_fn({'t': 7})
  assert fn(Task('t')) == 7.0
  with pytest.raises(KeyError, match="No mixing rate for task 'u'"):
    fn(Task('u'))
  assert mixing.rate_fn({}, default=1)(Task('u')) == 1.0
