"""`run_sandboxed` and the launcher process that serves it (one per calling process).

The launcher is `serve.py` run as a stdlib-only script: forking it costs a
millisecond where forking a trainer costs ten, and it is single-threaded, so the
pre-exec set-up is safe even when the caller runs JAX threads."""
from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Mapping, Optional, Sequence

from r1jax.rewards.sandbox.capabilities import SandboxCapabilities, sandbox_capabilities
from r1jax.rewards.sandbox.cgroup import _cgroup_layout, _RunCgroup
from r1jax.rewards.sandbox.confinement import (_NAMESPACE_WORKDIR, _Confinement, _reachable_by_others, _root_view,
                                               _write_files)
from r1jax.rewards.sandbox.frames import _ERRORS, _read_frame, _write_frame
from r1jax.rewards.sandbox.kernel import _PR_SET_PDEATHSIG, _check, _libc
from r1jax.rewards.sandbox.limits import SandboxLimits, SandboxResult, _checked_argv, _checked_files, _checked_paths
from r1jax.rewards.sandbox.processes import (_WORKDIR_PREFIX, _become_subreaper, _glob_workdirs, _kill_leftovers,
                                             _next_sandbox_uid)
from r1jax.rewards.sandbox.supervisor import _supervised

ISOLATION_MODES = ("auto", "required", "off")


def run_sandboxed(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes] = {},
    stdin: bytes = b"",
    limits: SandboxLimits = SandboxLimits(),
    exposed_paths: Sequence[str] = (),
    isolation: str = "auto",
) -> SandboxResult:
    """Run `argv` (absolute program path) confined, in a fresh working directory.

    files: name -> content written into the working directory first (owned by the
      sandbox user); names are plain file names, and all of them must fit in
      `limits.disk_bytes` (at most 1024 of them).
    exposed_paths: directories the program needs to read (its interpreter's
      prefix) besides the system's programs and libraries (/usr, /lib...).
    isolation: "auto" (all this machine allows, warning if that is less than
      full isolation), "required" (raise instead), "off" (rlimits only).

    Inputs that cannot be used whole raise ValueError naming what is wrong,
    before anything runs.
    """
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    if not isinstance(stdin, (bytes, bytearray, memoryview)):
        raise ValueError(f"stdin must be bytes, got {type(stdin).__name__}")
    request = dict(argv=_checked_argv(argv), files=_checked_files(files, limits.disk_bytes),
                   stdin=bytes(stdin), limits=dataclasses.asdict(limits),
                   exposed_paths=_checked_paths(exposed_paths), isolation=isolation)
    return SandboxResult(**_launcher_call(request))


def _run_here(argv, files, stdin, limits, exposed_paths, isolation, owner_pid, cgroup=True) -> dict:
    """The sandboxed run itself; executes inside the launcher process. `cgroup=False`
    runs it as a machine without cgroups would (the tests' way to the fallback)."""
    limits = SandboxLimits(**limits)
    capabilities = sandbox_capabilities()
    if isolation == "required" and not capabilities.isolated:
        raise RuntimeError(f"sandbox isolation required but unavailable: {capabilities}")
    if isolation == "off":
        capabilities = SandboxCapabilities(namespaces=False, switch_user=False)
    view = _root_view(tuple(exposed_paths)) if capabilities.namespaces else ()
    # Without a mount namespace, a user switch would lock the program out of an
    # interpreter that lives in, say, /root.
    can_switch = capabilities.switch_user and (
        capabilities.namespaces or _reachable_by_others(tuple(exposed_paths)))
    uid = _next_sandbox_uid(owner_pid) if can_switch else None
    if capabilities.namespaces:
        workdir = _NAMESPACE_WORKDIR  # exists in the run's mount namespace only
    else:
        workdir = tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{owner_pid}-")
        _write_files(workdir, files)
        if uid is not None:
            for path in [workdir] + [os.path.join(workdir, name) for name in files]:
                os.chown(path, uid, uid)
    use_cgroup, cgroup = capabilities.cgroup and cgroup, None
    streams = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdin", "stdout", "stderr")]
    try:
        cgroup = _RunCgroup(_cgroup_layout(), limits) if use_cgroup else None
        confine = _Confinement(workdir, uid, files if capabilities.namespaces else {}, limits,
                               capabilities.namespaces, capabilities.syscall_filter, view, cgroup)
        os.pwrite(streams[0], stdin, 0)
        outcome = _supervised(list(argv), streams, confine)
        if not capabilities.namespaces:  # in a PID namespace the kernel has done this
            _kill_leftovers(uid, outcome.pop("pid"))
        stdout, stderr = (os.pread(fd, min(limits.max_file_bytes, os.fstat(fd).st_size), 0)
                          for fd in streams[1:])
    finally:
        for fd in streams:
            os.close(fd)
        if cgroup is not None:
            cgroup.remove()
        if not capabilities.namespaces:
            shutil.rmtree(workdir, ignore_errors=True)
    return dict(returncode=outcome["returncode"], stdout=stdout, stderr=stderr,
                wall_seconds=outcome["wall_seconds"], timed_out=outcome["timed_out"],
                isolated=capabilities.isolated and uid is not None)


_launcher_lock = threading.Lock()
_launcher: Optional["_Launcher"] = None


class _Launcher:
    """The launcher process (serve.py, a stdlib-only script), serving run requests over pipes."""

    def __init__(self):
        self.owner_pid = os.getpid()
        entry_point = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py")
        self.process = subprocess.Popen(
            [os.path.realpath(sys.executable), "-I", "-S", "-B", entry_point, str(self.owner_pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={}, close_fds=True)
        atexit.register(self.stop)

    def call(self, request: dict):
        _write_frame(self.process.stdin, request)
        response = _read_frame(self.process.stdout)
        if response is None:
            raise EOFError("the sandbox launcher exited")
        return response

    def stop(self):
        """End the launcher (gently: it removes its mount point on the way out)."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(2.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.owner_pid == os.getpid():
            for path in _glob_workdirs(self.owner_pid):
                shutil.rmtree(path, ignore_errors=True)


def _launcher_call(request: dict) -> dict:
    global _launcher
    with _launcher_lock:
        for attempt in range(2):
            if _launcher is None or _launcher.owner_pid != os.getpid():  # new, or we forked
                _launcher = _Launcher()
            try:
                status, payload = _launcher.call(request)
                break
            except (OSError, EOFError, pickle.UnpicklingError):
                _launcher.process.kill()
                _launcher.stop()
                _launcher = None
                if attempt == 1:
                    raise RuntimeError("the sandbox launcher process died twice in a row") from None
    if status == "error":
        kind, message = payload
        if kind in _ERRORS:
            raise _ERRORS[kind](message)
        raise RuntimeError(f"sandbox launcher: {kind}: {message}")
    return payload


def serve(owner_pid: int):
    """Launcher main loop: one request in, one result out, until the owner goes."""
    # Dies with the owner's thread that started it; a caller whose thread
    # exits just gets a new launcher on its next run.
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if os.getppid() != owner_pid:
        return
    _become_subreaper()
    # Keep the protocol pipes off fds 0 and 1, so nothing else can write into them.
    requests = os.fdopen(os.dup(0), "rb")
    responses = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    while True:
        request = _read_frame(requests)
        if request is None:
            return
        try:
            response = ("ok", _run_here(**request, owner_pid=owner_pid))
        except Exception as error:
            response = ("error", (type(error).__name__, str(error)))
        _write_frame(responses, response)
