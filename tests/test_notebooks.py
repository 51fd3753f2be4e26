"""The Colab notebooks in notebooks/, executed top to bottom as a user would run them.

Each notebook runs in a fresh IPython kernel of this very interpreter (its kernelspec is written
into a temporary directory from `sys.executable`, so no user- or system-wide kernel can stand in),
with R1JAX_NOTEBOOK_SMALL=1 (smoke-sized settings), and with its working directory and
R1JAX_NOTEBOOK_WORKDIR (the quickstart's run) in a temporary directory. After the notebook's own cells, one extra cell prints the values a test
checks as JSON; the stored notebooks are not changed.
"""
import json
import os
import pathlib
import sys

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.support import ROOT

NOTEBOOKS = ("quickstart", "loss_primitives", "smollm2_sampling", "rewards_playground")
COLAB_URL = "https://colab.research.google.com/github/r1jax/r1jax/blob/main/notebooks/{}.ipynb"
# Seconds any one cell may take on a loaded 2-core machine (the quickstart's run cell is the longest).
CELL_TIMEOUT = 600


def _read(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _execute(name, tmp_path, probe):
    """Run notebook `name`, then `print(json.dumps(<probe>))` in its kernel; (notebook, probe value)."""
    notebook = _read(name)
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint(_json.dumps({probe}))"))
    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3")  # argv[0] is sys.executable
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    env = {**os.environ, "R1JAX_NOTEBOOK_SMALL": "1", "R1JAX_NOTEBOOK_WORKDIR": str(tmp_path / "workdir")}
    client = NotebookClient(notebook, km=kernel_manager, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError, with the traceback, if any cell fails
    assert kernel_manager.kernel_spec.argv[0] == sys.executable
    return notebook, json.loads(_stdout(notebook.cells[-1]))


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _cell(notebook, cell_id):
    return next(cell for cell in notebook.cells if cell.get("id") == cell_id)


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_with_badge_and_install_cell(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        f"clear the outputs of notebooks/{name}.ipynb before committing"
    assert COLAB_URL.format(name) in notebook.cells[0].source
    install = code[0].source
    assert 'importlib.util.find_spec("r1jax") is None' in install
    assert install.count("https://github.com/r1jax/r1jax") == 1  # the one place a user edits
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.slow  # the main job it runs is tested end to end in the default suite (tests of r1_zero)
def test_quickstart_runs_r1_zero_and_plots(tmp_path):
    notebook, probe = _execute("quickstart", tmp_path, probe=(
        '{"workdir": str(workdir), "grpo_steps": config.grpo.steps, "logged_steps": steps, '
        '"returned": summary}'))
    workdir = tmp_path / "workdir"
    assert pathlib.Path(probe["workdir"]) == workdir
    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("base_pass_at_1", "final_pass_at_1", "base_format_reward", "final_format_reward"):
        assert 0.0 <= summary[key] <= 1.0
    assert probe["returned"] == summary  # what r1_zero returned is what it wrote
    assert probe["logged_steps"] == list(range(1, probe["grpo_steps"] + 1))
    assert _images(_cell(notebook, "plots")) == 2  # base/metrics.png and grpo/metrics.png
    assert _images(_cell(notebook, "curves")) == 1
    table = _cell(notebook, "summary").outputs[0].data["text/markdown"]
    assert "| pass@1 |" in table and f"| {summary['base_pass_at_1']:.3f} |" in table


def test_loss_primitives_plots_and_checks(tmp_path):
    notebook, probe = _execute("loss_primitives", tmp_path, probe=(
        '{"advantages": advantages.tolist(), "mus": means.tolist(), "kl_means": kl_means, "kl_stds": kl_stds, '
        '"fresh_gradient": fresh_gradient.tolist(), "moved_gradient": moved_gradient.tolist()}'))
    for cell_id in ("surrogate", "kl", "advantages", "clip"):
        assert _images(_cell(notebook, cell_id)) == 1, cell_id

    # group advantages (r - mean) / (std + 1e-4) with population std, by hand: [1, 0, 0, 1] has mean
    # and std 1/2; [2, 1, 1, 0] mean 1, std sqrt(1/2); a group of equal rewards gets exactly 0
    half = 0.5 / (0.5 + 1e-4)
    graded = 1 / (0.5 ** 0.5 + 1e-4)
    expected = [half, -half, -half, half, 0, 0, 0, 0, graded, 0, 0, -graded]
    assert probe["advantages"] == pytest.approx(expected, abs=1e-5)

    # pi_theta = N(mu, 1), pi_ref = N(0, 1): the log-ratio is N(mu^2/2, mu^2), so E[k1] = E[k3] = mu^2/2
    # (the true KL) and E[k2] = E[x^2]/2 = mu^2/2 + mu^4/8; 20,000 samples -> within 5 standard errors
    for i, mu in enumerate(probe["mus"]):
        for name, mean in (("k1", mu ** 2 / 2), ("k2", mu ** 2 / 2 + mu ** 4 / 8), ("k3", mu ** 2 / 2)):
            tolerance = 5 * probe["kl_stds"][name][i] / 20_000 ** 0.5 + 1e-6
            assert abs(probe["kl_means"][name][i] - mean) <= tolerance, (name, mu)

    # d loss / d logps on fresh samples: -A_i / (G |o_i|) on completion tokens, G = 2, lengths 4 and 3,
    # A = +-(1/2) / (1/2 + 1e-4); after the policy moved, the two clipped first tokens get 0
    fresh = [[-half / 8] * 4, [half / 6] * 3 + [0.0]]
    assert probe["fresh_gradient"] == [pytest.approx(row, abs=1e-6) for row in fresh]
    moved = [[0.0] + row[1:] for row in fresh]
    assert probe["moved_gradient"] == [pytest.approx(row, abs=1e-6) for row in moved]


def test_smollm2_sampling_prints_text(tmp_path):
    notebook, probe = _execute("smollm2_sampling", tmp_path, probe=(
        '{"greedy": greedy_texts, "sampled": sampled_texts, "tokens_per_second": tokens_per_second}'))
    # The real SmolLM2-135M-Instruct knows this one (greedy decoding is deterministic).
    assert "Paris" in probe["greedy"][0]
    assert all(text.strip() for text in probe["greedy"] + probe["sampled"])
    assert probe["tokens_per_second"] > 0
    printed = "".join(_stdout(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert probe["greedy"][0] in printed and "tokens/s" in printed


def test_rewards_playground_scores(tmp_path):
    notebook, probe = _execute("rewards_playground", tmp_path, probe=(
        '{"accuracy": accuracy_scores, "format": format_scores, "language": language_scores, '
        '"countdown": countdown_scores, "arithmetic": arithmetic_scores, "code": code_scores, '
        '"total": [None if t != t else float(t) for t in result.total], "valid": result.valid.tolist(), '
        '"r1_format": r1_format_scores}'))
    # hand-worked: 0.5, 2/4 and 1/2 all equal the gold 1/2; 1/3 does not
    assert probe["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    # [strict, soft, tag_count]: the whole format; text around the blocks; no answer block;
    # blocks in the wrong order
    assert probe["format"] == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]]
    # "我们 compute 2+3 等于 5": four Han words (one per character) and one Latin word
    assert probe["language"] == {"zh": 0.8, "en": 0.2, "inferred from the question": 0.8}
    assert probe["countdown"] == [1.0, 0.0, 0.0]  # 25 + 3*7 = 46; 25*3 - 7 = 68; 7 used twice
    assert probe["arithmetic"] == [1.0, 1.0, 0.0]
    # the correct program passes 3 of 3 tests, a*b instead of a+b only add(2, 2) == 4
    if probe["code"] == [None, None]:  # a machine where the sandbox cannot run: the notebook says why
        assert "the sandbox could not run the program" in _stdout(_cell(notebook, "code"))
    else:
        assert probe["code"] == [1.0, pytest.approx(1 / 3)]
    # weights accuracy 1, format 0.5: right and formatted 1 + 0.5, wrong and formatted 0 + 0.5, right
    # without the format 1 + 0; an empty gold answer cannot be judged
    assert probe["total"] == [1.5, 0.5, 1.0, None]
    assert probe["valid"] == [True, True, True, False]
    assert probe["r1_format"] == [1.0, 0.0, 0.0]
