"""Run one untrusted program in a throwaway Linux sandbox.

`run_sandboxed(argv, files=..., stdin=..., limits=...)` runs `argv` in a child
process that is confined before it execs, and returns its exit status and
(bounded) output. Its inputs are checked first: a limit, file, name or argument
that could not be used whole raises ValueError naming it, before anything runs.
What confines the program, in the order it is set up:

  * a new session (own process group) and an empty environment;
  * its own PID namespace, whose init is a small supervisor (a fork of the
    launcher, below) that starts the program: /proc is that namespace's own, so
    host processes (and the secrets in their command lines) are invisible, and
    when the supervisor ends, or dies with the process that owns the sandbox, the
    kernel kills every process left in the namespace, double-forked escapees
    included;
  * a private mount namespace and a root of its own (a chroot into a small
    tmpfs) that holds only what a program needs to run: /usr, /bin, /sbin,
    /lib*, the exposed paths (the interpreter's prefix), the loader's cache, the
    time zone, /dev/null and a few other devices, its own /proc, and the working
    directory, a fresh size-capped tmpfs at /tmp/work. All read-only but the
    working directory. The checkout, datasets, /work, /home, /srv, /opt, /var,
    the rest of /root and the host's /tmp are not there; nothing of a run
    exists on the host's disk, so nothing is left behind even when its owner is
    SIGKILLed;
  * a new network namespace with no interface up: no network, not even
    localhost;
  * a new IPC namespace: System V shared memory, message queues and semaphores
    are the run's alone and vanish with it, and the namespace's own limits cap
    shared memory at `memory_bytes` and message queues at 1 MiB;
  * an unprivileged user id of its own (1<<30 + a per-owner slot, no groups,
    no capabilities, PR_SET_NO_NEW_PRIVS so set-uid binaries gain nothing), so
    it cannot read other processes' /proc/<pid>/environ or signal them;
  * a memory and CPU cgroup of its own (`_RunCgroup`): memory, kernel memory
    included (socket buffers, SysV shared memory, the tmpfs's pages, pipes),
    capped at `memory_bytes` for the whole run with no swap, so the OOM killer
    picks within the run, never the trainer; CPU time summed over all its
    processes;
  * a seccomp filter that refuses the calls that reach past the namespaces
    (`_syscall_filter` lists them with their reasons): new user namespaces
    (a nested one would bring an IPC namespace with default, unbounded limits),
    socket(AF_UNIX) and datagram socketpairs (a host service's socket file is
    reachable from any mount namespace; stream pairs still work), enlarging
    socket buffers, kernel keyrings (a key outlives its run and is readable by
    the next run with the same uid), memfds, io_uring, clone3 and any other
    architecture's syscall table;
  * resource limits (setrlimit): CPU seconds per process, address space, file
    size, open files, no core dumps, no POSIX message queues or locked memory,
    and a process count that the kernel enforces because the user is not root
    (RLIMIT_NPROC is ignored for root);
  * PR_SET_PDEATHSIG, so it dies with the process that started it.

Children are started by a small launcher process (this file run as a script,
stdlib only), one per calling process: forking it costs a millisecond where
forking a trainer or a worker with sympy loaded costs ten, and it is
single-threaded (so the pre-exec setup is safe even when the caller runs JAX
threads). Per run it makes the run's cgroup and forks a supervisor, the init of
a new PID namespace, which enters the other namespaces, builds the file system
view, starts the program, enforces the wall-clock limit and `cpu_seconds` over
the whole run (reading the cgroup's CPU time about as often as the run could
reach the limit, and killing every process of the namespace past it) and
reports back over a pipe. Once the program exits or is stopped, the init exits
and the kernel kills whatever the program left running (a fork bomb cannot
outrun it). Output goes to memory files capped by the file-size limit, so a
program that prints forever cannot fill the caller's memory.

Where the kernel does not allow it, probed once per process at run time
(`sandbox_capabilities()`), with a logged warning:

  * the namespaces, the chroot and the user switch need root (CAP_SYS_ADMIN,
    CAP_SYS_CHROOT, CAP_SETUID). Without them the program still runs in its own
    session with an empty environment, a fresh temporary directory (deleted
    afterwards), the rlimits and the seccomp filter, but WITHOUT network, IPC or
    process isolation, a private file-system view (it can read what the user
    running it can) or its own user id (as a non-root user RLIMIT_NPROC then
    counts all of that user's processes); leftover processes are then killed by
    process group (or by user id, as root), and the launcher, a child
    subreaper, adopts and reaps orphans;
  * the cgroup needs root on cgroup v1 (memory and cpuacct hierarchies), or a
    delegated cgroup v2 subtree with the memory controller enabled for this
    process's cgroup. Without it memory_bytes holds per process (address
    space), SysV shared memory stays capped by the IPC namespace, socket buffers
    keep the kernel's default size (the filter refuses enlarging them), so the
    kernel memory a run holds is bounded by its sockets and pipes, not by
    memory_bytes; and cpu_seconds holds over the run's PID namespace by summing
    its processes' CPU time (children reaped by no one, SIGCHLD ignored, escape
    that sum; RLIMIT_CPU still stops each), or per process only without one;
  * the seccomp filter needs Linux >= 3.17 on x86_64 or aarch64, no root.

`isolation="required"` turns missing namespaces, user switch or filter into an
error; `isolation="off"` asks for rlimits only, on purpose.
"""
from __future__ import annotations

import atexit
import ctypes
import dataclasses
import functools
import itertools
import logging
import math
import os
import pickle
import resource
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1 << 30
_UID_SLOTS_PER_PROCESS = 64  # uids per owner, used in turn so none is reused at once
_WORKDIR_PREFIX = "r1jax-sandbox-"

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
_NAMESPACES = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWPID | _CLONE_NEWNET
_NEW_ROOT = "/tmp"                # where the run's root tmpfs is built, before it becomes "/"
_NAMESPACE_WORKDIR = "/tmp/work"  # the working directory's mount point, in the run's root
# What the run's root holds besides the exposed paths: the system's programs and
# shared libraries, the dynamic loader's cache, the time zone, a few devices.
_RUNTIME_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_RUNTIME_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/full",
                  "/dev/random", "/dev/urandom")
_RUNTIME_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                  ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"))
_MESSAGE_QUEUE_BYTES, _MESSAGE_QUEUES = 64 * 2**10, 16  # SysV message queues: 1 MiB in all
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (unified syscall table)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 1, 38, 36
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}

# The seccomp filter's view of each architecture: its audit id and the numbers of
# the calls it looks at (the errno a refused call returns is in _syscall_filter).
_EPERM, _ENOSYS, _ESOCKTNOSUPPORT, _EAFNOSUPPORT = 1, 38, 94, 97
_AF_UNIX, _SOCK_STREAM, _SOCK_SEQPACKET, _SOCK_TYPE_MASK = 1, 1, 5, 0xF
_SOL_SOCKET, _SOCKET_BUFFER_OPTIONS = 1, (7, 8, 32, 33)  # SO_SNDBUF, SO_RCVBUF, SO_*BUFFORCE
_CLONE_NEWUSER = 0x10000000
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, dict(
        socket=41, socketpair=53, setsockopt=54, clone=56, unshare=272, add_key=248, request_key=249,
        keyctl=250, memfd_create=319, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        clone3=435, memfd_secret=447)),
    "aarch64": (0xC00000B7, dict(
        socket=198, socketpair=199, setsockopt=208, clone=220, unshare=97, add_key=217, request_key=218,
        keyctl=219, memfd_create=279, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        clone3=435, memfd_secret=447)),
}
# Calls that do not exist in the sandbox (ENOSYS: libraries fall back, as glibc does
# from clone3 to clone): memory in no one's limit (memfds), operations out of the
# filter's sight (io_uring; clone3's flags are behind a pointer), kernel keyrings
# (a key outlives its run and is readable by the next run with the same uid).
_ABSENT_CALLS = ("memfd_create", "memfd_secret", "io_uring_setup", "io_uring_enter",
                 "io_uring_register", "clone3", "add_key", "request_key", "keyctl")
_X32_SYSCALL_BIT = 0x40000000  # x86_64's second syscall table (the x32 ABI)

_libc = ctypes.CDLL(None, use_errno=True)
# The same C library, called with the GIL held: a clone() made while another thread could take
# the GIL would leave the child a GIL owned by a thread it does not have.
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


_MAX_SECONDS = 7 * 24 * 3600  # a week: beyond any run, and within what poll() and rlimits take
_MAX_COUNT = 2**62            # bytes and counts: within what rlimits and cgroups take
_MAX_OPEN_FILES = 2**20       # the kernel's default ceiling on RLIMIT_NOFILE (fs.nr_open)


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. Defaults suit short test programs."""
    wall_seconds: float = 5.0
    cpu_seconds: float = 2.0          # the whole run's CPU time (each process's, without a cgroup)
    memory_bytes: int = 512 * 2**20   # each process's address space; the run's memory cgroup
    max_processes: int = 16           # processes + threads of the sandbox user
    max_file_bytes: int = 16 * 2**20  # any one file, stdout and stderr included
    disk_bytes: int = 64 * 2**20      # the working directory's tmpfs
    max_open_files: int = 64

    def __post_init__(self):
        # Checked here, naming the field, rather than failing later in a child whose
        # error would come back as "Exception occurred in preexec_fn".
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float":
                if (isinstance(value, bool) or not isinstance(value, (int, float))
                        or not 0 < value <= _MAX_SECONDS):  # refuses NaN and infinities too
                    raise ValueError(f"SandboxLimits.{field.name} must be a number of seconds in "
                                     f"(0, {_MAX_SECONDS}], got {value!r}")
            else:
                most = _MAX_OPEN_FILES if field.name == "max_open_files" else _MAX_COUNT
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
                    raise ValueError(f"SandboxLimits.{field.name} must be a whole number in "
                                     f"[1, {most}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: Optional[int]  # negative: killed by that signal (SIGKILL past the run's CPU limit or
                               # its memory cgroup's, SIGXCPU past one process's CPU limit)
    stdout: bytes
    stderr: bytes
    wall_seconds: float
    timed_out: bool            # the wall-clock limit was hit and the program killed
    isolated: bool             # namespaces and user switch were in force

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclasses.dataclass(frozen=True)
class SandboxCapabilities:
    namespaces: bool   # mount, network, IPC and PID namespaces, a read-only root, a private /proc
    switch_user: bool  # can run as an unprivileged uid of its own
    syscall_filter: bool = False  # seccomp: no AF_UNIX sockets, memfds, io_uring, keyrings, user namespaces
    cgroup: bool = False  # a memory and CPU cgroup per run: kernel memory counted, CPU summed over the run

    @property
    def isolated(self) -> bool:
        return self.namespaces and self.switch_user and self.syscall_filter


@functools.lru_cache(maxsize=None)
def sandbox_capabilities() -> SandboxCapabilities:
    """What this kernel and user allow, probed once in throwaway children that set
    up what a run sets up. The syscall filter needs no root (only no_new_privs)."""
    namespaces = _probe(_NAMESPACES)
    capabilities = SandboxCapabilities(
        namespaces=namespaces, switch_user=os.geteuid() == 0,
        syscall_filter=_probe(_NAMESPACES if namespaces else 0, syscall_filter=True),
        cgroup=_cgroup_layout() is not None)
    missing = [what for what, available in (
        ("network, IPC, process and file-system isolation", capabilities.namespaces),
        ("its own user id", capabilities.switch_user),
        ("the syscall filter", capabilities.syscall_filter),
        ("a cgroup (memory_bytes then holds per process and kernel memory is bounded by "
         "counts only; cpu_seconds over the run only by polling)", capabilities.cgroup)) if not available]
    if missing:
        log.warning("sandbox isolation incomplete (%s): untrusted code runs without %s; "
                    "see r1jax.rewards.sandbox", capabilities, ", ".join(missing))
    return capabilities


def _probe(namespaces: int, syscall_filter: bool = False) -> bool:
    """Can a child enter `namespaces` (mount its view as a run's init does) and,
    if asked, install the syscall filter and then find AF_UNIX sockets refused?"""
    machine = os.uname().machine
    if machine not in _SYS_CLONE:
        return False
    _syscall_filter()  # built here: the child below should only make syscalls
    # A fork straight into the new namespaces (the child is their init, as a run's
    # is), by raw syscall: the caller may be threaded, and the child runs no Python
    # that could wait for another thread's lock (only these C calls, then _exit).
    pid = _libc_holding_gil.syscall(_SYS_CLONE[machine], namespaces | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        ok = not namespaces or (
            _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
            and _libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) == 0
            and _mount_setattr_readonly(b"/") == 0)
        if ok and syscall_filter:
            ok = (_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and _install_syscall_filter() == 0
                  and _libc.socket(_AF_UNIX, 1, 0) < 0)
        os._exit(0 if ok else 1)
    return pid > 0 and os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


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
      `limits.disk_bytes` (at most _MAX_FILES of them).
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


_MAX_FILES = 1024   # files given to a run (the working directory's tmpfs has 4096 inodes)
_NAME_MAX = 255     # bytes in a file name (Linux's NAME_MAX)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")  # tmpfs stores a file in whole pages


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    for index, arg in enumerate(argv):
        if not isinstance(arg, str) or "\0" in arg:
            raise ValueError(f"argv[{index}] must be a string without NUL bytes, got {arg!r}")
    if not os.path.isabs(argv[0]):
        raise ValueError(f"argv[0] must be an absolute path to the program, got {argv!r}")
    return list(argv)


def _checked_files(files: Mapping[str, str | bytes], disk_bytes: int) -> dict[str, bytes]:
    """The files as bytes, refusing any that could not be written whole: bad names,
    non-text content, more files or bytes than the working directory holds."""
    if len(files) > _MAX_FILES:
        raise ValueError(f"files: at most {_MAX_FILES} files, got {len(files)}")
    checked, used = {}, 0
    for name, content in files.items():
        if (not isinstance(name, str) or not name or "/" in name or "\0" in name
                or name in (".", "..")):
            raise ValueError(f"sandbox file names must be plain names (no '/' or NUL, not '.' "
                             f"or '..'), got {name!r}")
        if len(name.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise ValueError(f"files: the name {name[:32]!r}... is longer than {_NAME_MAX} bytes")
        if isinstance(content, str):
            content = content.encode()
        elif isinstance(content, (bytes, bytearray, memoryview)):
            content = bytes(content)
        else:
            raise ValueError(f"files[{name!r}] must be str or bytes, got {type(content).__name__}")
        used += -(-len(content) // _PAGE_BYTES) * _PAGE_BYTES
        if used > disk_bytes:
            raise ValueError(f"files[{name!r}] ({len(content)} bytes) does not fit in the working "
                             f"directory with the files before it: disk_bytes={disk_bytes}")
        checked[name] = content
    return checked


def _checked_paths(paths: Sequence[str]) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)):
        raise ValueError(f"exposed_paths must be a list of paths, got {paths!r}")
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ValueError(f"exposed_paths must hold absolute paths without NUL bytes, got {path!r}")
    return tuple(paths)


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
    cgroup = _RunCgroup(_cgroup_layout(), limits) if capabilities.cgroup and cgroup else None
    confine = _Confinement(workdir, uid, files if capabilities.namespaces else {}, limits,
                           capabilities.namespaces, capabilities.syscall_filter, view, cgroup)
    streams = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdin", "stdout", "stderr")]
    try:
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
    stopped = _wait_within_limits(process, confine.limits, confine.cpu_seconds_reader())
    wall_seconds = time.monotonic() - start
    if stopped == "cpu" and confine.namespaces and os.getpid() == 1:
        os.kill(-1, signal.SIGKILL)  # as the namespace's init: every process of the run but itself
    elif stopped:
        _kill_group(process.pid)
        process.kill()
    process.wait()
    return dict(returncode=process.returncode, wall_seconds=wall_seconds, timed_out=stopped == "wall",
                pid=process.pid)


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


def reap_sandbox_processes(owner_pid: int, timeout: float = 1.0) -> int:
    """Kill every sandboxed process that process `owner_pid` started, and remove
    its sandbox directories. Returns how many processes were still around.

    For an owner stuck in a run: call this *before* killing the owner, so its
    still-living launcher reaps the killed processes (the evaluator does this
    when it replaces a hung worker). With namespaces a dead owner leaves nothing
    (its runs' PID namespaces die with it); without, orphans of a dead owner go
    to init, which in some containers never reaps them. Waits up to `timeout` seconds for them
    to disappear.
    """
    low = SANDBOX_UID_BASE + owner_pid * _UID_SLOTS_PER_PROCESS
    deadline = time.monotonic() + timeout
    found = set()
    while True:
        victims = [pid for pid, uid in _process_uids() if low <= uid < low + _UID_SLOTS_PER_PROCESS]
        found.update(victims)
        if not victims or time.monotonic() > deadline:
            break
        for pid in victims:  # survivors of a fork bomb may fork between scans: repeat
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    for path in _glob_workdirs(owner_pid):
        shutil.rmtree(path, ignore_errors=True)
    return len(found)


class _Confinement:
    """How a run is confined. `limit_ipc` and `mount_view` run as root in the
    supervisor, the new namespaces' init; the instance itself is the program's
    preexec_fn, run between fork and exec."""

    def __init__(self, workdir, uid, files, limits, namespaces, syscall_filter, view, cgroup):
        self.workdir, self.uid, self.files, self.limits = workdir, uid, files, limits
        self.namespaces, self.syscall_filter = namespaces, syscall_filter
        self.view, self.cgroup = view, cgroup
        self.parent_pid = os.getpid()

    def cpu_seconds_reader(self) -> Optional[Callable[[], float]]:
        """How the supervisor reads the run's CPU time: its cgroup's count; without
        one, the sum over the processes of its PID namespace (which misses the
        children of a parent that ignores SIGCHLD); without either, None (then
        cpu_seconds holds per process only, by RLIMIT_CPU)."""
        if self.cgroup is not None:
            return self.cgroup.cpu_seconds
        return _namespace_cpu_seconds if self.namespaces else None

    def limit_ipc(self):
        """Cap SysV IPC in the new IPC namespace (its sysctls are its own): shared
        memory at memory_bytes in all, message queues at 1 MiB."""
        page = os.sysconf("SC_PAGE_SIZE")
        for name, value in (("shmmax", self.limits.memory_bytes),
                            ("shmall", -(-self.limits.memory_bytes // page)),
                            ("msgmnb", _MESSAGE_QUEUE_BYTES), ("msgmni", _MESSAGE_QUEUES)):
            with open(f"/proc/sys/kernel/{name}", "w") as sysctl:
                sysctl.write(str(value))

    def mount_view(self):
        """The program's file system, built in the init of the new PID namespace:
        a new root (a small tmpfs at _NEW_ROOT) holding only the run's view
        (`_root_view`), this PID namespace's own /proc and a fresh working
        directory, all read-only but the working directory. The program is
        chrooted into it (an unprivileged process cannot leave a chroot, and the
        one process with another root, this init, is root's: its /proc/1/root and
        /proc/1/cwd are closed to the program). A chroot rather than pivot_root:
        detaching the host's tree would cost an RCU grace period per run."""
        _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
        # Handles first: the new root is mounted over /tmp, which may hold exposed paths.
        sources = [(kind, path, os.open(target, os.O_PATH | os.O_CLOEXEC) if kind != "link" else target)
                   for kind, path, target in self.view]
        root = _NEW_ROOT
        _check(_libc.mount(b"tmpfs", root.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                           b"size=1m,nr_inodes=1024,mode=0755"), "mount the new root")
        for kind, path, source in sources:
            inside = root + path
            os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
            if kind == "link":
                os.symlink(source, inside)
                continue
            if kind == "dir":
                os.makedirs(inside, mode=0o755, exist_ok=True)
            else:
                os.close(os.open(inside, os.O_WRONLY | os.O_CREAT, 0o644))
            _check(_libc.mount(f"/proc/self/fd/{source}".encode(), inside.encode(), None,
                               _MS_BIND | _MS_REC, None), f"expose {path}")
            os.close(source)
        os.makedirs(root + "/proc", mode=0o555)
        os.makedirs(root + self.workdir, mode=0o755)
        _check(_libc.mount(b"proc", (root + "/proc").encode(), b"proc",
                           _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None), "mount this PID namespace's /proc")
        _check(_mount_setattr_readonly(root.encode()), "re-mount the new root read-only")
        options = (f"size={self.limits.disk_bytes},nr_inodes=4096,mode=0700,"
                   f"uid={self.uid},gid={self.uid}")
        _check(_libc.mount(b"tmpfs", (root + self.workdir).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                           options.encode()), "mount the working directory")
        # This init's own /proc: the namespace's (what _namespace_cpu_seconds reads).
        _check(_libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
               "mount this PID namespace's /proc")

    def __call__(self):
        try:
            self._confine()
        except BaseException as error:  # said on the program's stderr: subprocess only says "preexec_fn"
            os.write(2, f"sandbox: confining the program failed: {error!r}\n".encode())
            raise

    def _confine(self):
        if self.cgroup is not None:
            self.cgroup.join()  # first: what follows (the files in the tmpfs) counts against it
        if self.namespaces:
            os.chroot(_NEW_ROOT)
        os.chdir(self.workdir)
        if self.uid is not None:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        # Set after the uid change, which clears it; then close the race with a
        # parent that died before this line.
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        if os.getppid() != self.parent_pid:
            os._exit(1)
        _write_files(".", self.files)
        self._set_limits()
        if self.syscall_filter:
            _check(_install_syscall_filter(), "install the seccomp filter")

    def _set_limits(self):
        limits = self.limits
        cpu = max(1, math.ceil(limits.cpu_seconds))
        processes = limits.max_processes
        if self.uid is None and os.geteuid() != 0:
            processes += _count_processes_of(os.getuid())  # counted per user, not per sandbox
        for name, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                            (resource.RLIMIT_AS, limits.memory_bytes),
                            (resource.RLIMIT_FSIZE, limits.max_file_bytes),
                            (resource.RLIMIT_NOFILE, limits.max_open_files),
                            (resource.RLIMIT_NPROC, processes),
                            (resource.RLIMIT_CORE, 0),
                            (resource.RLIMIT_MSGQUEUE, 0),  # POSIX message queues: none
                            (resource.RLIMIT_MEMLOCK, 0)):
            soft, hard = value if isinstance(value, tuple) else (value, value)
            # Past the uid switch no limit can be raised: a larger one than the
            # launcher's own hard limit is that hard limit (tighter, never looser).
            ceiling = resource.getrlimit(name)[1]
            if ceiling != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)
            resource.setrlimit(name, (soft, hard))


def _install_syscall_filter() -> int:
    """Install the seccomp filter on this thread and its future children (it
    needs PR_SET_NO_NEW_PRIVS or root). Returns 0 or -1, as prctl does."""
    fprog = _syscall_filter()
    if fprog is None:
        return -1
    return _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


@functools.lru_cache(maxsize=None)
def _syscall_filter() -> Optional[_SockFprog]:
    """The filter, in classic BPF over `struct seccomp_data` (nr at offset 0, arch
    at 4, argument i's low word at 16 + 8 i on these little-endian machines), as
    prctl takes it; None on an architecture it does not know. It refuses:

      * the _ABSENT_CALLS (ENOSYS), and any call of another architecture's table;
      * clone and unshare with CLONE_NEWUSER (EPERM): a user namespace would give
        the program namespaces of its own, e.g. an IPC namespace without our limits;
      * socket(AF_UNIX) (EAFNOSUPPORT): a host service's socket file is reachable
        from any mount namespace;
      * socketpair() of any type but SOCK_STREAM and SOCK_SEQPACKET
        (ESOCKTNOSUPPORT): a datagram socket, even one of a pair, can sendto() any
        socket file it can name; a connected stream cannot be re-addressed;
      * setsockopt(SOL_SOCKET, SO_SNDBUF / SO_RCVBUF and their FORCE forms) (EPERM):
        socket buffers are kernel memory, so each keeps the kernel's default size
        (what bounds them where no memory cgroup counts them).
    """
    machine = os.uname().machine
    if machine not in _SECCOMP_ARCH:
        return None
    arch, numbers = _SECCOMP_ARCH[machine]
    load, jeq, jge, jset, and_, ret = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
    allow, errno = 0x7FFF0000, 0x00050000

    def argument(index):
        return 16 + 8 * index

    # (code, k, label if true, label if false) with None = the next instruction, or a label.
    program = [(load, 4), (jeq, arch, None, "enosys"), (load, 0)]
    if machine == "x86_64":
        program += [(jge, _X32_SYSCALL_BIT, "enosys", None)]
    program += [(jeq, numbers[name], "enosys", None) for name in _ABSENT_CALLS]
    program += [(jeq, numbers["clone"], "clone", None), (jeq, numbers["unshare"], "clone", None),
                (jeq, numbers["socket"], "socket", None), (jeq, numbers["socketpair"], "socketpair", None),
                (jeq, numbers["setsockopt"], "setsockopt", None), (ret, allow),
                "clone", (load, argument(0)), (jset, _CLONE_NEWUSER, "eperm", None), (ret, allow),
                "socket", (load, argument(0)), (jeq, _AF_UNIX, "eafnosupport", None), (ret, allow),
                "socketpair", (load, argument(1)), (and_, _SOCK_TYPE_MASK),
                (jeq, _SOCK_STREAM, "allow", None), (jeq, _SOCK_SEQPACKET, "allow", None),
                (ret, errno | _ESOCKTNOSUPPORT),
                "setsockopt", (load, argument(1)), (jeq, _SOL_SOCKET, None, "allow"), (load, argument(2))]
    program += [(jeq, option, "eperm", None) for option in _SOCKET_BUFFER_OPTIONS]
    program += ["allow", (ret, allow), "eperm", (ret, errno | _EPERM),
                "enosys", (ret, errno | _ENOSYS), "eafnosupport", (ret, errno | _EAFNOSUPPORT)]
    return _assemble(program)


def _assemble(program: list) -> _SockFprog:
    """BPF bytes from (code, k, [jump if true, jump if false]) tuples and label strings;
    a jump names a later label, or None for the next instruction."""
    labels, index = {}, 0
    for item in program:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    instructions = [item for item in program if not isinstance(item, str)]
    code = b""
    for index, (op, k, *jumps) in enumerate(instructions):
        offsets = [0 if target is None else labels[target] - index - 1 for target in jumps + [None] * (2 - len(jumps))]
        assert all(0 <= offset < 256 for offset in offsets), (op, k, jumps)
        code += struct.pack("<HBBI", op, offsets[0], offsets[1], k)
    return _SockFprog(len(instructions), code)  # the bytes live as long as the cached struct


def _check(result: int, what: str):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"sandbox: {what} failed: {os.strerror(code)}")


def _mount_setattr_readonly(path: bytes) -> int:
    attributes = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    return _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, _AT_RECURSIVE,
                         ctypes.byref(attributes), ctypes.sizeof(attributes))


def _write_files(directory: str, files: Mapping[str, bytes]):
    for name, content in files.items():
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:  # a short write goes on; a full disk raises: never a truncated file
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


_uid_slots = itertools.count()


def _next_sandbox_uid(owner_pid: int) -> int:
    # Unique among live processes: the owner's pid is its alone while it lives
    # (and its launcher dies with it), and one launcher runs one sandbox at a time.
    return (SANDBOX_UID_BASE + owner_pid * _UID_SLOTS_PER_PROCESS
            + next(_uid_slots) % _UID_SLOTS_PER_PROCESS)


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


def _become_subreaper():
    """Orphans of sandboxed programs get re-parented to this process, not to init
    (which, in some containers, never reaps them: zombies would pile up and keep
    counting against the sandbox user's RLIMIT_NPROC). It also makes every live
    sandbox process reachable as a descendant of one of our children."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become child subreaper")


def _kill_leftovers(uid: Optional[int], process_group: int):
    """Kill and reap whatever the finished program left running.

    As subreaper we adopt every orphan, and a live sandbox process always has
    an unbroken chain of live sandbox processes up to one of our children. So
    "none of our children belongs to the sandbox" means "none is left", and
    the common case costs one read of /proc/self/task/*/children.
    """
    for _ in range(100):
        leftovers = [pid for pid in _children() if _belongs_to_sandbox(pid, uid, process_group)]
        if not leftovers:
            return
        if uid is not None:
            _kill_sandbox_user(uid)
        else:
            _kill_group(process_group)
        for pid in leftovers:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    log.warning("sandbox processes of uid %s survived 100 kill rounds", uid)


def _children() -> list[int]:
    children = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as listing:
                children.extend(int(pid) for pid in listing.read().split())
        except OSError:
            continue
    return children


def _belongs_to_sandbox(pid: int, uid: Optional[int], process_group: int) -> bool:
    try:
        if uid is not None:
            with open(f"/proc/{pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        return int(line.split()[1]) == uid
            return False
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        return int(fields[2]) == process_group  # pgrp; escapes via setsid are missed
    except (OSError, ValueError, IndexError):
        return False


def _kill_sandbox_user(uid: int):
    """SIGKILL every process running as `uid`, atomically, from a child that
    becomes `uid` first (kill(-1) then reaches exactly that user's processes)."""
    if uid < SANDBOX_UID_BASE:
        raise ValueError(f"refusing to kill processes of uid {uid}: not a sandbox uid")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if os.getresuid() == (uid, uid, uid):  # never run kill(-1) as anyone else
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def _kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _process_uids():
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        yield int(entry), int(line.split()[1])
                        break
        except OSError:
            continue


def _count_processes_of(uid: int) -> int:
    return sum(1 for _, process_uid in _process_uids() if process_uid == uid)


def _glob_workdirs(owner_pid: int) -> list[str]:
    prefix = f"{_WORKDIR_PREFIX}{owner_pid}-"
    root = tempfile.gettempdir()
    try:
        return [os.path.join(root, name) for name in os.listdir(root) if name.startswith(prefix)]
    except OSError:
        return []


@functools.lru_cache(maxsize=None)
def _root_view(exposed_paths: tuple[str, ...]) -> tuple:
    """What the run's root holds: ("dir" | "file", path, source) entries bound
    read-only at `path`, and ("link", path, target) symbolic links. The runtime
    (_RUNTIME_*) that exists on this machine, then each exposed path (resolved)
    that is not inside one already there. Nothing else of the host is visible:
    not the checkout, datasets, home directories, other users' files or /tmp."""
    view, directories = [], []

    def inside_one(path):
        return any(path == directory or path.startswith(directory.rstrip("/") + "/")
                   for directory in directories)

    for path in _RUNTIME_DIRECTORIES:
        if os.path.islink(path):
            view.append(("link", path, os.readlink(path)))
        elif os.path.isdir(path):
            view.append(("dir", path, path))
            directories.append(path)
    for path in sorted(os.path.realpath(path) for path in exposed_paths):
        if os.path.exists(path) and not inside_one(path):
            view.append(("dir" if os.path.isdir(path) else "file", path, path))
            if os.path.isdir(path):
                directories.append(path)
    view += [("file", path, path) for path in _RUNTIME_FILES if os.path.exists(path) and not inside_one(path)]
    view += [("link", path, target) for path, target in _RUNTIME_LINKS]
    return tuple(view)


@functools.lru_cache(maxsize=None)
def _reachable_by_others(paths: tuple[str, ...]) -> bool:
    """Can a user with no rights of its own reach every path (each ancestor grants
    "others" search)? Not so for an interpreter under /root (mode 0700)."""
    for path in paths:
        ancestor = "/"
        for part in os.path.realpath(path).strip("/").split("/")[:-1]:
            ancestor = os.path.join(ancestor, part)
            try:
                if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                break
    return True


# -- the run's cgroup --------------------------------------------------------------

_CGROUP_PREFIX = "r1jax-sandbox-"
_run_numbers = itertools.count()


@dataclasses.dataclass(frozen=True)
class _CgroupLayout:
    """Where a run's cgroups go: beside this process, in its own cgroups."""
    version: int  # 1: separate memory and cpuacct hierarchies; 2: the unified one
    memory: str   # the directory a run's memory cgroup is made in
    cpu: str      # and its CPU-accounting cgroup (the same directory on cgroup v2)


@functools.lru_cache(maxsize=None)
def _cgroup_layout() -> Optional[_CgroupLayout]:
    """The cgroup directories this process may make a run's cgroups in, or None.

    cgroup v1: the memory and cpuacct hierarchies, each at this process's own
    cgroup (root may write there). cgroup v2: this process's cgroup, if the memory
    controller is enabled for its children (a delegated subtree). Tried once with a
    throwaway cgroup, which also clears cgroups left by launchers that were killed.
    """
    mounts = {}  # hierarchy (a v1 controller, or "" for v2) -> (mount root, mount point)
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                fields = line.split()
                separator = fields.index("-")
                kind, options = fields[separator + 1], fields[separator + 3].split(",")
                for controller in ("memory", "cpuacct"):
                    if kind == "cgroup" and controller in options:
                        mounts[controller] = fields[3], fields[4]
                if kind == "cgroup2":
                    mounts[""] = fields[3], fields[4]
        with open("/proc/self/cgroup") as own:
            memberships = [line.rstrip("\n").split(":", 2) for line in own]
    except (OSError, ValueError):
        return None

    def directory(hierarchy: str) -> Optional[str]:
        for number, controllers, path in memberships:
            member = hierarchy in controllers.split(",") if hierarchy else (number, controllers) == ("0", "")
            if member and hierarchy in mounts:
                root, mount_point = mounts[hierarchy]
                relative = os.path.relpath(path, root)
                return None if relative.startswith("..") else os.path.normpath(os.path.join(mount_point, relative))
        return None

    layout = None
    memory, cpu = directory("memory"), directory("cpuacct")
    if memory and cpu and "memory" in mounts and "cpuacct" in mounts:
        layout = _CgroupLayout(1, memory, cpu)
    else:
        unified = directory("")
        try:
            with open(os.path.join(unified or "/nonexistent", "cgroup.subtree_control")) as enabled:
                if "memory" in enabled.read().split():
                    layout = _CgroupLayout(2, unified, unified)
        except OSError:
            pass
    if layout is None:
        return None
    for parent in {layout.memory, layout.cpu}:  # cgroups of launchers that were killed mid-run
        for name in os.listdir(parent):
            owner = name[len(_CGROUP_PREFIX):].split("-")[0]
            if name.startswith(_CGROUP_PREFIX) and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                try:
                    os.rmdir(os.path.join(parent, name))
                except OSError:
                    pass
    try:
        probe = _RunCgroup(layout, SandboxLimits())
        probe.cpu_seconds()
        probe.remove()
    except (OSError, ValueError):
        return None
    return layout


class _RunCgroup:
    """One run's cgroup(s): memory limited to memory_bytes (kernel memory such as
    socket buffers, SysV shared memory and the tmpfs's pages included, no swap),
    CPU time summed over every process of the run. Made and removed by the
    launcher; the program joins it between fork and exec (`join`)."""

    def __init__(self, layout: _CgroupLayout, limits: SandboxLimits):
        self.version = layout.version
        name = f"{_CGROUP_PREFIX}{os.getpid()}-{next(_run_numbers)}"
        self.directories = list(dict.fromkeys([os.path.join(layout.memory, name),
                                               os.path.join(layout.cpu, name)]))
        self.fds = []
        for path in self.directories:
            os.mkdir(path, 0o700)
        try:
            memory = self.directories[0]
            if self.version == 1:
                _write_setting(memory, "memory.limit_in_bytes", limits.memory_bytes)
                _write_setting(memory, "memory.memsw.limit_in_bytes", limits.memory_bytes, optional=True)
            else:
                _write_setting(memory, "memory.max", limits.memory_bytes)
                _write_setting(memory, "memory.swap.max", 0, optional=True)
            # v1: "tasks", which moves one thread (the whole of a single-threaded program
            # between fork and exec) without the lock whose every write waits out an RCU
            # grace period (about 10 ms on a loaded machine) as "cgroup.procs" does.
            members = "tasks" if self.version == 1 else "cgroup.procs"
            self.join_fds = [os.open(os.path.join(path, members), os.O_WRONLY | os.O_CLOEXEC)
                             for path in self.directories]
            self.fds += self.join_fds
            usage = "cpuacct.usage" if self.version == 1 else "cpu.stat"
            self.usage_fd = os.open(os.path.join(self.directories[-1], usage), os.O_RDONLY | os.O_CLOEXEC)
            self.fds.append(self.usage_fd)
        except BaseException:
            self.remove()
            raise

    def join(self):
        """Move the calling process, single-threaded, into the run's cgroups ("0": the
        writer itself)."""
        for fd in self.join_fds:
            os.write(fd, b"0")

    def cpu_seconds(self) -> float:
        usage = os.pread(self.usage_fd, 4096, 0)
        if self.version == 1:
            return int(usage) / 1e9  # nanoseconds
        return int(usage.split(b"usage_usec", 1)[1].split()[0]) / 1e6

    def remove(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        for path in self.directories:
            for _ in range(100):  # the last processes may still be on their way out
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.001)
            else:
                log.warning("sandbox cgroup %s could not be removed", path)


def _write_setting(directory: str, name: str, value: int, optional: bool = False):
    try:
        with open(os.path.join(directory, name), "w") as setting:
            setting.write(str(value))
    except OSError:
        if not optional:
            raise


# -- the launcher -----------------------------------------------------------------

_launcher_lock = threading.Lock()
_launcher: Optional["_Launcher"] = None
_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "RuntimeError": RuntimeError,
           "OSError": OSError, "PermissionError": PermissionError}


class _Launcher:
    """This file, run as a stdlib-only script, serving run requests over pipes."""

    def __init__(self):
        self.owner_pid = os.getpid()
        self.process = subprocess.Popen(
            [os.path.realpath(sys.executable), "-I", "-S", "-B", os.path.abspath(__file__),
             "--serve", str(self.owner_pid)],
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


def _write_frame(stream, payload):
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_frame(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _serve(owner_pid: int):
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


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(int(sys.argv[2]))
