"""The code experiment's claim: GRPO on generated Python functions raises SmolLM2's held-out pass@1.

Marked slow: the experiment at its own budget (HumanEval cut to one problem: it is reported, not
trained for) is more than the default suite affords. Run it with `python -m pytest -m slow`.
Expected to fail for now: SmolLM2-135M solves none of the held-out problems before training
(pass@1 0.000, README "GRPO on code with SmolLM2"), and no run has reached the goal yet; the
mark is not strict, so a run that does shows as XPASS.
"""
import json
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.slow
@pytest.mark.xfail(reason="the goal is not reached yet: base held-out pass@1 is 0.000 (README)", strict=False)
def test_grpo_on_code_raises_held_out_pass_at_1(tmp_path):
    try:
        from r1jax.assets import smollm2_gguf_path
        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"the SmolLM2 GGUF is not installed: {error}")
    # HumanEval is reported, not a goal: one problem keeps its stages (and their summary keys) cheap
    result = subprocess.run([sys.executable, "-m", "experiments.grpo_smollm2_code", f"--config.workdir={tmp_path}",
                             "--config.benchmarks.humaneval.num_prompts=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=7200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    gain = summary["final_pass_at_1"] - summary["base_pass_at_1"]
    # the goal, +0.15 (README: the measured run); and a gain beyond two standard errors of the difference
    assert gain >= 0.15, summary
    assert gain > 2 * (summary["base_pass_at_1_se"] ** 2 + summary["final_pass_at_1_se"] ** 2) ** 0.5, summary
