"""What a run does when its checkpoints cannot be written or it is told to stop: a full disk,
a symbolic link loop, a preemption notice (SIGTERM) during or after a save. Each ends with one
line saying what to do and an exit status a scheduler can read, and the relaunch resumes.

The full disk is real: a small tmpfs that the saves fill (root only; skipped elsewhere). The
command-line cases run `cli.run` on a small pipeline of Checkpointer saves in a subprocess.
"""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.checkpoint import (CheckpointDirectoryError, Checkpointer, CheckpointWriteError, Preemption,
                              check_directory, is_disk_full, preemption_requested)
from r1jax.pipelines.stages import Stage, run_stages
from tests.support import ROOT

SIGNATURE = {"config": {"hidden_size": 8}}
VALUES = 100_000  # float32 values of a state: 400 kB a checkpoint (random, so not compressible)


def state(step: int) -> dict:
    return {"w": jax.random.normal(jax.random.key(step), (VALUES,))}


def like() -> dict:
    return {"w": jax.ShapeDtypeStruct((VALUES,), jnp.float32,
                                      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}


def tree(directory) -> dict:
    """Every path under `directory` (links not followed) with its bytes, its link target or "dir"."""
    out = {}
    for parent, directories, files in os.walk(directory):
        for name in directories + files:
            path = os.path.join(parent, name)
            relative = os.path.relpath(path, directory)
            if os.path.islink(path):
                out[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[relative] = "dir"
            else:
                out[relative] = pathlib.Path(path).read_bytes()
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/disk, half of it taken by `filler` (someone else's file, the room a
    relaunch gets once it is deleted). Mounting needs root: skipped where it is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small disk to fill")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip() or mounted.returncode}")
    try:
        (disk / "filler").write_bytes(b"\0" * (1 << 20))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_naming_the_directory_and_a_relaunch_after_making_room_resumes(small_disk):
    workdir = small_disk / "run"
    ckpt = Checkpointer(workdir, save_every=1, keep=100, model_signature=SIGNATURE)
    with pytest.raises(CheckpointWriteError) as raised:
        for step in range(1, 10):  # asynchronous saves, as the training loop makes them
            ckpt.save(step, state(step), {"step": step})
        ckpt.wait()
    ckpt.close()  # the failure is reported once, not again on the way out
    message = str(raised.value)
    complete = sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
    assert complete and complete == list(range(1, complete[-1] + 1)), complete  # the earlier ones are there
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"{workdir / 'checkpoints'}: no space left on its device"), message
    assert "free space" in message and f"resumes from step {complete[-1]}" in message, message
    assert is_disk_full(raised.value.__cause__)  # Orbax's error, kept for whoever wants the traceback

    (small_disk / "filler").unlink()  # make room, relaunch
    with Checkpointer(workdir, save_every=1, keep=100, model_signature=SIGNATURE) as ckpt:
        step, restored, host = ckpt.restore_latest(like())
        assert (step, host) == (complete[-1], {"step": complete[-1]})
        np.testing.assert_array_equal(restored["w"], state(step)["w"])
        assert ckpt.save(step + 1, state(step + 1), {"step": step + 1}, force=True)
    # the failed save's leftover went when the relaunch opened the directory
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(s) for s in range(1, step + 2)]


def test_a_full_disk_is_recognised_in_the_errors_it_comes_as():
    assert is_disk_full(OSError(28, "No space left on device", "/ckpt/x"))
    assert is_disk_full(OSError(122, "Disk quota exceeded"))
    tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\" in OCDBT database ...: Failed to write "
                             "325425 bytes to file 4: No space left on device [os_error_code='28']")
    assert is_disk_full(tensorstore)
    try:
        try:
            raise tensorstore
        except ValueError as error:
            raise RuntimeError("Save Finalize thread failed") from error
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    # the same status for device memory is not a full disk
    assert not is_disk_full(ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 62.8G"))
    assert not is_disk_full(OSError(13, "Permission denied"))


# ---------------------------------------------------------------- links that lead nowhere


@pytest.mark.parametrize("where", ["checkpoints", "checkpoints/3"])
def test_a_symlink_loop_is_refused_naming_it_before_anything_is_written(tmp_path, where):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "notes.txt").write_text("mine")
    loop = workdir / where
    if loop.exists():
        shutil.rmtree(loop)
    os.symlink(loop.name, loop)  # a link to itself
    before = tree(tmp_path)
    started = time.perf_counter()
    with pytest.raises(CheckpointDirectoryError) as refused:
        Checkpointer(workdir, save_every=1, model_signature=SIGNATURE)
    assert time.perf_counter() - started < 5
    assert str(refused.value).startswith(f"{loop}: a symbolic link loop"), refused.value
    assert "\n" not in str(refused.value)
    assert tree(tmp_path) == before


def test_a_checkpoint_directory_linked_to_nothing_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(tmp_path / "unmounted", workdir / "checkpoints")
    before = tree(tmp_path)
    with pytest.raises(CheckpointDirectoryError, match="checkpoints: a symbolic link to .*unmounted.*does not exist"):
        Checkpointer(workdir, save_every=1, model_signature=SIGNATURE)
    assert tree(tmp_path) == before


def test_a_workdir_under_a_loop_is_refused_and_one_not_made_yet_is_fine(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(CheckpointDirectoryError, match="symbolic link loop"):
        check_directory(tmp_path / "loop" / "run")
    check_directory(tmp_path / "run")  # not made yet
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(tmp_path / "elsewhere")  # a link to a directory: fine
    check_directory(tmp_path / "run")


# ---------------------------------------------------------------- preemption


def test_a_sigterm_during_a_stage_s_last_save_stops_the_run_before_the_next_stage(tmp_path):
    """The loop asks `should_stop` before its last save: a notice during that save is acted on
    between stages (before this, the run went on to the end and exited 0)."""
    ran = []

    def first(output):
        with Preemption() as preemption:
            assert not preemption.should_stop(1)
            if not ran:
                os.kill(os.getpid(), signal.SIGTERM)  # during the final save, after the last check
                time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
        ran.append("first")
        return "first done"

    def second(output, first_result):
        ran.append("second")
        return "second done"

    stages = [Stage("first", first, finished=None), Stage("second", second, inputs=("first",), finished=None)]
    try:
        run = run_stages(tmp_path, stages)
        assert ran == ["first"] and run.stopped == "second" and run.results == {"first": "first done"}
        assert not preemption_requested()  # acted on once: a relaunch in this process is not stopped
        assert run_stages(tmp_path, stages).stopped is None and ran == ["first", "first", "second"]
    finally:
        preemption_requested()  # a failure leaves no notice pending for the tests after it


# The command line: `cli.run` on a pipeline of two stages in `workdir`: "train", a loop of
# Checkpointer saves as `run_training` makes them (keeping 2), and "report". `--config.sigterm_at=N`
# sends SIGTERM to the process during the save of step N, after that step's `should_stop`.
PIPELINE = """
import os, signal, sys, time
import jax, ml_collections
from r1jax.checkpoint import Checkpointer, Preemption
from r1jax.pipelines import cli
from r1jax.pipelines.stages import STOPPED, Stage, run_stages

def train(output, *, config):
    with Checkpointer(output, save_every=1, keep=2, model_signature={"m": 1}) as ckpt, Preemption() as preemption:
        restored = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((config.size,), "float32",
                                        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
        start = restored[0] if restored else 0
        for step in range(start + 1, config.steps + 1):
            stop = preemption.should_stop(step)
            if step == config.sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
            ckpt.save(step, {"w": jax.random.normal(jax.random.key(step), (config.size,))}, {}, force=stop)
            if stop:
                return STOPPED
    (output / "done").write_text(str(start))
    return {"resumed_from": start}

def pipeline(config):
    finished = lambda output: {"resumed_from": int((output / "done").read_text())} if (output / "done").exists() else None
    run = run_stages(config.workdir, [Stage("train", lambda output: train(output, config=config), finished=finished),
                                      Stage("report", lambda output, train: train, inputs=("train",), finished=None)])
    return {"stopped": run.stopped} if run.stopped else run.results["report"]

cli.run(pipeline, ml_collections.ConfigDict({"workdir": "", "steps": 5, "sigterm_at": 0, "size": 1000}))
"""


def _command(workdir, *flags):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PIPELINE, f"--config.workdir={workdir}", *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)))
    print(f"{flags}: exit {result.returncode} in {time.perf_counter() - started:.1f}s")
    return result


@pytest.mark.slow  # two CLI runs; exit 143 is also checked by the runner test above and the slow SIGTERM runs
def test_a_sigterm_during_a_save_exits_143_with_one_line_and_the_relaunch_finishes(tmp_path):
    stopped = _command(tmp_path / "run", "--config.sigterm_at=3")  # stops after the next step, saved
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("preempted (SIGTERM): the run stopped at stage train"), stopped.stderr[-3000:]
    assert "relaunch the same command to resume" in last and str(tmp_path / "run") in last
    assert "{" not in stopped.stdout  # no summary: the run is not done
    assert max(int(step) for step in os.listdir(tmp_path / "run" / "train" / "checkpoints")) == 4
    finished = _command(tmp_path / "run")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert '"resumed_from": 4' in finished.stdout


@pytest.mark.slow  # two CLI runs; the runner test above checks the same stop in process
def test_a_sigterm_during_a_stage_s_final_save_exits_143_before_the_next_stage(tmp_path):
    """Before, the notice was lost: the run went on to the end and exited 0."""
    stopped = _command(tmp_path / "run", "--config.sigterm_at=5")  # the last step: no check comes after it
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("preempted (SIGTERM): the run stopped at stage report"), stopped.stderr[-3000:]
    assert "{" not in stopped.stdout
    finished = _command(tmp_path / "run")
    assert finished.returncode == 0 and '"resumed_from": 0' in finished.stdout, finished.stderr[-3000:]


@pytest.mark.slow  # two CLI runs; the full disk is checked in process above
def test_the_command_reports_a_full_disk_in_one_line_exits_1_and_resumes_once_there_is_room(small_disk):
    workdir, big = small_disk / "run", ("--config.size=100000", "--config.steps=8")  # 400 kB a checkpoint
    failed = _command(workdir, *big)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {workdir / 'train' / 'checkpoints'}: no space left on its device"), lines
    assert "free space" in lines[-1] and "resumes from step 2" in lines[-1], lines[-1]
    # one line: not Orbax's tracebacks of the failed save, which it logs from each of its threads
    assert not [line for line in lines[:-1] if "RESOURCE_EXHAUSTED" in line or "No space" in line], lines
    assert len(lines) <= 2, lines  # the runner's "stage train" line, and the error
    (small_disk / "filler").unlink()
    finished = _command(workdir, *big)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert '"resumed_from": 2' in finished.stdout
