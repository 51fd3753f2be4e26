"""A run's cgroup: its memory (kernel memory included) capped, its CPU time summed."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from typing import Optional

from r1jax.rewards.sandbox.limits import SandboxLimits

log = logging.getLogger(__name__)

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
    try:
        with open("/proc/self/mountinfo") as mountinfo, open("/proc/self/cgroup") as own:
            directories = _cgroup_directories(mountinfo.read(), own.read())
    except (OSError, ValueError, IndexError):
        return None
    layout = None
    if "memory" in directories and "cpuacct" in directories:
        layout = _CgroupLayout(1, directories["memory"], directories["cpuacct"])
    elif "" in directories:
        try:
            with open(os.path.join(directories[""], "cgroup.subtree_control")) as enabled:
                if "memory" in enabled.read().split():
                    layout = _CgroupLayout(2, directories[""], directories[""])
        except OSError:
            pass
    if layout is None:
        return None
    try:
        for parent in {layout.memory, layout.cpu}:  # cgroups of launchers that were killed mid-run
            for name in os.listdir(parent):
                owner = name[len(_CGROUP_PREFIX):].split("-")[0]
                if name.startswith(_CGROUP_PREFIX) and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                    try:
                        os.rmdir(os.path.join(parent, name))
                    except OSError:
                        pass
        probe = _RunCgroup(layout, SandboxLimits())
        probe.cpu_seconds()
        probe.remove()
    except (OSError, ValueError):
        return None
    return layout


def _cgroup_directories(mountinfo: str, memberships: str) -> dict[str, str]:
    """This process's own cgroup directory in each hierarchy mounted here: "memory"
    and "cpuacct" (cgroup v1) and "" (cgroup v2), from the text of
    /proc/self/mountinfo and /proc/self/cgroup. A hierarchy not mounted, or mounted
    from below this process's cgroup (its directory is not in sight), is left out."""
    mounts = {}  # hierarchy -> (the cgroup at the mount's root, mount point)
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        kind, options = fields[separator + 1], fields[separator + 3].split(",")
        for controller in ("memory", "cpuacct"):
            if kind == "cgroup" and controller in options:
                mounts[controller] = fields[3], fields[4]
        if kind == "cgroup2":
            mounts[""] = fields[3], fields[4]
    directories = {}
    for line in memberships.splitlines():
        number, controllers, path = line.split(":", 2)
        hierarchies = controllers.split(",") if controllers else ([""] if number == "0" else [])
        for hierarchy in hierarchies:
            if hierarchy in mounts:
                root, mount_point = mounts[hierarchy]
                relative = os.path.relpath(path, root)
                if not relative.startswith(".."):
                    directories[hierarchy] = os.path.normpath(os.path.join(mount_point, relative))
    return directories


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
