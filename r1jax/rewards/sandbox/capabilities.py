"""What this kernel and user allow the sandbox, probed once per process."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal

from r1jax.rewards.sandbox.cgroup import _cgroup_layout
from r1jax.rewards.sandbox.kernel import (_MS_NODEV, _MS_NOEXEC, _MS_NOSUID, _MS_PRIVATE, _MS_REC, _NAMESPACES,
                                          _PR_SET_NO_NEW_PRIVS, _SYS_CLONE, _libc, _libc_holding_gil,
                                          _mount_setattr_readonly)
from r1jax.rewards.sandbox.seccomp import _AF_UNIX, _install_syscall_filter, _syscall_filter

log = logging.getLogger(__name__)


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
        ("a cgroup (memory_bytes then holds per process, kernel memory only by counts of sockets "
         "and pipes, cpu_seconds over the run only by summing a PID namespace's processes)",
         capabilities.cgroup)) if not available]
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
