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
  * a memory and CPU cgroup of its own (`cgroup.py`): memory, kernel memory
    included (socket buffers, SysV shared memory, the tmpfs's pages, pipes),
    capped at `memory_bytes` for the whole run with no swap, so the OOM killer
    picks within the run, never the trainer; CPU time summed over all its
    processes;
  * a seccomp filter that refuses the calls that reach past the namespaces
    (`seccomp.py` lists them with their reasons): new user namespaces
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

Children are started by a small launcher process (`serve.py` run as a script,
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

The parts, one file each: `limits` (SandboxLimits, SandboxResult, input checks),
`capabilities` (what this machine allows), `launcher` (`run_sandboxed`, the
launcher process; `serve.py` is its entry point), `supervisor` (the run's init),
`confinement` (IPC limits, the file-system view, the pre-exec set-up),
`seccomp` (the syscall filter), `cgroup` (the run's memory and CPU cgroup),
`processes` (sandbox uids, killing and reaping), `frames` (the pipe protocol),
`kernel` (libc calls and constants). All are stdlib only: the launcher imports
this package and nothing else of r1jax.
"""
from r1jax.rewards.sandbox.capabilities import SandboxCapabilities, sandbox_capabilities
from r1jax.rewards.sandbox.launcher import ISOLATION_MODES, run_sandboxed
from r1jax.rewards.sandbox.limits import SandboxLimits, SandboxResult
from r1jax.rewards.sandbox.processes import SANDBOX_UID_BASE, reap_sandbox_processes

__all__ = ["ISOLATION_MODES", "SANDBOX_UID_BASE", "SandboxCapabilities", "SandboxLimits", "SandboxResult",
           "reap_sandbox_processes", "run_sandboxed", "sandbox_capabilities"]
