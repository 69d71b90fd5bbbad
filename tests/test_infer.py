"""Tests of spt_jax.infer: JSON-lines predictions for a prompt file or a seqio task."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio

from spt_jax import configs
from spt_jax import infer
from spt_jax import network
from spt_jax import partitioning
from spt_jax import prompts
from spt_jax import runner
import test_evaluate  # registers the tiny `evaltest_*` score-eval tasks

VOCAB_PATH = seqio.test_utils.sentencepiece_vocab().sentencepiece_model_file


def _model():
  config = network.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                            num_encoder_layers=1, num_decoder_layers=1)
  return runner.create_model(config, prompts.PromptConfig(
      soft_prompt_length=2, memory_size=8, memory_length=2, top_k=2, init_vocab_size=32))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """An orbax step directory with random tiny-SPT params."""
  model = _model()
  setup = runner.ModelSetup.create(model, {'inputs': 16, 'targets': 8},
                                   mesh=partitioning.create_mesh())
  params = jax.device_get(setup.init_params(jax.random.PRNGKey(0)))
  path = tmp_path_factory.mktemp('run') / 'checkpoints' / '5'
  ocp.PyTreeCheckpointer().save(path, {'params': params})
  return model, path, params


@pytest.mark.slow  # compiles the tiny model (> 20 s on the shared 2-core machine)
def test_prompt_file_one_line_per_input_and_matches_greedy(checkpoint, tmp_path):
  model, path, params = checkpoint
  prompts_file = tmp_path / 'prompts.txt'
  lines = ['is the sky blue', '', 'one plus one', 'pick a fruit', 'a dog says', 'snow is']
  prompts_file.write_text('\n'.join(lines) + '\n')
  out = tmp_path / 'out' / 'pred.jsonl'
  result = infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)),
                       output_file=str(out), input_file=str(prompts_file),
                       vocabulary_path=VOCAB_PATH, batch_size=8, max_decode_length=6, model=model)
  records = [json.loads(l) for l in out.read_text().splitlines()]
  assert result == {'output_file': str(out), 'num_predictions': 5, 'step': 5}
  assert [r['input'] for r in records] == [l for l in lines if l]
  assert all(set(r) == {'input', 'prediction', 'score'} for r in records)
  # The first prediction is greedy decoding of the first prompt, by hand.
  vocab = seqio.SentencePieceVocabulary(VOCAB_PATH, extra_ids=100)
  ids = vocab.encode(lines[0])
  enc = np.zeros((1, 16), np.int32)
  enc[0, :len(ids)] = ids
  tokens = model.predict_batch(params, {'encoder_input_tokens': enc},
                               max_decode_length=6)
  assert records[0]['prediction'] == vocab.decode(np.asarray(tokens)[0].tolist())


@pytest.mark.slow  # compiles the tiny model (> 20 s on the shared 2-core machine)
def test_task_examples_with_targets_and_beam(checkpoint, tmp_path):
  model, path, _ = checkpoint
  out = tmp_path / 'pred.jsonl'
  task = test_evaluate.TASKS[0]
  result = infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)),
                       output_file=str(out), task_name=task, num_examples=5, batch_size=8,
                       max_decode_length=6, model=model, decoding='beam', num_decodes=2)
  records = [json.loads(l) for l in out.read_text().splitlines()]
  assert result['num_predictions'] == len(records) == 5
  assert all({'input', 'prediction', 'target', 'score'} == set(r) for r in records)
  assert records[0]['input'] == test_evaluate._EXAMPLES[0][0]
  assert records[0]['target'] == test_evaluate._EXAMPLES[0][2][0]


def test_bad_inputs_give_clear_errors(checkpoint, tmp_path):
  model, path, _ = checkpoint
  out = str(tmp_path / 'p.jsonl')
  with pytest.raises(ValueError, match='exactly one of INFER_TASK'):
    infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)), output_file=out,
                model=model)
  with pytest.raises(FileNotFoundError, match='INPUT_FILE'):
    infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)), output_file=out,
                model=model, input_file=str(tmp_path / 'missing.txt'), vocabulary_path=VOCAB_PATH)
  prompts_file = tmp_path / 'p.txt'
  prompts_file.write_text('hello\n')
  with pytest.raises(ValueError, match='need a vocabulary'):
    infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)), output_file=out,
                model=model, input_file=str(prompts_file))
  with pytest.raises(FileNotFoundError, match='CHECKPOINT_PATH'):
    infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(tmp_path / 'nope')),
                output_file=out, model=model, input_file=str(prompts_file),
                vocabulary_path=VOCAB_PATH)
  with pytest.raises(ValueError, match='Unknown task or mixture'):
    infer.infer(checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)), output_file=out,
                model=model, task_name='sample_super_glue_rte_no_such_template')
