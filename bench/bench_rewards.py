"""Reward evaluator throughput: math completions/s, code samples/s, sandbox overhead, and
whether a GRPO step's code rewards stall the step.

    python bench/bench_rewards.py [--workers 2] [--math-batch 1024] [--code-batch 64]
    python bench/bench_rewards.py --only code-step   # the GRPO code step alone (about 2 minutes)

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

The GRPO code step (`bench_code_step`) is one step's worth of completions of the generated
`python_functions` problems (8 prompts x 8 generations by default), written as a chat model
answers: whole fenced functions right and wrong, bare bodies, raises, syntax errors, cut-off
fences, chatty ones. They are scored with `code_function` (1 sandboxed run) and
`code_function_fraction` (one run per assert of `check`), as `experiments.grpo_smollm2_code`
trains, by 1 worker (the baseline) and by --workers. Then the step's own work that the
trainer overlaps with scoring (`GRPO.make_batches`: submit the rewards, compute the reference
log-probs, then wait): the reference forward of a SmolLM2-135M-shaped model (random weights)
on the same rows, timed alone, the rewards alone, and both as the trainer runs them. "stall"
is what the overlapped pair takes beyond the forward alone: the time the step waits on rewards.
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
from r1jax.rewards.code_reward import check_tests

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


def code_step_batch(prompts: int, generations: int):
    """One GRPO step's completions of `prompts` generated problems, `generations` each: half of them
    right (`RIGHT_KINDS`), as a chat model writes them; and the sandboxed runs they cost."""
    from r1jax.tasks import get_task  # the task registry is the data side: imported where it is used

    problems = get_task("python_functions", train_size=prompts).load("train")
    completions, examples, runs = [], [], 0
    for problem in problems:
        signature = problem["code_prompt"].splitlines()[0] + "\n"
        short = signature + problem["canonical_solution"]
        whole = problem["code_prompt"] + problem["canonical_solution"]
        kinds = {
            "right, fenced": f"Here is the function:\n```python\n{short}```\nIt loops once over the input.",
            "right, fenced, prints an example": f"```python\n{short}\nprint({problem['entry_point']})\n```",
            "right, a bare body": problem["canonical_solution"],
            "right, chatty": f"Sure! Let me explain.\n\n```python\n{whole}```\n\nThis works because ... ",
            "wrong, returns None": f"```python\n{signature}    return None\n```",
            "raises": f"```python\n{signature}    raise NotImplementedError\n```",
            "syntax error": f"```python\n{signature}    return (\n```",
            "cut off": f"```python\n{short[:len(short) // 2]}",
        }
        for index in range(generations):
            completions.append(list(kinds.values())[index % len(kinds)])
            examples.append(problem)
            runs += 1 + len(check_tests(problem["test"], problem["entry_point"], per_assert=True))
    return completions, examples, runs


RIGHT_KINDS = 4  # of the 8 kinds above: the expected accuracy of a step of 8 generations is 0.5
CODE_STEP_REWARDS = {"code_function": 1.0, "code_function_fraction": 1.0}


def bench_code_step(workers: int, prompts: int, generations: int, repeats: int):
    completions, examples, runs = code_step_batch(prompts, generations)
    batch = len(completions)
    scoring = {}
    for count in sorted({1, workers}):
        with RewardEvaluator(CODE_STEP_REWARDS, num_workers=count, timeout=60.0) as evaluator:
            evaluator.evaluate(completions[:count], examples[:count])  # warm up: workers start, sandbox probed
            seconds = []
            for _ in range(repeats):
                result = evaluator.evaluate(completions, examples)
                assert result.metrics["rewards/errors"] == result.metrics["rewards/timeouts"] == 0, result.metrics
                if generations % 8 == 0:  # every kind equally often: a wrong verdict shows here
                    assert result.metrics["rewards/code_function"] == RIGHT_KINDS / 8, result.metrics
                seconds.append(result.metrics["rewards/seconds"])
        scoring[count] = statistics.median(seconds)
        print(f"code GRPO step ({prompts} x {generations} = {batch} completions, {runs} sandboxed runs), "
              f"{count} worker{'s' if count > 1 else ''}: {scoring[count]:.2f} s, {batch / scoring[count]:.1f} "
              f"samples/s, {runs / scoring[count]:.0f} runs/s, {scoring[count] / runs * 1e3:.1f} ms of wall time "
              f"per run (median of {repeats})")
    if workers > 1:
        print(f"  {workers} workers vs 1: {scoring[1] / scoring[workers]:.2f}x")
    overlap_with_step(workers, completions, examples, generations, repeats)


def overlap_with_step(workers: int, completions, examples, generations: int, repeats: int,
                      prompt_tokens: int = 192, completion_tokens: int = 128):
    """The reference forward alone, the rewards alone, and both as `GRPO.make_batches` runs them."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from bench_train_step import SIZES  # this folder's: SmolLM2-135M's shape
    from r1jax.models import Transformer
    from r1jax.sharding import make_mesh
    from r1jax.train import create_train_state, make_logprobs_fn

    config, rows = SIZES["135m"], len(completions)
    mesh = make_mesh({"data": -1})
    state = create_train_state(lambda: Transformer(config, rngs=nnx.Rngs(0)), optax.identity(), mesh)
    logprobs = make_logprobs_fn(state, mesh, rows_per_group=generations)
    rng = np.random.default_rng(0)
    prompts = np.repeat(rng.integers(0, config.vocab_size, (rows // generations, prompt_tokens)), generations, 0)
    tokens = np.concatenate([prompts, rng.integers(0, config.vocab_size, (rows, completion_tokens))], 1)
    tokens, mask = tokens.astype(np.int32), np.ones(tokens.shape, np.int32)

    def forward():
        jax.block_until_ready(logprobs(state.params, tokens, mask, completion_columns=completion_tokens))

    forward()  # compiles
    timed = {"forward": [], "rewards": [], "overlapped": []}
    with RewardEvaluator(CODE_STEP_REWARDS, num_workers=workers, timeout=60.0) as evaluator:
        evaluator.evaluate(completions[:workers], examples[:workers])
        for _ in range(repeats):  # interleaved, so that a change in the machine's load hits all three
            start = time.perf_counter()
            forward()
            timed["forward"].append(time.perf_counter() - start)
            start = time.perf_counter()
            evaluator.evaluate(completions, examples)
            timed["rewards"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pending = evaluator.submit(completions, examples)  # as the trainer: rewards first...
            forward()  # ...the device's log-probs meanwhile...
            pending.result()  # ...then wait for the rewards
            timed["overlapped"].append(time.perf_counter() - start)
    f, r, o = (statistics.median(timed[key]) for key in ("forward", "rewards", "overlapped"))
    print(f"  overlap with the step ({rows} rows of {prompt_tokens} + {completion_tokens} tokens, a 135M "
          f"model's reference log-probs, {workers} workers; median of {repeats}): forward {f:.2f} s, "
          f"rewards {r:.2f} s, both as the trainer runs them {o:.2f} s vs {f + r:.2f} s one after the other; "
          f"the step waits {max(o - f, 0.0):.2f} s on the rewards ({max(o - f, 0.0) / o:.0%} of the pair)")


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
    parser.add_argument("--code-prompts", type=int, default=8, help="prompts of the GRPO code step")
    parser.add_argument("--code-generations", type=int, default=8, help="completions per prompt of that step")
    parser.add_argument("--code-repeats", type=int, default=3)
    parser.add_argument("--only", choices=("math", "code", "code-step", "sandbox"), action="append",
                        help="run only these parts (repeatable); default: all")
    args = parser.parse_args()
    parts = set(args.only or ("math", "code", "code-step", "sandbox"))
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.2f} workers={args.workers} "
          f"sandbox={sandbox_capabilities()}")
    if "math" in parts:
        bench_math(args.workers, args.math_batch, args.math_batches)
    if "code" in parts:
        bench_code(args.workers, args.code_batch)
    if "code-step" in parts:
        bench_code_step(args.workers, args.code_prompts, args.code_generations, args.code_repeats)
    if "sandbox" in parts:
        bench_sandbox_overhead(args.sandbox_runs)


if __name__ == "__main__":
    main()
