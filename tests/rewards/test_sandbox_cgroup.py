"""Where a run's cgroups go, read from /proc/self/mountinfo and /proc/self/cgroup as
the machines we know write them (hand-written, one per layout)."""
import pytest

from r1jax.rewards.sandbox.cgroup import _cgroup_directories

# cgroup v1 beside an empty v2 hierarchy, as on this project's CI machines (a container
# whose memory cgroup is its own, the other controllers at the root).
HYBRID_MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_MEMBERSHIPS = """\
4:memory:/process_api/ead22b
2:cpuacct:/
1:cpu:/
0::/
"""

# cgroup v2 only (systemd), with optional fields before the separator.
UNIFIED_MOUNTS = """\
24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
UNIFIED_MEMBERSHIPS = "0::/user.slice/user-1000.slice/session-2.scope\n"

# cgroup v1 with cpu and cpuacct mounted together, and a memory hierarchy mounted from
# a container's own cgroup (the mount's root is not the hierarchy's).
CONTAINER_MOUNTS = """\
40 30 0:40 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
41 30 0:41 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
"""
CONTAINER_MEMBERSHIPS = """\
5:memory:/docker/abc/worker
4:cpu,cpuacct:/docker/other
"""


@pytest.mark.parametrize("mounts, memberships, expected", [
    (HYBRID_MOUNTS, HYBRID_MEMBERSHIPS, {"memory": "/sys/fs/cgroup/memory/process_api/ead22b",
                                         "cpuacct": "/sys/fs/cgroup/cpuacct", "": "/sys/fs/cgroup/unified"}),
    (UNIFIED_MOUNTS, UNIFIED_MEMBERSHIPS, {"": "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope"}),
    # cpuacct: this process's cgroup is outside the mounted subtree, so out of sight
    (CONTAINER_MOUNTS, CONTAINER_MEMBERSHIPS, {"memory": "/sys/fs/cgroup/memory/worker"}),
], ids=["v1-hybrid", "v2-systemd", "v1-container"])
def test_cgroup_directories(mounts, memberships, expected):
    assert _cgroup_directories(mounts, memberships) == expected
