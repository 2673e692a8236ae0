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


# Top-level packages of this repository that the package must never import.
OUTSIDE = ("configs", "experiments", "tests")


def _imports(module: str, path: str, modules) -> list[tuple[str, bool]]:
  """(imported module, whether the import sits inside a function) of one file: its imports of
  the package (relative ones resolved), of ``OUTSIDE``, and any ``importlib`` / ``__import__``
  (recorded as ``"importlib"``: a dynamic import the walk cannot follow)."""
  tree = ast.parse(open(path).read())
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:  # ``from ..core import x`` inside facekp_jax.data.y.
          parent = package.split(".")[:len(package.split(".")) - child.level + 1]
          base = ".".join(parent + ([child.module] if child.module else []))
        # ``from facekp_jax.core import keypoints`` imports facekp_jax.core.keypoints.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in child.names]
      elif isinstance(child, ast.Name) and child.id == "__import__":
        names = ["importlib"]
      found.extend((n, inner) for n in names
                   if n.split(".")[0] in ("facekp_jax", "importlib", *OUTSIDE))
      visit(child, inner)

  visit(tree, False)
  return found


def _rank(module: str) -> int:
  parts = module.split(".")
  if len(parts) > 1 and parts[1] in LAYERS:
    return LAYERS.index(parts[1])
  return len(LAYERS)  # The package itself, cli and the commands.


MODULES = _modules()
GRAPH = {m: _imports(m, path, MODULES) for m, path in MODULES.items()}


def test_the_walk_sees_the_layers():
  # The checks below are only as good as the walk: it must find modules and imports in each.
  for layer in LAYERS:
    assert any(m.startswith(f"facekp_jax.{layer}.") for m in MODULES), layer
  assert ("facekp_jax.core.keypoints", False) in GRAPH["facekp_jax.core.geometry"]
  assert ("facekp_jax.training.loop", False) in GRAPH["facekp_jax.main"]
  assert ("facekp_jax.model.ops.pooling", False) in GRAPH["facekp_jax.model.ops.conv"]


def test_the_top_holds_only_the_commands_and_cli():
  top = {m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in LAYERS}
  assert top == {f"facekp_jax.{c}" for c in (*COMMANDS, "cli")}


def test_the_walk_resolves_relative_and_sees_dynamic_imports(tmp_path):
  path = tmp_path / "x.py"
  path.write_text("from ..serving import predictor\nimport importlib\n"
                  "def f():\n  return __import__('facekp_jax.main')\n")
  found = _imports("facekp_jax.data.x", str(path), MODULES)
  assert ("facekp_jax.serving.predictor", False) in found
  assert ("importlib", False) in found and ("importlib", True) in found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_dynamic_import_and_nothing_from_outside_the_package(module):
  outside = [m for m, _ in GRAPH[module] if m.split(".")[0] in ("importlib", *OUTSIDE)]
  assert not outside, f"{module} imports {outside}"


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
  # Every import of a package module is an edge, a layer's ``__init__`` included (they import
  # nothing: ``test_layer_packages_import_nothing``).
  graph = {m: {i for i, _ in imports if i in MODULES} for m, imports in GRAPH.items()}
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


# What ``import facekp_jax`` gives: the Python API (the predictor) and the layouts, nothing else.
PUBLIC_API = {"facekp_jax.serving.predictor", "facekp_jax.core.keypoints"}


def test_layer_packages_import_nothing():
  for module, path in MODULES.items():
    if path.endswith("__init__.py") and module != "facekp_jax":
      assert not GRAPH[module], f"{module} imports {GRAPH[module]}"
  assert {m for m, _ in GRAPH["facekp_jax"]} == PUBLIC_API
