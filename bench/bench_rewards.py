"""Reward evaluator throughput: math completions/s, code samples/s, sandbox overhead.

    python bench/bench_rewards.py [--workers 2] [--math-batch 1024] [--code-batch 64]

Goals (2 cores): >= 1,000 math completions/s, >= 20 simple code samples/s.

Each rate is printed twice: wall clock (what this run saw, on a machine that may
be shared: the load average is printed first), and CPU-bound, i.e. items per
CPU-second of the evaluator, its workers and their sandboxes, times the number
of workers: what an otherwise idle machine with that many cores would reach.

Math batches mimic GRPO: 128 prompts x 8 completions, each with ~600 characters of
reasoning and a final answer that is right about half the time, written in varied
forms (boxed, answer tag, "the answer is", decimals, fractions). Every batch has
fresh golds, so caches help only as they would in training (within a group).
Three mixes: GSM8K-like integer answers; a MATH-like mix (60% integers, 20%
fractions, 20% symbolic: roots, intervals, polynomials); and symbolic answers
only, every one of which goes through math-verify and sympy (the worst case).

A simple code sample is a short stdin/stdout program checked against 3 tests,
i.e. 3 sandboxed runs.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

from r1jax.rewards import RewardEvaluator, run_sandboxed, sandbox_capabilities

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
    """CPU time of a process plus that of its reaped children (utime..cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def pool_cpu_seconds(evaluator) -> float:
    """CPU seconds used so far by this process, the evaluator's workers and the
    workers' sandbox launchers (whose counts include the sandboxed programs)."""
    usage = os.times()
    total = usage.user + usage.system
    for worker in evaluator._pool._workers:
        pid = worker.process.pid
        total += _process_cpu_seconds(pid)
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                total += sum(_process_cpu_seconds(int(child)) for child in children.read().split())
    return total


REASONING = ("Let us think step by step. First we read the problem carefully and write down "
             "what is known. Then we combine the quantities, checking each step. ") * 4
GROUP_SIZE = 8


def integer_batch(rng: random.Random, size: int):
    completions, examples = [], []
    for _ in range(size // GROUP_SIZE):
        gold = rng.randint(1, 100_000)
        for _ in range(GROUP_SIZE):
            value = gold if rng.random() < 0.5 else gold + rng.randint(1, 50)
            answer = rng.choice([f"\\boxed{{{value}}}", f"{value:,}", f"{value}.0", str(value)])
            ending = rng.choice([f"<answer>{answer}</answer>", f"The answer is {answer}."])
            completions.append(f"<think>{REASONING}</think>{ending}")
            examples.append({"question": "How many?", "answer": str(gold)})
    return completions, examples


def _symbolic_gold(rng: random.Random):
    """(gold, a right answer in another form, a wrong answer) that need sympy."""
    a, b = rng.randint(2, 500), rng.randint(2, 500)
    kind = rng.randrange(3)
    if kind == 0:
        return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"{a + 1}\\sqrt{{{b}}}"
    if kind == 1:
        return f"[{a}, {a + b})", f"[{a},{a + b})", f"({a}, {a + b})"
    return f"x^{{2}} + {a}x", f"x(x + {a})", f"x^2 + {a + 1}x"


def _fraction_gold(rng: random.Random):
    a, b = rng.randint(1, 500), rng.randint(2, 500)
    return f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + 1}}}{{{b}}}"


def _integer_gold(rng: random.Random):
    a = rng.randint(-1000, 1000)
    return str(a), f"{a}", str(a + rng.randint(1, 9))


def latex_batch(rng: random.Random, size: int, symbolic_share: float = 0.2):
    """MATH-like: 60% integer, 20% fraction, 20% symbolic answers (by default)."""
    completions, examples = [], []
    for _ in range(size // GROUP_SIZE):
        draw = rng.random()
        if draw < symbolic_share:
            gold, right, wrong = _symbolic_gold(rng)
        elif draw < symbolic_share + (1 - symbolic_share) / 4:
            gold, right, wrong = _fraction_gold(rng)
        else:
            gold, right, wrong = _integer_gold(rng)
        for _ in range(GROUP_SIZE):
            answer = right if rng.random() < 0.5 else wrong
            completions.append(f"<think>{REASONING}</think><answer>\\boxed{{{answer}}}</answer>")
            examples.append({"question": "Compute it.", "answer": gold})
    return completions, examples


def symbolic_batch(rng: random.Random, size: int):
    return latex_batch(rng, size, symbolic_share=1.0)


def bench_math(workers: int, batch: int, batches: int):
    rng = random.Random(0)
    with RewardEvaluator({"accuracy": 1.0, "format": 0.5}, num_workers=workers) as evaluator:
        evaluator.evaluate(*symbolic_batch(rng, 64))  # warm up math-verify's parser in each worker
        mixes = (("integer (GSM8K-like)", integer_batch), ("MATH-like mix", latex_batch),
                 ("all symbolic (sympy)", symbolic_batch))
        for name, make in mixes:
            rates, cpu_rates = [], []
            for _ in range(batches):
                completions, examples = make(rng, batch)
                cpu_before = pool_cpu_seconds(evaluator)
                result = evaluator.evaluate(completions, examples)
                cpu_seconds = pool_cpu_seconds(evaluator) - cpu_before
                rates.append(len(completions) / result.metrics["rewards/seconds"])
                cpu_rates.append(len(completions) / (cpu_seconds / workers))
                assert result.metrics["rewards/errors"] == result.metrics["rewards/timeouts"] == 0
            print(f"math {name:22s}: {statistics.median(rates):8.0f} completions/s wall, "
                  f"{statistics.median(cpu_rates):8.0f}/s CPU-bound on {workers} idle cores "
                  f"(median of {batches} batches of {batch}; accuracy {result.metrics['rewards/accuracy']:.2f})")


CODE_PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def bench_code(workers: int, batch: int):
    rng = random.Random(1)
    completions, examples = [], []
    for _ in range(batch):
        tests = []
        for _ in range(3):
            a, b = rng.randint(-100, 100), rng.randint(-100, 100)
            tests.append({"input": f"{a} {b}\n", "output": f"{a + b}\n"})
        completions.append(CODE_PROGRAM)
        examples.append({"tests": tests})
    with RewardEvaluator({"code": 1.0}, num_workers=workers, timeout=60.0) as evaluator:
        evaluator.evaluate(completions[:workers], examples[:workers])  # warm up
        cpu_before = pool_cpu_seconds(evaluator)
        result = evaluator.evaluate(completions, examples)
        cpu_seconds = pool_cpu_seconds(evaluator) - cpu_before
    seconds = result.metrics["rewards/seconds"]
    assert result.metrics["rewards/code"] == 1.0, result.metrics
    print(f"code (3 stdin/stdout tests): {batch / seconds:8.1f} samples/s wall, "
          f"{batch / (cpu_seconds / workers):8.1f}/s CPU-bound on {workers} idle cores "
          f"({3 * batch / seconds:.0f} sandboxed runs/s wall; batch of {batch})")


def bench_sandbox_overhead(runs: int):
    python = os.path.realpath(sys.executable)
    argv = [python, "-I", "-S", "-B", "-c", "pass"]
    exposed = (os.path.dirname(python), os.path.realpath(sys.base_prefix))
    plain, sandboxed = [], []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env={}, check=True)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert run_sandboxed(argv, exposed_paths=exposed).ok
        sandboxed.append(time.perf_counter() - start)
    plain_ms, sandboxed_ms = statistics.median(plain) * 1e3, statistics.median(sandboxed) * 1e3
    print(f"sandboxed run of `python -c pass`: {sandboxed_ms:.1f} ms vs {plain_ms:.1f} ms plain "
          f"subprocess -> overhead {sandboxed_ms - plain_ms:.1f} ms per run (median of {runs})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-batch", type=int, default=1024)
    parser.add_argument("--math-batches", type=int, default=5)
    parser.add_argument("--code-batch", type=int, default=64)
    parser.add_argument("--sandbox-runs", type=int, default=30)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.2f} workers={args.workers} "
          f"sandbox={sandbox_capabilities()}")
    bench_math(args.workers, args.math_batch, args.math_batches)
    bench_code(args.workers, args.code_batch)
    bench_sandbox_overhead(args.sandbox_runs)


if __name__ == "__main__":
    main()
