"""A synthetic pretraining corpus that makes a tiny stand-in for a pretrained base model.

R1-Zero starts from a base model that can already solve some problems, sometimes, in
no fixed format. On CPU we cannot pretrain a real one, so we imitate what matters: the
corpus shows arithmetic problems in the R1-Zero prompt followed by step-by-step
solutions that are right only some of the time (`error_rate`: one step is off by a
little, and the error carries to the answer) and that use the `<think>/<answer>`
format only some of the time (`tagged_rate`, the rest end with "the answer is N").
A model pretrained on it knows the skill but samples noisy, unformatted answers: the
situation where GRPO's rule-based rewards have something to sharpen.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from r1jax.data.prompts import format_prompt, question_text

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def noisy_solution(expression: str, rng: np.random.Generator, *, error_rate: float,
                   tagged_rate: float) -> tuple[str, bool]:
    """(completion text, whether its final answer is correct) for one expression.

    The solution evaluates the expression innermost first, one "a op b = c" step at a
    time. With probability `error_rate` one step's result is off by 1 to 3 and later
    steps use the wrong value, as a careless solver would.
    """
    tree = ast.parse(expression, mode="eval").body
    num_steps = sum(isinstance(node, ast.BinOp) for node in ast.walk(tree))
    wrong_step = int(rng.integers(max(num_steps, 1))) if rng.random() < error_rate else -1
    lines: list[str] = []

    def visit(node) -> tuple[int, int]:  # (true value, value as the solver computed it)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value, node.value
        if not (isinstance(node, ast.BinOp) and type(node.op) in _OPS):
            raise ValueError(f"not an integer + - * expression: {expression!r}")
        (a, shown_a), (b, shown_b) = visit(node.left), visit(node.right)
        op = _OPS[type(node.op)]
        shown = _apply(op, shown_a, shown_b)
        if len(lines) == wrong_step:
            shown += int(rng.choice([-3, -2, -1, 1, 2, 3]))
        lines.append(f"{shown_a} {op} {shown_b} = {shown}")
        return _apply(op, a, b), shown

    value, answer = visit(tree)
    reasoning = " , ".join(lines)
    if rng.random() < tagged_rate:
        text = f" <think> {reasoning} </think> <answer> {answer} </answer>"
    else:
        text = f" {reasoning} . the answer is {answer} ."
    return text, answer == value


def base_corpus(examples: Iterable[Mapping[str, Any]], rng: np.random.Generator, *,
                error_rate: float = 0.5, tagged_rate: float = 0.4,
                template: str = "r1_zero") -> list[tuple[str, str]]:
    """(prompt, completion) pairs for arithmetic examples, each with a freshly drawn solution."""
    pairs = []
    for example in examples:
        prompt = format_prompt(question_text(example, "arithmetic"), template)
        completion, _ = noisy_solution(example["expression"], rng, error_rate=error_rate,
                                       tagged_rate=tagged_rate)
        pairs.append((prompt, completion))
    return pairs
