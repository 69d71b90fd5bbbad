"""seqio's SentencePieceVocabulary on the T5 vocabulary tokenizes like transformers' T5Tokenizer.

Pretrained checkpoints imported from HF were trained with these ids, so the seqio pipeline
must produce the same ones (fixture: ../shared/fixtures/t5_vocab/sentencepiece.model).
"""
import os

os.environ.setdefault('USE_TF', '0')  # transformers: do not import TensorFlow models

import pytest

seqio = pytest.importorskip('seqio')
transformers = pytest.importorskip('transformers')

# Generous: the shared 2-core machine can be very busy; this only catches hangs.
pytestmark = pytest.mark.timeout(600)

PROMPTS = [
    'Suppose The cat sat on the mat. Can we infer that "A cat sat"? Yes, no, or maybe?',
    'premise: It rained. hypothesis: The ground is wet.',
    '  leading and trailing spaces  ',
    'Ünïcödé café — naïve 東京, 12.5% of 3,000 ($4).',
    'Question: What is 2+2?\nAnswer:',
    '',
]


@pytest.fixture(scope='module')
def vocab_path(shared_fixtures):
  path = shared_fixtures / 't5_vocab' / 'sentencepiece.model'
  if not path.is_file():
    pytest.skip(f'T5 vocabulary fixture not found at {path}')
  return str(path)


@pytest.fixture(scope='module')
def vocab(vocab_path):
  return seqio.SentencePieceVocabulary(vocab_path, extra_ids=100)


@pytest.mark.parametrize('legacy', [True, False])
def test_prompts_tokenize_like_hf(vocab, vocab_path, legacy):
  tok = transformers.T5Tokenizer(vocab_path, extra_ids=100, legacy=legacy)
  for text in PROMPTS:
    ours = vocab.encode(text)
    assert ours == tok(text, add_special_tokens=False).input_ids, text
    # HF appends EOS (id 1) by default, as seqio's append_eos preprocessor does.
    assert ours + [1] == tok(text).input_ids, text
  assert any(len(vocab.encode(t)) > 10 for t in PROMPTS)


def test_sentinels_and_special_ids(vocab, vocab_path):
  tok = transformers.T5Tokenizer(vocab_path, extra_ids=100, legacy=True)
  assert vocab.vocab_size == len(tok) == 32100
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (
      tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  for i in (0, 1, 99):
    assert tok.convert_tokens_to_ids(f'<extra_id_{i}>') == vocab.vocab_size - 1 - i
  # Span-corruption style text with sentinels. (With legacy=False HF drops the word-start
  # marker after a special token, so it differs from seqio there; legacy=True is T5's.)
  text = 'The <extra_id_0> walks in <extra_id_1> park'
  assert vocab.encode(text) == tok(text, add_special_tokens=False).input_ids
  assert vocab.decode(vocab.encode(PROMPTS[0])) == PROMPTS[0]
