"""How a run is confined: its IPC limits, its file system, and the program's set-up
between fork and exec (cgroup, root, uid, limits, syscall filter)."""
from __future__ import annotations

import functools
import math
import os
import resource
import signal
import stat
from typing import Mapping

from r1jax.rewards.sandbox.kernel import (_MS_BIND, _MS_NODEV, _MS_NOEXEC, _MS_NOSUID, _MS_PRIVATE, _MS_REC,
                                          _PR_SET_NO_NEW_PRIVS, _PR_SET_PDEATHSIG, _check, _libc,
                                          _mount_setattr_readonly)
from r1jax.rewards.sandbox.processes import _count_processes_of
from r1jax.rewards.sandbox.seccomp import _install_syscall_filter

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


class _Confinement:
    """How a run is confined. `limit_ipc` and `mount_view` run as root in the
    supervisor, the new namespaces' init; the instance itself is the program's
    preexec_fn, run between fork and exec."""

    def __init__(self, workdir, uid, files, limits, namespaces, syscall_filter, view, cgroup):
        self.workdir, self.uid, self.files, self.limits = workdir, uid, files, limits
        self.namespaces, self.syscall_filter = namespaces, syscall_filter
        self.view, self.cgroup = view, cgroup
        self.parent_pid = os.getpid()

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


def _write_files(directory: str, files: Mapping[str, bytes]):
    for name, content in files.items():
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:  # a short write goes on; a full disk raises: never a truncated file
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
