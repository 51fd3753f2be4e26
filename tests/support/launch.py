"""Launch a module (an experiment, a script of tests/support) as one process or as several localhost
processes with fake CPU devices.

    runs = launch("experiments.r1_zero_tiny", ["--config.workdir=..."], processes=2, devices=2, log_dir=tmp)
    wait(runs)        # every process exited 0, or an AssertionError with the tail of its log

The fake device count must be set before JAX starts, so every run is a fresh process.
"""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

from tests.support import ROOT

# JAX's persistent compilation cache, shared by the runs of this test process: the runs of
# one experiment compile the same programs, and XLA's compiles are most of their CPU time
COMPILATION_CACHE = tempfile.mkdtemp(prefix="r1jax-test-compilation-cache-")
atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)  # not left behind in /tmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(module: str, args: list[str], *, processes: int, devices: int, log_dir: pathlib.Path,
           name: str) -> list[subprocess.Popen]:
    """`python -m module *args` (or `python module *args` for a .py path) as `processes` processes of
    `devices` fake CPU devices each, in the repository root (where `tests.support.*` imports)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}
    port = free_port()
    runs = []
    for i in range(processes):
        join = ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"]
                if processes > 1 else [])
        log = open(log_dir / f"{name}.{i}.log", "w")
        program = [module] if module.endswith(".py") else ["-m", module]
        run = subprocess.Popen([sys.executable, *program, *args, *join], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        run.log_path = log.name
        runs.append(run)
    return runs


def wait(runs: list[subprocess.Popen], timeout: float = 900) -> None:
    for run in runs:
        try:
            code = run.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            code = "timeout"
        if code != 0:
            for other in runs:
                other.kill()
            raise AssertionError(f"{run.log_path} ended with {code}:\n"
                                 + pathlib.Path(run.log_path).read_text()[-5000:])
