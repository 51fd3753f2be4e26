"""The supervisor: the init of a run's PID namespace, which starts the program,
holds it to its wall-clock and CPU limits, and reports back."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Callable, Optional

from r1jax.rewards.sandbox.frames import _ERRORS, _read_frame, _write_frame
from r1jax.rewards.sandbox.kernel import _CLONE_NEWPID, _NAMESPACES, _PR_SET_PDEATHSIG, _check, _libc
from r1jax.rewards.sandbox.limits import SandboxLimits
from r1jax.rewards.sandbox.processes import _kill_group


def _supervised(argv: list, streams: list, confine: "_Confinement") -> dict:
    """Run the program under a forked supervisor; its outcome comes back over a pipe.

    With namespaces the supervisor is the init (PID 1) of a new PID namespace: it
    enters the other namespaces, mounts the private view, runs the program and
    reports; when it exits, the kernel kills whatever is left in the namespace
    before the launcher can reap it. Without, it just runs the program.
    """
    report, report_to = os.pipe()
    lifeline, held = os.pipe()  # its write end closes when the launcher dies
    if confine.namespaces:
        # Only our next child enters the new PID namespace; then we return to our own.
        own = os.open("/proc/self/ns/pid", os.O_RDONLY)
        try:
            _check(_libc.unshare(_CLONE_NEWPID), "unshare the PID namespace")
            supervisor = -1
            try:
                supervisor = os.fork()  # the launcher is single-threaded, so forking it is safe
            finally:
                if supervisor != 0:  # the launcher, even after a failed fork
                    _check(_libc.setns(own, _CLONE_NEWPID), "return to our PID namespace")
        finally:
            os.close(own)
    else:
        supervisor = os.fork()
    if supervisor == 0:
        os.close(report)
        os.close(held)
        _supervise(argv, streams, confine, lifeline, report_to)
    os.close(report_to)
    os.close(lifeline)
    try:
        poller = select.poll()
        poller.register(report, select.POLLIN)
        # The supervisor enforces the wall-clock limit; this deadline only guards
        # against one that hangs (its death takes the whole namespace with it).
        if not poller.poll((confine.limits.wall_seconds + 30) * 1000):
            os.kill(supervisor, signal.SIGKILL)
        with os.fdopen(report, "rb", closefd=False) as stream:
            outcome = _read_frame(stream)
    finally:
        os.close(report)
        os.close(held)
        os.waitpid(supervisor, 0)
    if outcome is None:
        raise RuntimeError("the sandbox supervisor died without a report")
    status, payload = outcome
    if status == "error":
        kind, message = payload
        raise _ERRORS.get(kind, RuntimeError)(message if kind in _ERRORS else f"{kind}: {message}")
    return payload


def _supervise(argv, streams, confine, lifeline: int, report_to: int):
    """The supervisor (with namespaces, their init). Never returns."""
    try:
        _die_with_parent(lifeline)
        if confine.namespaces:
            _check(_libc.unshare(_NAMESPACES & ~_CLONE_NEWPID), "unshare the namespaces")
            confine.limit_ipc()  # the new IPC namespace's own limits
            confine.mount_view()
        outcome = ("ok", _run_program(argv, streams, confine))
    except BaseException as error:
        outcome = ("error", (type(error).__name__, str(error)))
    try:
        with os.fdopen(report_to, "wb") as stream:
            _write_frame(stream, outcome)
    finally:
        os._exit(0)


def _run_program(argv, streams, confine) -> dict:
    confine.parent_pid = os.getpid()
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            argv, stdin=streams[0], stdout=streams[1], stderr=streams[2], env={},
            close_fds=True, start_new_session=True, preexec_fn=confine)
    except subprocess.SubprocessError as error:
        said = os.pread(streams[2], 4096, 0).decode(errors="replace").strip()
        raise RuntimeError(said or f"sandbox: starting the program failed: {error}") from None
    stopped = _wait_within_limits(process, confine.limits, _cpu_seconds_reader(confine))
    wall_seconds = time.monotonic() - start
    if stopped == "cpu" and confine.namespaces and os.getpid() == 1:
        os.kill(-1, signal.SIGKILL)  # as the namespace's init: every process of the run but itself
    elif stopped:
        _kill_group(process.pid)
        process.kill()
    process.wait()
    return dict(returncode=process.returncode, wall_seconds=wall_seconds, timed_out=stopped == "wall",
                pid=process.pid)


def _cpu_seconds_reader(confine) -> Optional[Callable[[], float]]:
    """How the supervisor reads the run's CPU time: its cgroup's count; without
    one, the sum over the processes of its PID namespace (which misses the
    children of a parent that ignores SIGCHLD); without either, None (then
    cpu_seconds holds per process only, by RLIMIT_CPU)."""
    if confine.cgroup is not None:
        return confine.cgroup.cpu_seconds
    return _namespace_cpu_seconds if confine.namespaces else None


def _die_with_parent(lifeline: int):
    """SIGKILL this process when its parent dies, and exit now if it already has:
    the other end of the pipe `lifeline` is closed. (A pipe, not getppid: a PID
    namespace's init reads its parent's pid as 0.)"""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    poller = select.poll()
    poller.register(lifeline, select.POLLIN)
    orphaned = bool(poller.poll(0))  # POLLHUP: no writer left
    os.close(lifeline)
    if orphaned:
        os._exit(1)


def _wait_within_limits(process: subprocess.Popen, limits: SandboxLimits,
                        cpu_seconds: Optional[Callable[[], float]]) -> Optional[str]:
    """Wait for `process` to exit: None when it did, "wall" or "cpu" when the run
    went past that limit first (the caller kills it). The run's CPU time is read
    about as often as it could reach the limit: with c CPUs and r seconds left,
    not before r / c seconds (a trivial run costs no read at all)."""
    cpus = len(os.sched_getaffinity(0))
    deadline = time.monotonic() + limits.wall_seconds
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3): Popen's polling wait
        pidfd = None
    try:
        poller = select.poll()
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        step = limits.wall_seconds if cpu_seconds is None else limits.cpu_seconds / cpus
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "wall"
            try:
                if pidfd is None:
                    process.wait(timeout=min(step, remaining))
                    return None
                if poller.poll(min(step, remaining) * 1000):
                    return None
            except subprocess.TimeoutExpired:
                pass
            except InterruptedError:
                continue
            if cpu_seconds is not None:
                used = cpu_seconds()
                if used >= limits.cpu_seconds:
                    return "cpu"
                step = max(0.005, (limits.cpu_seconds - used) / cpus)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _namespace_cpu_seconds() -> float:
    """CPU seconds used by the processes of this PID namespace, read by its init:
    each live (or zombie) process's own time, plus what its reaped children used
    (cutime, cstime); the init's own time is left out, its reaped children's not."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(field) for field in fields[11:15])
        ticks += cutime + cstime + (0 if entry == "1" else utime + stime)
    return ticks / os.sysconf("SC_CLK_TCK")
