"""Every documented shell command is a test: it is run here, or the table says why not.

Commands are extracted from
  * the fenced code blocks (```bash, ```sh and bare ```) of README.md, docs/*.md,
    launch/README.md, spt_tasks/README.md and gin/t5x/README.md;
  * inline code spans of those files that are whole commands (`python ...`,
    `.venv/bin/python ...`, `bash launch/...`), e.g. the benchmark table of README.md;
  * the comment headers of every gin file under gin/ (`#   python -m spt_jax.train ... \\`
    with its `#     --gin_file=...` continuation lines, `#   bash launch/...`, and the
    parenthesised `# (or: bash launch/tpu_pod.sh ...)` form).
Backslash continuations are joined, comment-only lines and trailing `# comments` dropped; the
command text is otherwise kept exactly as documented.

Each command is classified by the first rule of RULES it matches: RUN (executed below) or
NOT_ON_CPU / COVERED_ELSEWHERE / TOO_SLOW_HERE with a one-line reason. A command that matches
no rule FAILS test_every_documented_command_is_classified (a newly documented command cannot
go untested silently), and so does a rule that matches no command (no dead rules).

The RUN commands execute as subprocesses with the interpreter running the tests in place of
`python` / `.venv/bin/python`:
  * launchers (`bash launch/...`) from the repository root (they cd there themselves) in their
    `--dry-run` form: `--dry-run` is appended where the documented command lacks it;
  * `python -m spt_tasks.show TASK` from an empty temporary directory, TASK replaced by a
    sample task;
  * `python -m spt_jax.compare RUN_DIR_SPT RUN_DIR_PT RUN_DIR_FT` from a temporary directory
    holding three tiny run directories of those names (results.json from a hand-made
    aggregate, as tests/test_compare.py);
  * each documented benchmark as `python benchmarks/X.py --help` from the repository root
    (the doc's relative path): it must import, parse, and know every flag the doc gives it.

Besides running them, every documented spt_jax.train / evaluate / infer command (pod ones
included) and every one the launchers' dry runs print has its gin configuration parsed the way
the entry point parses it (files exist, configurables / parameters exist, no misspelt macro),
and every gin file, script, test file and module a command names must exist; the `--gin.`
flag lines the experiment headers give to add to their train command (T5X-checkpoint start)
are parsed on top of their experiment file.

Wall time, measured on the shared 2-core machine under load (load average ~9): 19-55 s for the
whole file, no single test over ~10 s (spt_tasks.show 6.4-9.8 s and backbone_vs_torch --help
4-6.6 s: interpreter start-up with jax / tensorflow / torch imports; 5-8 s of session set-up for
the in-process gin parses; the 24 launcher dry runs 0.03 s each), so nothing here is `slow`.
"""
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import List

import pytest

from tests import test_launch as launch_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = ('README.md', *sorted(f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md')),
             'launch/README.md', 'spt_tasks/README.md', 'gin/t5x/README.md')
SHELL_FENCES = ('bash', 'sh', '')
SAMPLE_TASK = 'sample_super_glue_rte_GPT_3_style'


@dataclasses.dataclass(frozen=True)
class Command:
  source: str   # file:line of the command's first line
  text: str

  def __str__(self):
    return f'{self.source}: {self.text}'


# ------------------------------------------------------------------------------ extraction


def _strip_trailing_comment(line: str) -> str:
  """`cmd  # comment` -> `cmd` (a `#` outside quotes, after whitespace)."""
  quote = None
  for i, c in enumerate(line):
    if quote:
      if c == quote:
        quote = None
    elif c in '"\'':
      quote = c
    elif c == '#' and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip()
  return line.rstrip()


def _join_continuations(numbered_lines, source):
  """[(lineno, text)] of a shell block -> [Command], backslash continuations joined."""
  commands, current, start = [], '', None
  for lineno, raw in numbered_lines:
    line = raw.strip()
    if line.startswith('#') or (not line and not current):
      continue
    line = _strip_trailing_comment(line)
    if start is None:
      start = lineno
    if line.endswith('\\'):
      current += line[:-1].rstrip() + ' '
      continue
    current += line
    if re.match(r'(for|while|until) ', current) and not re.search(r'(^|[;\n]\s*)done$', current):
      current += '\n'   # a loop: one command up to its `done`
      continue
    if current.strip():
      commands.append(Command(f'{source}:{start}', current.strip()))
    current, start = '', None
  if current.strip():
    commands.append(Command(f'{source}:{start}', current.strip()))
  return commands


INLINE_COMMAND = re.compile(r'^(?:\.venv/bin/python|python) \S|^bash launch/')


def markdown_commands(rel: str) -> List[Command]:
  lines = (ROOT / rel).read_text().splitlines()
  commands, block, fence = [], None, None
  for lineno, line in enumerate(lines, 1):
    m = re.match(r'^\s*```\s*(\w*)\s*$', line)
    if m and block is None:
      fence, block = m.group(1), []
      continue
    if m and block is not None:
      if fence in SHELL_FENCES:
        commands += _join_continuations(block, rel)
      block = None
      continue
    if block is not None:
      block.append((lineno, line))
      continue
    for span in re.findall(r'`([^`]+)`', line):
      if INLINE_COMMAND.match(span.strip()):
        commands.append(Command(f'{rel}:{lineno}', span.strip()))
  assert block is None, f'{rel}: unclosed code fence'
  return commands


GIN_COMMAND_START = re.compile(
    r'^\s{2,}(?:python |\.venv/bin/python |bash launch/|PYTHONPATH=\S+ python |'
    r'huggingface-cli |gsutil )')


def gin_header_commands(path: pathlib.Path, fragments=None) -> List[Command]:
  """The commands of a gin file's comment header; flag lines that belong to no command
  (`#   --gin.X=... \\` lines to add to the train command) go to `fragments` if given."""
  rel = str(path.relative_to(ROOT))
  comments = [(i, l[1:]) for i, l in enumerate(path.read_text().splitlines(), 1)
              if l.startswith('#')]
  commands, i = [], 0
  while i < len(comments):
    lineno, text = comments[i]
    if GIN_COMMAND_START.match(text):
      block = [(lineno, text)]
      while block[-1][1].rstrip().endswith('\\') and i + 1 < len(comments):
        i += 1
        block.append(comments[i])
      commands += _join_continuations(block, rel)
    elif re.match(r'^\s*\(or: bash launch/', text):   # `(or: bash launch/... )` prose form
      parts = [text.strip()[len('(or: '):]]
      while not parts[-1].endswith(')') and i + 1 < len(comments):
        i += 1
        parts.append(comments[i][1].strip())
      commands.append(Command(f'{rel}:{lineno}', ' '.join(parts)[:-1].strip()))
    elif re.match(r'^\s{2,}--gin\.', text) and fragments is not None:
      block = [(lineno, text)]
      while block[-1][1].rstrip().endswith('\\') and i + 1 < len(comments):
        i += 1
        block.append(comments[i])
      fragments += _join_continuations(block, rel)
    i += 1
  return commands


def documented_commands() -> List[Command]:
  commands = []
  for rel in DOC_FILES:
    commands += markdown_commands(rel)
  for path in sorted((ROOT / 'gin').rglob('*.gin')):
    commands += gin_header_commands(path)
  return commands


# ------------------------------------------------------------------------------ the table

RUN, NOT_ON_CPU, COVERED, SLOW = 'RUN', 'NOT_ON_CPU', 'COVERED_ELSEWHERE', 'TOO_SLOW_HERE'


@dataclasses.dataclass(frozen=True)
class Rule:
  kind: str
  pattern: str   # re.search on the command text
  reason: str


# The documented CPU commands of the T5X route (gin/t5x/local*.gin, and spt_jax.evaluate of
# such a run's checkpoint): tests/test_t5x_route.py runs their configurations.
T5X_LOCAL_PATTERN = (r'^python -m t5x\.(train|eval) .*--gin_file=gin/t5x/local(_eval)?\.gin|'
                     r"^python -m spt_jax\.evaluate .*CHECKPOINT_PATH=\"'/tmp/spt_t5x_local/")

# First match wins; order from the most specific.
RULES = (
    # --- run here
    Rule(RUN, r'^bash launch/local\.sh --dry-run$',
         'local.sh dry run: prints set-up, train and evaluate commands'),
    Rule(RUN, r'^bash launch/local\.sh --skip_setup .*--model_dir=runs/smoke',
         'the XL smoke run on CPU trains for minutes; its --dry-run form (appended) is run'),
    Rule(RUN, r'^bash launch/tpu_pod\.sh ',
         'creates / uses TPU VMs; its --dry-run form (appended) is run'),
    Rule(RUN, r'^bash launch/gpu_slurm\.sh ',
         'needs a SLURM cluster; its --dry-run form (appended) is run'),
    Rule(RUN, r'^python -m spt_tasks\.show TASK$', 'run with TASK = ' + SAMPLE_TASK),
    Rule(RUN, r'^python -m spt_jax\.compare RUN_DIR_SPT RUN_DIR_PT RUN_DIR_FT$',
         'run on three tiny run directories of those names'),
    Rule(RUN, r'^python benchmarks/(backbone_vs_torch|eval_vs_torch|retrieval|train_throughput)'
         r'\.py ',
         'benchmark (minutes): run as --help, which must list every documented flag'),
    # --- covered elsewhere
    Rule(COVERED, r'^bash launch/local\.sh$',
         'is README command 1, which .ci/run executes exactly as written'),
    Rule(COVERED, r'^bash launch/local\.sh --skip_setup$',
         'README command 1 without its set-up step (the second-run timing); .ci/run runs '
         'command 1, and tests/test_launch.py dry-runs --skip_setup'),
    Rule(COVERED, r'^bash launch/setup\.sh( \[--dev\]| --t5x)?$',
         'creates .venv and installs packages (network); .ci/run runs it (plain, then --dev, '
         'which includes --t5x)'),
    Rule(COVERED, r'^bash launch/setup\.sh --dev && \.venv/bin/python -m pytest -q '
         r'-n 2 --dist loadfile$',
         'is README command 2, the test suite itself (.ci/run executes it)'),
    Rule(COVERED, r'^\.venv/bin/python -m pytest ',
         'is (part of) the test suite itself'),
    Rule(COVERED, r'benchmarks/method_validity\.py --output_dir=\S+ --quick$',
         'is the smoke form tests/test_method_validity.py runs'),
    Rule(COVERED, r'^(setsid nohup )?(\.venv/bin/)?python benchmarks/method_validity'
         r'\.py --output_dir=/tmp/method_validity(_full)?( > \S+ 2>&1 &)?$',
         'the full experiment (hours on CPU); its --quick form is tests/test_method_validity.py'),
    Rule(COVERED, r'benchmarks/method_validity\.py .*--rewrite$',
         "needs a finished experiment's output (runs.json); write_outputs, all it calls, is "
         'tested on hand-made runs by tests/test_method_validity.py'),
    Rule(COVERED, r'^python -m spt_jax\.train --gin_search_paths=gin --gin_file=methods/'
         r'(spt|spt_paper|finetune|prompt_tuning)\.gin --gin_file=runs/local\.gin '
         r'--gin\.MODEL_DIR="\'/tmp/\w+\'"$',
         'its CPU form (with runs/local.gin) is trained by .ci/run (README command 1, spt) and '
         'tests/test_method_validity.py (every method)'),
    Rule(COVERED, r'^python tests/fault_trials\.py --trials \d+ --seed \d+ --signal SIGKILL '
         r'--work_dir /tmp/kills$',
         'the reported 20-trial run (~12 min); tests/test_fault_tolerance.py runs the same '
         'trials, 5 with SIGKILL and 2 with SIGTERM'),
    Rule(COVERED, r'^python benchmarks/input_pipeline\.py \[--quick\] \[--t0_mixture\]$',
         'tests/test_input_pipeline_benchmark.py runs its --quick form; the full run and '
         '--t0_mixture take minutes'),
    Rule(COVERED, r'^python -m spt_tasks\.cache$',
         'names the cache writer in prose; its write_cache is run by tests/test_cache.py and, '
         'for the sample tasks, by launch/setup.sh'),
    Rule(COVERED, r'runs/sample_vocabulary\.gin',
         "needs a downloaded T5 checkpoint; tests/test_initial_checkpoint_cli.py runs this "
         "route on the shared fixtures' T5 vocabulary and checkpoint"),
    Rule(COVERED, r'^python -m (spt_jax\.(train|evaluate|infer)|t5x\.train)$',
         'names an entry point in prose; its documented invocations are classified here'),
    Rule(COVERED, T5X_LOCAL_PATTERN,
         "the T5X route on CPU: tests/test_t5x_route.py runs these gin files (a temporary "
         "MODEL_DIR); test_documented_t5x_local_commands_are_the_ones_run checks that"),
    # --- not runnable on this machine / in this test
    Rule(NOT_ON_CPU, r'^python -m t5x\.train .*gs://',
         "T5X route at paper scale: needs a GCS bucket and a TPU slice (its CPU form with "
         "gin/t5x/local.gin runs in tests/test_t5x_route.py)"),
    Rule(NOT_ON_CPU, r'^huggingface-cli download |^gsutil ',
         'downloads a pretrained checkpoint (network)'),
    Rule(NOT_ON_CPU, r'^python -m spt_jax\.(train|evaluate) .*gs://',
         'needs a GCS bucket and a TPU pod (gs:// paths, pod-scale experiment)'),
    Rule(NOT_ON_CPU, r"CHECKPOINT_PATH=\"'checkpoints/T0_3B'\"",
         'needs the 3B-parameter T0 checkpoint (checkpoints/T0_3B) and the real held-out data'),
    Rule(NOT_ON_CPU, r'^export TFDS_DATA_DIR=gs://',
         'points TFDS at a GCS bucket for the tfds build loop'),
    Rule(NOT_ON_CPU, r'^for d in .*\n\s*tfds build ',
         'downloads and prepares the real TFDS datasets (network, hours)'),
    Rule(NOT_ON_CPU, r'^bash launch/setup\.sh --data$',
         'installs HF `datasets` into .venv (network); not run by CI'),
    Rule(NOT_ON_CPU, r'^tail -f ', "follows a running job's log (never exits)"),
    Rule(COVERED, r'--gin\.MODEL_DIR=\.\.\.$|RUN_DIR\.\.\.|MODEL_DIR_1 MODEL_DIR_2',
         'placeholder arguments; the same command with real arguments is classified here'),
    Rule(SLOW, r'^python -m spt_jax\.train .*--gin_file=runs/periodic_eval\.gin',
         'minutes of CPU training with periodic evaluation; the hook is tested in '
         'tests/test_evaluate.py'),
    Rule(SLOW, r'^python -m spt_jax\.(evaluate|infer) .*CHECKPOINT_PATH="\'/tmp/spt_local\'"',
         "needs the checkpoint the local train command writes to /tmp/spt_local (minutes "
         "of CPU training); tests/test_evaluate.py and tests/test_infer.py cover these runs"),
)


def classify(command: Command):
  for rule in RULES:
    if re.search(rule.pattern, command.text):
      return rule
  return None


COMMANDS = documented_commands()


def test_extraction_finds_the_documented_commands():
  texts = [c.text for c in COMMANDS]
  assert 'bash launch/local.sh' in texts
  assert 'bash launch/local.sh --dry-run' in texts
  assert ('python -m spt_jax.train --gin_search_paths=gin --gin_file=methods/spt.gin '
          '--gin_file=runs/local.gin --gin.MODEL_DIR="\'/tmp/spt_local\'"') in texts
  assert any(t.startswith('bash launch/tpu_pod.sh --tpu spt-v4-8 --zone us-central2-b '
                          '--gin_file experiments/superglue_rte_from_glue_spt_base.gin')
             for t in texts)
  assert any(t.startswith('python benchmarks/retrieval.py') for t in texts)
  sources = {c.source.split(':')[0] for c in COMMANDS}
  assert {'README.md', 'launch/README.md', 'gin/methods/spt.gin'} <= sources
  for c in COMMANDS:
    assert not c.text.endswith('\\') and ' \\ ' not in c.text, c    # continuations joined
    assert not c.text.startswith('#'), c
  assert len(COMMANDS) >= 80


def test_every_documented_command_is_classified():
  unclassified = [str(c) for c in COMMANDS if classify(c) is None]
  assert not unclassified, (
      'documented commands matching no rule of RULES (run them in this test, or add a rule '
      'with the reason they are not run):\n  ' + '\n  '.join(unclassified))
  used = {id(classify(c)) for c in COMMANDS}
  dead = [r.pattern for r in RULES if id(r) not in used]
  assert not dead, f'rules that match no documented command: {dead}'


def test_documented_t5x_local_commands_are_the_ones_run():
  """Each documented CPU command of the T5X route names exactly the gin files of a command
  tests/test_t5x_route.py runs (its MODEL_DIR / checkpoint paths differ: temporary dirs)."""
  from tests import test_t5x_route as route  # pylint: disable=g-import-not-at-top
  runs = {'t5x.train': [tuple(f) for f in route.TRAIN_GIN_FILES.values()],
          't5x.eval': [tuple(route.T5X_EVAL_GIN_FILES)],
          'spt_jax.evaluate': [tuple(route.SPT_JAX_EVAL_GIN_FILES)]}
  checked = 0
  for c in COMMANDS:
    if re.search(T5X_LOCAL_PATTERN, c.text):
      checked += 1
      argv = shlex.split(c.text)
      module = argv[argv.index('-m') + 1]
      files = tuple(re.findall(r'--gin_file[= ](\S+)', c.text))
      assert files in runs[module], (f'{c}: gin files {files} are not what '
                                     f'tests/test_t5x_route.py runs with {module}: {runs[module]}')
      if module == 'spt_jax.evaluate':
        assert "--gin.CHECKPOINT_FORMAT=\"'t5x'\"" in c.text, c
  assert checked >= 5


def test_a_command_matching_no_rule_is_reported():
  assert classify(Command('x.md:1', 'python -m spt_jax.new_tool --flag')) is None
  assert classify(Command('x.md:1', 'bash launch/tpu_pod.sh --tpu t')).kind == RUN


def _t5x_package_dir():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('t5x')
  return pathlib.Path(spec.origin).parent if spec and spec.origin else None


_T5X_PACKAGE_DIR = _t5x_package_dir()


def test_documented_paths_exist():
  """Every gin file, launcher, benchmark, test file and `-m` module a command names exists
  (gin files as given or under gin/, as the entry points and launchers resolve them)."""
  missing = []
  for c in COMMANDS:
    for gin_file in re.findall(r'--gin_file[= ](\S+)', c.text):
      if gin_file.startswith('t5x/configs/'):   # T5X's own tree (t5x adds it to gin's path)
        if _T5X_PACKAGE_DIR is not None and not (_T5X_PACKAGE_DIR.parent / gin_file).is_file():
          missing.append(f'{c}: gin file {gin_file} (not in the installed t5x)')
      elif not ((ROOT / gin_file).is_file() or (ROOT / 'gin' / gin_file).is_file()):
        missing.append(f'{c}: gin file {gin_file}')
    for path in re.findall(r'(?:^|\s)((?:launch|benchmarks|tests)/[\w./]+\.(?:sh|py))', c.text):
      if not (ROOT / path).is_file():
        missing.append(f'{c}: {path}')
    for module in re.findall(r'-m ((?:spt_jax|spt_tasks)(?:\.\w+)+)', c.text):
      if not (ROOT / (module.replace('.', '/') + '.py')).is_file():
        missing.append(f'{c}: module {module}')
  assert not missing, '\n'.join(missing)


ENTRY_POINT = re.compile(r'^(?:\S*python) -m spt_jax\.(train|evaluate|infer) ')
MACRO = re.compile(r'^([A-Z][A-Z0-9_]*)\s*=')


def _all_macro_references():
  text = '\n'.join(p.read_text() for p in (ROOT / 'gin').rglob('*.gin'))
  return set(re.findall(r'%([A-Z][A-Z0-9_]*)', text))


def gin_config_errors(argv):
  """Parses (and finalizes) the gin configuration an spt_jax entry point would build from
  `argv`, as spt_jax.train / evaluate / infer do; returns the problems found: gin's own error
  (unknown configurable or parameter, missing file) or a bound MACRO that no gin file uses
  (a misspelt macro is otherwise silently ignored)."""
  import gin  # pylint: disable=g-import-not-at-top
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  args = cli.rewrite_gin_args(argv)
  files = [a.split('=', 1)[1] for a in args if a.startswith('--gin_file=')]
  paths = [p for a in args if a.startswith('--gin_search_paths=')
           for p in a.split('=', 1)[1].split(',')]
  bindings = [a.split('=', 1)[1] for a in args if a.startswith('--gin_bindings=')]
  problems = []
  with gin.unlock_config():
    gin.clear_config()
    try:
      # train finalizes (every %gin.REQUIRED bound); evaluate / infer do not (train-only
      # macros stay REQUIRED there), as their main()s.
      cli.parse_gin(files, bindings, paths or ['gin'],
                    finalize=argv[argv.index('-m') + 1] == 'spt_jax.train')
    except (ValueError, KeyError, IOError) as e:
      problems.append(str(e).splitlines()[0])
    finally:
      with gin.unlock_config():
        gin.clear_config()
  used = _all_macro_references()
  for b in bindings:
    m = MACRO.match(b)
    if m and m.group(1) not in used:
      problems.append(f'macro {m.group(1)} is bound but no gin file uses %{m.group(1)}')
  return problems


def _entry_point_argv(tokens):
  """The `python -m spt_jax.X ...` part of a split command line (up to a redirection)."""
  start = tokens.index('-m') - 1
  end = next((i for i, t in enumerate(tokens) if t.startswith('>')), len(tokens))
  return tokens[start:end]


def test_gin_config_check_catches_the_usual_mistakes():
  base = ['python', '-m', 'spt_jax.train', '--gin_search_paths=gin',
          '--gin_file=methods/spt.gin', '--gin_file=runs/local.gin']
  assert gin_config_errors(base + ['--gin.MODEL_DIR="\'/tmp/x\'"']) == []
  assert gin_config_errors(base)   # MODEL_DIR left REQUIRED
  assert gin_config_errors(base + ['--gin.MODEL_DIR="\'/tmp/x\'"', '--gin_file=runs/nope.gin'])
  assert gin_config_errors(base + ['--gin.MODEL_DIR="\'/tmp/x\'"', '--gin.train.no_such_arg=1'])
  assert gin_config_errors(base + ['--gin.MODEL_DIR="\'/tmp/x\'"', '--gin.TRAIN_STEPZ=1']) == [
      'macro TRAIN_STEPZ is bound but no gin file uses %TRAIN_STEPZ']


def test_documented_entry_point_commands_parse_their_gin_config():
  """Every documented spt_jax.train / evaluate / infer command, even those not run here (pod
  experiments), names gin files that exist and binds configurables, parameters and macros
  that exist; placeholder arguments (`...`) excepted."""
  problems = []
  checked = 0
  for c in COMMANDS:
    if ENTRY_POINT.match(c.text) and not c.text.endswith('...'):
      checked += 1
      problems += [f'{c}: {p}' for p in gin_config_errors(_entry_point_argv(shlex.split(c.text)))]
  assert checked >= 40
  assert not problems, '\n'.join(problems)


def test_gin_header_flag_fragments_parse_with_their_experiment():
  """`--gin.` lines a header gives to add to its train command (the T5X-checkpoint start)
  bind what exists, on top of that experiment file."""
  problems, checked = [], 0
  for path in sorted((ROOT / 'gin' / 'experiments').glob('*.gin')):
    fragments = []
    gin_header_commands(path, fragments)
    for f in fragments:
      checked += 1
      argv = ['python', '-m', 'spt_jax.train', '--gin_search_paths=gin',
              f'--gin_file=experiments/{path.name}', '--gin.MODEL_DIR="\'/tmp/x\'"',
              *shlex.split(f.text)]
      problems += [f'{f}: {p}' for p in gin_config_errors(argv)]
  assert checked >= 6
  assert not problems, '\n'.join(problems)


def _summary():
  counts = {}
  for c in COMMANDS:
    rule = classify(c)
    if rule is not None:
      counts[rule.kind] = counts.get(rule.kind, 0) + 1
  return counts


# ------------------------------------------------------------------------------ running


def _python_env():
  return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _python_argv(text):
  """shlex-split command with the interpreter running the tests in place of `python`."""
  argv = shlex.split(text)
  assert argv[0] in ('python', '.venv/bin/python'), text
  return [sys.executable, *argv[1:]]


def _run_launcher(command, tmp_path):
  argv = shlex.split(command.text)
  assert argv[0] == 'bash' and argv[1].startswith('launch/')
  args = argv[2:] + ([] if '--dry-run' in argv else ['--dry-run'])
  result = launch_testlib.run(argv[1][len('launch/'):], *args)
  out = result.stdout
  assert result.returncode == 0, result.stdout + result.stderr
  assert '--dry-run' in args
  if argv[1] == 'launch/tpu_pod.sh':
    tpu = args[args.index('--tpu') + 1]
    assert f'gcloud compute tpus tpu-vm describe {tpu} ' in out, out
    if '--create' in args:
      assert f'gcloud compute tpus tpu-vm create {tpu} ' in out, out
  elif argv[1] == 'launch/gpu_slurm.sh':
    assert f'#SBATCH --nodes={args[args.index("--nodes") + 1]}' in out, out
    assert re.search(r'^sbatch \S+spt_jax\.sbatch$', out, re.M), out
  else:
    assert '-m spt_jax.train ' in out and '-m spt_jax.evaluate ' in out, out
  model_dir = next((a.split('=', 1)[1] for a in args if a.startswith('--model_dir=')), None)
  if model_dir is None and '--model_dir' in args:
    model_dir = args[args.index('--model_dir') + 1]
  model_dir = model_dir or 'runs/local_spt'
  assert re.search(r"--gin\.MODEL_DIR='[^']*" + re.escape(model_dir) + "'", out), out
  for binding in (a for a in args if a.startswith('--gin.')):
    assert binding in out or shlex.quote(binding) in out, (binding, out)
  # The spt_jax commands it would run parse their gin configuration (T5X's trainer excepted).
  # (tpu_pod.sh prints the run script, then the same line escaped inside ssh's --command.)
  printed = [l for l in out.splitlines()
             if re.search(r'python -m spt_jax\.', l) and '\\"' not in l]
  if '--module' not in args:
    assert printed, out
  for line in printed:
    line = line.lstrip('#').strip()
    problems = gin_config_errors(_entry_point_argv(shlex.split(line)))
    assert not problems, (line, problems)


def _run_show(command, tmp_path):
  argv = _python_argv(command.text.replace('TASK', SAMPLE_TASK))
  result = subprocess.run(argv, cwd=tmp_path, env=_python_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert SAMPLE_TASK in result.stdout
  assert '--- example 0' in result.stdout and 'inputs:' in result.stdout, result.stdout


def _run_compare(command, tmp_path):
  from spt_jax import results as R  # pylint: disable=g-import-not-at-top
  from tests.test_compare import _results  # pylint: disable=g-import-not-at-top
  argv = _python_argv(command.text)
  for name, value in zip(argv[3:], (60, 50, 40)):
    R.write_results(_results({('nli', 'rte'): [value, value]}), tmp_path / name / 'eval')
  result = subprocess.run(argv, cwd=tmp_path, env=_python_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'comparison/comparison.md' in result.stdout, result.stdout
  md = (tmp_path / 'comparison' / 'comparison.md').read_text()
  assert '| Cluster | Dataset | RUN_DIR_SPT | RUN_DIR_PT | RUN_DIR_FT |' in md, md
  assert '| nli | rte | 60.00 | 50.00 | 40.00 | -10.00 | -20.00 |' in md, md


def _run_benchmark_help(command, tmp_path):
  argv = _python_argv(command.text)
  script = argv[1]
  assert (ROOT / script).is_file(), f'{command}: {script} does not exist'
  result = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, env=_python_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.startswith('usage: '), result.stdout
  for flag in re.findall(r'(--\w[\w-]*)', command.text):
    assert re.search(re.escape(flag) + r'\b', result.stdout), (
        f'{command}: {flag} is not a flag of {script}\n{result.stdout}')


RUNNERS = (
    (r'^bash launch/', _run_launcher),
    (r'^python -m spt_tasks\.show ', _run_show),
    (r'^python -m spt_jax\.compare ', _run_compare),
    (r'^python benchmarks/', _run_benchmark_help),
)

RUN_COMMANDS = [c for c in COMMANDS if (classify(c) or Rule('', '', '')).kind == RUN]


def _params():
  params = []
  for c in RUN_COMMANDS:
    _, runner = next(r for r in RUNNERS if re.search(r[0], c.text))
    params.append(pytest.param(c, runner, id=c.source))
  return params


@pytest.mark.parametrize('command,runner', _params())
def test_documented_command_runs(command, runner, tmp_path):
  runner(command, tmp_path)


if __name__ == '__main__':
  for c in COMMANDS:
    rule = classify(c)
    print(f'{rule.kind if rule else "UNCLASSIFIED":18} {c}')
  print(_summary())
