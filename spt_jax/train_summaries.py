"""What a training run reports: its model FLOPs and MFU, and the writers of its scalars.

`model_flops_per_step` and `peak_flops` give the MFU the trainer logs (`perf/mfu`);
`Writers` sends every scalar to TensorBoard (clu) and to `MODEL_DIR/metrics.jsonl` (one JSON
object per step, `JsonlWriter`), on process 0 only.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging
from etils import epath

from spt_jax import models as models_lib
from spt_jax import optim

# Peak dense FLOP/s per device (bf16 on accelerators; fp32 measured roofline on CPU), used
# for the MFU estimate when `peak_flops_per_device` is not given. Substring of device_kind.
PEAK_FLOPS_BY_DEVICE_KIND = (
    ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12),
    ('TPU v5', 459e12), ('TPU v4', 275e12), ('TPU v3', 123e12), ('TPU v2', 45e12),
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12),
    ('cpu', 189e9),
)


# ------------------------------------------------------------------------------------------
# FLOPs / MFU.
# ------------------------------------------------------------------------------------------
def model_flops_per_step(model: models_lib.EncoderDecoderModel, abstract_params: Any,
                         batch_size: int, input_length: int, target_length: int) -> float:
  """Training FLOPs of one step (forward + backward = 3 × forward), MaxText-style estimate.

  Matmul FLOPs: 6 × (encoder kernel parameters × encoder positions + decoder kernel
  parameters, logits projection included, × decoder positions); attention: 12 × layers ×
  query positions × key positions × heads × head_dim for encoder self-, decoder self- and
  cross-attention. Encoder positions include the prompt prefix. Counted whether or not a
  parameter is frozen ("model FLOPs").
  """
  cfg = model.network.config
  enc_len = input_length + model.prefix_length
  flat = optim.flatten_paths(abstract_params)
  enc = sum(math.prod(a.shape) for k, a in flat.items()
            if k.startswith('encoder/') and k.endswith('kernel'))
  dec = sum(math.prod(a.shape) for k, a in flat.items()
            if k.startswith('decoder/') and k.endswith('kernel'))
  if cfg.logits_via_embedding:
    dec += cfg.vocab_size * cfg.emb_dim
  d_attn = cfg.num_heads * cfg.head_dim
  attn = 12 * d_attn * (cfg.num_encoder_layers * enc_len * enc_len
                        + cfg.num_decoder_layers * (target_length * target_length
                                                    + target_length * enc_len))
  return float(batch_size * (6 * (enc * enc_len + dec * target_length) + attn))


def peak_flops(device: jax.Device | None = None) -> float:
  """Peak FLOP/s of one device from `PEAK_FLOPS_BY_DEVICE_KIND` (CPU: measured fp32)."""
  device = device or jax.devices()[0]
  kind = f'{device.device_kind} {device.platform}'
  for key, value in PEAK_FLOPS_BY_DEVICE_KIND:
    if key.lower() in kind.lower():
      return value
  logging.warning('Unknown device kind %r; set train.peak_flops_per_device for MFU.', kind)
  return float('nan')


# ------------------------------------------------------------------------------------------
# Writers.
# ------------------------------------------------------------------------------------------
class JsonlWriter:
  """clu-style metric writer appending one JSON object per step to `<dir>/metrics.jsonl`.

  Only scalars (and hparams, once, under step -1) are written; other summary kinds belong
  to TensorBoard.
  """

  def __init__(self, directory: str, filename: str = 'metrics.jsonl'):
    self._path = epath.Path(directory) / filename
    self._fh = self._path.open('a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._fh.write(json.dumps(record) + '\n')

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._fh.write(json.dumps({'step': -1, 'hparams': {k: str(v) for k, v in hparams.items()}})
                   + '\n')

  def flush(self) -> None:
    self._fh.flush()

  def close(self) -> None:
    self._fh.close()


class Writers:
  """TensorBoard (+ logging) and JSON lines on process 0; nothing elsewhere."""

  def __init__(self, model_dir: str):
    self._writers = []
    if jax.process_index() == 0:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writers = [
          metric_writers.SummaryWriter(os.fspath(model_dir)),
          JsonlWriter(model_dir)]

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_scalars(step, values)

  def hparams(self, values: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_hparams(values)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.flush()
      w.close()
