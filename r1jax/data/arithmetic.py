"""Multi-step integer arithmetic: evaluate "3 + 4 * (2 - 5)" exactly.

An expression is a random binary tree of + - * over integers in
[1, max_value] with `num_operations` inner nodes. It is written with the
parentheses that precedence requires and no others, and its value is
computed on the tree, not by parsing the text, so the two are independent.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.synthetic import Example, SyntheticConfig, SyntheticTaskBuilder

OPERATIONS = ("+", "-", "*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_ATOM = 3  # a number never needs parentheses


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(SyntheticConfig):
    """Difficulty: how many operations, how large the operands may be."""

    num_operations: int = 2
    max_value: int = 20
    operations: str = "+-*"  # the operators drawn from, e.g. "+" for sums only

    def generation_params(self):
        params = super().generation_params()
        if self.operations == "+-*":  # data generated before this option existed stays valid
            del params["operations"]
        return params


def random_expression(rng: np.random.Generator, num_operations: int,
                      max_value: int, operations: str = "+-*") -> tuple[int, str, int]:
    """(value, text, precedence of the outermost operation) of a random tree."""
    if num_operations == 0:
        value = int(rng.integers(1, max_value + 1))
        return value, str(value), _ATOM
    num_left = int(rng.integers(num_operations))  # operations in the left subtree
    left_value, left_text, left_precedence = random_expression(rng, num_left, max_value, operations)
    right_value, right_text, right_precedence = random_expression(
        rng, num_operations - 1 - num_left, max_value, operations)
    op = operations[int(rng.integers(len(operations)))]
    precedence = _PRECEDENCE[op]
    if left_precedence < precedence:
        left_text = f"({left_text})"
    # a - (b + c) keeps its parentheses; a + (b - c) and a * (b * c) need none.
    if right_precedence < precedence or (right_precedence == precedence and op == "-"):
        right_text = f"({right_text})"
    value = {"+": left_value + right_value, "-": left_value - right_value,
             "*": left_value * right_value}[op]
    return value, f"{left_text} {op} {right_text}", precedence


def sample_arithmetic(rng: np.random.Generator, *, num_operations: int,
                      max_value: int, operations: str = "+-*") -> Example:
    """One problem: {'expression', 'answer'} with the answer as an integer string."""
    if not operations or set(operations) - set(OPERATIONS):
        raise ValueError(f"operations={operations!r}; use a non-empty string of {''.join(OPERATIONS)}")
    value, text, _ = random_expression(rng, num_operations, max_value, operations)
    return {"expression": text, "answer": str(value)}


class Arithmetic(SyntheticTaskBuilder):
    """Multi-step arithmetic: an expression of + - * with parentheses and its
    exact integer value."""

    BUILDER_CONFIGS = [
        ArithmeticConfig(name="2_ops", description="2 operations on 1..20",
                         num_operations=2, max_value=20),
        ArithmeticConfig(name="4_ops", description="4 operations on 1..20",
                         num_operations=4, max_value=20),
        ArithmeticConfig(name="8_ops", description="8 operations on 1..50",
                         num_operations=8, max_value=50),
    ]

    def _features(self):
        return {"expression": tfds.features.Text(), "answer": tfds.features.Text()}

    def _sample(self, rng):
        config = self.builder_config
        return sample_arithmetic(rng, num_operations=config.num_operations,
                                 max_value=config.max_value, operations=config.operations)

    def _problem_key(self, example):
        return example["expression"]
