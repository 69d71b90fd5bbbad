"""Tests of spt_jax.checkpoints: HF / T5X / orbax import and the model-vs-checkpoint checks.

Numerical parity of an imported HF model with transformers lives in test_network_parity.py;
here: the real T5X fixture, formats (bf16, sharded, legacy layouts) and every error message.
"""
import dataclasses
import json
import os
import pathlib

os.environ.setdefault('USE_TF', '0')  # transformers: do not import TensorFlow models

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import checkpoint_readers
from spt_jax import checkpoints
from spt_jax import network

# Generous: the shared 2-core machine can be very busy; this only catches hangs.
pytestmark = pytest.mark.timeout(600)

# The T5X fixture's model (see ../shared/fixtures/README.md).
FIXTURE_CONFIG = network.T5Config(
    vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8, num_encoder_layers=2,
    num_decoder_layers=2, mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
    relative_attention_num_buckets=4, relative_attention_max_distance=8)

TINY = network.T5Config(
    vocab_size=32, emb_dim=8, num_heads=2, head_dim=3, mlp_dim=16, num_encoder_layers=2,
    num_decoder_layers=1, relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _init(config, prompt_config=None, abstract=False):
  prefix = (None if prompt_config is None
            else pytest.importorskip('spt_jax.prompts').PromptPrefix(prompt_config))
  model = network.Transformer(config, prefix)
  tokens = np.ones((1, 4), np.int32)
  init = lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                            enable_dropout=False)['params']
  return model, (jax.eval_shape(init) if abstract else init())


# ----------------------------------------------------------------------------- T5X


def test_t5x_fixture_tree_equals_init_tree(t5x_dir):
  params = checkpoints.load_t5x(t5x_dir)
  _, expected = _init(FIXTURE_CONFIG, abstract=True)
  expected = flax.linen.unbox(expected)
  got_shapes = {k: v.shape for k, v in checkpoints.flatten(params).items()}
  want_shapes = {k: v.shape for k, v in checkpoints.flatten(expected).items()}
  assert got_shapes == want_shapes
  assert want_shapes == checkpoint_readers.t5x_param_shapes(FIXTURE_CONFIG)
  assert all(v.dtype == np.float32 for v in checkpoints.flatten(params).values())
  # Trained for 3 steps: layer norm scales moved away from their init of ones.
  assert not np.allclose(params['decoder']['decoder_norm']['scale'], 1.0)


def test_t5x_fixture_forward_pass(t5x_dir):
  model, abstract = _init(FIXTURE_CONFIG, abstract=True)
  params = checkpoints.restore_params(t5x_dir, 't5x', abstract)
  enc = np.array([[37, 423, 5, 1, 0], [8, 1, 0, 0, 0]], np.int32)
  tgt = np.array([[71, 1, 0], [9, 12, 1]], np.int32)
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  logits = jax.jit(lambda p: model.apply({'params': p}, enc, dec_in, tgt,
                                         enable_dropout=False))(flax.linen.unbox(params))
  assert logits.shape == (2, 3, 32128)
  assert np.isfinite(np.asarray(logits)).all()


def test_t5x_missing_file_names_step_dirs(tmp_path):
  (tmp_path / 'checkpoint_100').mkdir()
  with pytest.raises(FileNotFoundError, match=r'checkpoint_100.*complete checkpoint_<step>'):
    checkpoints.load_t5x(tmp_path)


def test_t5x_not_msgpack(tmp_path):
  (tmp_path / 'checkpoint').write_bytes(b'\xc1not msgpack')
  with pytest.raises(ValueError, match='not a msgpack T5X checkpoint'):
    checkpoints.load_t5x(tmp_path)


def _write_legacy_t5x(directory: pathlib.Path, params: dict, zarr_names: set[str],
                      kv_driver: str = 'file', zarr_dtype: str = 'float32'):
  """Writes a legacy T5X checkpoint like T5X does: inline leaves + relative zarr arrays."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  flat = {}
  for name, value in checkpoints.flatten(params).items():
    if name in zarr_names:
      rel = 'target.' + name.replace('/', '.')
      store = ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file',
                                                      'path': str(directory / rel)},
                       'metadata': {'shape': list(value.shape), 'dtype': '<f4'
                                    if zarr_dtype == 'float32' else 'bfloat16',
                                    'chunks': list(value.shape)}},
                      create=True).result()
      store.write(np.asarray(value).astype(store.dtype.numpy_dtype)).result()
      flat[name] = {'driver': 'zarr', 'kvstore': {'driver': kv_driver, 'path': rel},
                    'metadata': {'shape': list(value.shape)}}
    else:
      flat[name] = np.asarray(value)
  state = {'version': 3, 'optimizer': {'target': checkpoints.unflatten(flat),
                                       'state': {'step': np.int64(7)}}}
  (directory / 'checkpoint').write_bytes(flax.serialization.msgpack_serialize(state))


@pytest.mark.parametrize('kv_driver,zarr_dtype', [('file', 'float32'), ('gfile', 'bfloat16')])
def test_t5x_roundtrip_written_layout(tmp_path, kv_driver, zarr_dtype):
  _, params = _init(TINY)
  params = jax.tree.map(np.asarray, flax.linen.unbox(params))
  zarr_names = {'token_embedder/embedding', 'encoder/layers_1/mlp/wo/kernel'}
  _write_legacy_t5x(tmp_path, params, zarr_names, kv_driver, zarr_dtype)
  loaded = checkpoints.load_t5x(tmp_path)
  tol = 0 if zarr_dtype == 'float32' else 1e-2
  for name, value in checkpoints.flatten(params).items():
    got = checkpoints.flatten(loaded)[name]
    assert got.dtype == np.float32, name
    np.testing.assert_allclose(got, value, atol=tol, rtol=tol, err_msg=name)


def test_t5x_missing_zarr_array_is_named(tmp_path):
  _, params = _init(TINY)
  params = jax.tree.map(np.asarray, flax.linen.unbox(params))
  _write_legacy_t5x(tmp_path, params, {'decoder/layers_0/mlp/wo/kernel'})
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / 'target.decoder.layers_0.mlp.wo.kernel')
  with pytest.raises(FileNotFoundError, match='decoder/layers_0/mlp/wo/kernel'):
    checkpoints.load_t5x(tmp_path)


def _write_orbax_t5x(model_dir: pathlib.Path, step: int, params: dict):
  """Writes `checkpoint_<step>/state` as t5x.train does (orbax PyTree, OCDBT): T5X's state
  dict {'target': params, 'state': {'step', 'param_states'}}. tests/test_t5x_route.py reads
  what t5x.train itself writes; this one needs no t5x."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = {'target': params,
           'state': {'step': np.int32(step),
                     'param_states': jax.tree.map(lambda a: np.full_like(a, 7.0), params)}}
  step_dir = model_dir / f'checkpoint_{step}'
  ocp.PyTreeCheckpointer().save((step_dir / 'state').absolute(), state)
  (step_dir / 'dataset').mkdir()
  return step_dir


def test_t5x_orbax_layout_reads_target_only_from_step_model_and_state_dirs(tmp_path):
  _, params = _init(TINY)
  params = jax.tree.map(np.asarray, flax.linen.unbox(params))
  old = jax.tree.map(lambda a: a + 1.0, params)
  _write_orbax_t5x(tmp_path, 2, old)
  step_dir = _write_orbax_t5x(tmp_path, 10, params)
  (tmp_path / 'checkpoint_20.orbax-checkpoint-tmp-1').mkdir()   # an unfinished save
  assert checkpoints.t5x_checkpoint_steps(tmp_path) == [2, 10]
  for path in (tmp_path, step_dir, step_dir / 'state'):
    assert checkpoints.detect_format(path) == 't5x', path
    loaded = checkpoints.flatten(checkpoints.load_t5x(path))
    assert set(loaded) == set(checkpoints.flatten(params)), path   # no optimizer state
    for name, value in checkpoints.flatten(params).items():
      assert loaded[name].dtype == np.float32
      np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  older = checkpoints.flatten(checkpoints.load_t5x(tmp_path / 'checkpoint_2'))
  np.testing.assert_array_equal(older['token_embedder/embedding'],
                                params['token_embedder']['embedding'] + 1.0)
  # restore_params fits it to the model as for the legacy layout.
  _, abstract = _init(TINY, abstract=True)
  restored = flax.linen.unbox(checkpoints.restore_params(tmp_path, 't5x', abstract))
  np.testing.assert_array_equal(restored['decoder']['decoder_norm']['scale'],
                                params['decoder']['decoder_norm']['scale'])


def test_t5x_orbax_state_without_target_is_named(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ocp.PyTreeCheckpointer().save((tmp_path / 'checkpoint_1' / 'state').absolute(),
                                {'params': {'w': np.ones(3, np.float32)}})
  with pytest.raises(ValueError, match=r"no 'target'"):
    checkpoints.load_t5x(tmp_path / 'checkpoint_1')


def test_spt_jax_orbax_run_is_not_taken_for_t5x(tmp_path):
  (tmp_path / 'checkpoints' / '3' / 'state').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '3' / 'metadata').mkdir()
  assert checkpoints.detect_format(tmp_path) == 'orbax'
  assert checkpoints.detect_format(tmp_path / 'checkpoints' / '3') == 'orbax'


# ----------------------------------------------------------------------------- HF formats


@pytest.fixture(scope='module')
def hf_model():
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=32, d_model=8, d_kv=3, num_heads=2, d_ff=16, num_layers=2,
      num_decoder_layers=1, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
      relative_attention_num_buckets=4, relative_attention_max_distance=8,
      decoder_start_token_id=0, dropout_rate=0.0)
  return transformers.T5ForConditionalGeneration(config).eval()


def _hf_state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_hf_config_mapping(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  config, params = checkpoints.load_hf_t5(tmp_path)
  assert config == network.T5Config(
      vocab_size=32, emb_dim=8, num_heads=2, head_dim=3, mlp_dim=16, num_encoder_layers=2,
      num_decoder_layers=1, mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
      relative_attention_num_buckets=4, relative_attention_max_distance=8, dropout_rate=0.0)
  state = _hf_state(hf_model)
  np.testing.assert_array_equal(params['encoder']['layers_1']['attention']['query']['kernel'],
                                state['encoder.block.1.layer.0.SelfAttention.q.weight'].T)
  np.testing.assert_array_equal(
      params['decoder']['relpos_bias']['rel_embedding'],
      state['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'].T)
  np.testing.assert_array_equal(params['decoder']['logits_dense']['kernel'],
                                state['lm_head.weight'].T)
  _, expected = _init(config, abstract=True)
  assert checkpoints.check_params_match(expected, params) == []


@pytest.mark.parametrize('proj,acts', [('relu', ('relu',)), ('gated-gelu', ('gelu', 'linear')),
                                        ('gated-silu', ('silu', 'linear'))])
def test_hf_activation_mapping(proj, acts):
  cfg = {'d_model': 8, 'd_kv': 4, 'num_heads': 2, 'd_ff': 16, 'num_layers': 2,
         'vocab_size': 32, 'feed_forward_proj': proj}
  config = checkpoint_readers.hf_config_to_t5(cfg)
  assert config.mlp_activations == acts
  assert config.num_decoder_layers == 2  # defaults to num_layers
  assert config.logits_via_embedding  # HF default tie_word_embeddings=True


def test_hf_unsupported_activation_is_named():
  cfg = {'d_model': 8, 'd_kv': 4, 'num_heads': 2, 'd_ff': 16, 'num_layers': 2,
         'vocab_size': 32, 'feed_forward_proj': 'gelu'}
  with pytest.raises(ValueError, match=r"Unsupported activation feed_forward_proj='gelu'"):
    checkpoint_readers.hf_config_to_t5(cfg)


def test_hf_not_t5_is_refused():
  with pytest.raises(ValueError, match="model_type='bart'"):
    checkpoint_readers.hf_config_to_t5({'model_type': 'bart'})


def test_hf_no_config_or_weights(tmp_path, hf_model):
  with pytest.raises(FileNotFoundError, match='config.json'):
    checkpoints.load_hf_t5(tmp_path)
  hf_model.config.to_json_file(tmp_path / 'config.json')
  with pytest.raises(FileNotFoundError, match='No HF T5 weights'):
    checkpoints.load_hf_t5(tmp_path)


def _save_safetensors(tmp_path, hf_model, state):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf_model.config.to_json_file(tmp_path / 'config.json')
  save_file(state, str(tmp_path / 'model.safetensors'))


def test_hf_missing_tensor_is_named(tmp_path, hf_model):
  state = _hf_state(hf_model)
  del state['decoder.block.0.layer.2.DenseReluDense.wi_1.weight']
  _save_safetensors(tmp_path, hf_model, state)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'decoder/layers_0/mlp/wi_1/kernel .*expected shape \(8, 16\), '
                     'not in checkpoint'):
    checkpoints.load_hf_t5(tmp_path)


def test_hf_wrong_shape_is_named(tmp_path, hf_model):
  state = _hf_state(hf_model)
  state['encoder.block.0.layer.1.DenseReluDense.wo.weight'] = np.zeros((8, 12), np.float32)
  _save_safetensors(tmp_path, hf_model, state)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'encoder/layers_0/mlp/wo/kernel .*expected shape \(16, 8\), '
                     r'found \(12, 8\)'):
    checkpoints.load_hf_t5(tmp_path)


def test_hf_unexpected_tensor_is_named(tmp_path, hf_model):
  state = _hf_state(hf_model)
  state['encoder.block.2.layer.0.layer_norm.weight'] = np.ones((8,), np.float32)
  _save_safetensors(tmp_path, hf_model, state)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'encoder\.block\.2\.layer\.0\.layer_norm\.weight: unexpected'):
    checkpoints.load_hf_t5(tmp_path)


def test_hf_bfloat16_safetensors(tmp_path, hf_model):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  state = {k: v.astype(ml_dtypes.bfloat16) for k, v in _hf_state(hf_model).items()}
  # Ignored tied copies must not break loading.
  state['encoder.embed_tokens.weight'] = state['shared.weight']
  _save_safetensors(tmp_path, hf_model, state)
  _, params = checkpoints.load_hf_t5(tmp_path)
  got = params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert got.dtype == np.float32
  np.testing.assert_array_equal(
      got, state['encoder.block.0.layer.1.DenseReluDense.wi_0.weight'].astype(np.float32).T)


@pytest.mark.parametrize('safe', [True, False])
def test_hf_sharded_checkpoint(tmp_path, hf_model, safe):
  hf_model.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size='2KB')
  index = 'model.safetensors.index.json' if safe else 'pytorch_model.bin.index.json'
  assert (tmp_path / index).is_file()
  assert len(set(json.loads((tmp_path / index).read_text())['weight_map'].values())) > 1
  _, params = checkpoints.load_hf_t5(tmp_path)
  state = _hf_state(hf_model)
  np.testing.assert_array_equal(params['token_embedder']['embedding'], state['shared.weight'])
  np.testing.assert_array_equal(params['encoder']['encoder_norm']['scale'],
                                state['encoder.final_layer_norm.weight'])


def test_hf_sharded_missing_shard(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path, max_shard_size='2KB')
  shard = sorted(tmp_path.glob('model-*.safetensors'))[0]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    checkpoints.load_hf_t5(tmp_path)


# ----------------------------------------------------------------------------- matching


def test_check_params_match_names_every_problem():
  expected = {'encoder': {'a': {'kernel': jax.ShapeDtypeStruct((4, 8), jnp.float32)},
                          'b': {'scale': jax.ShapeDtypeStruct((4,), jnp.float32)}}}
  found = {'encoder': {'a': {'kernel': np.zeros((8, 4))},
                       'c': {'scale': np.zeros((3,))}}}
  with pytest.raises(checkpoints.CheckpointMismatchError) as e:
    checkpoints.check_params_match(expected, found)
  msg = str(e.value)
  assert 'encoder/a/kernel: expected shape (4, 8), found shape (8, 4)' in msg
  assert 'encoder/b/scale: missing from checkpoint (expected shape (4,))' in msg
  assert 'encoder/c/scale: unexpected parameter in checkpoint (found shape (3,)' in msg


def test_check_params_match_refuses_variables_dict():
  with pytest.raises(ValueError, match=r"pass variables\['params'\]"):
    checkpoints.check_params_match({'params': {}}, {})


def _prompt_config():
  prompts = pytest.importorskip('spt_jax.prompts')
  return prompts.PromptConfig(soft_prompt_length=3, memory_size=4, memory_length=2, top_k=2)


def test_restore_params_partial_keeps_prompt_init(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path)
  config, hf_params = checkpoints.load_hf_t5(tmp_path)
  _, expected = _init(config, _prompt_config())
  restored = checkpoints.restore_params(tmp_path, 'hf', expected)
  # Boxes (logical axis names) are kept.
  assert isinstance(restored['encoder']['soft_prompt']['prompt'], flax.linen.Partitioned)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  flat_r = checkpoints.flatten(flax.linen.unbox(restored))
  flat_e = checkpoints.flatten(flax.linen.unbox(expected))
  for name in flat_e:
    if name.startswith(('encoder/soft_prompt/', 'encoder/memory_bank/')):
      np.testing.assert_array_equal(flat_r[name], flat_e[name])
    else:
      np.testing.assert_array_equal(flat_r[name], checkpoints.flatten(hf_params)[name])
  # Without the keep-init regexes the prompt parameters are reported missing.
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'encoder/soft_prompt/prompt: missing from checkpoint'):
    checkpoints.restore_params(tmp_path, 'hf', expected, keep_init=())
  # Keeping an init needs a value, not only a shape.
  _, abstract = _init(config, _prompt_config(), abstract=True)
  with pytest.raises(ValueError, match='holds only its shape'):
    checkpoints.restore_params(tmp_path, 'hf', abstract)


def test_restore_params_wrong_config(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path)
  _, expected = _init(dataclasses.replace(TINY, mlp_dim=32), abstract=True)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'encoder/layers_0/mlp/wo/kernel: expected shape \(32, 8\), '
                     r'found shape \(16, 8\)'):
    checkpoints.restore_params(tmp_path, 'hf', expected)


def test_restore_params_unknown_format(tmp_path):
  with pytest.raises(ValueError, match="Unknown checkpoint format 'npz'"):
    checkpoints.restore_params(tmp_path, 'npz', {})


def test_restore_params_with_shardings(tmp_path, hf_model):
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  hf_model.save_pretrained(tmp_path)
  config, _ = checkpoints.load_hf_t5(tmp_path)
  _, abstract = _init(config, abstract=True)
  mesh = partitioning.create_mesh(mesh_shape=(4, 2))
  shardings = partitioning.param_shardings(abstract, mesh)
  restored = flax.linen.unbox(checkpoints.restore_params(tmp_path, 'hf', abstract,
                                                         shardings=shardings))
  kernel = restored['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel.sharding == shardings['encoder']['layers_0']['mlp']['wi_0']['kernel']


@pytest.mark.parametrize('as_train_state', [False, True])
def test_restore_params_orbax(tmp_path, as_train_state):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _, params = _init(TINY)
  params = flax.linen.unbox(params)
  tree = {'params': params, 'opt_state': {'count': jnp.array(3)}, 'step': jnp.array(3)} \
      if as_train_state else params
  ckpt = tmp_path / '3' / 'state'
  ckpt.parent.mkdir()
  with ocp.StandardCheckpointer() as c:
    c.save(ckpt, tree)
  _, abstract = _init(TINY, abstract=True)
  restored = checkpoints.restore_params(tmp_path / '3', 'orbax', abstract)
  for name, value in checkpoints.flatten(params).items():
    np.testing.assert_array_equal(checkpoints.flatten(flax.linen.unbox(restored))[name],
                                  np.asarray(value))


def test_orbax_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match='orbax'):
    checkpoints.load_orbax_params(tmp_path / 'nope')


def test_restore_params_from_train_state_checkpointer(tmp_path):
  train_state = pytest.importorskip('spt_jax.train_state')
  import optax  # pylint: disable=g-import-not-at-top
  _, params = _init(TINY)
  params = flax.linen.unbox(params)
  opt_state = optax.adafactor(1e-3).init(params)
  state = train_state.TrainState.create(params, opt_state, jax.random.PRNGKey(1))
  ckpt = train_state.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(state)
  ckpt.save(state.replace(step=jnp.array(5, jnp.int32),
                          params=jax.tree.map(lambda x: x + 1.0, params)))
  ckpt.wait()
  ckpt.close()
  _, abstract = _init(TINY, abstract=True)
  for path, offset in ((tmp_path, 1.0), (tmp_path / 'checkpoints', 1.0),
                       (tmp_path / 'checkpoints' / '0', 0.0)):
    restored = flax.linen.unbox(checkpoints.restore_params(path, 'orbax', abstract))
    for name, value in checkpoints.flatten(params).items():
      np.testing.assert_array_equal(checkpoints.flatten(restored)[name],
                                    np.asarray(value) + offset, err_msg=f'{path} {name}')


def test_restore_params_checks_hf_config(tmp_path, hf_model):
  hf_model.save_pretrained(tmp_path)
  config, _ = checkpoints.load_hf_t5(tmp_path)
  _, abstract = _init(config, abstract=True)
  # Same shapes, different function: only the config check can see it.
  wrong = dataclasses.replace(config, mlp_activations=('silu', 'linear'), dropout_rate=0.3)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"mlp_activations: model has \('silu', 'linear'\), .*config.json has "
                     r"\('gelu', 'linear'\)"):
    checkpoints.restore_params(tmp_path, 'hf', abstract, config=wrong)
  # Dropout is a training choice, not part of the checkpoint's function.
  checkpoints.restore_params(tmp_path, 'hf', abstract,
                             config=dataclasses.replace(config, dropout_rate=0.3))


@pytest.mark.parametrize('safe', [True, False], ids=['safetensors', 'bin'])
def test_hf_load_reads_one_tensor_at_a_time(tmp_path, safe):
  """Peak host memory of the import is ~ the parameters + a few tensors, never 2x them."""
  import tracemalloc  # pylint: disable=g-import-not-at-top
  transformers = pytest.importorskip('transformers')
  config = transformers.T5Config(
      vocab_size=32, d_model=64, d_kv=16, num_heads=4, d_ff=256, num_layers=6,
      num_decoder_layers=6, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
      decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  model.save_pretrained(tmp_path, safe_serialization=safe)
  sizes = [p.numel() * 4 for p in model.parameters()]
  total, largest = sum(sizes), max(sizes)
  del model
  tracemalloc.start()
  try:
    _, params = checkpoints.load_hf_t5(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert sum(x.nbytes for x in jax.tree.leaves(params)) == total
  assert largest * 20 < total  # the bound below is meaningful
  assert peak < total + 4 * largest + 512 * 1024, (peak, total, largest)
