r"""One train step of our jitted T5 vs transformers' PyTorch T5, side by side on this CPU.

Same config (default: T5.1.1-small's dimensions — d 512, 6 heads, head_dim 64,
mlp 1024, 8+8 layers, vocab 32128, gated-GELU, untied logits), same weights (the PyTorch model
is saved with `save_pretrained` and read back with `checkpoints.load_hf_t5`), same batch
(8 x 256 inputs, 8 x 64 targets, float32), same loss (token-mean cross entropy, no z-loss) and
Adafactor on both sides (optax.adafactor vs transformers.optimization.Adafactor, factored second
moments, parameter-scaled updates, no momentum, lr 1e-3). A step is forward + backward +
optimizer update. The two are run alternately in one process so both see the same machine
load; medians of --steps steps after --warmup steps are printed with the ratio ours / torch.

  .venv/bin/python benchmarks/backbone_vs_torch.py               # the issue's setting
  .venv/bin/python benchmarks/backbone_vs_torch.py --breakdown   # + forward / fwd+bwd times
  .venv/bin/python benchmarks/backbone_vs_torch.py --threads 1   # one compute thread each
  .venv/bin/python benchmarks/backbone_vs_torch.py --emb_dim 64 --num_heads 2 --head_dim 32 \
      --mlp_dim 128 --layers 2 --vocab 128 --inputs 32 --targets 8 --steps 3   # a smoke run
"""
import argparse
import os
import statistics
import time


import torch_reference  # noqa: E402  (benchmarks/: the script's own folder)

# --threads N: pin before jax / torch are imported (see torch_reference).
torch_reference.pin_threads_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.optimization import Adafactor  # noqa: E402

from spt_jax import network  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  torch_reference.add_model_flags(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--inputs', type=int, default=256)
  p.add_argument('--targets', type=int, default=64)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--breakdown', action='store_true',
                 help='also time forward only and forward+backward (no update) on both sides')
  return p.parse_args()


def make_batch(args, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, args.vocab, size=(args.batch, args.inputs)).astype(np.int32)
  tgt = rng.randint(2, args.vocab, size=(args.batch, args.targets)).astype(np.int32)
  enc[:, -1] = 1
  tgt[:, -1] = 1
  dec_in = np.concatenate([np.zeros((args.batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def main():
  args = parse_args()
  torch_reference.set_threads_and_describe(args.threads)
  hf = torch_reference.build_t5(args, seed=0, train=True)
  config, params = torch_reference.to_spt_jax(hf)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'parameters: {n_params / 1e6:.1f} M; batch {args.batch} x ({args.inputs} in, '
        f'{args.targets} out), float32')

  enc, dec_in, tgt = make_batch(args)
  model = network.Transformer(config)

  # ---------------------------------------------------------------- ours (jax)
  def loss_fn(params, enc, dec_in, tgt):
    logits = model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)
    weights = (tgt > 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    return (ce * weights).sum() / weights.sum()

  tx = optax.adafactor(learning_rate=args.lr, multiply_by_parameter_scale=True,
                       clipping_threshold=1.0, decay_rate=0.8, momentum=None)
  params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(params)

  @jax.jit
  def jax_fwd(params, enc, dec_in, tgt):
    return loss_fn(params, enc, dec_in, tgt)

  @jax.jit
  def jax_grad(params, enc, dec_in, tgt):
    return jax.value_and_grad(loss_fn)(params, enc, dec_in, tgt)

  @jax.jit
  def jax_step(params, opt_state, enc, dec_in, tgt):
    loss, grads = jax.value_and_grad(loss_fn)(params, enc, dec_in, tgt)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # donate_argnums would save a copy of params/state per step, but XLA:CPU ignores donation.
  t0 = time.perf_counter()
  compiled = jax_step.lower(params, opt_state, enc, dec_in, tgt).compile()
  print(f'jax compile of the train step: {time.perf_counter() - t0:.1f} s')

  # ---------------------------------------------------------------- torch
  opt = Adafactor(hf.parameters(), lr=args.lr, scale_parameter=True, relative_step=False,
                  warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)
  t_enc = torch.tensor(enc, dtype=torch.long)
  t_mask = torch.ones_like(t_enc)
  t_dec_in = torch.tensor(dec_in, dtype=torch.long)
  t_labels = torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long)

  def torch_loss():
    return hf(input_ids=t_enc, attention_mask=t_mask, decoder_input_ids=t_dec_in,
              labels=t_labels).loss

  def torch_step():
    loss = torch_loss()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

  # Same weights, same batch: the first losses agree (a sanity check of the comparison).
  first_jax = float(jax_fwd(params, enc, dec_in, tgt))
  with torch.no_grad():
    first_torch = float(torch_loss())
  print(f'initial loss: ours {first_jax:.6f}, torch {first_torch:.6f}')

  # Wall time is what the goal is about; process CPU time (all threads) is printed too because
  # on a shared, oversubscribed machine it is less sensitive to other jobs than wall time.
  times = {'ours': [], 'torch': []}
  cpu = {'ours': [], 'torch': []}
  for i in range(args.warmup + args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    params, opt_state, loss = compiled(params, opt_state, enc, dec_in, tgt)
    loss = float(jax.block_until_ready(loss))
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    loss_t = torch_step()
    t_torch, c_torch = time.perf_counter() - t0, time.process_time() - c0
    tag = 'warm-up' if i < args.warmup else 'step'
    print(f'{tag} {i}: ours {t_ours:.3f} s wall / {c_ours:.3f} s cpu (loss {loss:.4f}) | '
          f'torch {t_torch:.3f} s wall / {c_torch:.3f} s cpu (loss {loss_t:.4f})')
    if i >= args.warmup:
      times['ours'].append(t_ours)
      times['torch'].append(t_torch)
      cpu['ours'].append(c_ours)
      cpu['torch'].append(c_torch)

  med = {k: statistics.median(v) for k, v in times.items()}
  med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
  print(f'train step median over {args.steps}: ours {med["ours"]:.3f} s, '
        f'torch {med["torch"]:.3f} s, ratio ours/torch = {med["ours"] / med["torch"]:.3f} '
        f'(cpu time: ours {med_cpu["ours"]:.3f} s, torch {med_cpu["torch"]:.3f} s, ratio '
        f'{med_cpu["ours"] / med_cpu["torch"]:.3f})')

  if args.breakdown:
    parts = {}
    for name, jfn, tfn in (
        ('forward', lambda: jax_fwd(params, enc, dec_in, tgt),
         lambda: torch_loss().item()),
        ('forward+backward', lambda: jax_grad(params, enc, dec_in, tgt),
         lambda: (torch_loss().backward(), hf.zero_grad(set_to_none=True)))):
      jax.block_until_ready(jfn())  # compile
      tj, tt = [], []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(jfn())
        tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if name == 'forward':
          with torch.no_grad():
            tfn()
        else:
          tfn()
        tt.append(time.perf_counter() - t0)
      parts[name] = (statistics.median(tj), statistics.median(tt))
      print(f'{name} median: ours {parts[name][0]:.3f} s, torch {parts[name][1]:.3f} s, '
            f'ratio {parts[name][0] / parts[name][1]:.3f}')
    print(f'optimizer update (step - fwd+bwd): ours '
          f'{med["ours"] - parts["forward+backward"][0]:.3f} s, torch '
          f'{med["torch"] - parts["forward+backward"][1]:.3f} s')
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
