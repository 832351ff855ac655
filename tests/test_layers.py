"""The package's layers read top-down: every import of nerve_jax points to the same or a lower
layer, the import graph has no circle, and no import hides inside a function to dodge one."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nerve_jax")

# Lowest first; a module may import only from its own layer or the ones below it.
LAYERS = (
    ("nerve_jax.errors", "nerve_jax.fileio", "nerve_jax.atomic", "nerve_jax.registry",
     "nerve_jax.rle", "nerve_jax.postprocess", "nerve_jax.runtime"),
    ("nerve_jax.data",),
    ("nerve_jax.models", "nerve_jax.losses", "nerve_jax.metrics", "nerve_jax.parallel",
     "nerve_jax.checkpoint"),
    ("nerve_jax.step",),
    ("nerve_jax.config_util",),
    ("nerve_jax.evaluation",),
    ("nerve_jax.train", "nerve_jax.aot"),
    ("nerve_jax.submit",),
    ("nerve_jax.cli", "nerve_jax.notebook", "nerve_jax"),
)

# Imports inside functions, each for a reason other than a circle.
LAZY = {
    "nerve_jax.cli": "each command imports only what it runs (start-up time)",
    "nerve_jax.data.kaggle": "rle imports JAX, which `import nerve_jax` must not",
    "nerve_jax": "nerve_jax.Segmenter is imported when first used (it brings JAX and TF)",
}


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")]
    parts = relative.split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: str) -> list[tuple[str, bool]]:
    """(imported nerve_jax module, inside a function) for each import in the file."""
    tree = ast.parse(open(path).read())
    in_function = {id(node) for fn in ast.walk(tree)
                   if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "nerve_jax"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(name, id(node) in in_function) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in in_function) for a in node.names
                      if a.name.startswith("nerve_jax")]
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[_module_name(path)] = _imports(path)
    # "from nerve_jax import step" names a module; "from nerve_jax.x import f" a function of x.
    return {m: [(target if target in modules else target.rsplit(".", 1)[0], lazy)
                for target, lazy in imports] for m, imports in modules.items()}


def _layer(module: str) -> int:
    ranks = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
             if module == prefix or module.startswith(prefix + ".")]
    assert ranks, f"{module} is in no layer of tests/test_layers.py"
    return max(ranks)[1]


def test_every_import_points_to_the_same_or_a_lower_layer():
    upward = [f"{m} -> {t}" for m, imports in _graph().items() for t, _ in imports
              if t != m and _layer(t) > _layer(m)]
    assert upward == []


def test_the_import_graph_has_no_circle():
    graph = {m: {t for t, _ in imports if t != m} for m, imports in _graph().items()}
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("module", sorted(_graph()))
def test_imports_inside_functions_have_a_reason_other_than_a_circle(module):
    lazy = sorted({t for t, inside in _graph()[module] if inside})
    assert not lazy or module in LAZY, f"{module} imports {lazy} inside a function"
