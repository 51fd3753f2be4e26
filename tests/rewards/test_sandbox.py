"""Hostile programs: each is contained, scores 0, and leaves the parent and the
disk as they were.

Every hostile program is written so that, if its attack worked, it would print
exactly the expected output and score 1.0: a 0.0 therefore means the attack was
stopped, not that the program was merely wrong. A control program shows each
harness can pass at all.
"""
import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from r1jax.rewards import SandboxLimits, run_sandboxed, sandbox_capabilities
from r1jax.rewards.sandbox import SANDBOX_UID_BASE
from tests.support import sandbox
from tests.support.sandbox import EXPOSED, PYTHON

pytestmark = pytest.mark.skipif(
    not sandbox_capabilities().isolated,
    reason="full sandbox isolation needs root (namespaces and a user switch)")

LIMITS = SandboxLimits(wall_seconds=2.0, cpu_seconds=1.0, memory_bytes=256 * 2**20,
                       max_processes=8, max_file_bytes=2**20, disk_bytes=8 * 2**20)


def score(program: str, expected_output: str) -> float:
    return sandbox.score(program, expected_output, LIMITS)


def run(program: str, limits=LIMITS):
    return sandbox.run(program, limits)


def sandbox_processes(owner_pid: int | None = None) -> list[int]:
    """Processes (zombies included) running as one of the sandbox uids of `owner_pid` (this process)."""
    low = SANDBOX_UID_BASE + (os.getpid() if owner_pid is None else owner_pid) * 64
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as status:
                uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        except (OSError, ValueError, StopIteration):
            continue
        if low <= uid < low + 64:
            pids.append(int(entry))
    return pids


def sandbox_dirs() -> set:
    """Sandbox directories on disk, except this process's reusable (empty) mount point."""
    root = tempfile.gettempdir()
    names = {name for name in os.listdir(root) if name.startswith("r1jax-sandbox-")}
    for name in names:
        assert os.listdir(os.path.join(root, name)) == [], f"files left in {name}"
    return {name for name in names if not name.startswith(f"r1jax-sandbox-{os.getpid()}-")}


@pytest.fixture(autouse=True)
def parent_is_unharmed():
    def environment():
        return {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}

    cwd, environment_before, dirs = os.getcwd(), environment(), sandbox_dirs()
    yield
    assert os.getcwd() == cwd
    assert environment() == environment_before
    assert sandbox_processes() == [], "sandbox processes survived the run"
    assert sandbox_dirs() == dirs, "a sandbox working directory was left on disk"


def test_control_program_passes_and_runs_confined():
    result = run("""
        import os
        open("scratch.txt", "w").write("kept inside")
        print(open("scratch.txt").read(), os.getuid() != 0, sorted(os.listdir(".")))
    """)
    assert result.ok and result.isolated
    assert result.stdout.decode().split("\n")[0] == "kept inside True ['main.py', 'scratch.txt']"
    assert score("print('hello')", "hello") == 1.0


def test_infinite_loop_hits_the_cpu_limit():
    start = time.monotonic()
    assert score("while True: pass\nprint('done')", "done") == 0.0
    result = run("while True: pass")
    assert not result.ok and result.returncode < 0  # killed by SIGXCPU / SIGKILL
    assert time.monotonic() - start < 2 * (LIMITS.wall_seconds + 1)


def test_sleeping_program_hits_the_wall_limit():
    result = run("import time; time.sleep(60)")
    assert result.timed_out and LIMITS.wall_seconds <= result.wall_seconds < LIMITS.wall_seconds + 1


def test_memory_bomb_is_capped():
    assert score("x = bytearray(4 * 2**30); print('allocated')", "allocated") == 0.0
    result = run("""
        chunks = []
        try:
            while len(chunks) < 1024:
                chunks.append(bytearray(2**20))
        except MemoryError:
            # Free a chunk: at the cap, print's own small allocations (a fresh
            # allocator arena) could fail too and leave stdout empty.
            chunks.pop()
        print(len(chunks))
    """)
    assert result.stdout.strip(), result
    megabytes = int(result.stdout)
    assert 0 < megabytes < LIMITS.memory_bytes // 2**20


def test_fork_bomb_is_capped_and_fully_killed():
    # Children sleep rather than spin, so a containment failure would cost idle
    # processes (killed afterwards), not the machine.
    counting_bomb = """
        import os, time
        forks = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forks += 1
            except OSError:
                break
        print(forks)
    """
    assert score(counting_bomb, "200") == 0.0
    forks = int(run(counting_bomb).stdout)
    assert 0 < forks < LIMITS.max_processes  # the parent itself takes one slot
    spinning_bomb = """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    start = time.monotonic()
    result = run(spinning_bomb)
    assert not result.ok and time.monotonic() - start < LIMITS.wall_seconds + 2


def test_writing_outside_its_directory_fails(tmp_path):
    os.chmod(tmp_path, 0o777)  # the read-only mount, not permissions, must stop it
    targets = [tmp_path / "escaped.txt", f"/tmp/r1jax-escape-{secrets.token_hex(4)}",
               "../r1jax-escape-sibling", "/dev/shm/r1jax-escape"]
    program = f"""
        wrote = []
        for path in {[str(target) for target in targets]!r}:
            try:
                with open(path, "w") as handle:
                    handle.write("escaped")
                wrote.append(path)
            except OSError:
                pass
        print("escaped" if wrote else "contained")
    """
    assert score(program, "escaped") == 0.0
    assert score(program, "contained") == 1.0
    for target in targets:
        assert not os.path.exists(os.path.join(tempfile.gettempdir(), target)), target


def test_environment_secret_is_unreachable(monkeypatch):
    secret = secrets.token_hex(16)
    # Two places a secret lives: our own environment (inherited unless the child's
    # is emptied) and the initial environment of a running process, readable in
    # /proc/<pid>/environ by anyone with the same uid.
    monkeypatch.setenv("R1JAX_TEST_SECRET", secret)
    holder = subprocess.Popen(["sleep", "30"], env={"R1JAX_TEST_SECRET": secret})
    program = """
        import os
        found = os.environ.get("R1JAX_TEST_SECRET", "")
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    for entry in handle.read().split(b"\\0"):
                        if entry.startswith(b"R1JAX_TEST_SECRET="):
                            found = entry.split(b"=", 1)[1].decode()
            except OSError:
                pass
        print(found or "nothing")
    """
    try:
        assert score(program, secret) == 0.0
        assert score(program, "nothing") == 1.0
    finally:
        holder.kill()
        holder.wait()


def assert_nobody_connects(server: socket.socket, connect: str):
    """A program that would print "connected" after `conn = <connect>` and a send scores 0.0,
    and the listening, non-blocking `server` never sees a connection."""
    program = f"""
        import socket
        try:
            conn = {connect}
            conn.sendall(b"exfiltrated")
            print("connected")
        except OSError as error:
            print("blocked")
    """
    assert score(program, "connected") == 0.0
    assert score(program, "blocked") == 1.0
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody ever connected


def test_socket_to_localhost_is_blocked():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        assert_nobody_connects(server, f'socket.create_connection(("127.0.0.1", {port}), timeout=1)')


def test_deleting_files_fails(tmp_path):
    os.chmod(tmp_path, 0o777)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o666)
    program = f"""
        import os, shutil
        deleted = []
        for action in (lambda: os.remove({str(victim)!r}),
                       lambda: shutil.rmtree({str(tmp_path)!r})):
            try:
                action()
                deleted.append(True)
            except OSError:
                pass
        print("deleted" if deleted else "kept")
    """
    assert score(program, "deleted") == 0.0
    assert victim.read_text() == "precious"


def test_spawned_shell_is_contained(tmp_path):
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "shell_was_here"
    program = f"""
        import os, subprocess
        subprocess.run(["/bin/sh", "-c", "echo pwned > {marker}; echo pwned > /tmp/r1jax-shell"],
                       capture_output=True)
        done = os.path.exists({str(marker)!r}) or os.path.exists("/tmp/r1jax-shell")
        print("escaped" if done else "contained")
    """
    assert score(program, "escaped") == 0.0
    assert score(program, "contained") == 1.0  # the shell ran, and could do nothing
    assert not marker.exists() and not os.path.exists("/tmp/r1jax-shell")


def test_output_flood_is_capped():
    result = run("import sys\nwhile True: sys.stdout.write('x' * 65536)")
    assert not result.ok and len(result.stdout) <= LIMITS.max_file_bytes


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="absolute path"):
        run_sandboxed(["python3", "-c", "pass"])
    with pytest.raises(ValueError, match="plain names"):
        run_sandboxed(PYTHON, files={"../evil.py": ""})
    with pytest.raises(ValueError, match=r"SandboxLimits\.cpu_seconds"):
        SandboxLimits(cpu_seconds=0)


def test_isolation_off_still_limits_and_cleans_up():
    off = dict(files={"main.py": "import os; open('f', 'w').write('x'); print(sorted(os.listdir('.')))"},
               limits=LIMITS, isolation="off")
    result = run_sandboxed(PYTHON, **off)
    assert result.ok and not result.isolated
    assert result.stdout == b"['f', 'main.py']\n"
    spin = run_sandboxed(PYTHON, files={"main.py": "while True: pass"}, limits=LIMITS, isolation="off")
    assert not spin.ok  # the CPU limit still holds
    with pytest.raises(ValueError, match="isolation must be one of"):
        run_sandboxed(PYTHON, isolation="maybe")


def test_launcher_is_replaced_after_it_dies():
    from r1jax.rewards.sandbox import launcher
    assert run("print(1)").ok
    launcher._launcher.process.kill()
    launcher._launcher.process.wait()
    assert run("print(2)").stdout == b"2\n"


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
def test_unix_socket_of_a_host_service_is_unreachable(directory):
    # A host service listening on a world-writable socket file (dbus, X11, a
    # docker socket): /tmp is a private tmpfs in the sandbox, but the socket in
    # /dev/shm is in plain sight, so only the syscall filter stops that one.
    path = os.path.join(directory, f"r1jax-service-{secrets.token_hex(4)}.sock")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        server.setblocking(False)
        assert_nobody_connects(server, f"socket.socket(socket.AF_UNIX); conn.connect({path!r})")
    finally:
        server.close()
        os.unlink(path)
    pair = run("""
        import socket
        left, right = socket.socketpair()
        left.sendall(b"pair")
        print(right.recv(4).decode())
    """)
    assert pair.stdout == b"pair\n"  # an unnamed pair reaches nothing, and still works


SYSV_IPC = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    IPC_CREAT = 0o1000
    def shared_memory(key, size, create):
        return libc.shmget(key, ctypes.c_size_t(size), (IPC_CREAT | 0o666) if create else 0)
""")


def test_sysv_ipc_is_private_to_the_run_and_capped():
    key = secrets.randbelow(2**30) + 1
    # Run 1 leaves a secret in a shared-memory segment and a message queue.
    writer = run(SYSV_IPC + textwrap.dedent(f"""
        segment = shared_memory({key}, 4096, create=True)
        address = libc.shmat(segment, None, 0)
        ctypes.memmove(address, b"secret", 6)
        queue = libc.msgget({key}, IPC_CREAT | 0o666)
        message = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + 6)
        ctypes.c_long.from_buffer(message).value = 1
        message[ctypes.sizeof(ctypes.c_long):] = b"secret"
        print(segment >= 0, queue >= 0, libc.msgsnd(queue, message, 6, 0) == 0)
    """))
    assert writer.stdout == b"True True True\n"  # made inside the run, then gone with it
    for table in ("/proc/sysvipc/shm", "/proc/sysvipc/msg"):
        with open(table) as listing:
            assert all(int(line.split()[0]) != key for line in list(listing)[1:]), table
    # Run 2, an attacker's later run, looks for it.
    reader = run(SYSV_IPC + textwrap.dedent(f"""
        segment = shared_memory({key}, 0, create=False)
        print("found" if segment >= 0 or libc.msgget({key}, 0) >= 0 else "gone")
    """))
    assert reader.stdout == b"gone\n"
    # Segments held past memory_bytes: 3 x 96 MiB, each touched, under a 128 MiB limit.
    held = run(SYSV_IPC + textwrap.dedent("""
        held = 0
        for key in range(1, 4):
            segment = shared_memory(key, 96 * 2**20, create=True)
            address = libc.shmat(segment, None, 0) if segment >= 0 else None
            if address in (None, 2**64 - 1):
                break
            ctypes.memset(address, 1, 96 * 2**20)
            libc.shmdt(ctypes.c_void_p(address))
            held += 96
        print(held)
    """), limits=dataclasses.replace(LIMITS, memory_bytes=128 * 2**20))
    assert int(held.stdout) <= 128, held


def test_memfd_memory_is_refused():
    # Anonymous memory files are counted by no limit of the sandbox (not the
    # address space, not the tmpfs): a program could hold gigabytes in them.
    program = """
        import os
        held = 0
        try:
            for _ in range(3):
                fd = os.memfd_create("hoard")
                os.ftruncate(fd, 2**20)
                os.pwrite(fd, b"x" * 2**20, 0)
                held += 1
        except OSError as error:
            print(held, error.errno)
        else:
            print(held)
    """
    assert score(program, "3") == 0.0
    assert run(program).stdout == b"0 38\n"  # ENOSYS: the call does not exist in here
    io_uring = run("""
        import ctypes
        params = ctypes.create_string_buffer(120)
        print(ctypes.CDLL(None, use_errno=True).syscall(425, 4, params), ctypes.get_errno())
    """)
    assert io_uring.stdout == b"-1 38\n"  # io_uring_setup: its ops bypass the filter


def test_host_processes_are_invisible():
    secret = secrets.token_hex(16)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", secret])
    program = f"""
        import os
        pids = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
        leaked = False
        for pid in pids:
            try:
                with open(f"/proc/{{pid}}/cmdline", "rb") as handle:
                    leaked |= {secret!r}.encode() in handle.read()
            except OSError:
                pass
        print("leaked" if leaked else pids)
    """
    try:
        assert score(program, "leaked") == 0.0
        # Only its own PID namespace: its init (1) and itself.
        assert score(program, "[1, 2]") == 1.0
    finally:
        holder.kill()
        holder.wait()


def test_escaped_grandchild_dies_with_a_killed_owner():
    # The owner (a trainer, a reward worker) is SIGKILLed mid-run, with no
    # chance to clean up; the program had double-forked a sleeper into a new
    # session, out of its process group and its parent's reach.
    program = textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from r1jax.rewards import SandboxLimits, run_sandboxed
        run_sandboxed({PYTHON!r}, files={{"main.py": {program!r}}}, exposed_paths={EXPOSED!r},
                      limits=SandboxLimits(wall_seconds=60, cpu_seconds=5))
    """)])

    def owned():
        return sandbox_processes(owner.pid)

    try:
        deadline = time.monotonic() + 30
        while len(owned()) < 2 and time.monotonic() < deadline:  # the program and its sleeper
            assert owner.poll() is None, "the owner ended early"
            time.sleep(0.05)
        assert len(owned()) >= 2, "the sandboxed program never started"
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        while owned() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert owned() == [], "a sandboxed process outlived its owner"
        assert not [name for name in os.listdir(tempfile.gettempdir())
                    if name.startswith(f"r1jax-sandbox-{owner.pid}-")], "its directory stayed behind"
    finally:
        owner.kill()
        owner.wait()
        for pid in owned():
            os.kill(pid, 9)
