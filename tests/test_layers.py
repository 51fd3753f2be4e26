"""The house drawn from imports: each part of r1jax imports only from the layers below it (and its
own), and no import of another part hides in a function.

The layers, lowest first (CONTRIBUTING.md draws the same table): a part may import from its own
layer and the layers before it, never from a later one. A function-local import of r1jax from
another part is how a cycle would hide, so there is none; the few lazy imports inside a part
(an optional heavy dependency loaded where it is used) are allowed.
"""
import ast
import subprocess
import sys

import pytest

from tests.support import ROOT

LAYERS = (
    {"files", "assets", "batching", "losses", "sharding", "metrics", "tokenizers", "rewards"},
    {"distributed", "checkpoint"},
    {"data"},
    {"tasks", "models"},
    {"sampling"},
    {"rollout"},
    {"evaluation", "train"},
    {"pipelines"},
)
LAYER = {part: index for index, parts in enumerate(LAYERS) for part in parts}
PACKAGE = ROOT / "r1jax"


def _part(module: str) -> str:
    """The part of r1jax a module belongs to: `r1jax.train.grpo` -> train, `r1jax.sampling` -> sampling."""
    return module.split(".")[1]


def _modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE)


def _imports(path):
    """(module imported, line, whether inside a function) of every r1jax import in `path`."""
    tree = ast.parse(path.read_text())
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1jax."):
            yield node.module, node.lineno, id(node) in inside
        elif isinstance(node, ast.ImportFrom) and node.module == "r1jax":
            for alias in node.names:
                yield f"r1jax.{alias.name}", node.lineno, id(node) in inside
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("r1jax."):
                    yield alias.name, node.lineno, id(node) in inside


def test_every_part_has_a_layer():
    parts = {_part("r1jax." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)) for path in _modules()}
    assert parts <= set(LAYER), f"give these parts a layer in LAYERS: {sorted(parts - set(LAYER))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_run_down_the_layers(path):
    here = _part("r1jax." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = [f"line {line}: {module} ({_part(module)}, layer {LAYER[_part(module)]})"
              for module, line, _ in _imports(path) if LAYER[_part(module)] > LAYER[here]]
    assert not upward, f"{here} (layer {LAYER[here]}) imports from above it: {upward}"
    hidden = [f"line {line}: {module}" for module, line, in_function in _imports(path)
              if in_function and _part(module) != here]
    assert not hidden, f"function-local imports of another part of r1jax: {hidden}"


def test_a_module_that_breaks_the_layers_is_caught(tmp_path):
    """The check itself: an upward import, and one hidden in a function, are both found."""
    module = tmp_path / "fake.py"
    module.write_text("from r1jax.train.grpo import GRPO\n\ndef f():\n    import r1jax.rollout\n")
    found = list(_imports(module))
    assert found == [("r1jax.train.grpo", 1, False), ("r1jax.rollout", 4, True)]
    assert LAYER[_part(found[0][0])] > LAYER["data"] and LAYER[_part(found[1][0])] > LAYER["data"]


def test_importing_data_loads_no_layer_above_it():
    above = sorted(f"r1jax.{part}" for part, layer in LAYER.items() if layer > LAYER["data"])
    code = ("import sys, r1jax.data; print(sorted({m for m in sys.modules for top in sys.argv[1:] "
            "if m == top or m.startswith(top + '.')}))")
    result = subprocess.run([sys.executable, "-c", code, *above], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
