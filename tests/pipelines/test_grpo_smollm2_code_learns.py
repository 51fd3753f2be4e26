"""The code experiment's claim: GRPO on generated Python functions raises SmolLM2's held-out pass@1.

Marked slow: the experiment at a reduced budget (HumanEval left out, which it reports but does
not train for) is still GRPO_MINUTES of CPU on 2 cores. Run it with `python -m pytest -m slow`.
"""
import json
import subprocess
import sys

import pytest

from tests.support import ROOT

GRPO_MINUTES = 20


@pytest.mark.slow
def test_grpo_on_code_raises_held_out_pass_at_1(tmp_path):
    try:
        from r1jax.assets import smollm2_gguf_path
        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"the SmolLM2 GGUF is not installed: {error}")
    # HumanEval is reported, not a goal: one problem keeps its stages (and their summary keys) cheap
    result = subprocess.run([sys.executable, "-m", "experiments.grpo_smollm2_code", f"--config.workdir={tmp_path}",
                             "--config.benchmarks.humaneval.num_prompts=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    gain = summary["final_pass_at_1"] - summary["base_pass_at_1"]
    # the goal, +0.15 (README: the measured run); and a gain beyond two standard errors of the difference
    assert gain >= 0.15, summary
    assert gain > 2 * (summary["base_pass_at_1_se"] ** 2 + summary["final_pass_at_1_se"] ** 2) ** 0.5, summary
