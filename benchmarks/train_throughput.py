r"""Train-step throughput of fine-tuning, prompt tuning and SPT, and input-pipeline headroom.

Measures, side by side in one process on the same device(s):
  * tokens/s (padded encoder + decoder tokens) and sequences/s of the jitted train step
    (`spt_jax.train.make_train_step`, Adafactor, float32) for a small T5.1.1-shaped model in
    three settings: plain fine-tuning (no prompts, all trainable), prompt tuning (soft prompt,
    frozen backbone) and SPT (soft prompt + memory bank, all trainable);
  * examples/s of the input pipeline (`runner.create_dataset` over the embedded sample
    mixture `spt_sample_train`: seqio preprocessing, feature converter, batching) and its
    ratio to the fastest train step's consumption (goal: >= 2x).

  python benchmarks/train_throughput.py [--steps 10] [--batch_size 16] [--emb_dim 256]
"""
import argparse
import dataclasses
import time

import jax
import numpy as np

from spt_jax import network
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import prompts
from spt_jax import runner
from spt_jax import train
from spt_jax import train_state as ts


def bench_step(name, model, trainable, batch, mesh, steps, lengths):
  setup = runner.ModelSetup.create(model, lengths, mesh=mesh)
  params = setup.init_params(jax.random.PRNGKey(0))
  tx, mask = optim.create_optimizer(setup.abstract_params, learning_rate=1e-3,
                                    trainable=trainable)
  state = ts.TrainState.create(params, tx.init(params), jax.random.PRNGKey(1),
                               model_state=setup.init_model_state())
  step = jax.jit(train.make_train_step(model, tx, mask, optim.constant_schedule(1e-3)),
                 donate_argnums=(0,))
  batch = partitioning.shard_batch(batch, mesh)
  with setup.activate():
    t = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, m = step(state, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
  sec = float(np.median(times))
  b = batch['encoder_input_tokens'].shape[0]
  tokens = b * (lengths['inputs'] + lengths['targets'])
  return {'setting': name, 'params': optim.count_params(setup.abstract_params),
          'trainable': optim.count_params(setup.abstract_params, mask),
          'compile_s': compile_s, 'step_s': sec, 'seqs_per_s': b / sec,
          'tokens_per_s': tokens / sec}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--batch_size', type=int, default=16)
  ap.add_argument('--emb_dim', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--pipeline_batches', type=int, default=40)
  ap.add_argument('--pipeline_warmup', type=int, default=10)
  ap.add_argument('--on_the_fly', action='store_true',
                  help='render the sample templates in the pipeline instead of reading the '
                       'pre-rendered seqio cache (what runs/local.gin reads)')
  args = ap.parse_args()
  import spt_tasks.sample  # pylint: disable=g-import-not-at-top,unused-import

  lengths = dict(spt_tasks.sample.FEATURE_LENGTHS)
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  cfg = network.T5Config(vocab_size=1152, emb_dim=args.emb_dim, num_heads=4,
                         head_dim=args.emb_dim // 4, mlp_dim=4 * args.emb_dim,
                         num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                         dropout_rate=0.1)
  t = time.perf_counter()
  data = runner.create_dataset('spt_sample_train', lengths, args.batch_size, mesh, seed=0,
                               use_cached=not args.on_the_fly)
  batch = next(data)
  startup_s = time.perf_counter() - t

  # Input pipeline alone, after a warm-up (a mixture opens every task's pipeline lazily).
  t = time.perf_counter()
  for _ in range(args.pipeline_warmup):
    next(data)
  warmup_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.pipeline_batches):
    next(data)
  pipe_eps = args.pipeline_batches * args.batch_size / (time.perf_counter() - t)

  settings = [
      ('finetune', runner.create_model(cfg, None), 'full'),
      ('prompt_tuning', runner.create_model(cfg, prompts.PromptConfig(
          soft_prompt_length=20, memory_size=0)), 'prompts_only'),
      ('spt', runner.create_model(cfg, prompts.PromptConfig(
          soft_prompt_length=20, memory_size=1024, memory_length=5, top_k=4)), 'full'),
      ('spt_prompts_only', runner.create_model(cfg, prompts.PromptConfig(
          soft_prompt_length=20, memory_size=1024, memory_length=5, top_k=4)), 'prompts_only'),
  ]
  rows = [bench_step(n, m, tr, batch, mesh, args.steps, lengths) for n, m, tr in settings]
  print(f'\ndevice: {jax.devices()[0].device_kind} x1; model d={args.emb_dim}, '
        f'{args.layers}+{args.layers} layers, vocab {cfg.vocab_size}; batch {args.batch_size}, '
        f'lengths {lengths}; median of {args.steps} steps\n')
  print(f"{'setting':18s} {'params':>9s} {'trainable':>9s} {'compile s':>9s} {'step s':>8s} "
        f"{'seqs/s':>8s} {'tokens/s':>9s}")
  for r in rows:
    print(f"{r['setting']:18s} {r['params']:9d} {r['trainable']:9d} {r['compile_s']:9.1f} "
          f"{r['step_s']:8.3f} {r['seqs_per_s']:8.1f} {r['tokens_per_s']:9.0f}")
  fastest = max(r['seqs_per_s'] for r in rows)
  source = 'rendered on the fly' if args.on_the_fly else 'seqio cache'
  print(f'\ninput pipeline ({source}): start-up to the first batch {startup_s:.1f} s, '
        f'{args.pipeline_warmup} warm-up batches {warmup_s:.1f} s; '
        f'then {pipe_eps:.0f} examples/s; fastest train step consumes '
        f'{fastest:.1f} examples/s; ratio {pipe_eps / fastest:.1f}x (goal >= 2x)')


if __name__ == '__main__':
  main()
