"""The R1-Zero main job end to end: resume after SIGKILL, SIGTERM, bad input, and learning.

These run `python -m experiments.r1_zero_tiny` in subprocesses, as a user would, with a
tiny model and budget so that each run takes seconds.
"""
import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = [
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=1",
    "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.tokenizer.vocab_size=450",
    "--config.tokenizer.corpus_size=400", "--config.pretrain.steps=3", "--config.pretrain.batch_size=8",
    "--config.pretrain.warmup_steps=1", "--config.grpo.steps=6", "--config.grpo.prompts_per_step=2",
    "--config.grpo.num_generations=4", "--config.grpo.max_new_tokens=8", "--config.grpo.save_every=1",
    "--config.grpo.warmup_steps=1", "--config.eval.num_prompts=4", "--config.eval.num_samples=2",
]


def _command(workdir, *extra):
    return [sys.executable, "-m", "experiments.r1_zero_tiny", f"--config.workdir={workdir}", *TINY, *extra]


def _run(workdir, *extra, timeout=600):
    return subprocess.run(_command(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _start(workdir, *extra):
    return subprocess.Popen(_command(workdir, *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _grpo_steps(workdir) -> list[int]:
    checkpoints = pathlib.Path(workdir) / "grpo" / "checkpoints"
    if not checkpoints.exists():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def _wait_for_step(process, workdir, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {process.stderr.read()[-3000:]}")
        if any(s >= step for s in _grpo_steps(workdir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} within {timeout}s")


def _final_params(workdir):
    """The parameters of the last GRPO checkpoint, as numpy arrays by path."""
    import orbax.checkpoint as ocp

    step = _grpo_steps(workdir)[-1]
    path = pathlib.Path(workdir) / "grpo" / "checkpoints" / str(step) / "state"
    restored = ocp.StandardCheckpointer().restore(path)
    return step, {k: np.asarray(v) for k, v in _flatten(restored["params"]).items()}


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    return {prefix: tree}


def _metrics(workdir):
    lines = (pathlib.Path(workdir) / "grpo" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row.pop("step_seconds")
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_main_job_writes_summary_and_plots(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    for key in ("base_pass_at_1", "final_pass_at_1", "final_format_reward"):
        assert 0.0 <= summary[key] <= 1.0
    assert (uninterrupted / "grpo" / "metrics.png").stat().st_size > 10_000
    assert len(_metrics(uninterrupted)) == 6


def test_resume_after_sigkill_is_bit_exact(uninterrupted, tmp_path):
    process = _start(tmp_path)
    _wait_for_step(process, tmp_path, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _grpo_steps(tmp_path)[-1] < 6, "the run finished before it was killed"
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    step, params = _final_params(tmp_path)
    want_step, want = _final_params(uninterrupted)
    assert step == want_step == 6
    for name in want:
        np.testing.assert_array_equal(params[name], want[name], err_msg=name)
    assert _metrics(tmp_path) == _metrics(uninterrupted)
    assert json.loads((tmp_path / "summary.json").read_text()) | {"seconds": 0, "init": "", "model": ""} == \
        json.loads((uninterrupted / "summary.json").read_text()) | {"seconds": 0, "init": "", "model": ""}


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
    process = _start(tmp_path)
    _wait_for_step(process, tmp_path, 2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    steps = _grpo_steps(tmp_path)
    logged = [row["step"] for row in _metrics(tmp_path)]
    assert steps and steps[-1] == logged[-1] < 6  # a checkpoint at the step it stopped on
    assert not any(p.name.endswith("tmp") for p in (tmp_path / "grpo" / "checkpoints").iterdir())
    assert not (tmp_path / "summary.json").exists()


def test_unknown_config_key_is_named(tmp_path):
    result = _run(tmp_path, "--config.grpo.betta=0.1")
    assert result.returncode != 0
    assert "betta" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was written


def test_unknown_reward_is_named(tmp_path):
    result = _run(tmp_path, "--config.rewards.acuracy=1.0")
    assert result.returncode != 0
    assert "acuracy" in result.stderr


def test_incompatible_checkpoint_is_refused_and_left_untouched(uninterrupted, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    (workdir / "summary.json").unlink()
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    # a wider model cannot resume from the narrow one's checkpoints
    result = _run(workdir, "--config.model.hidden_size=48")
    assert result.returncode != 0
    assert "IncompatibleCheckpointError" in result.stderr or "incompatible" in result.stderr.lower()
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before

