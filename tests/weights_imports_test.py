"""The import graph: no module imports itself through others, and no TF or torch at import.

The graph is read from the source with `ast`, so it holds every import of a `mobilebert_jax`
module, at the top of a module or inside a function: an import deferred into a function still
makes a cycle, it only hides it until the function runs.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import mobilebert_jax

PACKAGE = "mobilebert_jax"
ROOT = pathlib.Path(mobilebert_jax.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the package (packages by `__init__.py`)."""
  modules = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def _imported(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The package's modules that module `name` imports anywhere in its source."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package, one level up per extra dot
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        parts = package[: len(package) - (node.level - 1)]
        base = ".".join([*parts, node.module] if node.module else parts)
      for alias in node.names:
        # `from package import module` imports the module; `from module import name` the module.
        submodule = f"{base}.{alias.name}"
        found.add(submodule if submodule in modules else base)
  return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None when it has none."""
  done: set[str] = set()
  stack: list[str] = []
  on_stack: set[str] = set()

  def visit(node: str) -> list[str] | None:
    stack.append(node)
    on_stack.add(node)
    for target in sorted(graph[node]):
      if target in on_stack:
        return [*stack[stack.index(target) :], target]
      if target not in done:
        cycle = visit(target)
        if cycle:
          return cycle
    stack.pop()
    on_stack.discard(node)
    done.add(node)
    return None

  for node in sorted(graph):
    if node not in done:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_cycle_finder_and_the_graph_reader():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
  # A function-level import counts: `model.config` reads the dialects when a dict is read.
  assert "mobilebert_jax.weights.config_dialects" in import_graph()["mobilebert_jax.model.config"]


def test_the_package_import_graph_has_no_cycle():
  graph = import_graph()
  assert len(graph) > 50, sorted(graph)  # the walk found the package
  assert any(name.startswith(f"{PACKAGE}.weights.") for name in graph)
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_importing_the_weights_package_loads_neither_tensorflow_nor_torch():
  code = (
    "import sys\n"
    "import mobilebert_jax.weights\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch'})\n"
    "print(','.join(heavy))\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1:] in ([], [""]), done.stdout
