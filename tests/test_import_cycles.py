"""No import cycle among the project's modules, function-level imports included.

Every `import` / `from ... import` anywhere in a module (top level, inside functions, `if`
and `try` blocks) of the packages `spt_jax` and `spt_tasks` and of the `benchmarks/` scripts
is read with `ast` (nothing is imported) and turned into an edge to the project module it
loads: `import spt_jax.train`, `from spt_jax import train`, `from spt_jax.train import x`
and relative imports all point at `spt_jax.train`; importing a submodule also executes its
packages' `__init__`, so there is an edge to each of those too. The benchmarks are scripts
run by path, so a bare `import train_throughput` there means the sibling script.

`if __name__ == '__main__':` blocks. Such a block runs only when the file is executed as a
program (`python -m spt_jax.train`); the module that runs it is `__main__`, a second copy
of the file, not the module `spt_jax.train` that others import. Its imports are therefore
edges of a separate node, `__main__ (spt_jax.train)`, which also carries the file's
other imports (the copy executes them as well). Nothing can import `__main__` by a project
module name, so such a node never closes a cycle: `python -m spt_jax.train` importing the
command-line module, which imports `spt_jax.train`, loads the file a second time under its
package name (that copy is the one the registry and everyone else sees); it is not a cycle.
The node is in the graph, not skipped, so an import cycle *among the modules that block
reaches* is still found.
"""
from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable, Mapping

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('spt_jax', 'spt_tasks')
SCRIPT_DIRS = ('benchmarks',)


def _is_main_guard(node: ast.AST) -> bool:
  """`if __name__ == '__main__':` (either operand order)."""
  if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
    return False
  test = node.test
  if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
    return False
  sides = [test.left, test.comparators[0]]
  names = [s.id for s in sides if isinstance(s, ast.Name)]
  consts = [s.value for s in sides if isinstance(s, ast.Constant)]
  return names == ['__name__'] and consts == ['__main__']


def _imports(nodes: Iterable[ast.AST]) -> list[ast.Import | ast.ImportFrom]:
  found = []
  for node in nodes:
    found.extend(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
  return found


def discover(root: pathlib.Path, packages: Iterable[str] = PACKAGES,
             script_dirs: Iterable[str] = SCRIPT_DIRS) -> dict[str, pathlib.Path]:
  """Project module name -> file: package modules by dotted name, scripts by path."""
  modules = {}
  for package in packages:
    for path in sorted((root / package).rglob('*.py')):
      parts = list(path.relative_to(root).with_suffix('').parts)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      modules['.'.join(parts)] = path
  for folder in script_dirs:
    for path in sorted((root / folder).glob('*.py')):
      modules[f'{folder}/{path.name}'] = path
  return modules


def _targets(name: str, path: pathlib.Path, node: ast.Import | ast.ImportFrom,
             modules: Mapping[str, pathlib.Path]) -> set[str]:
  """The project modules an import statement executes (packages included)."""
  is_package = path.name == '__init__.py'
  script_dir = None if '/' not in name else name.split('/')[0]
  dotted = []
  if isinstance(node, ast.Import):
    dotted = [alias.name for alias in node.names]
  else:
    base = node.module or ''
    if node.level:
      package = name.split('.') if is_package else name.split('.')[:-1]
      package = package[:len(package) - (node.level - 1)]
      base = '.'.join(package + ([base] if base else []))
    # `from pkg import sub` loads pkg.sub when it is a module; else `sub` is an attribute.
    dotted = [f'{base}.{alias.name}' if base else alias.name for alias in node.names]
    dotted.append(base)
  out = set()
  for target in dotted:
    if script_dir and f'{script_dir}/{target}.py' in modules:  # a sibling script
      out.add(f'{script_dir}/{target}.py')
      continue
    parts = target.split('.')
    for i in range(1, len(parts) + 1):
      prefix = '.'.join(parts[:i])
      if prefix in modules:
        out.add(prefix)
  return out


def import_graph(modules: Mapping[str, pathlib.Path]) -> dict[str, set[str]]:
  """Module -> the project modules it imports; `__main__ (path)` nodes for main blocks."""
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    main_blocks = [n for n in tree.body if _is_main_guard(n)]
    body = [n for n in tree.body if not _is_main_guard(n)]
    graph[name] = set().union(
        *[_targets(name, path, i, modules) for i in _imports(body)]) - {name}
    if main_blocks:
      # The `__main__` copy runs the whole file; a self-import there loads the package copy,
      # so it is an edge `__main__ (name) -> name`.
      graph[f'__main__ ({name})'] = graph[name].union(
          *[_targets(name, path, i, modules) for i in _imports(main_blocks)])
  return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
  """The cycles of `graph`: for each strongly connected component with a cycle, the shortest
  cycle through each of its modules (a -> ... -> a, starting at its smallest name), sorted."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  counter = [0]

  def strongconnect(v):  # Tarjan's algorithm (the graph has ~100 nodes: recursion is fine)
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        components.append(set(component))

  for v in sorted(graph):
    if v not in index:
      strongconnect(v)
  cycles = set()
  for component in components:
    for start in component:
      cycle = _cycle_through(graph, component, start)[:-1]
      i = cycle.index(min(cycle))
      cycles.add(tuple(cycle[i:] + cycle[:i] + [cycle[i]]))
  return [list(c) for c in sorted(cycles)]


def _cycle_through(graph: Mapping[str, set[str]], component: set[str],
                   start: str) -> list[str]:
  """A shortest cycle inside `component` from `start` back to it."""
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v] & component):
        if w == start:
          return paths[v] + [start]
        if w not in paths:
          paths[w] = paths[v] + [w]
          nxt.append(w)
    frontier = nxt
  raise AssertionError(f'no cycle in {component}')


def describe(cycles: list[list[str]]) -> str:
  return '\n'.join(' -> '.join(c) for c in cycles)


# ---------------------------------------------------------------------------
# The project.
# ---------------------------------------------------------------------------


def test_project_has_no_import_cycle():
  modules = discover(ROOT)
  assert {'spt_jax.train', 'spt_jax.runner', 'spt_tasks.sample'} <= set(modules)
  graph = import_graph(modules)
  assert 'spt_jax.runner' in graph['spt_jax.train']  # the walk sees real imports
  cycles = find_cycles(graph)
  assert not cycles, 'Import cycles among the project modules:\n' + describe(cycles)


def test_only_the_command_line_and_the_registries_know_gin():
  """One registration style: each package's gin registry (`gin.external_configurable`), imported
  by the command line (spt_jax.cli) and gin files' `import` lines, by no library module."""
  registries = {'spt_jax.gin_configurables', 'spt_tasks.gin_configurables'}
  modules = discover(ROOT, PACKAGES, ())
  gin_users = set()
  for name, path in modules.items():
    for node in _imports([ast.parse(path.read_text())]):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if not node.level else [])
      if any(n == 'gin' or n.startswith('gin.') for n in names):
        gin_users.add(name)
  assert gin_users == {'spt_jax.cli'} | registries
  graph = import_graph(modules)
  importers = {r: {m for m, edges in graph.items() if r in edges} for r in registries}
  assert importers == {'spt_jax.gin_configurables': {'spt_jax.cli'},
                       'spt_tasks.gin_configurables': set()}


def test_no_python_module_under_gin():
  assert not sorted((ROOT / 'gin').rglob('*.py'))


# ---------------------------------------------------------------------------
# The checker itself, on synthetic modules: it cannot pass vacuously.
# ---------------------------------------------------------------------------


def _write(root: pathlib.Path, files: Mapping[str, str]) -> None:
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _cycles(root, packages=('pkg',), script_dirs=()):
  return find_cycles(import_graph(discover(root, packages, script_dirs)))


def test_finds_a_cycle_through_a_function_level_import(tmp_path):
  _write(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/runner.py': 'import os\n\ndef parse_gin():\n  from pkg import registry\n',
      'pkg/registry.py': 'from pkg import runner\nfrom pkg.train import train\n',
      'pkg/train.py': 'def train():\n  pass\n',
  })
  cycles = _cycles(tmp_path)
  assert cycles == [['pkg.registry', 'pkg.runner', 'pkg.registry']]
  assert describe(cycles) == 'pkg.registry -> pkg.runner -> pkg.registry'


def test_finds_cycles_through_if_blocks_relative_and_dotted_imports(tmp_path):
  _write(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/a.py': 'import typing\nif typing.TYPE_CHECKING:\n  from . import b\n',
      'pkg/b.py': 'import pkg.c\n',
      'pkg/c.py': 'try:\n  from .a import x\nexcept ImportError:\n  pass\n',
      'pkg/sub/__init__.py': 'from ..d import y\n',
      'pkg/d.py': 'from pkg.sub import z\n',
  })
  cycles = _cycles(tmp_path)
  assert cycles == [['pkg.a', 'pkg.b', 'pkg.c', 'pkg.a'], ['pkg.d', 'pkg.sub', 'pkg.d']]


def test_a_package_init_importing_its_submodules_is_a_cycle_only_when_they_import_back(
    tmp_path):
  _write(tmp_path, {'pkg/__init__.py': 'from pkg import a\n', 'pkg/a.py': 'X = 1\n'})
  assert _cycles(tmp_path) == []
  _write(tmp_path, {'pkg/a.py': 'import pkg\n'})
  assert _cycles(tmp_path) == [['pkg', 'pkg.a', 'pkg']]


def test_main_block_is_its_own_node(tmp_path):
  _write(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/train.py': ("def run():\n  pass\n\nif __name__ == '__main__':\n"
                       '  from pkg import cli\n  cli.train_run()\n'),
      'pkg/cli.py': 'from pkg import registry\n',
      'pkg/registry.py': 'from pkg import train\n',
  })
  graph = import_graph(discover(tmp_path, ('pkg',), ()))
  assert graph['__main__ (pkg.train)'] == {'pkg', 'pkg.cli'}
  assert 'pkg.cli' not in graph['pkg.train']
  assert find_cycles(graph) == []
  # A cycle among the modules the main block reaches is still found.
  _write(tmp_path, {'pkg/registry.py': 'from pkg import train\nfrom pkg import cli\n'})
  assert _cycles(tmp_path) == [['pkg.cli', 'pkg.registry', 'pkg.cli']]
  # An import at the top level (not in the main block) is an edge of the module itself.
  _write(tmp_path, {'pkg/registry.py': 'from pkg import train\n',
                    'pkg/train.py': 'from pkg import cli\n'})
  assert _cycles(tmp_path) == [['pkg.cli', 'pkg.registry', 'pkg.train', 'pkg.cli']]


def test_benchmark_scripts_import_their_siblings(tmp_path):
  _write(tmp_path, {'pkg/__init__.py': '',
                    'bench/a.py': 'def f():\n  import b\n',
                    'bench/b.py': 'import a\nimport pkg\n'})
  assert _cycles(tmp_path, ('pkg',), ('bench',)) == [['bench/a.py', 'bench/b.py', 'bench/a.py']]


@pytest.mark.parametrize('text', ["if '__main__' == __name__:\n  import pkg.a\n",
                                  "if __name__ == '__main__':\n  import pkg.a\n"])
def test_main_guard_either_order(tmp_path, text):
  _write(tmp_path, {'pkg/__init__.py': '', 'pkg/a.py': 'import pkg.b\n', 'pkg/b.py': text})
  assert _cycles(tmp_path) == []
