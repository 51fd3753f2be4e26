"""The sandbox users' processes: a uid per run, and killing and reaping what a run leaves."""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import tempfile
import time
from typing import Optional

from r1jax.rewards.sandbox.kernel import _PR_SET_CHILD_SUBREAPER, _check, _libc

log = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1 << 30
_UID_SLOTS_PER_PROCESS = 64  # uids per owner, used in turn so none is reused at once
_WORKDIR_PREFIX = "r1jax-sandbox-"

_uid_slots = itertools.count()


def _next_sandbox_uid(owner_pid: int) -> int:
    # Unique among live processes: the owner's pid is its alone while it lives
    # (and its launcher dies with it), and one launcher runs one sandbox at a time.
    return (SANDBOX_UID_BASE + owner_pid * _UID_SLOTS_PER_PROCESS
            + next(_uid_slots) % _UID_SLOTS_PER_PROCESS)


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
