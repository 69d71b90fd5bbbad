r"""Gin entry point: predictions of a checkpoint for a seqio task or a text file, as JSON lines.

Run (the local SPT run on the sample held-out RTE task, or on your own prompts)::

  python -m spt_jax.infer --gin_search_paths=gin \
    --gin_file=methods/spt.gin --gin_file=runs/local.gin --gin_file=runs/infer.gin \
    --gin.CHECKPOINT_PATH="'/tmp/spt_local'" \
    --gin.INFER_TASK="'sample_super_glue_rte_GPT_3_style'" \
    --gin.OUTPUT_FILE="'/tmp/rte_predictions.jsonl'"

  ... --gin.INPUT_FILE="'prompts.txt'" --gin.VOCABULARY_TASK="'spt_sample_train'" ...

Macros (gin/runs/infer.gin): CHECKPOINT_PATH, CHECKPOINT_FORMAT, CHECKPOINT_STEP,
INFER_TASK or INPUT_FILE (exactly one), INFER_SPLIT, INFER_NUM_EXAMPLES, OUTPUT_FILE,
INFER_BATCH_SIZE, DECODING ('greedy' | 'beam' | 'sample'), NUM_DECODES (beam width), ALPHA
(beam length penalty), MAX_DECODE_LENGTH, VOCABULARY_TASK / VOCABULARY_PATH (the vocabulary
for INPUT_FILE prompts: a registered task's, or a SentencePiece model file).

INPUT_FILE holds one prompt per line (the text the model reads, i.e. an already rendered
discrete prompt); blank lines are skipped. The output file has one JSON object per input:
`{"input": ..., "prediction": ..., "score": ...}` plus `"target"` for task examples.
`score` is the decode's log-probability (beam: length-penalised).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from etils import epath

from spt_jax import checkpoints
from spt_jax import configs
from spt_jax import models as models_lib
from spt_jax import partitioning
from spt_jax import paths
from spt_jax import runner


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_prompts(path: str) -> list[str]:
  """Non-blank lines of a text file, stripped of their line ending."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'INPUT_FILE={path!r} does not exist; give a text file with one '
                            'prompt per line.')
  prompts = [line.rstrip('\r\n') for line in p.read_text().splitlines()]
  prompts = [line for line in prompts if line.strip()]
  if not prompts:
    raise ValueError(f'INPUT_FILE={path!r} holds no non-blank line.')
  return prompts


def resolve_vocabulary(task_name: Optional[str] = None, vocabulary_task: Optional[str] = None,
                       vocabulary_path: Optional[str] = None):
  """The output vocabulary: of INFER_TASK, VOCABULARY_TASK, or a SentencePiece file."""
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
  if vocabulary_path:
    if not epath.Path(vocabulary_path).exists():
      raise FileNotFoundError(f'VOCABULARY_PATH={vocabulary_path!r} does not exist.')
    return seqio.SentencePieceVocabulary(os.fspath(vocabulary_path), extra_ids=100)
  name = task_name or vocabulary_task
  if not name:
    raise ValueError('INPUT_FILE prompts need a vocabulary: set VOCABULARY_TASK to a task or '
                     "mixture the model was trained on (e.g. 'spt_sample_train') or "
                     'VOCABULARY_PATH to its SentencePiece model.')
  catalog.ensure_registered(name)
  task = runner.get_mixture_or_task(name)
  return task.output_features['targets'].vocabulary


def examples_from_task(task_name: str, split: str = 'validation',
                       num_examples: Optional[int] = None, seed: int = 42
                       ) -> tuple[list[dict[str, Any]], Any]:
  """Tokenized examples of a registered task (inputs, targets and their text), in order.

  Returns:
    `([{'inputs': ids, 'inputs_text': str, 'targets_text': str | None}], vocabulary)`.
  """
  from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
  catalog.ensure_registered(task_name)
  task = runner.get_mixture_or_task(task_name)
  if not hasattr(task, 'source'):
    raise ValueError(f'INFER_TASK={task_name!r} is a mixture; name one of its tasks, e.g. '
                     f'{[t.name for t in task.tasks][:3]}.')
  if split not in task.splits:
    raise ValueError(f'Task {task_name!r} has no split {split!r} (splits: {list(task.splits)});'
                     ' set INFER_SPLIT.')
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        seed=seed)
  if num_examples:
    ds = ds.take(num_examples)
  vocab = task.output_features['targets'].vocabulary
  out = []
  for ex in ds.as_numpy_iterator():
    inputs_text = ex.get('inputs_pretokenized')
    targets_text = ex.get('targets_pretokenized')
    out.append({
        'inputs': np.asarray(ex['inputs'], np.int32),
        'inputs_text': _text(inputs_text) if inputs_text is not None else
                       vocab.decode(ex['inputs'].tolist()),
        'targets_text': _text(targets_text) if targets_text is not None else (
            vocab.decode(ex['targets'].tolist()) if 'targets' in ex else None),
    })
  if not out:
    raise ValueError(f'Task {task_name!r} gave no example on split {split!r}.')
  return out, vocab


def examples_from_prompts(prompts: Sequence[str], vocabulary, add_eos: bool = False
                          ) -> list[dict[str, Any]]:
  """Tokenized prompts (T0 convention: no EOS on inputs unless `add_eos`)."""
  out = []
  for text in prompts:
    ids = list(vocabulary.encode(text))
    if add_eos:
      ids.append(vocabulary.eos_id)
    out.append({'inputs': np.asarray(ids, np.int32), 'inputs_text': text,
                'targets_text': None})
  return out


def _round_up(n: int, multiple: int = 8) -> int:
  return int(math.ceil(max(n, 1) / multiple) * multiple)


def _batches(examples: Sequence[Mapping[str, Any]], batch_size: int, input_length: int,
             target_length: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Fixed-shape encoder batches; the last is padded with copies of its first row."""
  for start in range(0, len(examples), batch_size):
    chunk = list(examples[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[0]] * (batch_size - n)
    enc = np.zeros((batch_size, input_length), np.int32)
    for i, ex in enumerate(chunk):
      ids = ex['inputs'][:input_length]
      enc[i, :len(ids)] = ids
    dec = np.zeros((batch_size, target_length), np.int32)
    yield {'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
           'decoder_target_tokens': dec}, n


def infer(
    *,
    checkpoint_cfg: configs.RestoreCheckpointConfig,
    output_file: str,
    task_name: Optional[str] = None,
    input_file: Optional[str] = None,
    split: str = 'validation',
    num_examples: Optional[int] = None,
    batch_size: int = 8,
    input_length: Optional[int] = None,
    max_decode_length: int = 32,
    decoding: str = 'greedy',
    num_decodes: int = 4,
    alpha: float = 0.6,
    vocabulary_task: Optional[str] = None,
    vocabulary_path: Optional[str] = None,
    model: Optional[models_lib.EncoderDecoderModel] = None,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
    seed: int = 0,
) -> dict[str, Any]:
  """Writes predictions of a checkpoint as JSON lines (see the module docstring).

  Args:
    checkpoint_cfg: the checkpoint (`configs.RestoreCheckpointConfig`: path, format, step,
      `init_seed` for parameters an 'hf' / 't5x' checkpoint lacks).
    output_file: the JSON-lines file to write (parent directories are created).
    task_name: a registered seqio task whose `split` examples are decoded; or
    input_file: a text file of prompts, one per line.
    split, num_examples: which task examples (None: all).
    batch_size: global rows per decode call (divisible by the data-parallel size).
    input_length: encoder length; default the longest input rounded up to a multiple of 8
      (longer inputs are truncated).
    max_decode_length: decoded positions.
    decoding, num_decodes, alpha: `EncoderDecoderModel.predict_batch`.
    vocabulary_task, vocabulary_path: the vocabulary for `input_file` prompts.
    model: the model; runs/infer.gin binds `@runner.create_model()` (configured by the same
      model / method gin files as training). None: `runner.create_model()` defaults.
    partitioner: the device mesh (`partitioning.Partitioner`).
    seed: the sampling key (decoding='sample').

  Returns:
    `{'output_file': str, 'num_predictions': int, 'step': int}`.

  Raises:
    ValueError: neither or both of task_name / input_file, unknown task, bad split.
    FileNotFoundError: missing checkpoint or input file.
  """
  if bool(task_name) == bool(input_file):
    raise ValueError('Set exactly one of INFER_TASK (a registered seqio task) and INPUT_FILE '
                     f'(a text file of prompts); got INFER_TASK={task_name!r}, '
                     f'INPUT_FILE={input_file!r}.')
  if not output_file:
    raise ValueError('OUTPUT_FILE is not set: --gin.OUTPUT_FILE="\'/path/predictions.jsonl\'".')
  checkpoint_path = paths.resolve(checkpoint_cfg.path)
  checkpoint_format = checkpoint_cfg.format
  output_file = paths.resolve(output_file)
  input_file = paths.resolve(input_file)
  vocabulary_path = paths.resolve(vocabulary_path)
  checkpoints.check_checkpoint(checkpoint_path, checkpoint_format, path_macro='CHECKPOINT_PATH',
                               format_macro='CHECKPOINT_FORMAT', scratch_hint=False)
  if task_name:
    examples, vocab = examples_from_task(task_name, split, num_examples)
  else:
    vocab = resolve_vocabulary(None, vocabulary_task, vocabulary_path)
    examples = examples_from_prompts(read_prompts(input_file), vocab)
    if num_examples:
      examples = examples[:num_examples]
  longest = max(len(ex['inputs']) for ex in examples)
  if input_length is None:
    input_length = _round_up(longest)
  elif longest > input_length:
    logging.warning('Inputs up to %d tokens are truncated to input_length=%d.', longest,
                    input_length)
  lengths = {'inputs': int(input_length), 'targets': int(max_decode_length)}

  mesh = partitioner.create_mesh()
  partitioning.host_local_batch_size(batch_size, mesh)
  model = model or runner.create_model()
  setup = runner.ModelSetup.create(model, lengths, mesh=mesh, rules=partitioner.rules)
  restored = checkpoints.restore(setup, checkpoint_path, checkpoint_format,
                                 step=checkpoint_cfg.step,
                                 rng=jax.random.PRNGKey(checkpoint_cfg.init_seed))
  params, step = restored.params, restored.step
  decode_rng = jax.random.PRNGKey(seed)

  def predict(params, batch):
    kwargs = {'decode_rng': decode_rng} if decoding == 'sample' else {}
    return model.predict_batch(params, batch, decoding=decoding, num_decodes=num_decodes,
                               alpha=alpha, max_decode_length=int(max_decode_length),
                               return_scores=True, **kwargs)

  rep = partitioning.replicated(mesh)
  p_predict = jax.jit(predict, in_shardings=(setup.param_shardings,
                                             partitioning.batch_sharding(mesh)),
                      out_shardings=rep)
  records = []
  with setup.activate():
    for start, (batch, n) in zip(range(0, len(examples), batch_size),
                                 _batches(examples, batch_size, lengths['inputs'],
                                          lengths['targets'])):
      local = partitioning.process_rows(batch, batch_size, mesh)
      tokens, scores = p_predict(params, partitioning.shard_batch(local, mesh, batch_size))
      tokens, scores = np.asarray(tokens)[:n], np.asarray(scores)[:n]
      for ex, toks, score in zip(examples[start:start + n], tokens, scores):
        record = {'input': ex['inputs_text'], 'prediction': vocab.decode(toks.tolist()),
                  'score': float(score)}
        if ex['targets_text'] is not None:
          record['target'] = ex['targets_text']
        records.append(record)
  if jax.process_index() == 0:
    out = epath.Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open('w') as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + '\n')
  logging.info('Wrote %d predictions (step %d, %s decoding) to %s', len(records), step,
               decoding, output_file)
  return {'output_file': os.fspath(output_file), 'num_predictions': len(records),
          'step': int(step)}


# `python -m spt_jax.infer` runs this file as `__main__`; the command line is spt_jax.cli
# (which imports the package module spt_jax.infer, the copy its gin registry sees).
if __name__ == '__main__':
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  cli.infer_run()
