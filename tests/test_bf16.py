"""bfloat16 activations (what every pod model gin file sets) against float32, same params.

The model gin files (gin/models/t5_1_1_{small,base,large,xl,xxl}.gin) set
`ACTIVATION_DTYPE = 'bfloat16'`, i.e. `network.T5Config.dtype`: parameters stay float32 and
every layer computes in bfloat16 (softmax, layer-norm statistics and logits in float32).
These tests run the SPT network (soft prompt + top-k memory retrieval) in both dtypes from
the same float32 parameters on random inputs, and the tiny copy-task trainer for 20 steps.

Measured here (2-core CPU, jax 0.10.2; the tests print them: `pytest -s tests/test_bf16.py`):
  * retrieval: the top-k set is identical for 4096 / 4096 rows (100 %). With the query
    pooled from the bfloat16-rounded embeddings (before `network.retrieval_embedding`):
    4067 / 4096 (99.29 %).
  * logits (256 rows x 8 positions x 5000): max |bf16 - f32| = 0.0506 = 0.0098 x max |f32|;
    RMS difference 0.0077 x RMS of the float32 logits. Before the fix: 0.154 x max |f32|
    from the 1 of these 256 rows whose retrieval flipped, 0.039 on the others (their
    prompt weights k·softmax(s / 0.1) also came from the rounded query).
  * 20 training steps at learning rate 3e-3: all losses finite; max relative difference to
    float32 0.0051 (step 17); loss 186.90 -> 45.90 (f32), 186.94 -> 46.02 (bf16).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_testlib as tl
from spt_jax import network
from spt_jax import partitioning
from spt_jax import prompts

# A T5.1.1-shaped model, small enough for CPU; the SPT bank has the paper's M and k
# (gin/methods/spt.gin: memory_size 1024, top_k 4, cosine similarity, mean pooling).
F32 = network.T5Config(vocab_size=5000, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                       num_encoder_layers=2, num_decoder_layers=2)
BF16 = dataclasses.replace(F32, dtype='bfloat16')
SPT = prompts.PromptConfig(soft_prompt_length=4, memory_size=1024, memory_length=2, top_k=4)
RETRIEVAL_ROWS, LOGIT_ROWS, ENC_LEN, DEC_LEN = 4096, 256, 16, 8


@pytest.fixture(scope='module')
def params_and_inputs():
  """float32 params of the SPT network and random inputs with random lengths (>= 1)."""
  rng = np.random.RandomState(0)
  enc = rng.randint(2, F32.vocab_size, size=(RETRIEVAL_ROWS, ENC_LEN)).astype(np.int32)
  lengths = rng.randint(1, ENC_LEN + 1, size=RETRIEVAL_ROWS)
  enc[np.arange(ENC_LEN)[None] >= lengths[:, None]] = 0
  dec = rng.randint(2, F32.vocab_size, size=(RETRIEVAL_ROWS, DEC_LEN)).astype(np.int32)
  model = network.Transformer(F32, prompts.PromptPrefix(SPT))
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), enc[:2], dec[:2], dec[:2],
                                      enable_dropout=False))()['params']
  return params, enc, dec


def _encode(config, params, enc):
  """`[B, P+T, d]` encoder output and `[B, k]` retrieved slots of `config`'s dtype."""
  model = network.Transformer(config, prompts.PromptPrefix(SPT))
  fn = jax.jit(lambda p, e: model.apply({'params': p}, e, enable_dropout=False,
                                        method=network.Transformer.encode,
                                        mutable=[prompts.RETRIEVAL_COLLECTION]))
  encoded, state = fn(params, enc)
  return encoded, np.asarray(state[prompts.RETRIEVAL_COLLECTION]['encoder']['memory_bank'][
      'indices'][0])


def _logits(config, params, enc, dec):
  model = network.Transformer(config, prompts.PromptPrefix(SPT))
  return np.asarray(jax.jit(lambda p, e, d: model.apply({'params': p}, e, d, d,
                                                        enable_dropout=False))(params, enc, dec))


def test_retrieval_top_k_sets_agree_with_float32(params_and_inputs):
  """The top-k set (order ignored) of >= 99.9 % of 4096 rows is the same in bf16 as in f32.

  The issue asks for >= 99 %; retrieval is float32 in both dtypes (the query is pooled from
  the float32 embedding rows, `network.retrieval_embedding`, and scored against float32
  keys), so the sets should be identical, and 99.9 % only leaves room for XLA fusing the
  float32 score matmul differently in the two graphs. The old bf16-pooled query gave 99.29 %
  here (29 rows flipped), which passes 99 % but fails this (see the module docstring).
  """
  params, enc, _ = params_and_inputs
  encoded32, slots32 = _encode(F32, params, enc)
  encoded16, slots16 = _encode(BF16, params, enc)
  # The bf16 network really computed in bf16 (else this test would compare f32 with f32).
  assert encoded32.dtype == jnp.float32 and encoded16.dtype == jnp.bfloat16
  assert slots16.shape == slots32.shape == (RETRIEVAL_ROWS, SPT.top_k)
  same = np.all(np.sort(slots16, axis=1) == np.sort(slots32, axis=1), axis=1)
  print(f'retrieval agreement bf16 vs f32: {same.sum()} / {len(same)} = {same.mean():.4f}')
  assert same.mean() >= 0.999, (same.sum(), len(same))


def test_logits_close_to_float32(params_and_inputs):
  """bf16 logits within 0.05 x max |logits| (max) and 0.03 x RMS (RMS) of float32's.

  bfloat16 keeps 8 significant bits (relative rounding error <= 2^-9 ~ 0.2 %); each of the
  4 layers rounds every activation and matmul result, and the roundings add up roughly as a
  random walk, so about 1 % of the logits' scale is what bf16 gives here (measured: 0.0098
  max, 0.0077 RMS; see the module docstring); 5 x / 4 x that leaves room for other XLA
  versions and CPUs. A flipped retrieval gives a row other prompts, i.e. differences of the
  order of the logits themselves (0.15 x max before `network.retrieval_embedding`), which
  fails.
  """
  params, enc, dec = params_and_inputs
  enc, dec = enc[:LOGIT_ROWS], dec[:LOGIT_ROWS]
  want = _logits(F32, params, enc, dec)
  got = _logits(BF16, params, enc, dec)
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  diff = np.abs(got - want)
  max_rel = diff.max() / np.abs(want).max()
  rms_rel = np.sqrt(np.mean(diff ** 2)) / np.sqrt(np.mean(want ** 2))
  print(f'logits bf16 vs f32: max |diff| {diff.max():.4f} = {max_rel:.4f} x max |f32|; '
        f'RMS diff {rms_rel:.4f} x RMS f32')
  assert 0 < max_rel <= 0.05
  assert rms_rel <= 0.03


# The trainer tests' 1e-2 is at the edge of stability for this task (the float32 loss jumps
# back up, e.g. 105.8 -> 130.3 at step 6 and 44.9 -> 61.7 at step 14), where any perturbation
# grows: there bf16 stays within 0.8 % of float32 for 8 steps, then differs by up to 27 %
# (step 16). At 3e-3 the loss still falls 4x in 20 steps and bf16's own error is what is seen.
LEARNING_RATE = 3e-3


def _train(tmp_path, name, dtype):
  kw = tl.reference_kwargs(str(tmp_path / name), 20, dropout_rate=0.0)
  kw.update(model=tl.tiny_model(dtype=dtype), learning_rate=LEARNING_RATE,
            save_every_steps=20, log_every_steps=1)
  result = tl.run_train(mesh=partitioning.create_mesh(devices=jax.devices()[:1]), **kw)
  return {s: m['loss'] for s, m in result['history']}


@pytest.mark.slow  # two 20-step runs with compilation (30-50 s here)
def test_twenty_bf16_train_steps_stay_finite_and_close_to_float32(tmp_path):
  """The tiny SPT copy task, 20 steps: bf16 losses finite and within 2 % of float32's.

  Both runs start from the same float32 parameters and see the same batches, so the losses
  differ only through bf16 rounding in the forward and backward passes (the loss is computed
  in float32 from float32 logits): 2e-4 relative at step 1, growing over the updates to a
  measured max of 0.0051 (step 17); 2 % is 4 x that.
  """
  tl.register_task()
  want = _train(tmp_path, 'f32', 'float32')
  got = _train(tmp_path, 'bf16', 'bfloat16')
  assert sorted(got) == sorted(want) == list(range(1, 21))
  assert all(np.isfinite(v) for v in got.values())
  rel = {s: abs(got[s] - want[s]) / abs(want[s]) for s in want}
  print(f'bf16 vs f32 training losses: max relative difference {max(rel.values()):.4f} '
        f'(step {max(rel, key=rel.get)}); f32 {want[1]:.2f} -> {want[20]:.2f}, '
        f'bf16 {got[1]:.2f} -> {got[20]:.2f}')
  assert max(rel.values()) <= 0.02
  # The bf16 run trained (the loss fell), and bf16 was in effect (losses not bit-identical).
  assert got[20] < 0.5 * got[1]
  assert any(got[s] != want[s] for s in want)
