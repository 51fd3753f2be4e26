"""The house drawn from imports: r1jax.data imports nothing above it, and no import hides in a function."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# what sits above the data layer: sampling and its host side, training, the recipes
ABOVE_DATA = ("r1jax.rollout", "r1jax.sampling", "r1jax.train", "r1jax.pipelines", "r1jax.evaluate", "r1jax.models")


def _imports(path: pathlib.Path):
    """(module imported, line, whether inside a function) of every `r1jax` import in `path`."""
    tree = ast.parse(path.read_text())
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1jax"):
            yield node.module, node.lineno, id(node) in inside
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("r1jax"):
                    yield alias.name, node.lineno, id(node) in inside


@pytest.mark.parametrize("path", sorted((ROOT / "r1jax" / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_imports_nothing_above_it(path):
    upward = [f"{path.name}:{line} imports {module}" for module, line, _ in _imports(path)
              if module.startswith(ABOVE_DATA)]
    assert not upward


@pytest.mark.parametrize("package", ["data", "pipelines"])
def test_no_function_local_imports_of_r1jax(package):
    local = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / "r1jax" / package).rglob("*.py"))
             for module, line, in_function in _imports(path) if in_function]
    assert not local


def test_importing_data_loads_no_layer_above_it():
    code = ("import sys, r1jax.data; print(sorted({m for m in sys.modules for top in sys.argv[1:] "
            "if m == top or m.startswith(top + '.')}))")
    above = ("r1jax.rollout", "r1jax.train", "r1jax.pipelines", "r1jax.evaluate")
    result = subprocess.run([sys.executable, "-c", code, *above], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
