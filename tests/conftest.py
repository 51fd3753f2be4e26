"""What every test may use: the test order, and fixtures of the tiny model and checkpoints.

Tests mirror the library: `tests/<package>/test_<module>.py` for `r1jax/<package>/<module>.py`,
`tests/test_<module>.py` for a top-level module, the end-to-end recipe runs in `tests/pipelines/`.
Code the tests share lives in `tests/support/` (tiny models, HF checkpoints, the scripts that
multi-device tests launch as `python -m tests.support.<script>`); no test module imports another.

Test order: the heaviest files first. pytest-xdist (`--dist loadfile --no-loadscope-reorder`,
pytest.ini) hands whole files to its two workers in this order, two each to start with, then one
at a time as each gets free: a long end-to-end file handed out last would run alone at the end
while the other worker idles. HEAVY_FIRST names files by their path under tests/. Measured cost of
the heavy files in the default suite on 2 cores (2026-12-07, with other work on the machine, so
about 1.7x the quiet figures): pipelines/test_r1_zero about 135 s, models/test_models 350 s,
pipelines/test_experiments 290 s, test_multihost 130 s, models/test_attention 125 s.
"""
import pathlib

import pytest

from tests.support import hf_checkpoints, tiny

TESTS = pathlib.Path(__file__).resolve().parent
HEAVY_FIRST = ("models/test_models.py", "pipelines/test_experiments.py", "pipelines/test_r1_zero.py",
               "test_multihost.py", "models/test_attention.py", "train/test_step.py", "test_sharding.py",
               "train/test_grpo_options.py", "test_notebooks.py", "train/test_lora_training.py",
               "train/test_dynamic_sampling.py", "test_checkpoint_faults.py", "test_evaluate_cli.py",
               "rewards/test_humaneval_agreement.py")
# a moved or renamed file would silently lose its place in the order
assert all((TESTS / path).is_file() for path in HEAVY_FIRST), [p for p in HEAVY_FIRST if not (TESTS / p).is_file()]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    # stable: the others keep their order
    items.sort(key=lambda item: rank.get(item.path.relative_to(TESTS).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides)`: the ModelConfig of the shared tiny model (tests/support/tiny.py)."""
    return tiny.tiny_config


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_model(config, seed=0, std=0.02)`: a Transformer with numpy normal weights, nothing compiled."""
    return tiny.random_model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """`hf_checkpoint(architecture="qwen2", seed=0)`: a tiny random transformers chat checkpoint
    (tests/support/hf_checkpoints.py), made once per session and architecture; read it, never write it."""
    saved = {}

    def checkpoint(architecture: str = "qwen2", seed: int = 0) -> pathlib.Path:
        if (architecture, seed) not in saved:
            directory = tmp_path_factory.mktemp(f"hf_{architecture}_{seed}") / architecture
            saved[architecture, seed] = hf_checkpoints.tiny_checkpoint(directory, architecture, seed)
        return saved[architecture, seed]

    return checkpoint
