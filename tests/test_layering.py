"""The package's layers hold: no import cycle, no upward import, none hidden in a function.

Layers, bottom to top: core <- data <- model <- training <- serving <- the commands (the modules
at the package's top: ``cli`` and the ``python -m facekp_jax.<command>`` files). A module may
import from its own layer and the layers below it; a command is imported by nothing but may
import ``cli``.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "facekp_jax")
LAYERS = ("core", "data", "model", "training", "serving")
COMMANDS = ("main", "evaluate", "predict", "export", "synthesize")


def _modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))
        dotted = rel[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = os.path.join(folder, name)
  return out


def _imports(path: str, modules) -> list[tuple[str, bool]]:
  """(imported package module, whether the import sits inside a function) of one file."""
  tree = ast.parse(open(path).read())
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
        # ``from facekp_jax.core import keypoints`` imports facekp_jax.core.keypoints.
        names = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules
                 else child.module for a in child.names]
      found.extend((n, inner) for n in names if n == "facekp_jax" or n.startswith("facekp_jax."))
      visit(child, inner)

  visit(tree, False)
  return found


def _rank(module: str) -> int:
  parts = module.split(".")
  if len(parts) > 1 and parts[1] in LAYERS:
    return LAYERS.index(parts[1])
  return len(LAYERS)  # The package itself, cli and the commands.


MODULES = _modules()
GRAPH = {m: _imports(path, MODULES) for m, path in MODULES.items()}


def test_the_walk_sees_the_layers():
  # The checks below are only as good as the walk: it must find modules and imports in each.
  for layer in LAYERS:
    assert any(m.startswith(f"facekp_jax.{layer}.") for m in MODULES), layer
  assert ("facekp_jax.core.keypoints", False) in GRAPH["facekp_jax.core.geometry"]
  assert ("facekp_jax.training.loop", False) in GRAPH["facekp_jax.main"]
  assert ("facekp_jax.model.ops.pooling", False) in GRAPH["facekp_jax.model.ops.conv"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
  upward = [m for m, _ in GRAPH[module] if _rank(m) > _rank(module)]
  assert not upward, f"{module} imports from a layer above it: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_inside_a_function(module):
  hidden = [m for m, inner in GRAPH[module] if inner]
  assert not hidden, f"{module} imports {hidden} inside a function"


def test_commands_are_imported_by_nothing():
  commands = {f"facekp_jax.{c}" for c in COMMANDS}
  assert commands <= set(MODULES)
  for module, imports in GRAPH.items():
    assert not commands & {m for m, _ in imports}, f"{module} imports a command"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of ``graph`` as a path of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
  # Package __init__ files are not edges: importing ``facekp_jax.core.x`` runs them, but they
  # import nothing of the package.
  graph = {m: {i for i, _ in imports if i in MODULES and not MODULES[i].endswith("__init__.py")}
           for m, imports in GRAPH.items()}
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_layer_packages_import_nothing():
  for module, path in MODULES.items():
    if path.endswith("__init__.py"):
      assert not GRAPH[module], f"{module} imports {GRAPH[module]}"
