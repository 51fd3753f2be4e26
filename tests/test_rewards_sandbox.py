"""Hostile programs: each is contained, scores 0, and leaves the parent and the
disk as they were.

Every hostile program is written so that, if its attack worked, it would print
exactly the expected output and score 1.0: a 0.0 therefore means the attack was
stopped, not that the program was merely wrong. A control program shows each
harness can pass at all.
"""
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from r1jax.rewards import SandboxLimits, code_execution, run_sandboxed, sandbox_capabilities
from r1jax.rewards.sandbox import SANDBOX_UID_BASE

pytestmark = pytest.mark.skipif(
    not sandbox_capabilities().isolated,
    reason="full sandbox isolation needs root (namespaces and a user switch)")

LIMITS = SandboxLimits(wall_seconds=2.0, cpu_seconds=1.0, memory_bytes=256 * 2**20,
                       max_processes=8, max_file_bytes=2**20, disk_bytes=8 * 2**20)
PYTHON = [os.path.realpath(sys.executable), "-I", "-S", "-B", "main.py"]
EXPOSED = (os.path.dirname(os.path.realpath(sys.executable)), os.path.realpath(sys.base_prefix))


def completion(program: str) -> str:
    return f"Here you go:\n```python\n{textwrap.dedent(program)}\n```"


def score(program: str, expected_output: str) -> float:
    return code_execution(completion(program), [{"input": "", "output": expected_output}],
                          limits=LIMITS)


def run(program: str, limits=LIMITS):
    return run_sandboxed(PYTHON, files={"main.py": textwrap.dedent(program)}, limits=limits,
                         exposed_paths=EXPOSED)


def sandbox_processes() -> list[int]:
    """Processes (zombies included) running as one of this process's sandbox uids."""
    low = SANDBOX_UID_BASE + os.getpid() * 64
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
            pass
        print(len(chunks))
    """)
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


def test_socket_to_localhost_is_blocked():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        program = f"""
            import socket
            try:
                with socket.create_connection(("127.0.0.1", {port}), timeout=1) as conn:
                    conn.sendall(b"exfiltrated")
                print("connected")
            except OSError as error:
                print("blocked")
        """
        assert score(program, "connected") == 0.0
        assert score(program, "blocked") == 1.0
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected


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
    with pytest.raises(ValueError, match="must be positive"):
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
    from r1jax.rewards import sandbox as sandbox_module
    assert run("print(1)").ok
    sandbox_module._launcher.process.kill()
    sandbox_module._launcher.process.wait()
    assert run("print(2)").stdout == b"2\n"
