"""Every paper experiment under gin/experiments runs end to end on CPU with runs/local.gin.

One parametrised test: for each experiment gin file, parse it alone (pod-scale values), then
with `runs/local.gin` overlaid (tiny model, no pretrained checkpoint), train 2 steps on an
embedded-sample task with the real gin-configured trainer (the experiment's periodic
evaluation hook included), then evaluate the final checkpoint with the real gin-configured
`evaluate.evaluate` on an embedded-sample held-out task, from the experiment's own gin files.

`runs/local.gin` alone does not yet shrink everything an experiment sets; LOCAL_EXTRA below
adds what is missing (microbatches sized for a pod, the periodic evaluation's mixture, batch,
lengths and metric) plus one task each way and smaller shapes for speed. 16 cases took 15 min
on 2 heavily shared cores (load ~20); a persistent XLA cache makes repeated programs cheap.

Eval-only files (no training mixture, e.g. eval_heldout.gin) train with the experiment named
in EVAL_ONLY_TRAINED_WITH and are overlaid on it for the evaluation. The SuperGLUE files start
from a GLUE run (INITIAL_CHECKPOINT_FORMAT 'orbax'): their cases start from a 2-step local
glue_spt_base run and check that its parameters, not a fresh initialisation, were the start.
"""
import json
import pathlib

import gin
import jax
import numpy as np
import pytest

from spt_jax import checkpoints
from spt_jax import cli
from spt_jax import gin_configurables

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / 'gin'
EXPERIMENTS = sorted(p.name for p in (GIN_DIR / 'experiments').glob('*.gin'))
# Eval-only experiment -> the training experiment whose checkpoint it evaluates in the test.
EVAL_ONLY_TRAINED_WITH = {'eval_heldout.gin': 't0_spt_large.gin'}
# One sample task each way keeps a case fast (building the whole sample mixture's ~90 task
# pipelines costs about a minute per case on 2 cores); both are real embedded-sample tasks.
SAMPLE_TRAIN_TASK = 'sample_rotten_tomatoes_Reviewer_Opinion_bad_good_choices'
SAMPLE_EVAL_MIXTURE = 'sample_super_glue_rte_GPT_3_style_score_eval'
LENGTHS = "{'inputs': 64, 'targets': 8}"

# What runs/local.gin leaves at pod scale (see the module docstring), plus speed.
LOCAL_EXTRA = [
    f"MIXTURE_OR_TASK_NAME = '{SAMPLE_TRAIN_TASK}'",
    'TRAIN_STEPS = 2',
    'BATCH_SIZE = 8',                       # 8 fake CPU devices (conftest): one row each
    f'TASK_FEATURE_LENGTHS = {LENGTHS}',
    'configs.OptimizerConfig.num_microbatches = 1',
    f"EVAL_MIXTURE = '{SAMPLE_EVAL_MIXTURE}'",
    'EVAL_BATCH_SIZE = 8',
    'EVAL_NUM_EXAMPLES = 4',                # answer-choice rows per task
    f'EVAL_TASK_FEATURE_LENGTHS = {LENGTHS}',
    "EVAL_METRIC = 'accuracy'",             # what the sample task reports (SuperGLUE: f1 too)
]


def _parse(files, bindings):
  with gin.unlock_config():  # finalized (locked) like the entry points, after parsing
    gin.clear_config()
    cli.parse_gin([f'experiments/{f}' if '/' not in f else f for f in files], bindings,
                  [str(GIN_DIR)])


def _is_eval_only(name):
  return 'MIXTURE_OR_TASK_NAME' not in (GIN_DIR / 'experiments' / name).read_text()


def _train(files, model_dir, extra=()):
  _parse(list(files) + ['runs/local.gin'],
         [f"MODEL_DIR = '{model_dir}'"] + LOCAL_EXTRA + list(extra))
  return gin_configurables.train()


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache shared by the cases: after runs/local.gin many experiments
  compile the same tiny programs (the 8 SuperGLUE files, large vs xl), so later cases load
  them instead of compiling. Restored afterwards so other test modules are unaffected."""
  from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  cc.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  cc.reset_cache()


@pytest.fixture(scope='module')
def glue_run(tmp_path_factory):
  """A 2-step local glue_spt_base run: the start of every SuperGLUE experiment."""
  model_dir = str(tmp_path_factory.mktemp('glue_spt_base'))
  _train(['glue_spt_base.gin'], model_dir)
  return model_dir


def _macro(name):
  return gin.query_parameter(f'{name}/macro.value')


def _bound(name):
  try:
    return gin.query_parameter(name) is not None
  except ValueError:
    return False


def _flat(params):
  return {k: np.asarray(v) for k, v in checkpoints.flatten(params).items()}


def test_experiment_list_is_complete():
  """The paper's runs are all here (the parametrised test below covers whatever is)."""
  expected = {f't0_{m}_{s}.gin' for m in ('spt', 'finetune', 'prompt_tuning')
              for s in ('large', 'xl')}
  expected |= {'glue_spt_base.gin', 'eval_heldout.gin'}
  expected |= {f'superglue_{t}_from_glue_spt_base.gin' for t in (
      'boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc')}
  assert expected <= set(EXPERIMENTS), sorted(expected - set(EXPERIMENTS))
  for name in EXPERIMENTS:
    if _is_eval_only(name):
      assert name in EVAL_ONLY_TRAINED_WITH, f'{name}: say which experiment it evaluates'


@pytest.mark.slow
@pytest.mark.parametrize('name', EXPERIMENTS)
def test_experiment_trains_and_evaluates_locally(name, tmp_path, request):
  model_dir = str(tmp_path / 'run')
  eval_only = _is_eval_only(name)
  train_files = [EVAL_ONLY_TRAINED_WITH[name]] if eval_only else [name]

  # The file parses on its own (pod-scale values, real mixtures) before any overlay; the
  # SuperGLUE files require the GLUE run (INITIAL_CHECKPOINT_PATH), eval-only a checkpoint.
  required = [f"MODEL_DIR = '{model_dir}'"]
  if name.startswith('superglue_'):
    required.append("INITIAL_CHECKPOINT_PATH = 'gs://bucket/glue_spt_base'")
  if eval_only:
    required.append(f"CHECKPOINT_PATH = '{model_dir}'")
  _parse(train_files + ([name] if eval_only else []), required)
  assert _macro('EVAL_MIXTURE')
  if not eval_only:
    assert _macro('MIXTURE_OR_TASK_NAME') in (
        'spt_t0_train', 'spt_glue_train') or name.startswith('superglue_')

  extra = []
  start = None
  if name.startswith('superglue_'):
    assert _macro('INITIAL_CHECKPOINT_FORMAT') == 'orbax'
    glue_dir = request.getfixturevalue('glue_run')
    start = _flat(checkpoints.load_orbax_params(glue_dir))
    # runs/local.gin re-includes runs/train.gin, which resets the path and the format; a
    # different seed makes a fresh initialisation differ from the GLUE run everywhere.
    extra = [f"INITIAL_CHECKPOINT_PATH = '{glue_dir}'", "INITIAL_CHECKPOINT_FORMAT = 'orbax'",
             'train/configs.DatasetConfig.seed = 1']
  result = _train(train_files, model_dir, extra)
  assert result['step'] == 2 and not result['preempted']
  losses = [m['loss'] for _, m in result['history'] if 'loss' in m]
  assert losses and np.all(np.isfinite(losses)), losses
  trained = _flat(jax.device_get(result['state'].params))

  if start is not None:
    # prompts_only from the GLUE run: the backbone is the GLUE run's, bit for bit, and
    # memory slots no example retrieved in these 2 steps still hold the GLUE run's values.
    backbone = [k for k in trained if 'soft_prompt' not in k and 'memory_bank' not in k]
    for k in backbone:
      np.testing.assert_array_equal(trained[k], start[k], err_msg=k)
    values = 'encoder/memory_bank/values'
    same_rows = np.all(trained[values] == start[values], axis=(1, 2))
    assert same_rows.mean() > 0.5, same_rows.mean()
    assert not np.array_equal(trained['encoder/soft_prompt/prompt'],
                              start['encoder/soft_prompt/prompt'])

  # Periodic evaluation (the experiment's eval hook) ran at the final step.
  if _bound('train.eval_hook_factory'):
    assert (pathlib.Path(model_dir) / 'eval' / 'step_2' / 'results.md').is_file()

  # Evaluation of the final checkpoint from the experiment's own gin files.
  eval_files = train_files + ['runs/local.gin'] + ([f'experiments/{name}'] if eval_only else [])
  out_dir = tmp_path / 'eval'
  _parse(eval_files, [f"MODEL_DIR = '{model_dir}'"] + LOCAL_EXTRA + [
      f"CHECKPOINT_PATH = '{model_dir}'", f"EVAL_OUTPUT_DIR = '{out_dir}'"])
  if eval_only:
    assert gin.query_parameter('evaluate/configs.DatasetConfig.mixture_or_task_name') is not None
  evaluated = gin_configurables.evaluate()
  assert evaluated['step'] == 2
  assert np.isfinite(evaluated['metrics']['overall/median'])
  results = json.loads((out_dir / 'results.json').read_text())
  assert results['mixture_or_task_name'] == SAMPLE_EVAL_MIXTURE
  assert (out_dir / 'results.md').is_file()
  with gin.unlock_config():
    gin.clear_config()
