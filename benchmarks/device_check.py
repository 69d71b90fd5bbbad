r"""One accelerator, one run: T5.1.1-large train-step MFU, SPT overhead, retrieval, scoring.

Measures in one process on one device and prints one table (goal column included):

  1. MFU of the jitted SPT train step (`train.make_train_step`: T5.1.1-large, bf16
     activations, float32 master weights, Adafactor, full fine-tuning as in the paper's T0
     runs): model FLOPs per step (`train_summaries.model_flops_per_step`, 6·N·tokens +
     attention) / step time / the device's peak (`train_summaries.peak_flops`). Goal >= 50 %.
  2. SPT overhead: the same step with prompt tuning's prompt of the same total length
     (L_p = 40, no memory bank) against SPT (L_p 20 + k 4 x L_m 5, M 1024, methods/spt.gin's
     balance loss), timed interleaved: t_SPT / t_PT - 1. Goal <= 5 %.
  3. Retrieval at M = 1M keys (`retrieval.retrieve_top_k`, cosine, exact top-4) against a
     plain `q @ K.T` of the same shape: FLOP/s ratio. Goal >= 0.9.
  4. Rank-classification scoring (`EncoderDecoderModel.score_batch`, bf16): rows/s.

Run on a GPU machine from the repository root (benchmarks/device_check.sh does the set-up;
about 5 minutes on one H100/H200 class GPU):

  bash benchmarks/device_check.sh

`--smoke` runs the same code on CPU with a tiny model in under a minute
(tests/test_device_check.py): it checks the script, not the device.
"""
import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax import network
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import prompts
from spt_jax import retrieval
from spt_jax import runner
from spt_jax import train
from spt_jax import train_state as ts
from spt_jax import train_summaries

# gin/models/t5_1_1_large.gin.
LARGE = network.T5Config(vocab_size=32128, emb_dim=1024, num_heads=16, head_dim=64,
                         mlp_dim=2816, num_encoder_layers=24, num_decoder_layers=24,
                         dropout_rate=0.0, dtype='bfloat16')
TINY = network.T5Config(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                        dtype='bfloat16')
SPT = prompts.PromptConfig(soft_prompt_length=20, memory_size=1024, memory_length=5, top_k=4,
                           balance_loss_weight=0.01)
PT = prompts.PromptConfig(soft_prompt_length=SPT.prefix_length, memory_size=0)


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--smoke', action='store_true', help='tiny model on CPU: checks the script')
  p.add_argument('--batch', type=int, default=None, help='train batch (default 64; smoke 4)')
  p.add_argument('--inputs', type=int, default=512)
  p.add_argument('--targets', type=int, default=128)
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 10; smoke 2)')
  p.add_argument('--memory_keys', type=int, default=None,
                 help='M of the retrieval check (default 1M; smoke 4096)')
  p.add_argument('--score_batch', type=int, default=256)
  return p.parse_args(argv)


def _batch(cfg, batch, in_len, out_len, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, cfg.vocab_size, (batch, in_len))
  tokens[:, in_len * 3 // 4:] = 0   # a quarter of padding, as real prompts have
  targets = rng.randint(1, cfg.vocab_size, (batch, out_len))
  return {'encoder_input_tokens': jnp.asarray(tokens, jnp.int32),
          'decoder_input_tokens': jnp.asarray(
              np.concatenate([np.zeros((batch, 1), int), targets[:, :-1]], 1), jnp.int32),
          'decoder_target_tokens': jnp.asarray(targets, jnp.int32),
          'decoder_loss_weights': jnp.ones((batch, out_len), jnp.float32)}


def _interleaved(fns, repeats):
  """Median wall time of each thunk over `repeats` rounds, interleaved (after one warm call)."""
  for fn in fns:
    jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[i].append(time.perf_counter() - t)
  return [float(np.median(t)) for t in times]


def _train_step(cfg, prompt_config, batch, lengths, mesh):
  """(thunk running one step, model FLOPs per step, compile seconds)."""
  model = runner.create_model(cfg, prompt_config)
  setup = runner.ModelSetup.create(model, lengths, mesh=mesh)
  params = setup.init_params(jax.random.PRNGKey(0))
  tx, mask = optim.create_optimizer(setup.abstract_params, learning_rate=1e-3, trainable='full')
  state = [ts.TrainState.create(params, tx.init(params), jax.random.PRNGKey(1),
                                model_state=setup.init_model_state())]
  step = jax.jit(train.make_train_step(model, tx, mask, optim.constant_schedule(1e-3)),
                 donate_argnums=(0,))
  b = batch['encoder_input_tokens'].shape[0]
  flops = train_summaries.model_flops_per_step(model, setup.abstract_params, b, lengths['inputs'],
                                     lengths['targets'])

  def run():
    with setup.activate():
      state[0], metrics = step(state[0], batch)
    return metrics

  t = time.perf_counter()
  jax.block_until_ready(run())
  return run, flops, time.perf_counter() - t


def _scoring(cfg, prompt_config, batch, lengths, mesh):
  model = runner.create_model(cfg, prompt_config)
  setup = runner.ModelSetup.create(model, lengths, mesh=mesh)
  params = setup.init_params(jax.random.PRNGKey(0))
  score = jax.jit(model.score_batch)

  def run():
    with setup.activate():
      return score(params, batch)
  return run


def main(argv=None):
  args = _parse(argv)
  cfg = TINY if args.smoke else LARGE
  batch_size = args.batch or (4 if args.smoke else 64)
  steps = args.steps or (2 if args.smoke else 10)
  m_keys = args.memory_keys or (4096 if args.smoke else 2**20)
  in_len, out_len = (32, 8) if args.smoke else (args.inputs, args.targets)
  lengths = {'inputs': in_len, 'targets': out_len}
  device = jax.devices()[0]
  mesh = partitioning.create_mesh(devices=[device])
  peak = train_summaries.peak_flops(device)
  rows = []
  started = time.perf_counter()

  # 1 + 2: SPT and prompt tuning train steps, interleaved.
  batch = _batch(cfg, batch_size, in_len, out_len)
  run_spt, flops_spt, compile_spt = _train_step(cfg, SPT, batch, lengths, mesh)
  run_pt, _, compile_pt = _train_step(cfg, PT, batch, lengths, mesh)
  t_spt, t_pt = _interleaved([run_spt, run_pt], steps)
  mfu = flops_spt / t_spt / peak
  rows.append(('train step MFU (SPT, full fine-tuning)', f'{100 * mfu:.1f} %', '>= 50 %',
               f'{t_spt * 1e3:.1f} ms/step, {batch_size * (in_len + out_len) / t_spt:,.0f} '
               f'tokens/s, {flops_spt / 1e9:,.1f} GFLOP/step, peak {peak / 1e12:,.1f} TFLOP/s, '
               f'compile {compile_spt:.0f} s'))
  rows.append(('SPT overhead vs prompt tuning (prefix 40)', f'{100 * (t_spt / t_pt - 1):+.1f} %',
               '<= 5 %', f'PT {t_pt * 1e3:.1f} ms/step (compile {compile_pt:.0f} s)'))
  del run_spt, run_pt

  # 3: retrieval over M keys vs the plain matmul of the same shape.
  d = cfg.emb_dim
  query = jax.random.normal(jax.random.key(0), (batch_size, d))
  keys = jax.random.normal(jax.random.key(1), (m_keys, d))
  retrieve = jax.jit(lambda q, k: retrieval.retrieve_top_k(q, k, SPT.top_k, 'cosine'))
  matmul = jax.jit(lambda q, k: q @ k.T)
  t_mm, t_ret = _interleaved([lambda: matmul(query, keys), lambda: retrieve(query, keys)],
                             max(steps, 5))
  rows.append((f'retrieval at M={m_keys:,} / matmul FLOP/s', f'{t_mm / t_ret:.2f}', '>= 0.9',
               f'retrieve {t_ret * 1e3:.2f} ms, q @ K.T {t_mm * 1e3:.2f} ms (B {batch_size}, '
               f'd {d}, top-{SPT.top_k}, float32)'))

  # 4: scoring throughput.
  score_rows = 8 if args.smoke else args.score_batch
  score_len = {'inputs': in_len, 'targets': 16 if not args.smoke else out_len}
  sbatch = _batch(cfg, score_rows, score_len['inputs'], score_len['targets'], seed=1)
  (t_score,) = _interleaved([_scoring(cfg, SPT, sbatch, score_len, mesh)], steps)
  rows.append(('rank-classification scoring (SPT)', f'{score_rows / t_score:,.0f} rows/s', '-',
               f'batch {score_rows}, {score_len["inputs"]}/{score_len["targets"]} tokens, '
               f'{t_score * 1e3:.1f} ms/batch'))

  model_name = 'tiny T5 (smoke)' if args.smoke else 'T5.1.1-large'
  print(f'\ndevice: {device.device_kind} ({device.platform}) x1; {model_name}, bf16 activations, '
        f'float32 params; train batch {batch_size} x {in_len}/{out_len} tokens; medians of '
        f'{steps} interleaved steps; {time.perf_counter() - started:.0f} s in all\n')
  widths = [max(len(r[i]) for r in rows + [('check', 'result', 'goal', 'details')])
            for i in range(3)]
  head = ('check', 'result', 'goal', 'details')
  print(' | '.join(h.ljust(w) for h, w in zip(head[:3], widths)) + ' | ' + head[3])
  print('-|-'.join('-' * w for w in widths) + '-|-' + '-' * 7)
  for r in rows:
    print(' | '.join(c.ljust(w) for c, w in zip(r[:3], widths)) + ' | ' + r[3])
  return 0


if __name__ == '__main__':
  sys.exit(main())
