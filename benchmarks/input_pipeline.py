r"""Input-pipeline start-up and throughput: sample mixture, T0 on the fly, P3 files, seqio cache.

Four pipelines, each read through `runner.create_dataset` (what `spt_jax.train` reads: seqio
preprocessing, `EncDecFeatureConverter`, batch 16, lengths 128/32), each timed from the call to
the first batch (start-up) and then over a window of batches (rate):

  sample   `spt_sample_train` as runs/local.gin reads it: 71 cached sample tasks
           (USE_CACHED_TASKS=True, pipeline_autotune=False). Goal: >= 2x the examples/s the
           tiny model's train step consumes (gin/models/t5_1_1_tiny.gin + methods/spt.gin,
           batch 16, 128/32, measured here with benchmarks/train_throughput.py's `bench_step`).
  t0       a T0 subset (`spt_tasks.t0` tasks of a few training rows, T0 rates) rendered on the
           fly with the real promptsource templates and the real T5 vocabulary over fake raw
           data (`spt_tasks.mock_data`: HF rows injected, TFDS rows via tfds.testing.mock_data).
           Goal: >= 75 examples/s per core.
  p3       the same templates' examples written in P3's on-disk format (each P3 `data/<task>/`
           folder is a seqio 0.0.6 task cache) by the project's cache writer
           (`spt_tasks.cache.write_task_cache`), registered by `spt_tasks.p3.register(data_dir)`
           and read as `p3_*` tasks. Goal: >= 300 examples/s per core.
  cached   one seqio task read from a cache (USE_CACHED_TASKS=True) that the project's command
           `python -m spt_tasks.cache --module=spt_tasks.sample --tasks=<task>` built in a
           temporary folder. Goal: >= 300 examples/s per core.

Rates: examples/s = batches x 16 / seconds over the window after a warm-up. For `t0` the rate
is the examples rendered and tokenized per second over the window (apply_template's counts):
each task's seqio shuffle buffer (1000) is filled the first time the mixture draws from it,
so over a short window the examples delivered lag the work done; both are printed, and they
agree once every task's buffer is full. Per core = examples/s / the CPU cores this process may
run on (`len(os.sched_getaffinity(0))`, 2 here): tf.data uses them all, while rendering runs
in Python under one GIL. The CPU seconds the process used per example are printed too.

  python benchmarks/input_pipeline.py            # ~6-10 min on 2 cores
  python benchmarks/input_pipeline.py --quick    # <= 3 min: smaller subset and windows
  python benchmarks/input_pipeline.py --t0_mixture   # only: the whole spt_t0_train (313
      # tasks) over spt_tasks.mock_data, seconds to build it and to its first batch (goal
      # <= 30 s; ~26 s here on a quiet machine, see README)

Expected: a table with one row per pipeline, then, as the last line,
`goal ratios: sample=R t0=R p3=R cached=R` (rate / goal; >= 1 meets the goal).
"""
import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VOCAB = REPO.parent / 'shared' / 'fixtures' / 't5_vocab' / 'sentencepiece.model'
BATCH = 16
T0_GOAL, P3_GOAL, CACHED_GOAL, SAMPLE_GOAL = 75.0, 300.0, 300.0, 2.0
T0_SUBSET = ['ag_news', 'imdb', 'quoref', 'sciq', 'common_gen', 'glue/mrpc']
T0_SUBSET_QUICK = ['ag_news', 'imdb']


def cores() -> int:
  """CPU cores this process may run on (the pipeline's threads are limited to them)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def progress(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def measure(make_iter, warmup: int, batches: int, min_s: float, count=None):
  """Start-up, then examples/s over >= `batches` batches and >= `min_s` seconds.

  Args:
    make_iter: () -> iterator of batches (the pipeline is built inside, so start-up counts it).
    warmup: batches read (untimed) after the first.
    count: optional () -> examples processed so far (t0: rendered); its rate is returned too.
  """
  t = time.perf_counter()
  it = make_iter()
  next(it)
  startup = time.perf_counter() - t
  for _ in range(warmup):
    next(it)
  c0, n, t0, cpu0 = (count() if count else 0), 0, time.perf_counter(), cpu_s()
  while n < batches or time.perf_counter() - t0 < min_s:
    next(it)
    n += 1
  dt, dcpu = time.perf_counter() - t0, cpu_s() - cpu0
  out = {'startup_s': startup, 'delivered_eps': n * BATCH / dt, 'window_s': dt, 'batches': n}
  out['eps'] = (count() - c0) / dt if count else out['delivered_eps']
  out['cpu_ms_per_ex'] = dcpu / max(out['eps'] * dt, 1) * 1e3
  del it
  progress(f'start-up {startup:.1f} s, {out["eps"]:.0f} examples/s')
  return out


def train_step_consumption(batch, steps: int) -> dict:
  """Examples/s of the tiny SPT train step (runs/local.gin's model and method, batch 16)."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import train_throughput  # pylint: disable=g-import-not-at-top
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  root = py_logging.getLogger()
  level = root.level
  root.setLevel(py_logging.CRITICAL)  # gin logs every search path it tries for an include
  try:
    cli.parse_gin(['methods/spt.gin', 'runs/local.gin'], ["MODEL_DIR='/tmp/unused'"],
                  finalize=False)
  finally:
    root.setLevel(level)
  from spt_jax import gin_configurables  # pylint: disable=g-import-not-at-top
  model = gin_configurables.create_model()  # the gin-configured runner.create_model
  trainable = gin.query_parameter('configs.OptimizerConfig.trainable')
  lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  row = train_throughput.bench_step('spt (tiny)', model, trainable, batch, mesh, steps, lengths)
  gin.clear_config()
  return row


def build_p3_dir(task_names, data_dir: str, num_examples: int) -> list[str]:
  """Writes each T0 task's first `num_examples` train examples as a P3 task folder.

  The writer is `spt_tasks.cache.write_task_cache` (seqio's cached-task layout, which P3 is)
  applied to a twin of the task that ends in `append_eos` + `CacheDatasetPlaceholder()`, so
  the files hold what P3 holds (inputs without EOS, targets with EOS, the pretokenized texts,
  answer_choices); stats are then rewritten to P3's convention (token counts of ids > 1).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from spt_tasks import cache  # pylint: disable=g-import-not-at-top
  tmp_root = os.path.join(data_dir, '.writing')
  written = []
  for name in task_names:
    task = seqio.get_mixture_or_task(name)
    source = task.source
    twin = f'bench_p3_writer_{name}'
    if twin in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(twin)
    limited = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None, _s=source: _s.get_dataset(split=split, shuffle=False).take(
            num_examples), splits=['train'])
    seqio.TaskRegistry.add(twin, source=limited,
                           preprocessors=list(task.preprocessors) + [seqio.CacheDatasetPlaceholder()],
                           output_features=task.output_features)
    folder = cache.write_task_cache(seqio.get_mixture_or_task(twin), tmp_root, splits=['train'])
    final = os.path.join(data_dir, name)
    os.replace(folder, final)
    seqio.TaskRegistry.remove(twin)
    # P3's stats count ids > 1 (no EOS); ours count nonzero ids: recount from the file.
    stats = {'examples': 0}
    totals = {'inputs': [0, 0], 'targets': [0, 0]}
    ds = tf.data.TFRecordDataset(os.path.join(final, 'train.tfrecord-00000-of-00001'))
    for record in ds.as_numpy_iterator():
      ex = tf.train.Example.FromString(record).features.feature
      stats['examples'] += 1
      for k, tot in totals.items():
        n = sum(1 for v in ex[k].int64_list.value if v > 1)
        tot[0] += n
        tot[1] = max(tot[1], n)
    for k, (tokens, max_tokens) in totals.items():
      stats[f'{k}_tokens'], stats[f'{k}_max_tokens'] = tokens, max_tokens
    with open(os.path.join(final, 'stats.train.json'), 'w') as f:
      json.dump(stats, f, indent=2, sort_keys=True)
      f.write('\n')
    written.append(name)
  shutil.rmtree(tmp_root, ignore_errors=True)
  return written


def t0_mixture_startup() -> None:
  """Builds the whole `spt_t0_train` over `spt_tasks.mock_data` and reads its first batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  from spt_jax import runner  # pylint: disable=g-import-not-at-top
  from spt_tasks import mock_data  # pylint: disable=g-import-not-at-top
  from spt_tasks import preprocessors  # pylint: disable=g-import-not-at-top
  from spt_tasks import t0  # pylint: disable=g-import-not-at-top
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  with mock_data.serve():
    t = time.perf_counter()
    num_tasks = len(seqio.get_mixture_or_task(t0.T0_TRAIN_MIXTURE).tasks)
    it = runner.create_dataset(t0.T0_TRAIN_MIXTURE, {'inputs': 128, 'targets': 32}, BATCH, mesh,
                               seed=0)
    build = time.perf_counter() - t
    next(it)
    total = time.perf_counter() - t
    counts = preprocessors.get_counts()
    del it
  load = os.getloadavg()
  print(f'T0 mixture {t0.T0_TRAIN_MIXTURE} ({num_tasks} tasks, spt_tasks.mock_data): pipeline '
        f'built in {build:.1f} s, first batch after {total:.1f} s (goal <= 30 s); '
        f'{sum(c["rendered"] for c in counts.values())} examples rendered for it, from '
        f'{len(counts)} tasks; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='smaller T0 subset and windows (<= 3 min)')
  ap.add_argument('--t5_vocab', default=os.environ.get('SPT_T5_VOCAB') or str(DEFAULT_VOCAB))
  ap.add_argument('--steps', type=int, default=None, help='train steps timed (median)')
  ap.add_argument('--t0_mixture', action='store_true',
                  help='only time building the whole T0 mixture and its first batch')
  args = ap.parse_args()
  if not os.path.isfile(args.t5_vocab):
    sys.exit(f'T5 vocabulary not found at {args.t5_vocab}: pass --t5_vocab or set SPT_T5_VOCAB.')
  os.environ['SPT_T5_VOCAB'] = args.t5_vocab  # read when the T0 tasks are registered
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  if args.t0_mixture:
    t0_mixture_startup()
    return
  quick = args.quick
  warmup, batches, min_s = (2, 10, 3.0) if quick else (10, 40, 15.0)
  steps = args.steps or (3 if quick else 10)
  start = time.perf_counter()

  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  from spt_jax import runner  # pylint: disable=g-import-not-at-top
  from spt_tasks import cache  # pylint: disable=g-import-not-at-top
  from spt_tasks import mock_data  # pylint: disable=g-import-not-at-top
  from spt_tasks import p3  # pylint: disable=g-import-not-at-top
  from spt_tasks import preprocessors  # pylint: disable=g-import-not-at-top
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  from spt_tasks import sources  # pylint: disable=g-import-not-at-top
  from spt_tasks import t0  # pylint: disable=g-import-not-at-top

  progress(f'imports {time.perf_counter() - start:.1f} s')
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  lengths = dict(sample.FEATURE_LENGTHS)
  n_cores = cores()
  rows = {}
  tmp = tempfile.mkdtemp(prefix='spt_input_pipeline_')
  try:
    # (d) one seqio task cached by the project's command, read with use_cached=True.
    cached_task = sample.TRAIN_TASKS[0]
    cache_dir = os.path.join(tmp, 'seqio_cache')
    t = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'spt_tasks.cache', '--module=spt_tasks.sample',
                    f'--tasks={cached_task}', f'--cache_dir={cache_dir}', '--num_workers=1'],
                   check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache_build_s = time.perf_counter() - t
    progress(f'cached: cache command {cache_build_s:.1f} s')
    seqio.set_global_cache_dirs([cache_dir] + list(seqio.get_global_cache_dirs()))
    rows['cached'] = measure(lambda: runner.create_dataset(
        cached_task, lengths, BATCH, mesh, seed=0, use_cached=True), warmup, batches, min_s)

    # (a) the sample mixture, as runs/local.gin reads it.
    names = sample.TRAIN_TASKS + sample.HELDOUT_TASKS + sample.HELDOUT_SCORE_EVAL_TASKS
    if not all(cache.is_cached(str(sample.SAMPLE_CACHE_DIR), n) for n in names):
      print(f'building the sample cache in {sample.SAMPLE_CACHE_DIR} (not timed)', flush=True)
      sample.write_sample_cache()
    sample_batch = {}

    def sample_iter():
      it = runner.create_dataset(sample.TRAIN_MIXTURE, lengths, BATCH, mesh, seed=0,
                                 use_cached=True, autotune=False)
      for b in it:
        sample_batch.setdefault('b', b)
        yield b
    # Each of the 71 task pipelines opens when the mixture first draws from it: warm up longer.
    rows['sample'] = measure(sample_iter, 10 if quick else 20, batches, min_s)
    step = train_step_consumption(sample_batch['b'], steps)
    progress(f'train step {step["step_s"] * 1e3:.1f} ms')

    # (b) a T0 subset rendered on the fly over fake raw data; (c) the same tasks as P3 files.
    specs = sources.load_specs()
    subset = [specs[k] for k in (T0_SUBSET_QUICK if quick else T0_SUBSET)]
    with mock_data.serve(num_examples=2000):
      mixture = t0.t0_train_mixture(name='bench_t0_subset', specs=subset)
      tasks = [t.name for t in seqio.get_mixture_or_task(mixture).tasks]

      def rendered():
        return sum(c['rendered'] for n, c in preprocessors.get_counts().items() if n in tasks)
      rows['t0'] = measure(lambda: runner.create_dataset(
          mixture, lengths, BATCH, mesh, seed=0), warmup, batches, 2 * min_s, count=rendered)

      data_dir = os.path.join(tmp, 'p3', 'data')
      os.makedirs(data_dir)
      t = time.perf_counter()
      p3_tasks = build_p3_dir(tasks[:4] if quick else tasks[:12], data_dir,
                              300 if quick else 1000)
      p3_build_s = time.perf_counter() - t
      progress(f'P3 files written in {p3_build_s:.1f} s')
    os.environ['SPT_P3_DIR'] = data_dir  # p3_* tasks find their folder when read
    p3.register(data_dir)
    p3_mixture = 'bench_p3'
    if p3_mixture in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(p3_mixture)
    seqio.MixtureRegistry.add(p3_mixture, [(p3.PREFIX + n, 1.0) for n in p3_tasks])
    rows['p3'] = measure(lambda: runner.create_dataset(
        p3_mixture, lengths, BATCH, mesh, seed=0), warmup, batches, min_s)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  consumption = step['seqs_per_s']
  goals = {'sample': SAMPLE_GOAL * consumption, 't0': T0_GOAL * n_cores,
           'p3': P3_GOAL * n_cores, 'cached': CACHED_GOAL * n_cores}
  what = {
      'sample': f'spt_sample_train, {len(sample.TRAIN_TASKS)} cached tasks (runs/local.gin)',
      't0': f'T0 subset on the fly, {len(tasks)} tasks of {len(subset)} rows',
      'p3': f'P3-format files, {len(p3_tasks)} tasks',
      'cached': f'1 cached seqio task ({cached_task})',
  }
  load = os.getloadavg()
  print(f'\n{"pipeline":8s} {"start-up s":>10s} {"examples/s":>10s} {"per core":>9s} '
        f'{"delivered/s":>11s} {"CPU ms/ex":>9s} {"goal":>14s}  what')
  for key in ('sample', 't0', 'p3', 'cached'):
    r = rows[key]
    goal = (f'>= {SAMPLE_GOAL:.0f}x step' if key == 'sample'
            else f'>= {goals[key] / n_cores:.0f}/core')
    print(f'{key:8s} {r["startup_s"]:10.1f} {r["eps"]:10.0f} {r["eps"] / n_cores:9.0f} '
          f'{r["delivered_eps"]:11.1f} {r["cpu_ms_per_ex"]:9.2f} {goal:>14s}  {what[key]}')
  print(f'\ntiny SPT train step (t5_1_1_tiny.gin + spt.gin, batch {BATCH}, lengths {lengths}): '
        f'{step["step_s"] * 1e3:.1f} ms median of {steps} -> {consumption:.1f} examples/s; '
        f'sample pipeline / step = {rows["sample"]["eps"] / consumption:.1f}x')
  print(f'cores counted: {n_cores} (os.sched_getaffinity); load average {load[0]:.2f} '
        f'{load[1]:.2f} {load[2]:.2f}; cache command {cache_build_s:.1f} s, P3 files written in '
        f'{p3_build_s:.1f} s; total {time.perf_counter() - start:.0f} s'
        f'{" (--quick)" if quick else ""}')
  ratios = {k: rows[k]['eps'] / goals[k] for k in ('sample', 't0', 'p3', 'cached')}
  for k, v in ratios.items():
    if not math.isfinite(v):
      raise SystemExit(f'{k}: rate {rows[k]} is not finite')
  print('goal ratios: ' + ' '.join(f'{k}={v:.2f}' for k, v in ratios.items()), flush=True)


if __name__ == '__main__':
  main()
