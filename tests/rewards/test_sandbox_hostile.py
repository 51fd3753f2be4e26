"""The second round of attacks on the sandbox (issue 22): one test per class.

Each hostile program is real and tries the whole class it names, not one spelling
of it; where it can, it is written so that the attack working would score 1.0 (it
prints what the harness expects). The limits are small, and every attack bounds
its own ambition (a few hundred MiB at most), so a containment failure costs the
machine little.
"""
import dataclasses
import hashlib
import os
import re
import secrets
import socket
import tempfile
import textwrap

import pytest

from r1jax.rewards import SandboxLimits, SandboxResult, run_sandboxed, sandbox_capabilities
from r1jax.rewards.sandbox import cgroup, launcher, processes
from tests.support import sandbox
from tests.support.sandbox import EXPOSED, PYTHON

FULL_ISOLATION = sandbox_capabilities().isolated
needs_isolation = pytest.mark.skipif(
    not FULL_ISOLATION, reason="full sandbox isolation needs root (namespaces and a user switch)")
needs_cgroup = pytest.mark.skipif(
    not sandbox_capabilities().cgroup,
    reason="a memory and CPU cgroup per run needs root and a writable cgroup hierarchy")

LIMITS = SandboxLimits(wall_seconds=5.0, cpu_seconds=1.0, memory_bytes=128 * 2**20,
                       max_processes=8, max_file_bytes=2**20, disk_bytes=8 * 2**20)
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 2**20


@pytest.fixture(autouse=True)
def no_run_cgroup_is_left():
    yield
    layout = cgroup._cgroup_layout()
    if layout is None or launcher._launcher is None:
        return
    prefix = f"{cgroup._CGROUP_PREFIX}{launcher._launcher.process.pid}-"
    left = [name for parent in {layout.memory, layout.cpu} for name in os.listdir(parent)
            if name.startswith(prefix)]
    assert left == [], "a run's cgroup outlived it"


def run(program: str, limits=LIMITS, exposed=()):
    return sandbox.run(program, limits, exposed)


def score(program: str, expected_output: str, limits=LIMITS) -> float:
    return sandbox.score(program, expected_output, limits)


# -- 1. a nested user namespace, for a fresh IPC namespace with unbounded SysV limits ------

NESTED_NAMESPACES = """
    import ctypes, os, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    NEWUSER, NEWIPC, NEWNS, SIGCHLD = 0x10000000, 0x08000000, 0x00020000, 17
    CLONE, CLONE3 = {"x86_64": (56, 435), "aarch64": (220, 435)}[os.uname().machine]

    def hoard(method):
        # Shared memory counts against no process: 3 x 96 MiB, each touched, then detached.
        held = 0
        for key in range(1, 4):
            segment = libc.shmget(key, ctypes.c_size_t(96 * 2**20), 0o1666)
            address = libc.shmat(segment, None, 0) if segment >= 0 else None
            if address in (None, 2**64 - 1):
                break
            ctypes.memset(address, 1, 96 * 2**20)
            libc.shmdt(ctypes.c_void_p(address))
            held += 96
            os.write(1, f"{method} held {held}\\n".encode())

    def enter(method):
        flags = NEWUSER | NEWIPC | NEWNS
        if method == "unshare":
            return 0 if libc.unshare(flags) == 0 else -1
        if method == "clone":
            return libc.syscall(CLONE, flags | SIGCHLD, 0, 0, 0, 0)
        arguments = struct.pack("<11Q", flags, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
        return libc.syscall(CLONE3, arguments, 64)

    for method in ("unshare", "clone", "clone3"):
        child = os.fork()
        if child == 0:
            entered = enter(method)
            if entered == 0:  # in the new namespaces (unshare: this process; clone: the child)
                os.write(1, f"entered {method}\\n".encode())
                hoard(method)
                os._exit(0)
            if entered > 0:
                os.waitpid(entered, 0)
            else:
                os.write(1, f"refused {method} {ctypes.get_errno()}\\n".encode())
            os._exit(0)
        os.waitpid(child, 0)
"""


@needs_isolation
def test_nested_user_namespaces_are_refused_and_shared_memory_stays_capped():
    result = run(NESTED_NAMESPACES)
    output = result.stdout.decode()
    assert "entered" not in output, output
    for method in ("unshare", "clone", "clone3"):
        assert re.search(rf"^refused {method} (1|38)$", output, re.M), output  # EPERM or ENOSYS
    held = max((int(mib) for mib in re.findall(r"held (\d+)", output)), default=0)
    assert held <= LIMITS.memory_bytes // MiB, output
    # Threads still start: glibc falls back from clone3 (ENOSYS) to clone.
    threads = run("import threading; t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()")
    assert threads.stdout == b"thread\n", threads


# -- 2. unix datagram sockets made without socket(), addressed to a host socket file ---------

@needs_isolation
def test_no_unix_socket_reaches_a_host_socket_file():
    # A host service's datagram socket in a directory the program can see (exposed on
    # purpose here): whatever socket the program makes, nothing may arrive.
    directory = tempfile.mkdtemp(prefix="r1jax-dgram-")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "service.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        server.bind(path)
        os.chmod(path, 0o777)
        server.setblocking(False)
        program = f"""
            import socket
            path, sent = {path!r}, []
            for kind in ("SOCK_DGRAM", "SOCK_RAW", "SOCK_SEQPACKET", "SOCK_STREAM"):
                try:
                    left, right = socket.socketpair(socket.AF_UNIX, getattr(socket, kind))
                except OSError:
                    continue
                for attempt in (lambda: left.sendto(b"leak", path),
                                lambda: left.sendmsg([b"leak"], [], 0, path),
                                lambda: (left.connect(path), left.send(b"leak"))):
                    try:
                        attempt()
                    except OSError:
                        continue
                    right.setblocking(False)
                    try:
                        right.recv(16)  # it went to its own peer (SOCK_SEQPACKET ignores the address)
                    except BlockingIOError:
                        sent.append(kind)
            print("sent" if sent else "blocked")
        """
        assert score(program, "sent") == 0.0
        with pytest.raises(BlockingIOError):
            server.recv(16)  # nothing arrived
        result = run(program, exposed=(directory,))
        assert result.stdout == b"blocked\n", result
        with pytest.raises(BlockingIOError):
            server.recv(16)
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(directory)


# -- 3. kernel keyrings: a key outlives its run and is read by a later one -------------------

KEYS = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
    USER_KEYRING, SEARCH, READ = -4, 10, 11
""")


@needs_isolation
def test_a_key_added_in_one_run_is_not_read_by_the_next_with_the_same_uid():
    secret = secrets.token_hex(8)
    writer = run(KEYS + textwrap.dedent(f"""
        payload = {secret!r}.encode()
        serial = libc.syscall(ADD_KEY, b"user", b"r1jax-handoff", payload, len(payload), USER_KEYRING)
        print(os.getuid(), serial, ctypes.get_errno() if serial < 0 else 0)
    """))
    uid, serial, error = (int(field) for field in writer.stdout.split())
    # Later runs of this owner take the uid slots in turn; go round to the writer's.
    for _ in range(processes._UID_SLOTS_PER_PROCESS):
        reader = run(KEYS + textwrap.dedent("""
            serial = libc.syscall(KEYCTL, SEARCH, USER_KEYRING, b"user", b"r1jax-handoff", 0)
            found = ctypes.create_string_buffer(64)
            size = libc.syscall(KEYCTL, READ, serial, found, 64) if serial >= 0 else -1
            print(os.getuid(), found.raw[:size].decode() if size > 0 else "gone")
        """))
        reader_uid, found = reader.stdout.decode().split()
        if int(reader_uid) == uid:
            break
    assert int(reader_uid) == uid, "never got the writer's uid slot back"
    assert found == "gone"
    assert serial < 0 and error == 38, writer  # add_key does not exist in there


# -- 4. kernel memory outside memory_bytes: socket buffers ------------------------------------

SOCKET_HOARD = """
    import fcntl, os, socket, struct
    SIOCOUTQ, LIMIT = 0x5411, 96 * 2**20  # each hoarder stops at 96 MiB
    def hoard():
        pairs, held = [], 0
        while held < LIMIT:
            try:
                left, right = socket.socketpair()
            except OSError:
                break
            try:
                left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 2**20)
            except OSError:
                pass
            left.setblocking(False)
            try:
                while held + left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 < 2 * LIMIT:
                    left.send(b"x" * 65536)
            except OSError:
                pass
            pairs.append((left, right))
            held = sum(struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\\0" * 4))[0]
                       for sock, _ in pairs)
            os.write(1, f"{os.getpid()} {held}\\n".encode())  # the kernel's count of the bytes queued
    for _ in range(2):
        if os.fork() == 0:
            hoard()
            os._exit(0)
    for _ in range(2):
        os.wait()
"""


def held_by_process(output: bytes) -> dict:
    held = {}
    for line in output.decode().splitlines():
        pid, size = line.split()
        held[pid] = int(size)
    return held


@needs_isolation
@needs_cgroup
def test_socket_buffers_count_against_memory_bytes():
    # Enough sockets (of the default buffer size) to hold 2 x 96 MiB without the cgroup.
    limits = dataclasses.replace(LIMITS, memory_bytes=64 * MiB, max_open_files=1024)
    result = run(SOCKET_HOARD, limits=limits)
    held = held_by_process(result.stdout)
    assert held, result  # the hoarders ran
    assert sum(held.values()) <= limits.memory_bytes, held


@needs_isolation
def test_socket_buffers_cannot_be_enlarged():
    # The fallback where no memory cgroup counts socket buffers: each socket keeps
    # the kernel's default buffer, so what a run can queue is bounded by its sockets.
    result = run("""
        import socket
        left, right = socket.socketpair()
        default = left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        for option in (7, 8, 32, 33):  # SO_SNDBUF, SO_RCVBUF and their FORCE forms
            try:
                left.setsockopt(socket.SOL_SOCKET, option, 64 * 2**20)
            except OSError as error:
                pass
        print(left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == default,
              left.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= default)
    """)
    assert result.stdout == b"True True\n", result


# -- 5. world-readable host files outside the private /tmp ------------------------------------

@needs_isolation
def test_host_files_outside_the_runtime_are_invisible():
    secret = secrets.token_hex(8)
    planted = []
    for parent in (REPOSITORY, "/var/tmp"):
        directory = tempfile.mkdtemp(prefix="r1jax-planted-", dir=parent)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "expected_output.txt")
        with open(path, "w") as handle:
            handle.write(secret)
        os.chmod(path, 0o644)
        planted.append(path)
    checkout_file = os.path.join(REPOSITORY, "r1jax", "rewards", "sandbox.py")
    # Directly, and through the roots and working directories of the run's other
    # processes (its init's are the host's), or by climbing out of its root.
    paths = [prefix + path for path in planted + [checkout_file]
             for prefix in ("", "/proc/1/root", "/proc/1/cwd/../../../../../..", "/../../..")]
    program = f"""
        found = []
        for path in {paths!r}:
            try:
                with open(path) as handle:
                    found.append(handle.read()[:16])
            except OSError:
                pass
        print({secret!r} if {secret!r} in found else found)
    """
    try:
        assert score(program, secret) == 0.0
        assert run(program).stdout == b"[]\n"
        # What is there: the runtime, not the checkout, the home directories or the data.
        seen = run("""
            import os
            print(sorted(name for name in ("work", "home", "srv", "opt", "mnt", "media", "var", "root")
                         if os.path.exists("/" + name) and os.listdir("/" + name)))
        """, exposed=()).stdout.decode()
        visible = eval(seen)
        assert not {"work", "home", "srv", "opt", "mnt", "media", "var"} & set(visible), visible
        if "root" in visible:  # only as the way to an interpreter installed under /root
            assert any(path.startswith("/root/") for path in EXPOSED), visible
    finally:
        for path in planted:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


# -- 6. cpu_seconds bounds the run, not each process -----------------------------------------

PARALLEL_SPINNERS = """
    import os, time
    children = []
    for index in range(3):
        child = os.fork()
        if child == 0:
            report = 0.1
            while True:
                if time.process_time() >= report:
                    os.write(1, f"{index} {report:.1f}\\n".encode())
                    report += 0.1
        children.append(child)
    for child in children:
        os.waitpid(child, 0)
"""

SERIAL_SPINNERS = """
    import os, signal, time
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # reaped by no one: their CPU time is in no cutime
    for index in range(100):  # one spinner at a time, 0.2 CPU seconds each
        child = os.fork()
        if child == 0:
            while time.process_time() < 0.2:
                pass
            os.write(1, f"{index} 0.2\\n".encode())
            os._exit(0)
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
"""


def cpu_reported(output: bytes) -> float:
    """The CPU seconds the spinners reported, each counted at its last report."""
    last = {}
    for line in output.decode().splitlines():
        index, seconds = line.split()
        last[index] = float(seconds)
    return sum(last.values())


@needs_isolation
@pytest.mark.parametrize("program", [PARALLEL_SPINNERS, SERIAL_SPINNERS], ids=["parallel", "serial"])
def test_cpu_seconds_bound_the_whole_run(program):
    limits = dataclasses.replace(LIMITS, wall_seconds=20.0)  # room for a busy machine
    result = run(program, limits=limits)
    assert not result.ok and not result.timed_out, result  # stopped by the CPU limit
    used = cpu_reported(result.stdout)
    assert 0 < used <= limits.cpu_seconds + 0.3, result.stdout


@needs_isolation
def test_without_a_cgroup_cpu_seconds_still_bound_a_run_of_parallel_processes():
    # The fallback: the supervisor sums the CPU time of its PID namespace's processes.
    # (It misses children reaped by no one, SIGCHLD ignored: the serial case above.)
    limits = dataclasses.replace(LIMITS, wall_seconds=20.0)
    request = dict(argv=PYTHON, files={"main.py": textwrap.dedent(PARALLEL_SPINNERS).encode()}, stdin=b"",
                   limits=dataclasses.asdict(limits), exposed_paths=EXPOSED, isolation="auto", cgroup=False)
    result = SandboxResult(**launcher._launcher_call(request))
    assert not result.ok and not result.timed_out, result
    assert 0 < cpu_reported(result.stdout) <= limits.cpu_seconds + 0.3, result.stdout


# -- 7. the API's own inputs -----------------------------------------------------------------

@pytest.fixture
def never_runs(monkeypatch):
    def fail(request):
        raise AssertionError("a request that should have been refused reached the launcher")
    monkeypatch.setattr(launcher, "_launcher_call", fail)


@pytest.mark.parametrize("field, value", [
    ("memory_bytes", 1.5), ("memory_bytes", True), ("max_processes", 2.0), ("disk_bytes", "64"),
    ("wall_seconds", float("inf")), ("cpu_seconds", float("nan")), ("wall_seconds", False),
    ("max_open_files", -1), ("max_file_bytes", 0), ("memory_bytes", 2**64), ("cpu_seconds", 1e30),
    ("max_open_files", 2**21),
])
def test_limits_are_validated_on_construction(field, value):
    with pytest.raises(ValueError, match=rf"SandboxLimits\.{field}"):
        SandboxLimits(**{field: value})


def test_the_largest_limits_accepted_can_be_applied():
    largest = SandboxLimits(wall_seconds=7 * 24 * 3600, cpu_seconds=7 * 24 * 3600, memory_bytes=2**62,
                            max_processes=2**62, max_file_bytes=2**62, disk_bytes=2**62,
                            max_open_files=2**20)
    assert run("print('ran')", limits=largest).stdout == b"ran\n"


@pytest.mark.parametrize("files, named", [
    ({"big.txt": b"x" * (LIMITS.disk_bytes + 1)}, "big.txt"),
    ({"a.txt": b"x" * (LIMITS.disk_bytes // 2), "b.txt": b"x" * (LIMITS.disk_bytes // 2 + 4096)}, "disk_bytes"),
    ({"nul\0name": ""}, "nul"),
    ({"x" * 256: ""}, "255"),
    ({f"f{index}": "" for index in range(5000)}, "files"),
    ({"main.py": None}, "main.py"),
    ([("main.py", "print(1)")], "files"),
])
def test_files_that_cannot_be_written_whole_are_refused(never_runs, files, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        run_sandboxed(PYTHON, files=files, limits=LIMITS, exposed_paths=EXPOSED)


def test_bad_arguments_are_refused_before_running(never_runs):
    with pytest.raises(ValueError, match="argv"):
        run_sandboxed(PYTHON + ["nul\0argument"], limits=LIMITS)
    with pytest.raises(ValueError, match="exposed_paths"):
        run_sandboxed(PYTHON, exposed_paths=["relative/path"])
    with pytest.raises(ValueError, match="stdin"):
        run_sandboxed(PYTHON, stdin="text, not bytes")


def test_a_file_that_fits_is_written_whole():
    limits = dataclasses.replace(LIMITS, disk_bytes=2**20)
    content = secrets.token_bytes(2**20 - 8192)
    program = "import hashlib; print(hashlib.sha256(open('data', 'rb').read()).hexdigest())"
    result = run_sandboxed(PYTHON, files={"main.py": program, "data": content}, limits=limits,
                           exposed_paths=EXPOSED)
    assert result.stdout.decode().strip() == hashlib.sha256(content).hexdigest(), result
