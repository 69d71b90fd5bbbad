r"""Evaluation on this CPU: our jitted scoring and greedy decoding vs transformers' PyTorch T5.

Same config (default: T5.1.1-small dims — d 512, 6 heads, head_dim 64, mlp 1024, 8+8 layers,
vocab 32128, gated-GELU, untied logits), same weights (the PyTorch model is saved with
`save_pretrained` and read back with `checkpoints.load_hf_t5`), same rows (--batch rows of
random tokens, inputs of random length in [--inputs / 2, --inputs] and targets of random length
in [1, --targets], each ending in EOS, padded with 0), float32, no dropout. Two measurements:

* rank-classification scoring: the per-row sum of target log-likelihoods, what
  `spt_jax.evaluate.Evaluation` ranks answer choices by. Ours is the jitted
  `EncoderDecoderModel.score_batch(length_normalize=False)` (T0's setting); torch is one
  teacher-forced forward of `T5ForConditionalGeneration` under `torch.inference_mode()` with the
  same decoder inputs (targets shifted right), then log_softmax, the target tokens' entries
  gathered and summed over non-pad targets. `labels=` is not passed: it would add a token-mean
  cross entropy that rank classification does not use.
* greedy decoding of --decode_tokens (32) tokens: ours is the jitted
  `EncoderDecoderModel.predict_batch(decoding='greedy', max_decode_length=32)` (the encoder
  once, then a `lax.while_loop` over the KV cache, `spt_jax.decoding.temperature_sample`);
  torch is `model.generate(max_new_tokens=32, do_sample=False, num_beams=1)`, also with a KV
  cache. Equal work: both must emit exactly 32 tokens per row. Torch gets `eos_token_id=None`
  (no stopping criterion but the length, no EOS logits processor); ours is built with
  `eos_id=-1`, a token id argmax never returns, so no row ends and the loop (which stops early
  only when every row has ended) runs all 32 steps. Neither side masks or changes any logit.

The two sides run alternately in one process so both see the same machine load; medians of
--steps repetitions after --warmup are printed with the time ratio ours / torch (goal <= 1.0),
and scoring throughput in rows (examples) per second. Correctness is checked in the same run on
the benchmark rows: our scores must equal torch's within --rtol (relative, plus the same
absolute tolerance), else the script exits with status 1; the fraction of greedy tokens (and of
whole rows) on which the two agree is printed, and with --require_decode_match any
disagreement also exits 1 (used by the smoke test, where near-ties do not occur; on big random
models a near-tie can flip an argmax and change the rest of that row). The last line is
`ratios ours/torch: score=R decode=R`.

  .venv/bin/python benchmarks/eval_vs_torch.py               # the issue's setting
  .venv/bin/python benchmarks/eval_vs_torch.py --threads 1   # one compute thread each
  .venv/bin/python benchmarks/eval_vs_torch.py --emb_dim 64 --num_heads 2 --head_dim 32 \
      --mlp_dim 128 --layers 2 --vocab 128 --batch 4 --inputs 32 --targets 8 \
      --decode_tokens 8 --steps 2 --warmup 1 --require_decode_match   # a smoke run
"""
import argparse
import os
import statistics
import sys
import time


import torch_reference  # noqa: E402  (benchmarks/: the script's own folder)

# --threads N: pin before jax / torch are imported (see torch_reference).
torch_reference.pin_threads_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from spt_jax import models  # noqa: E402
from spt_jax import network  # noqa: E402

EOS_ID = 1


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  torch_reference.add_model_flags(p)
  p.add_argument('--batch', type=int, default=8, help='rows scored / decoded per call')
  p.add_argument('--inputs', type=int, default=256, help='padded input length')
  p.add_argument('--targets', type=int, default=16,
                 help='padded target (answer choice) length for scoring')
  p.add_argument('--decode_tokens', type=int, default=32, help='tokens decoded per row')
  p.add_argument('--steps', type=int, default=5, help='timed repetitions of each')
  p.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
  p.add_argument('--rtol', type=float, default=1e-3,
                 help='tolerance of our scores vs torch (relative; also used as absolute)')
  p.add_argument('--require_decode_match', action='store_true',
                 help='exit 1 unless every greedy token equals torch\'s')
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args()


def make_rows(args):
  """Padded random rows: (encoder tokens, decoder inputs, decoder targets), int32 numpy."""
  rng = np.random.RandomState(args.seed)
  enc = np.zeros((args.batch, args.inputs), np.int32)
  tgt = np.zeros((args.batch, args.targets), np.int32)
  for i in range(args.batch):
    n = rng.randint(max(1, args.inputs // 2), args.inputs + 1)
    enc[i, :n] = rng.randint(2, args.vocab, size=n)
    enc[i, n - 1] = EOS_ID
    m = rng.randint(1, args.targets + 1)
    tgt[i, :m] = rng.randint(2, args.vocab, size=m)
    tgt[i, m - 1] = EOS_ID
  dec_in = np.concatenate([np.zeros((args.batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def timed(fn):
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - t0, time.process_time() - c0


def compare_scores(ours, theirs, batch, rtol):
  """(ok, message): our [batch] scores equal torch's within rtol (relative and absolute)."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  if ours.shape != (batch,) or theirs.shape != (batch,):
    return False, (f'scores: shapes ours {ours.shape}, torch {theirs.shape}, want '
                   f'({batch},): DIFFER')
  diff = np.abs(ours - theirs)
  rel = diff / np.maximum(np.abs(theirs), 1.0)
  ok = bool(np.all(np.isfinite(ours)) and np.allclose(ours, theirs, rtol=rtol, atol=rtol))
  return ok, (f'scores: ours {np.round(ours[:4], 4).tolist()}..., torch '
              f'{np.round(theirs[:4], 4).tolist()}...; max |diff| {diff.max():.2e}, max '
              f'relative {rel.max():.2e} (rtol {rtol:g}): {"agree" if ok else "DISAGREE"}')


def compare_tokens(ours, theirs, shape, require_match):
  """(ok, message): greedy token agreement; not ok on a shape mismatch, or on any differing
  token with require_match."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  if ours.shape != tuple(shape) or theirs.shape != tuple(shape):
    return False, (f'greedy tokens: shapes ours {ours.shape}, torch {theirs.shape}, want '
                   f'{tuple(shape)}: DIFFER')
  same = ours == theirs
  # Neither side stops at EOS, so EOS tokens are ordinary tokens here and 0 is only ever
  # an argmax (id 0 is a vocabulary row too), never padding.
  message = (f'greedy tokens: {same.mean():.4f} of {same.size} agree, '
             f'{same.all(-1).mean():.3f} of rows entirely (EOS emitted and decoded past: ours '
             f'{int((ours == EOS_ID).sum())}, torch {int((theirs == EOS_ID).sum())})')
  if require_match and not same.all():
    return False, message + '; DISAGREE (--require_decode_match)'
  return True, message


def main():
  args = parse_args()
  torch_reference.set_threads_and_describe(args.threads)
  hf = torch_reference.build_t5(args, seed=args.seed, train=False, pad_token_id=0,
                                eos_token_id=EOS_ID)
  config, params = torch_reference.to_spt_jax(hf)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  enc, dec_in, tgt = make_rows(args)
  print(f'parameters: {n_params / 1e6:.1f} M; {args.batch} rows, inputs padded to '
        f'{args.inputs} ({int((enc > 0).sum())} real tokens), targets padded to '
        f'{args.targets} ({int((tgt > 0).sum())} real), {args.decode_tokens} decoded tokens, '
        'float32')

  # ---------------------------------------------------------------- ours (jax)
  net = network.Transformer(config)
  scorer = models.EncoderDecoderModel(net)  # score_batch does not use eos_id
  decoder = models.EncoderDecoderModel(net, eos_id=-1)  # no row ends: all steps run
  params = jax.tree.map(jnp.asarray, params)
  batch = {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec_in),
           'decoder_target_tokens': jnp.asarray(tgt)}
  decode_batch = {'encoder_input_tokens': batch['encoder_input_tokens']}

  # As spt_jax.evaluate.Evaluation jits them (there with shardings; one device here).
  score_fn = jax.jit(lambda p, b: scorer.score_batch(p, b, length_normalize=False))
  predict_fn = jax.jit(lambda p, b: decoder.predict_batch(
      p, b, decoding='greedy', max_decode_length=args.decode_tokens))
  t0 = time.perf_counter()
  score_c = score_fn.lower(params, batch).compile()
  t1 = time.perf_counter()
  predict_c = predict_fn.lower(params, decode_batch).compile()
  print(f'jax compile: score {t1 - t0:.1f} s, greedy decode {time.perf_counter() - t1:.1f} s')

  def ours_score():
    return np.asarray(jax.block_until_ready(score_c(params, batch)))

  def ours_decode():
    return np.asarray(jax.block_until_ready(predict_c(params, decode_batch)))

  # ---------------------------------------------------------------- torch
  t_enc = torch.tensor(enc, dtype=torch.long)
  t_mask = (t_enc > 0).long()
  t_dec_in = torch.tensor(dec_in, dtype=torch.long)
  t_tgt = torch.tensor(tgt, dtype=torch.long)
  t_weights = (t_tgt > 0).float()

  def torch_score():
    with torch.inference_mode():
      logits = hf(input_ids=t_enc, attention_mask=t_mask, decoder_input_ids=t_dec_in).logits
      logp = torch.log_softmax(logits.float(), dim=-1)
      token = torch.gather(logp, -1, t_tgt.unsqueeze(-1)).squeeze(-1)
      return (token * t_weights).sum(-1).numpy()

  def torch_decode():
    with torch.inference_mode():
      out = hf.generate(input_ids=t_enc, attention_mask=t_mask,
                        max_new_tokens=args.decode_tokens, do_sample=False, num_beams=1,
                        eos_token_id=None)
    return out[:, 1:].numpy()  # drop the decoder start token

  # ---------------------------------------------------------------- timing, alternated
  names = ('score', 'decode')
  fns = {'score': (ours_score, torch_score), 'decode': (ours_decode, torch_decode)}
  wall = {(n, s): [] for n in names for s in ('ours', 'torch')}
  cpu = {(n, s): [] for n in names for s in ('ours', 'torch')}
  last = {}
  for i in range(args.warmup + args.steps):
    tag = 'warm-up' if i < args.warmup else 'step'
    parts = []
    for name in names:
      for side, fn in zip(('ours', 'torch'), fns[name]):
        last[(name, side)], w, c = timed(fn)
        if i >= args.warmup:
          wall[(name, side)].append(w)
          cpu[(name, side)].append(c)
        parts.append(f'{name} {side} {w:.3f} s')
    print(f'{tag} {i}: ' + ', '.join(parts))

  # ---------------------------------------------------------------- correctness
  score_ok, message = compare_scores(last[('score', 'ours')], last[('score', 'torch')],
                                     args.batch, args.rtol)
  print(message)
  decode_ok, message = compare_tokens(last[('decode', 'ours')], last[('decode', 'torch')],
                                      (args.batch, args.decode_tokens),
                                      args.require_decode_match)
  print(message)
  ok = score_ok and decode_ok

  # ---------------------------------------------------------------- figures
  med = {k: statistics.median(v) for k, v in wall.items()}
  med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
  ratio = {n: med[(n, 'ours')] / med[(n, 'torch')] for n in names}
  print(f'score median over {args.steps}: ours {med[("score", "ours")]:.4f} s '
        f'({args.batch / med[("score", "ours")]:.1f} examples/s), torch '
        f'{med[("score", "torch")]:.4f} s ({args.batch / med[("score", "torch")]:.1f} examples/s)'
        f', time ratio ours/torch = {ratio["score"]:.3f} (cpu time ratio '
        f'{med_cpu[("score", "ours")] / med_cpu[("score", "torch")]:.3f})')
  print(f'greedy decode ({args.decode_tokens} tokens) median over {args.steps}: ours '
        f'{med[("decode", "ours")]:.4f} s, torch {med[("decode", "torch")]:.4f} s, time ratio '
        f'ours/torch = {ratio["decode"]:.3f} (cpu time ratio '
        f'{med_cpu[("decode", "ours")] / med_cpu[("decode", "torch")]:.3f})')
  print(f'load average after: {os.getloadavg()}')
  print(f'correctness: {"passed" if ok else "FAILED"}')
  print(f'ratios ours/torch: score={ratio["score"]:.3f} decode={ratio["decode"]:.3f}')
  if not ok:
    sys.exit(1)


if __name__ == '__main__':
  main()
