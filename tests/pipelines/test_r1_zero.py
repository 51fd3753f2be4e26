"""The R1-Zero main job end to end: on one process and on two, SIGTERM, SIGKILL, resume, bad input.

These run `python -m experiments.r1_zero_tiny` in subprocesses, as a user would, with a
tiny model and budget so that each run takes seconds. The reference run is one process
with 4 fake CPU devices; the multi-host runs are 2 localhost processes with 2 devices each
(tests/support/launch.py), joined as the hosts of a pod are.
"""
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from r1jax.pipelines.cli import PREEMPTED
from tests.support import ROOT
from tests.support.launch import launch, wait

MAIN_JOB = "experiments.r1_zero_tiny"

TINY = [
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=1",
    "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.tokenizer.vocab_size=450",
    "--config.tokenizer.corpus_size=400", "--config.pretrain.steps=3", "--config.pretrain.batch_size=8",
    "--config.pretrain.warmup_steps=1", "--config.grpo.steps=6", "--config.grpo.prompts_per_step=2",
    "--config.grpo.num_generations=4", "--config.grpo.max_new_tokens=8", "--config.grpo.save_every=1",
    "--config.grpo.warmup_steps=1", "--config.eval.num_prompts=4", "--config.eval.num_samples=2",
    "--config.mesh={'fsdp': -1}",
]
# rollouts and evaluations on a mesh of their own: tensor-parallel decoding while training is FSDP
TENSOR_PARALLEL_SAMPLER = "--config.sampler_mesh={'tensor': 2, 'data': 2}"


def _command(workdir, *extra):
    return [sys.executable, "-m", "experiments.r1_zero_tiny", f"--config.workdir={workdir}", *TINY, *extra]


def _run(workdir, *extra, timeout=600):
    return subprocess.run(_command(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


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
    """(last GRPO checkpoint step, the exported final parameters as numpy arrays by tensor name)."""
    from safetensors.numpy import load_file

    return _grpo_steps(workdir)[-1], load_file(pathlib.Path(workdir) / "grpo" / "model" / "model.safetensors")


def _metrics(workdir):
    lines = (pathlib.Path(workdir) / "grpo" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    # wall times differ from run to run; everything else must not
    return [{k: v for k, v in row.items() if k != "step_seconds" and not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def main_jobs(tmp_path_factory):
    """The reduced main job as 1 process x 4 devices, and as 2 processes x 2 devices sampling on a
    tensor-parallel mesh; launched together."""
    tmp = tmp_path_factory.mktemp("main_jobs")
    runs = {"one": launch(MAIN_JOB, [f"--config.workdir={tmp / 'one'}", *TINY], processes=1, devices=4,
                          log_dir=tmp, name="one"),
            "two": launch(MAIN_JOB, [f"--config.workdir={tmp / 'two'}", *TINY, TENSOR_PARALLEL_SAMPLER],
                          processes=2, devices=2, log_dir=tmp, name="two")}
    for processes in runs.values():
        wait(processes)
    return {name: tmp / name for name in runs}


@pytest.fixture(scope="module")
def uninterrupted(main_jobs):
    return main_jobs["one"]


def _summary(workdir) -> dict:
    """summary.json without the wall time and the workdir's own paths."""
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("seconds", "init", "model")}


def test_main_job_writes_summary_and_plots(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    for key in ("base_pass_at_1", "final_pass_at_1", "final_format_reward", "base_reflection_rate",
                "train_reflection_rate_first", "train_reflection_rate_last"):
        assert 0.0 <= summary[key] <= 1.0, key
    # the curves' ends: the mean of the first and of the last 5 of the 6 steps' lengths
    lengths = [row["response_length"] for row in _metrics(uninterrupted)]
    assert summary["train_response_length_first"] == pytest.approx(np.mean(lengths[:5]))
    assert summary["train_response_length_last"] == pytest.approx(np.mean(lengths[-5:]))
    assert (uninterrupted / "grpo" / "metrics.png").stat().st_size > 10_000
    assert len(_metrics(uninterrupted)) == 6


def test_two_processes_and_a_tensor_parallel_sampler_compute_what_one_process_computes(main_jobs):
    """Measured: the same summary figures; parameters within 1e-8 (the cross-process all-reduces
    add in another order), per-step metrics within 1e-6 relative."""
    one, two = main_jobs["one"], main_jobs["two"]
    assert _summary(two) == _summary(one)
    step, params = _final_params(two)
    want_step, want = _final_params(one)
    assert step == want_step == 6
    worst = max(float(np.abs(params[name] - want[name]).max()) for name in want)
    assert worst <= 1e-5, f"parameters differ by up to {worst:.1e}"
    print(f"2 processes vs 1: parameters differ by up to {worst:.1e}")
    for row, want_row in zip(_metrics(two), _metrics(one), strict=True):
        assert row.keys() == want_row.keys()
        for key, value in want_row.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (row["step"], key)


# the preemption and crash runs: about 2.5 minutes each on 2 cores, so marked slow
@pytest.mark.slow
def test_sigterm_to_one_process_saves_every_process_at_the_same_step(main_jobs, tmp_path):
    runs = launch(MAIN_JOB, [f"--config.workdir={tmp_path / 'run'}", *TINY, TENSOR_PARALLEL_SAMPLER], processes=2,
                  devices=2, log_dir=tmp_path, name="sigterm")
    _wait_for_checkpoint(runs, tmp_path / "run", 2)
    runs[1].send_signal(signal.SIGTERM)  # a preemption notice reaches one host
    codes = [process.wait(timeout=180) for process in runs]
    logs = [pathlib.Path(process.log_path).read_text() for process in runs]
    assert codes == [PREEMPTED, PREEMPTED], logs[0][-3000:] + logs[1][-3000:]  # not done, for a scheduler
    stopped = [re.findall(r"preempted \(SIGTERM\) at step (\d+)", log) for log in logs]
    assert stopped[0] and stopped[0] == stopped[1], stopped  # both saved, at the same step
    step = int(stopped[0][0])
    assert step in _grpo_steps(tmp_path / "run")
    assert [row["step"] for row in _metrics(tmp_path / "run")][-1] == step
    for log in logs:  # JAX's own shutdown lines may follow it
        assert "\npreempted (SIGTERM): the run stopped at stage grpo, " in log, log[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
    # the checkpoints of 2 processes x 2 devices restore onto 1 process x 4 devices, data-parallel
    wait(launch(MAIN_JOB, [f"--config.workdir={tmp_path / 'run'}", *TINY, "--config.mesh={'data': -1}"], processes=1,
                devices=4, log_dir=tmp_path, name="resumed_on_one"))
    assert f"resumed from step {step}" in pathlib.Path(tmp_path / "resumed_on_one.0.log").read_text()
    assert _summary(tmp_path / "run") == _summary(main_jobs["one"])
    params, want = _final_params(tmp_path / "run")[1], _final_params(main_jobs["one"])[1]
    worst = max(float(np.abs(params[name] - want[name]).max()) for name in want)
    assert worst <= 1e-5, f"parameters differ by up to {worst:.1e}"
    print(f"preempted at step {step} on 2 processes, finished on 1: parameters differ by up to {worst:.1e}")


@pytest.mark.slow
def test_sigterm_during_checkpoint_saves_exits_143_and_relaunches_resume_to_the_same_result(main_jobs, tmp_path):
    """Issue 22, item 13: a SIGTERM during a checkpoint save exited 0; during the stand-in base's
    final save it was lost, and the run went on to the end. Now each run says it was preempted,
    exits 143, and the relaunches end as the uninterrupted run did."""
    workdir = tmp_path / "run"

    def preempted_during_a_save(name, checkpoints, stage):
        run = launch(MAIN_JOB, [f"--config.workdir={workdir}", *TINY], processes=1, devices=4, log_dir=tmp_path,
                     name=name)[0]
        deadline = time.time() + 600
        while not (checkpoints.is_dir() and any(p.name.endswith(".orbax-checkpoint-tmp") for p in checkpoints.iterdir())):
            assert run.poll() is None, pathlib.Path(run.log_path).read_text()[-3000:]
            assert time.time() < deadline, f"no save in {checkpoints}"
            time.sleep(0.005)
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=180)
        log = pathlib.Path(run.log_path).read_text()
        assert code == PREEMPTED, log[-3000:]
        assert f"\npreempted (SIGTERM): the run stopped at stage {stage}" in log, log[-3000:]
        assert '"stopped"' not in log and not (workdir / "summary.json").exists()
        return log

    # the base's only save is its last (pretrain.steps=3 < save_every): the run stops before evaluating it
    preempted_during_a_save("in_base_save", workdir / "base" / "checkpoints", "base_eval")
    assert not (workdir / "grpo").exists()
    # during an asynchronous GRPO save: the next step saves and stops (or, at the last one, before final_eval)
    log = preempted_during_a_save("in_grpo_save", workdir / "grpo" / "checkpoints", "")
    wait(launch(MAIN_JOB, [f"--config.workdir={workdir}", *TINY], processes=1, devices=4, log_dir=tmp_path,
                name="relaunched"))
    relaunched = pathlib.Path(tmp_path / "relaunched.0.log").read_text()
    assert re.search(r"resumed from step \d+|stage grpo: done", relaunched), relaunched[-3000:]
    assert '"final_pass_at_1"' in relaunched  # the summary, printed once the run is done
    step, params = _final_params(workdir)
    want_step, want = _final_params(main_jobs["one"])
    assert step == want_step == 6
    for name in want:
        np.testing.assert_array_equal(params[name], want[name], err_msg=name)
    assert _metrics(workdir) == _metrics(main_jobs["one"])
    assert _summary(workdir) == _summary(main_jobs["one"])
    print(log.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_a_relaunch_resumes_bit_exact(main_jobs, tmp_path):
    workdir, command = tmp_path / "run", [f"--config.workdir={tmp_path / 'run'}", *TINY, TENSOR_PARALLEL_SAMPLER]
    runs = launch(MAIN_JOB, [*command, "--heartbeat_timeout_seconds=20"], processes=2, devices=2,
                  log_dir=tmp_path, name="killed")
    _wait_for_checkpoint(runs, workdir, 3)
    runs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    code = runs[0].wait(timeout=180)
    waited = time.time() - killed_at
    assert code != 0 and waited < 60, f"exit {code} after {waited:.0f}s"  # not a hang: the heartbeat timeout
    print(f"the surviving process exited with {code} {waited:.0f} s after the kill")
    wait(launch(MAIN_JOB, command, processes=2, devices=2, log_dir=tmp_path, name="relaunched"))
    step, params = _final_params(workdir)
    want_step, want = _final_params(main_jobs["two"])
    assert step == want_step == 6
    for name in want:
        np.testing.assert_array_equal(params[name], want[name], err_msg=name)
    assert _metrics(workdir) == _metrics(main_jobs["two"])
    assert _summary(workdir) == _summary(main_jobs["two"])


def _wait_for_checkpoint(runs, workdir, step, timeout=600):
    deadline = time.time() + timeout
    while not any(s >= step for s in _grpo_steps(workdir)):
        ended = [process.log_path for process in runs if process.poll() is not None]
        assert not ended, f"ended before GRPO step {step}: " + pathlib.Path(ended[0]).read_text()[-3000:]
        assert time.time() < deadline, f"no checkpoint of step {step} within {timeout}s"
        time.sleep(0.05)


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
    assert result.returncode == 2 and "\nerror: " in "\n" + result.stderr
    assert "48" in result.stderr and "nothing was changed" in result.stderr.lower()
    assert "Traceback" not in result.stderr  # the message, not buried under a traceback
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before



def test_the_long_chain_experiment_config_passes_every_check(tmp_path):
    """experiments.r1_zero_long: its sections are checked as the recipe checks them (its run is 20+ minutes)."""
    import experiments.r1_zero_long as long_experiment
    from r1jax.pipelines.r1_zero import RunSettings, generic_config
    from r1jax.pipelines.stages import check_model, check_pretrain, corpus_style

    config = long_experiment.get_config()
    config.workdir = str(tmp_path / "run")
    run = RunSettings(generic_config(config, tmp_path / "base", tmp_path / "tokenizer.model"), init_exists=False)
    check_pretrain(config.pretrain)
    check_model(config.model)
    style = corpus_style(config.pretrain)
    assert style.check_rate > 0 and style.restate and run.task.num_operations >= 5
    assert run.grpo.max_new_tokens >= 200  # room for a re-checked solution
    assert not (tmp_path / "run").exists()
