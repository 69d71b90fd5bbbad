"""What the benchmarks against transformers' PyTorch T5 share (backbone_vs_torch, eval_vs_torch).

`pin_threads_from_argv()` must run before jax and torch are imported: XLA sizes its thread
pool from the process's CPU affinity mask, so `--threads N` pins the process to N CPUs first
(torch then gets N threads too). One thread each compares per-core efficiency, which an
oversubscribed shared machine distorts less than spinning thread teams.

`build_t5(args, ...)` is the reference model both scripts time: `T5ForConditionalGeneration`
with T5.1.1's gated-GELU, untied logits and no dropout, sized by the scripts' common flags
(--vocab, --emb_dim, --head_dim, --num_heads, --mlp_dim, --layers).
"""
import os
import sys
import tempfile


def threads_from_argv(argv=None) -> int | None:
  """The value of `--threads N` / `--threads=N` in `argv` (default sys.argv), else None."""
  argv = sys.argv if argv is None else argv
  for i, a in enumerate(argv):
    if a == '--threads' and i + 1 < len(argv):
      return int(argv[i + 1])
    if a.startswith('--threads='):
      return int(a.split('=', 1)[1])
  return None


def pin_threads_from_argv() -> None:
  """Pins to `--threads` CPUs and sets the CPU-only, quiet environment; before jax / torch."""
  threads = threads_from_argv()
  if threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
  os.environ.setdefault('USE_TF', '0')  # transformers: do not import TensorFlow models
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def add_model_flags(parser) -> None:
  """The model flags `build_t5` reads (T5.1.1-small by default) and --threads."""
  parser.add_argument('--emb_dim', type=int, default=512)
  parser.add_argument('--num_heads', type=int, default=6)
  parser.add_argument('--head_dim', type=int, default=64)
  parser.add_argument('--mlp_dim', type=int, default=1024)
  parser.add_argument('--layers', type=int, default=8, help='encoder and decoder layers each')
  parser.add_argument('--vocab', type=int, default=32128)
  parser.add_argument('--threads', type=int, default=None,
                      help='pin to this many CPUs (XLA) and torch threads (default: all)')


def set_threads_and_describe(threads: int | None) -> None:
  """Gives torch `threads` threads (when set) and prints versions, devices and the load."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  print(f'jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)), '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads), '
        f'transformers {transformers.__version__}, {os.cpu_count()} CPU(s), '
        f'affinity {sorted(os.sched_getaffinity(0))}')
  print(f'load average before: {os.getloadavg()}')


def build_t5(args, seed: int = 0, train: bool = False, **config_overrides):
  """transformers' T5.1.1-style model with the scripts' dimensions, seeded, train or eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=args.vocab, d_model=args.emb_dim, d_kv=args.head_dim,
      num_heads=args.num_heads, d_ff=args.mlp_dim, num_layers=args.layers,
      num_decoder_layers=args.layers, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
      **config_overrides)
  model = transformers.T5ForConditionalGeneration(config)
  model.train(train)
  return model


def to_spt_jax(model):
  """(T5Config, params) of `model` through `save_pretrained` + `checkpoints.load_hf_t5`: the
  same weights on our side, read by the project's own HF import. Prints the config."""
  from spt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    config, params = checkpoints.load_hf_t5(d)
  print(f'config: {config}')
  return config, params
