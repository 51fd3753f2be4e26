"""The full R1 pipeline: every stage runs, a kill resumes at the stage it hit, findings are computed.

`python -m experiments.r1_pipeline_tiny` runs in a subprocess, as a user would, with tiny
models and budgets (the learning itself is measured by the full run in the README).
"""
import json
import signal
import subprocess
import sys
import time

import pytest

from r1jax.pipelines.findings import steps_to_reach
from r1jax.pipelines.stages.distillation import rl_flops
from tests.support import ROOT


TINY = [
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=1",
    "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
    "--config.tokenizer.corpus_size=400", "--config.pretrain.steps=3", "--config.pretrain.batch_size=8",
    "--config.pretrain.warmup_steps=1", "--config.grpo.steps=2", "--config.grpo.prompts_per_step=2",
    "--config.grpo.num_generations=4", "--config.grpo.max_new_tokens=8", "--config.grpo.save_every=1",
    "--config.grpo.warmup_steps=1", "--config.cold_start.samples_per_prompt=2", "--config.cold_start.annotated=16",
    "--config.cold_start.steps=2", "--config.cold_start.batch_size=4", "--config.cold_start.warmup_steps=1",
    "--config.rejection.samples_per_prompt=2", "--config.general.prompts=8", "--config.general.sft_pairs=8",
    "--config.sft.steps=2", "--config.sft.batch_size=4", "--config.sft.warmup_steps=1", "--config.sft.replay=0.5",
    "--config.reward_model.pairs=16", "--config.reward_model.steps=2", "--config.reward_model.batch_size=4",
    "--config.reward_model.warmup_steps=1", "--config.student.model.hidden_size=16",
    "--config.student.model.intermediate_size=32", "--config.student.model.num_layers=1",
    "--config.student.model.num_heads=2", "--config.student.model.num_kv_heads=1",
    "--config.student.distill.batch_size=4", "--config.student.rl_steps=0", "--config.student.distill.warmup_steps=1",
    "--config.eval.num_prompts=4", "--config.eval.num_samples=2",
]
STAGES_BEFORE = ("base", "r1_zero", "r1_zero_language", "cold_start")


def _command(workdir):
    return [sys.executable, "-m", "experiments.r1_pipeline_tiny", f"--config.workdir={workdir}", *TINY]


@pytest.mark.slow  # about 4 minutes on 2 cores: every stage of the recipe, twice where it was killed
def test_pipeline_resumes_at_the_stage_it_was_killed_in(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    checkpoint = workdir / "reasoning_rl" / "checkpoints" / "1"
    deadline = time.time() + 600
    while not checkpoint.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "the pipeline did not reach reasoning RL in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / "reasoning_rl" / "model").exists()
    finished = {stage: (workdir / stage / "model" / "config.json").stat().st_mtime_ns for stage in STAGES_BEFORE}

    result = subprocess.run(_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # the finished stages were not redone; the killed one resumed from its checkpoint
    assert finished == {stage: (workdir / stage / "model" / "config.json").stat().st_mtime_ns
                        for stage in STAGES_BEFORE}
    assert "reasoning_rl: resumed from step" in result.stderr
    steps = [json.loads(line)["step"] for line in (workdir / "reasoning_rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    for stage in ("reasoning_rl", "sft", "all_scenario_rl", "student/base", "student/rl"):
        assert (workdir / stage / "model" / "config.json").exists(), stage
    assert (workdir / "rejection" / "provenance.json").exists()
    findings = json.loads((workdir / "findings.json").read_text())["findings"]
    assert set(findings) == {"a_rl_raises_pass_at_1", "b_cons_at_k_at_least_pass_at_1",
                             "c_rl_steps_to_target_accuracy", "d_language_reward_raises_consistency",
                             "e_distillation_beats_rl_at_equal_compute", "f_r1_as_accurate_and_more_readable",
                             "general_prompts_judge_score"}
    table = (workdir / "findings.md").read_text()
    assert "r1 format" in table and " ± " in table  # every pass@1 and cons@k with its error
    cold_start = json.loads((workdir / "cold_start" / "data.json").read_text())
    assert len(cold_start["pairs"]) == cold_start["stats"]["kept"] + 16  # R1-Zero's kept + annotated
    assert all(completion.startswith("|special_token|") for _, completion in cold_start["pairs"])

    # a third run finds everything done and changes nothing
    before = (workdir / "findings.json").read_text()
    again = subprocess.run(_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(before)["findings"] == json.loads((workdir / "findings.json").read_text())["findings"]


def test_steps_to_reach_uses_a_running_mean(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": i + 1, "accuracy": a})
                             for i, a in enumerate([0.1, 0.9, 0.2, 0.6, 0.7, 0.8])))
    # running means of 3: 0.4, 0.567, 0.5, 0.7 -> first >= 0.6 ends at step 6
    assert steps_to_reach(log, 0.6) == 6
    assert steps_to_reach(log, 0.5) == 4
    assert steps_to_reach(log, 0.95) is None


def test_rl_flops_count_every_forward_and_backward(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "response_length": n}) for s, n in ((1, 10.0), (2, 20.0))))
    # 4 rows x (30 prompt + 10, then 30 + 20) tokens = 360 tokens; 1 sample + 1 reference + 3 update forwards
    assert rl_flops(log, rows_per_step=4, prompt_tokens=30, flops_per_token=100, with_reference=True) == \
        pytest.approx(5 * 100 * 360)
    assert rl_flops(log, rows_per_step=4, prompt_tokens=30, flops_per_token=100, with_reference=False) == \
        pytest.approx(4 * 100 * 360)
