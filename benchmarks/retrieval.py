"""Benchmark of SPT retrieval (spt_jax.prompts) and of its train-step overhead.

Prints two tables, each measured side by side in one run:

(a) Retrieval (`retrieval.retrieve_top_k`, cosine, exact top-k) vs M at batch 256,
    d 512, k 4 — time, compiled peak memory per device, and achieved FLOP/s of the
    retrieval (2·B·d·M flops) divided by that of a plain `q @ K.T` of the same
    [B, d] x [d, M] shape timed interleaved with it (goal >= 0.9). Gathering the
    k retrieved values `V[I]` ([M, 5, 512]) is timed too, where V fits
    (--values_max_gib): XLA's own partitioning of `jnp.take` vs our shard-local
    masked gather + psum. Settings: one CPU device, and 8 fake CPU devices with
    the memory axis split 8 ways (mesh data=1 x model=8). Each setting runs in
    its own subprocess because XLA_FLAGS must be set before jax is imported.
(b) Train-step time (full fine-tuning, optax adafactor) of SPT vs prompt tuning
    with the same total prompt length L_p + k·L_m on a small T5: overhead goal <= 5%.

Run:
  .venv/bin/python benchmarks/retrieval.py            # M in {1k, 16k, 128k, 1M}
  .venv/bin/python benchmarks/retrieval.py --quick    # M in {1k, 16k, 128k}, fewer repeats
Other engineers' jobs share the CPUs: ratios are measured interleaved, absolute
times are only indicative.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

RESULT = 'RESULT '
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='M up to 128k and fewer repeats.')
  parser.add_argument('--part', choices=['a', 'b', 'all'], default='all')
  parser.add_argument('--memory_sizes', default=None,
                      help='comma-separated M list (default 1k,16k,128k,1M; quick: no 1M).')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--top_k', type=int, default=4)
  parser.add_argument('--memory_length', type=int, default=5)
  parser.add_argument('--values_max_gib', type=float, default=2.0,
                      help='time V[I] only where the values table is at most this big.')
  parser.add_argument('--repeats', type=int, default=None)
  parser.add_argument('--platform', default='cpu', choices=['cpu', 'gpu', 'tpu'],
                      help='JAX_PLATFORMS of the workers; sharded (8 fake devices) runs on cpu only.')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _emit(record):
  print(RESULT + json.dumps(record), flush=True)


def _time_interleaved(fns, args, repeats):
  """Best wall time of each fn over `repeats` calls, interleaved so load changes
  hit all alike (the minimum is the least-disturbed run on a shared machine)."""
  import jax  # pylint: disable=g-import-not-at-top
  for fn, a in zip(fns, args):
    jax.block_until_ready(fn(*a))
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, (fn, a) in enumerate(zip(fns, args)):
      start = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times[i].append(time.perf_counter() - start)
  return [min(t) for t in times]


def _peak_bytes(jitted, *args):
  """Compiled per-device footprint: arguments + outputs + temporaries - aliased."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  if analysis is None:
    return float('nan')
  return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def _worker_a(args, sharded):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from spt_jax import retrieval  # pylint: disable=g-import-not-at-top

  b, d, k, lm = args.batch, args.dim, args.top_k, args.memory_length
  if sharded:
    mesh = jax.make_mesh((1, len(jax.devices())), ('data', 'model'),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = (('batch', 'data'), ('memory', 'model'), ('embed', None), ('memory_length', None))
    key_sharding = NamedSharding(mesh, P('model'))
    rep_sharding = NamedSharding(mesh, P())
    context = lambda: _both(jax.set_mesh(mesh), nn.logical_axis_rules(rules))
  else:
    key_sharding = rep_sharding = None
    context = _null
  setting = (f'{len(jax.devices())} {jax.devices()[0].platform}'
             + (' (memory/8)' if sharded else ''))
  for m in args.memory_sizes:
    repeats = args.repeats or (3 if m >= 2**20 else 5 if m >= 2**17 else 10)
    with context():
      keys = jax.jit(lambda r, m=m: jax.random.normal(r, (m, d)), out_shardings=key_sharding)(
          jax.random.key(1))
      query = jax.jit(lambda r: jax.random.normal(r, (b, d)), out_shardings=rep_sharding)(
          jax.random.key(0))
      retrieve = jax.jit(lambda q, kk: retrieval.retrieve_top_k(q, kk, k, 'cosine'))
      matmul = jax.jit(lambda q, kk: q @ kk.T)
      # Same matmul reduced to a row max: like retrieval it keeps the [B, M] scores
      # internal, so it does not pay for writing a [B, M] result buffer.
      matmul_max = jax.jit(lambda q, kk: jnp.max(q @ kk.T, axis=1))
      t_mm, t_mm_max, t_ret = _time_interleaved(
          [matmul, matmul_max, retrieve], [(query, keys)] * 3, repeats)
      record = dict(setting=setting, M=m, t_matmul=t_mm, t_matmul_max=t_mm_max,
                    t_retrieve=t_ret,
                    gflops_matmul=2 * b * d * m / t_mm / 1e9,
                    gflops_retrieve=2 * b * d * m / t_ret / 1e9,
                    ratio=t_mm / t_ret, ratio_max=t_mm_max / t_ret,
                    peak_matmul=_peak_bytes(matmul, query, keys),
                    peak_retrieve=_peak_bytes(retrieve, query, keys))
      if m * lm * d * 4 <= args.values_max_gib * 2**30:
        values = jax.jit(lambda r, m=m: jax.random.normal(r, (m, lm, d)),
                         out_shardings=key_sharding)(jax.random.key(2))
        _, idx = retrieve(query, keys)
        xla_take = jax.jit(lambda v, i: retrieval.gather_rows(v, i, sharded=False))
        fns, names = [xla_take], ['xla']
        if sharded:
          fns.append(jax.jit(lambda v, i: retrieval.gather_rows(v, i, sharded=True)))
          names.append('shard_map')
        times = _time_interleaved(fns, [(values, idx)] * len(fns), repeats)
        for name, fn, t in zip(names, fns, times):
          record[f't_gather_{name}'] = t
          record[f'peak_gather_{name}'] = _peak_bytes(fn, values, idx)
        del values
      del keys
    _emit(record)


def _worker_b(args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from spt_jax import network, prompts  # pylint: disable=g-import-not-at-top

  cfg = network.T5Config(vocab_size=32128, emb_dim=256, num_heads=4, head_dim=64,
                         mlp_dim=1024, num_encoder_layers=4, num_decoder_layers=4)
  batch, in_len, out_len = (16, 64, 16) if args.quick else (32, 128, 32)
  spt = prompts.PromptConfig()  # L_p=20, M=1024, L_m=5, k=4: prefix 40 (paper reading)
  # gin/methods/spt.gin's per-step additions: the balance loss over all M slots (the
  # restart runs every 25 steps in the trainer, the EMA update is an [M] vector: not here).
  spt_balanced = dataclasses.replace(spt, balance_loss_weight=0.01)
  pt = prompts.PromptConfig(soft_prompt_length=spt.prefix_length, memory_size=0)
  assert spt.prefix_length == pt.prefix_length
  rng = np.random.RandomState(0)
  tokens = rng.randint(1, cfg.vocab_size, (batch, in_len))
  tokens[:, in_len * 3 // 4:] = 0
  targets = rng.randint(1, cfg.vocab_size, (batch, out_len))
  data = dict(encoder_input_tokens=jnp.asarray(tokens, jnp.int32),
              decoder_input_tokens=jnp.asarray(
                  np.concatenate([np.zeros((batch, 1), int), targets[:, :-1]], 1), jnp.int32),
              decoder_target_tokens=jnp.asarray(targets, jnp.int32))
  optimizer = optax.adafactor(1e-3)

  def make(prompt_config):
    model = network.Transformer(cfg, prompts.prompt_prefix(prompt_config))
    params = jax.jit(lambda r: model.init(r, **data, enable_dropout=False)['params'])(
        jax.random.key(0))
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    params = nn.unbox(params)

    def loss_fn(p):
      logits, state = model.apply({'params': p}, **data, enable_dropout=False,
                                  mutable=['retrieval'])
      xent = optax.softmax_cross_entropy_with_integer_labels(logits, data['decoder_target_tokens'])
      loss = jnp.mean(xent)
      if 'retrieval' in state:
        sown = state['retrieval']['encoder']['memory_bank']
        loss += sown['key_loss'][0]
        if 'balance_loss' in sown:
          loss += sown['balance_loss'][0]
      return loss

    @jax.jit
    def step(p, opt_state):
      loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, opt_state = optimizer.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

    state = [params, optimizer.init(params)]

    def run():
      state[0], state[1], loss = step(state[0], state[1])
      return loss

    n_params = sum(x.size for x in jax.tree.leaves(params))
    return run, n_params

  run_spt, n_spt = make(spt)
  run_bal, _ = make(spt_balanced)
  run_pt, n_pt = make(pt)
  repeats = args.repeats or (5 if args.quick else 10)
  t_spt, t_bal, t_pt = _time_interleaved([run_spt, run_bal, run_pt], [()] * 3, repeats)
  _emit(dict(platform=jax.devices()[0].platform, batch=batch, in_len=in_len, out_len=out_len, prefix=spt.prefix_length,
             t_spt=t_spt, t_pt=t_pt, overhead=t_spt / t_pt - 1, params_spt=n_spt,
             t_spt_balanced=t_bal, overhead_balanced=t_bal / t_pt - 1, params_pt=n_pt))


class _both:
  def __init__(self, *contexts):
    self.contexts = contexts

  def __enter__(self):
    for c in self.contexts:
      c.__enter__()

  def __exit__(self, *exc):
    for c in reversed(self.contexts):
      c.__exit__(*exc)


class _null:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


def _run_worker(name, argv, devices):
  platform = _parse(argv).platform
  env = dict(os.environ, JAX_PLATFORMS={'gpu': 'cuda'}.get(platform, platform), TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, '--worker', name],
                        env=env, capture_output=True, text=True, check=False)
  records = [json.loads(line[len(RESULT):]) for line in proc.stdout.splitlines()
             if line.startswith(RESULT)]
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f'benchmark worker {name} failed (exit {proc.returncode})')
  return records


def _mib(x):
  return f'{x / 2**20:,.0f}'


def _print_a(records, args):
  print(f'\n(a) retrieval: batch {args.batch}, d {args.dim}, k {args.top_k}, cosine, '
        f'exact top-k; V[I] with L_m {args.memory_length} where V <= {args.values_max_gib} GiB')
  head = ('setting', 'M', 'matmul s', 'mm+max s', 'retrieve s', 'GFLOP/s mm', 'GFLOP/s ret',
          'ratio', 'ratio vs mm+max',
          'peak MiB mm', 'peak MiB ret', 'V[I] xla ms', 'V[I] shmap ms', 'peak MiB xla',
          'peak MiB shmap')
  rows = []
  for r in records:
    rows.append((r['setting'], f"{r['M']:,}", f"{r['t_matmul']:.5f}",
                 f"{r['t_matmul_max']:.5f}", f"{r['t_retrieve']:.5f}",
                 f"{r['gflops_matmul']:.1f}", f"{r['gflops_retrieve']:.1f}",
                 f"{r['ratio']:.3f}", f"{r['ratio_max']:.3f}", _mib(r['peak_matmul']), _mib(r['peak_retrieve']),
                 f"{1e3 * r['t_gather_xla']:.2f}" if 't_gather_xla' in r else 'keys only',
                 f"{1e3 * r['t_gather_shard_map']:.2f}" if 't_gather_shard_map' in r else '-',
                 _mib(r['peak_gather_xla']) if 'peak_gather_xla' in r else '-',
                 _mib(r['peak_gather_shard_map']) if 'peak_gather_shard_map' in r else '-'))
  _table(head, rows)
  print('ratio = FLOP/s of retrieval (2·B·d·M) / FLOP/s of plain q @ K.T of the same shape '
        '(returns [B, M]); "vs mm+max" uses max(q @ K.T, axis=1) instead, which like '
        'retrieval keeps the scores internal. Best of interleaved repeats; goal >= 0.9. '
        'Peak = compiled per-device args + outputs + temps.')


def _print_b(records):
  for r in records:
    print(f"\n(b) train step on {r['platform']}, T5 d 256, 4+4 layers, vocab 32128, adafactor, batch {r['batch']}, "
          f"inputs {r['in_len']}, targets {r['out_len']}; total prompt length {r['prefix']}")
    _table(('method', 'step s', 'params'),
           [('prompt tuning (L_p=40, M=0)', f"{r['t_pt']:.4f}", f"{r['params_pt']:,}"),
            ('SPT (L_p=20, M=1024, L_m=5, k=4)', f"{r['t_spt']:.4f}", f"{r['params_spt']:,}"),
            ('SPT + balance loss (methods/spt.gin)', f"{r['t_spt_balanced']:.4f}",
             f"{r['params_spt']:,}")])
    print(f"SPT overhead: {100 * r['overhead']:+.1f}%; with the balance loss "
          f"{100 * r['overhead_balanced']:+.1f}% (goal <= 5%)")


def _table(head, rows):
  widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
  line = lambda cells: '  '.join(str(c).rjust(w) for c, w in zip(cells, widths))
  print(line(head))
  print('  '.join('-' * w for w in widths))
  for row in rows:
    print(line(row))


def main(argv=None):
  args = _parse(argv)
  if args.memory_sizes:
    args.memory_sizes = [int(x) for x in args.memory_sizes.split(',')]
  else:
    args.memory_sizes = [2**10, 2**14, 2**17] + ([] if args.quick else [2**20])
  if args.worker:
    sys.path.insert(0, ROOT)
    if args.worker == 'a_single':
      _worker_a(args, sharded=False)
    elif args.worker == 'a_sharded':
      _worker_a(args, sharded=True)
    else:
      _worker_b(args)
    return
  argv = [a for a in (argv if argv is not None else sys.argv[1:])]
  if args.part in ('a', 'all'):
    records = _run_worker('a_single', argv, 1)
    if args.platform == 'cpu':
      records += _run_worker('a_sharded', argv, 8)
    _print_a(records, args)
  if args.part in ('b', 'all'):
    _print_b(_run_worker('b', argv, 1))


if __name__ == '__main__':
  main()
