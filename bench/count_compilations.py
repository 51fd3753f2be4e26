r"""Run an experiment and record every XLA compilation with the training step it happened in.

    python bench/count_compilations.py --watch runs/ds/grpo/metrics.jsonl --out runs/ds/compilations.jsonl \
        experiments.r1_zero_tiny --config.workdir=runs/ds --config.grpo.dynamic_sampling=True

The experiment runs in this process (`runpy`), with JAX's compile listener (the one the tests
use) registered first. Each compilation is one JSON line: the jitted function's name, its
compile seconds, and `logged_steps`, the rows of the watched metrics.jsonl at that moment. The
loop logs a step's row at its end, so a compilation with `logged_steps = n` happened in step
n + 1 of that run (or, n being its last step, in what runs after it); rows in the file before
the run started are counted too, so watch a fresh workdir. Then it prints, per step of the
watched run, how many compilations it had.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import runpy
import sys
import time

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def rows(path: pathlib.Path) -> int:
    try:
        return sum(1 for _ in path.open())
    except FileNotFoundError:
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watch", required=True, type=pathlib.Path, help="the metrics.jsonl of the run to watch")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="one JSON line per compilation")
    parser.add_argument("module", help="the experiment module, e.g. experiments.r1_zero_tiny")
    args, rest = parser.parse_known_args()
    import jax

    started = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.open("w")
    steps = collections.Counter()

    def listener(event, duration, **kwargs):
        if event != COMPILE_EVENT:
            return
        logged = rows(args.watch)
        steps[logged + 1] += 1
        out.write(json.dumps({"fun_name": kwargs.get("fun_name"), "seconds": round(duration, 3),
                              "logged_steps": logged, "wall": round(time.time() - started, 1)}) + "\n")
        out.flush()

    jax.monitoring.register_event_duration_secs_listener(listener)
    sys.argv = [args.module, *rest]
    try:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_status:
        if exit_status.code not in (0, None):
            raise
    finally:
        out.close()
        watched = rows(args.watch)
        # compilations before the watched run's first row fall in its step 1 (and in the stages before it)
        print(json.dumps({"watched_steps": watched, "compilations_by_step": {
            f"step {s}" if s <= watched else "after the last step": n for s, n in sorted(steps.items())}}))


if __name__ == "__main__":
    main()
