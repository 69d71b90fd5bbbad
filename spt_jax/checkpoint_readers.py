"""Readers of checkpoint formats: one checkpoint directory in, a host numpy tree out.

Pretrained T5 weights (T5.1.1, T5.1.1 LM-adapted, T0) are published as transformers (HF)
folders or as T5X checkpoints; spt_jax's own runs are orbax. Each reader turns one exact
directory into the parameter tree of `spt_jax.network.Transformer`, which is exactly T5X's:

  token_embedder/embedding                              [vocab, emb]
  encoder/relpos_bias/rel_embedding                     [heads, buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale     [emb]
  encoder/layers_{i}/attention/{query,key,value}/kernel [emb, heads * head_dim]
  encoder/layers_{i}/attention/out/kernel               [heads * head_dim, emb]
  encoder/layers_{i}/pre_mlp_layer_norm/scale           [emb]
  encoder/layers_{i}/mlp/{wi_0,wi_1 | wi}/kernel        [emb, mlp]
  encoder/layers_{i}/mlp/wo/kernel                      [mlp, emb]
  encoder/encoder_norm/scale                            [emb]
  decoder/relpos_bias/rel_embedding                     [heads, buckets]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale, self_attention/...,
      pre_cross_attention_layer_norm/scale, encoder_decoder_attention/...,
      pre_mlp_layer_norm/scale, mlp/...
  decoder/decoder_norm/scale                            [emb]
  decoder/logits_dense/kernel                           [emb, vocab]   (untied only)

Readers return plain nested dicts of host numpy arrays (float32 unless asked otherwise).
Tensors are read one at a time (safetensors `safe_open`, `torch.load(mmap=True)`,
tensorstore), so importing an 11B checkpoint needs about its size in host memory, not twice
that. Which directory and which step to read, and fitting the tree to a model, are
`spt_jax.checkpoints`'s.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Callable, Mapping

from absl import logging
import flax
from flax import traverse_util
import jax
import numpy as np

from spt_jax import network

Params = dict[str, Any]
PathLike = str | os.PathLike


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model: missing, unexpected or wrongly shaped parameters."""

# HF `feed_forward_proj` -> T5X `mlp_activations`. HF 'gated-gelu' uses gelu_new (tanh
# approximation), which is what `nn.gelu` computes by default. HF's plain 'gelu' is the exact
# erf GELU that T5X's MLP does not offer, so it is refused rather than silently changed.
HF_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    'relu': ('relu',),
    'gated-gelu': ('gelu', 'linear'),
    'gated-relu': ('relu', 'linear'),
    'silu': ('silu',),
    'gated-silu': ('silu', 'linear'),
}

# HF tensors that carry no information of their own: tied copies of the shared embedding and
# the unused relative bias some old checkpoints (t5-small) keep in the first cross-attention.
_HF_IGNORED = (
    re.compile(r'^(encoder|decoder)\.embed_tokens\.weight$'),
    re.compile(r'^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$'),
)


# ----------------------------------------------------------------------------- tree helpers


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}. Boxed leaves (nn.Partitioned) stay whole."""
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def unflatten(flat: Mapping[str, Any]) -> Params:
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def unbox(leaf: Any) -> Any:
  return leaf.unbox() if isinstance(leaf, flax.core.meta.AxisMetadata) else leaf


def leaf_shape(leaf: Any) -> tuple[int, ...]:
  return tuple(np.shape(unbox(leaf)))


# ----------------------------------------------------------------------------- expected shapes


def t5x_param_shapes(config: network.T5Config) -> dict[str, tuple[int, ...]]:
  """Flat {path: shape} of the backbone parameters T5X (and our network) make for `config`.

  Used to check imported tensors as they are read, so that a config.json that disagrees with
  its weights fails on the first tensor with both shapes named.
  """
  emb, heads, head_dim, mlp = (config.emb_dim, config.num_heads, config.head_dim,
                               config.mlp_dim)
  joined = heads * head_dim
  shapes: dict[str, tuple[int, ...]] = {
      'token_embedder/embedding': (config.vocab_size, emb),
      'encoder/relpos_bias/rel_embedding': (heads, config.relative_attention_num_buckets),
      'encoder/encoder_norm/scale': (emb,),
      'decoder/relpos_bias/rel_embedding': (heads, config.relative_attention_num_buckets),
      'decoder/decoder_norm/scale': (emb,),
  }
  if not config.logits_via_embedding:
    shapes['decoder/logits_dense/kernel'] = (emb, config.vocab_size)
  acts = tuple(config.mlp_activations)
  wi_names = ['wi'] if len(acts) == 1 else [f'wi_{i}' for i in range(len(acts))]

  def attention(prefix):
    for name in ('query', 'key', 'value'):
      shapes[f'{prefix}/{name}/kernel'] = (emb, joined)
    shapes[f'{prefix}/out/kernel'] = (joined, emb)

  def mlp_block(prefix):
    for name in wi_names:
      shapes[f'{prefix}/{name}/kernel'] = (emb, mlp)
    shapes[f'{prefix}/wo/kernel'] = (mlp, emb)

  for i in range(config.num_encoder_layers):
    p = f'encoder/layers_{i}'
    shapes[f'{p}/pre_attention_layer_norm/scale'] = (emb,)
    attention(f'{p}/attention')
    shapes[f'{p}/pre_mlp_layer_norm/scale'] = (emb,)
    mlp_block(f'{p}/mlp')
  for i in range(config.num_decoder_layers):
    p = f'decoder/layers_{i}'
    shapes[f'{p}/pre_self_attention_layer_norm/scale'] = (emb,)
    attention(f'{p}/self_attention')
    shapes[f'{p}/pre_cross_attention_layer_norm/scale'] = (emb,)
    attention(f'{p}/encoder_decoder_attention')
    shapes[f'{p}/pre_mlp_layer_norm/scale'] = (emb,)
    mlp_block(f'{p}/mlp')
  return shapes


# ----------------------------------------------------------------------------- HF transformers


def hf_config_to_t5(hf_config: Mapping[str, Any]) -> network.T5Config:
  """Maps a HF `T5Config` (config.json dict) to our `network.T5Config`.

  Raises:
    ValueError: the checkpoint is not a T5 encoder-decoder, or its activation is unsupported.
  """
  model_type = hf_config.get('model_type', 't5')
  if model_type not in ('t5', 'mt5'):
    raise ValueError(f'config.json has model_type={model_type!r}; load_hf_t5 reads T5 / mT5 '
                     'encoder-decoder checkpoints only (t5-v1_1-*, t5-*-lm-adapt, T0, t5-*).')
  proj = hf_config.get('feed_forward_proj', 'relu')
  if proj not in HF_ACTIVATIONS:
    raise ValueError(
        f'Unsupported activation feed_forward_proj={proj!r} in config.json: supported are '
        f'{sorted(HF_ACTIVATIONS)} (HF "gelu" is the exact erf GELU, which the T5X MLP does '
        'not implement; T5.1.1 checkpoints use "gated-gelu").')
  num_layers = hf_config['num_layers']
  num_decoder_layers = hf_config.get('num_decoder_layers') or num_layers
  return network.T5Config(
      vocab_size=hf_config['vocab_size'],
      emb_dim=hf_config['d_model'],
      num_heads=hf_config['num_heads'],
      head_dim=hf_config['d_kv'],
      mlp_dim=hf_config['d_ff'],
      num_encoder_layers=num_layers,
      num_decoder_layers=num_decoder_layers,
      mlp_activations=HF_ACTIVATIONS[proj],
      logits_via_embedding=bool(hf_config.get('tie_word_embeddings', True)),
      relative_attention_num_buckets=hf_config.get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=hf_config.get('relative_attention_max_distance', 128),
      dropout_rate=hf_config.get('dropout_rate', 0.1),
      layer_norm_epsilon=hf_config.get('layer_norm_epsilon', 1e-6),
  )


def _hf_name_map(config: network.T5Config) -> dict[str, tuple[str, bool]]:
  """{HF tensor name: (T5X path, transpose?)} for every backbone parameter."""
  names: dict[str, tuple[str, bool]] = {
      'shared.weight': ('token_embedder/embedding', False),
      'encoder.final_layer_norm.weight': ('encoder/encoder_norm/scale', False),
      'decoder.final_layer_norm.weight': ('decoder/decoder_norm/scale', False),
      # HF keeps the bias table in layer 0 of each stack as [buckets, heads].
      'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight':
          ('encoder/relpos_bias/rel_embedding', True),
      'decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight':
          ('decoder/relpos_bias/rel_embedding', True),
  }
  if not config.logits_via_embedding:
    names['lm_head.weight'] = ('decoder/logits_dense/kernel', True)
  gated = len(config.mlp_activations) > 1
  hf_wi = ['wi_0', 'wi_1'] if gated else ['wi']

  def attention(hf_prefix, t5x_prefix):
    for hf, ours in (('q', 'query'), ('k', 'key'), ('v', 'value'), ('o', 'out')):
      # torch Linear stores [out, in]; T5X kernels are [in, out].
      names[f'{hf_prefix}.{hf}.weight'] = (f'{t5x_prefix}/{ours}/kernel', True)

  def mlp_block(hf_prefix, t5x_prefix):
    for name in hf_wi + ['wo']:
      names[f'{hf_prefix}.{name}.weight'] = (f'{t5x_prefix}/{name}/kernel', True)

  for i in range(config.num_encoder_layers):
    hf, ours = f'encoder.block.{i}.layer', f'encoder/layers_{i}'
    names[f'{hf}.0.layer_norm.weight'] = (f'{ours}/pre_attention_layer_norm/scale', False)
    attention(f'{hf}.0.SelfAttention', f'{ours}/attention')
    names[f'{hf}.1.layer_norm.weight'] = (f'{ours}/pre_mlp_layer_norm/scale', False)
    mlp_block(f'{hf}.1.DenseReluDense', f'{ours}/mlp')
  for i in range(config.num_decoder_layers):
    hf, ours = f'decoder.block.{i}.layer', f'decoder/layers_{i}'
    names[f'{hf}.0.layer_norm.weight'] = (f'{ours}/pre_self_attention_layer_norm/scale', False)
    attention(f'{hf}.0.SelfAttention', f'{ours}/self_attention')
    names[f'{hf}.1.layer_norm.weight'] = (f'{ours}/pre_cross_attention_layer_norm/scale',
                                          False)
    attention(f'{hf}.1.EncDecAttention', f'{ours}/encoder_decoder_attention')
    names[f'{hf}.2.layer_norm.weight'] = (f'{ours}/pre_mlp_layer_norm/scale', False)
    mlp_block(f'{hf}.2.DenseReluDense', f'{ours}/mlp')
  return names


class _SafetensorsFile:
  """Lazy tensor access to one .safetensors file (bfloat16 included, which numpy lacks)."""

  def __init__(self, path: pathlib.Path):
    import safetensors  # pylint: disable=g-import-not-at-top
    self._path = path
    self._handle = safetensors.safe_open(str(path), framework='numpy')
    self._file = self._handle.__enter__()
    self._header = None

  def keys(self) -> list[str]:
    return list(self._file.keys())

  def get(self, key: str) -> np.ndarray:
    if self._file.get_slice(key).get_dtype() != 'BF16':
      return self._file.get_tensor(key)
    # numpy has no bfloat16, so safe_open(framework='numpy') refuses it: map the bytes with
    # ml_dtypes instead (a view on the mmap, still one tensor at a time).
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    if self._header is None:
      with open(self._path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        self._header = (8 + n, json.loads(f.read(n)))
    base, header = self._header
    info = header[key]
    start, end = info['data_offsets']
    mm = np.memmap(self._path, dtype=np.uint8, mode='r', offset=base + start,
                   shape=(end - start,))
    return mm.view(ml_dtypes.bfloat16).reshape(info['shape'])

  def close(self):
    self._handle.__exit__(None, None, None)


class _TorchBinFile:
  """Lazy tensor access to one pytorch_model*.bin (zip format memory-maps; legacy does not)."""

  def __init__(self, path: pathlib.Path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{path} is a PyTorch .bin checkpoint; reading it needs torch '
                        '(pip install -r requirements-dev.txt), or convert it to '
                        'safetensors.') from e
    self._torch = torch
    try:
      self._state = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except RuntimeError as e:
      logging.warning('torch.load(mmap=True) failed for %s (%s); loading it whole (legacy '
                      'non-zip format needs host memory for the full file).', path, e)
      self._state = torch.load(path, map_location='cpu', weights_only=True)

  def keys(self) -> list[str]:
    return list(self._state.keys())

  def get(self, key: str) -> np.ndarray:
    t = self._state[key]
    if t.dtype == self._torch.bfloat16:
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  def close(self):
    self._state = None


def _hf_weight_files(path: pathlib.Path) -> tuple[list[pathlib.Path], Callable[[pathlib.Path],
                                                                               Any]]:
  """The weight files of a HF directory (sharded or not) and the opener for their format."""
  candidates = [
      ('model.safetensors.index.json', 'model.safetensors', _SafetensorsFile),
      ('pytorch_model.bin.index.json', 'pytorch_model.bin', _TorchBinFile),
  ]
  for index_name, single_name, opener in candidates:
    if (path / index_name).is_file():
      weight_map = json.loads((path / index_name).read_text())['weight_map']
      files = sorted(set(weight_map.values()))
      missing = [f for f in files if not (path / f).is_file()]
      if missing:
        raise FileNotFoundError(f'{path / index_name} lists shard(s) {missing} that are not '
                                'in the directory; download every shard.')
      return [path / f for f in files], opener
    if (path / single_name).is_file():
      return [path / single_name], opener
  raise FileNotFoundError(
      f'No HF T5 weights in {path}: expected model.safetensors, pytorch_model.bin, or a '
      'sharded *.index.json next to config.json (e.g. from save_pretrained or '
      'huggingface_hub.snapshot_download).')


def load_hf_t5(path: PathLike, dtype: Any = np.float32) -> tuple[network.T5Config, Params]:
  """Loads a HF transformers T5 directory into our `T5Config` and T5X parameter tree.

  Args:
    path: directory with `config.json` and `model.safetensors` / `pytorch_model.bin`, or
      their sharded variants with `*.index.json` (t5-v1_1-*, t5-*-lm-adapt, T0, t5-*).
    dtype: dtype of the returned arrays (params stay float32 in training; the checkpoint may be
      bfloat16 or float16).

  Returns:
    (config, params): params a nested dict of numpy arrays shaped as `t5x_param_shapes`.

  Raises:
    FileNotFoundError: no config.json or no weights.
    ValueError: not a T5 checkpoint or unsupported activation.
    CheckpointMismatchError: tensors missing, unexpected, or shaped unlike config.json says.
  """
  path = pathlib.Path(path)
  if not (path / 'config.json').is_file():
    raise FileNotFoundError(f'{path / "config.json"} not found: load_hf_t5 wants a HF T5 '
                            'model directory (config.json + weights).')
  config = hf_config_to_t5(json.loads((path / 'config.json').read_text()))
  name_map = _hf_name_map(config)
  shapes = t5x_param_shapes(config)
  files, opener = _hf_weight_files(path)

  flat: dict[str, np.ndarray] = {}
  unexpected: list[str] = []
  problems: list[str] = []
  misshapen: set[str] = set()
  fallback_embedding = None
  for file in files:
    reader = opener(file)
    try:
      for key in reader.keys():
        if key == 'lm_head.weight' and config.logits_via_embedding:
          continue  # a copy of shared.weight, saved by some exporters
        if key not in name_map:
          if any(p.match(key) for p in _HF_IGNORED):
            if key == 'encoder.embed_tokens.weight' and fallback_embedding is None:
              fallback_embedding = (file, key)
            continue
          unexpected.append(key)
          continue
        target, transpose = name_map[key]
        array = reader.get(key)
        found = tuple(array.shape[::-1] if transpose else array.shape)
        if found != shapes[target]:
          problems.append(f'{target} (from HF {key}): expected shape {shapes[target]}, found '
                          f'{found} (HF shape {tuple(array.shape)})')
          misshapen.add(target)
          continue
        array = array.T if transpose else array
        flat[target] = np.ascontiguousarray(array, dtype=dtype)
        del array
    finally:
      reader.close()

  if 'token_embedder/embedding' not in flat and fallback_embedding is not None:
    # Some exporters (encoder-only saves) keep only the per-stack embedding copies.
    reader = opener(fallback_embedding[0])
    try:
      flat['token_embedder/embedding'] = np.asarray(reader.get(fallback_embedding[1]),
                                                    dtype=dtype)
    finally:
      reader.close()
  missing = [f'{target} (HF {key}): expected shape {shapes[target]}, not in checkpoint'
             for key, (target, _) in name_map.items()
             if target not in flat and target not in misshapen]
  problems = missing + problems + [
      f'{key}: unexpected tensor in checkpoint (no T5X parameter for it; is this a T5 '
      'encoder-decoder with the config.json next to it?)' for key in unexpected]
  if problems:
    raise CheckpointMismatchError(f'HF checkpoint {path} does not match its config.json '
                                  f'({config}):\n  ' + '\n  '.join(problems))
  logging.info('Loaded HF T5 checkpoint %s: %d tensors.', path, len(flat))
  return config, unflatten(flat)


# ----------------------------------------------------------------------------- T5X


def _is_tensorstore_spec(x: Any) -> bool:
  return isinstance(x, dict) and 'driver' in x and 'kvstore' in x


def _absolute_spec(spec: dict[str, Any], ckpt_dir: pathlib.Path) -> dict[str, Any]:
  """T5X stores tensorstore paths relative to the checkpoint dir; make them local absolute.

  Only local directories are read (copy a GCS checkpoint with `gsutil -m cp -r` first). An
  array whose spec names GCS is looked up by its folder name inside the local directory.
  """
  spec = json.loads(json.dumps(spec))  # deep copy of plain data
  kvstore = spec['kvstore']
  if isinstance(kvstore, str):  # very old specs: a bare path
    kvstore = {'driver': 'file', 'path': kvstore}
  rel = kvstore.get('path', '')
  if kvstore.get('driver', 'file') not in ('file', 'gfile'):
    rel = pathlib.PurePosixPath(rel).name
  # T5X writes 'gfile' (its internal kvstore) or 'file'; both are local files here.
  spec['kvstore'] = {'driver': 'file',
                     'path': rel if os.path.isabs(rel) else str(ckpt_dir / rel)}
  return spec


def _read_tensorstore(spec: dict[str, Any], ckpt_dir: pathlib.Path, name: str) -> np.ndarray:
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  full = _absolute_spec(spec, ckpt_dir)
  try:
    store = ts.open(full, open=True).result()
  except Exception as e:  # tensorstore raises ValueError / its own errors
    raise FileNotFoundError(f'T5X checkpoint {ckpt_dir}: cannot open the tensorstore array of '
                            f'{name} at {full["kvstore"]}: {e}') from e
  return store.read().result()



def is_t5x_orbax_state(path: pathlib.Path) -> bool:
  """Whether `path` is the orbax `state` item T5X's Checkpointer writes (PyTree metadata)."""
  return path.is_dir() and (path / '_METADATA').is_file()


def _load_t5x_orbax(state_dir: pathlib.Path, dtype: Any) -> Params:
  """The `target` subtree (the parameters) of T5X's orbax `checkpoint_<step>/state`."""
  target = restore_orbax_subtree(state_dir, 'target')
  return jax.tree.map(lambda a: _cast_float(np.asarray(a), dtype), target)


def _cast_float(array: np.ndarray, dtype: Any) -> np.ndarray:
  if np.issubdtype(array.dtype, np.floating) or array.dtype.name == 'bfloat16':
    return array.astype(dtype)
  return array



def read_t5x(step_dir: PathLike, dtype: Any = np.float32) -> Params:
  """The parameters (`target`) of one T5X `checkpoint_<step>` directory, optimizer state ignored.

  Reads both layouts T5X writes:

  * orbax (what `python -m t5x.train` writes today): `state/` is an orbax PyTree checkpoint
    (OCDBT) of T5X's state dict `{'target': params, 'state': {'step', 'param_states'}}`; only
    `target` is restored (orbax partial restore), with tensorstore underneath.
  * legacy: a msgpack `checkpoint` file `{'version', 'optimizer': {'target', 'state'}}` whose
    small leaves are inline numpy arrays (flax.serialization ext types) and whose large leaves
    are tensorstore specs pointing to zarr arrays in sibling folders.

  `checkpoints.load_t5x` finds the step directory of a model directory or a file path.

  Raises:
    FileNotFoundError: the directory holds neither layout.
    ValueError: a `checkpoint` file that is not msgpack, or a tree without parameters.
  """
  step_dir = pathlib.Path(step_dir)
  if is_t5x_orbax_state(step_dir / 'state') and not (step_dir / 'checkpoint').is_file():
    logging.info('T5X orbax checkpoint %s.', step_dir)
    return _load_t5x_orbax(step_dir / 'state', dtype)
  ckpt_file = step_dir / 'checkpoint'
  ckpt_dir = step_dir
  if not ckpt_file.is_file():
    raise FileNotFoundError(f'{step_dir} holds neither an orbax state/ nor a msgpack '
                            '`checkpoint` file of T5X.')
  with open(ckpt_file, 'rb') as f:
    try:
      state = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several unrelated types
      raise ValueError(f'{ckpt_file} is not a msgpack T5X checkpoint: {e}') from e
  if 'optimizer' in state and 'target' in state['optimizer']:
    target = state['optimizer']['target']
  elif 'target' in state:
    target = state['target']
  else:
    raise ValueError(f'{ckpt_file} has top-level keys {sorted(state)}; a T5X checkpoint has '
                     "'optimizer' -> 'target' (the parameters).")
  logging.info('T5X checkpoint %s: version %s.', ckpt_file, state.get('version'))

  def read(node, prefix):
    if _is_tensorstore_spec(node):
      array = _read_tensorstore(node, ckpt_dir, prefix)
    elif isinstance(node, dict):
      return {k: read(v, f'{prefix}/{k}' if prefix else k) for k, v in node.items()}
    else:
      array = np.asarray(node)
    return _cast_float(array, dtype)

  return read(target, '')



# ----------------------------------------------------------------------------- orbax


def restore_orbax_subtree(item_dir: pathlib.Path, key: str, required: bool = True) -> Params:
  """Host numpy arrays of `tree[key]` of an orbax PyTree checkpoint (partial restore).

  With `required=False` a tree without a top-level `key` is restored whole.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  item_dir = item_dir.absolute()
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(item_dir)
  except Exception as e:  # orbax raises several types for "not a checkpoint"
    raise FileNotFoundError(f'{item_dir} is not an orbax PyTree checkpoint: {e}') from e
  tree = metadata.item_metadata if hasattr(metadata, 'item_metadata') else metadata
  tree = getattr(tree, 'tree', tree)
  partial = isinstance(tree, Mapping) and key in tree
  if required and not partial:
    top = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ValueError(f'Orbax checkpoint {item_dir} has top-level entries {top}, no {key!r}; '
                     f'a T5X state has {key!r} (the parameters) and \'state\'.')
  wanted = {key: tree[key]} if partial else tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(
      item_dir, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                            partial_restore=partial))
  params = restored[key] if partial else restored
  return jax.tree.map(np.asarray, flax.core.unfreeze(params))
