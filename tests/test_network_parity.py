"""Numerical parity of our network, loaded by `load_hf_t5`, with transformers' PyTorch T5.

Random-weight HF models are saved with `save_pretrained` (safetensors and the PyTorch .bin
path), loaded with `checkpoints.load_hf_t5`, and run on the same padded batch. Compared at
real (non-pad) positions only: T5X also masks pad *queries*, HF only pad keys, so outputs at
pad positions legitimately differ and are never used.
"""
import os

os.environ.setdefault('USE_TF', '0')  # transformers: do not import TensorFlow models

import jax
import numpy as np
import optax
import pytest

from spt_jax import checkpoints
from spt_jax import network

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Generous: the shared 2-core machine can be very busy; this only catches hangs.
pytestmark = pytest.mark.timeout(600)

# T5.1.1: gated-GELU, untied logits, head_dim (5) != emb_dim / num_heads (16 / 4), 3 encoder
# layers vs 2 decoder layers. T5 1.0: ReLU, tied embedding (logits scaled by 1/sqrt(d)).
HF_CONFIGS = {
    't5_1_1_gated_gelu': dict(
        vocab_size=96, d_model=16, d_kv=5, num_heads=4, d_ff=24, num_layers=3,
        num_decoder_layers=2, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
        relative_attention_num_buckets=8, relative_attention_max_distance=16),
    't5_1_0_relu_tied': dict(
        vocab_size=96, d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=2,
        num_decoder_layers=2, feed_forward_proj='relu', tie_word_embeddings=True,
        relative_attention_num_buckets=8, relative_attention_max_distance=16),
}


def _batch():
  """Padded batch: encoder lengths 9/5/1 of 9, decoder lengths 6/3/1 of 6 (EOS = 1)."""
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 96, size=(3, 9)).astype(np.int32)
  for row, n in enumerate((9, 5, 1)):
    enc[row, n - 1] = 1
    enc[row, n:] = 0
  tgt = rng.randint(2, 96, size=(3, 6)).astype(np.int32)
  for row, n in enumerate((6, 3, 1)):
    tgt[row, n - 1] = 1
    tgt[row, n:] = 0
  dec_in = np.concatenate([np.zeros((3, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def _hf_model(name):
  torch.manual_seed(sum(map(ord, name)))
  config = transformers.T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                 dropout_rate=0.0, **HF_CONFIGS[name])
  model = transformers.T5ForConditionalGeneration(config).eval()
  # HF initialises layer norm scales to 1; perturb them so a mis-mapped scale shows.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if n.endswith('layer_norm.weight'):
        p.mul_(1.0 + 0.3 * torch.rand_like(p))
  return model


@pytest.mark.parametrize('safe_serialization', [True, False], ids=['safetensors', 'bin'])
@pytest.mark.parametrize('name', sorted(HF_CONFIGS))
def test_parity_with_transformers(tmp_path, name, safe_serialization):
  hf = _hf_model(name)
  hf.save_pretrained(tmp_path, safe_serialization=safe_serialization)
  weights = 'model.safetensors' if safe_serialization else 'pytorch_model.bin'
  assert (tmp_path / weights).is_file()
  config, params = checkpoints.load_hf_t5(tmp_path)
  assert config.mlp_activations == (('gelu', 'linear') if 'gelu' in name else ('relu',))
  assert config.logits_via_embedding == ('tied' in name)
  model = network.Transformer(config)

  enc, dec_in, tgt = _batch()
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(enc, dtype=torch.long),
             attention_mask=torch.tensor(enc > 0, dtype=torch.long),
             decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
             labels=torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long))
  ref_encoded = out.encoder_last_hidden_state.numpy()
  ref_logits = out.logits.numpy()
  ref_loss = float(out.loss)

  @jax.jit
  def forward(params):
    encoded = model.apply({'params': params}, enc, enable_dropout=False,
                          method=network.Transformer.encode)
    logits = model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)
    weights = (tgt > 0).astype(np.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    return encoded, logits, (ce * weights).sum() / weights.sum()

  encoded, logits, loss = jax.tree.map(np.asarray, forward(params))
  enc_valid, tgt_valid = enc > 0, tgt > 0
  assert np.abs(encoded - ref_encoded)[enc_valid].max() < 1e-4
  assert np.abs(logits - ref_logits)[tgt_valid].max() < 1e-4
  assert abs(float(loss) - ref_loss) < 1e-5
  # The comparison is not vacuous: outputs vary across positions and vocabulary.
  assert np.abs(ref_logits[tgt_valid]).max() > 1e-2


def test_parity_detects_wrong_mapping(tmp_path):
  """A deliberately wrong import (un-transposed relpos table) must break parity."""
  hf = _hf_model('t5_1_1_gated_gelu')
  hf.save_pretrained(tmp_path)
  config, params = checkpoints.load_hf_t5(tmp_path)
  table = params['encoder']['relpos_bias']['rel_embedding']
  params['encoder']['relpos_bias']['rel_embedding'] = table[:, ::-1].copy()
  enc, _, _ = _batch()
  encoded = network.Transformer(config).apply({'params': params}, enc, enable_dropout=False,
                                              method=network.Transformer.encode)
  with torch.no_grad():
    ref = hf.encoder(input_ids=torch.tensor(enc, dtype=torch.long),
                     attention_mask=torch.tensor(enc > 0, dtype=torch.long))[0].numpy()
  assert np.abs(np.asarray(encoded) - ref)[enc > 0].max() > 1e-3
