"""Countdown (as in TinyZero): reach a target from a few numbers with + - * /.

A problem is made backwards, so it always has an answer: sample the numbers,
combine them pairwise in a random order with random operations until one
value is left, and use that value as the target. Every intermediate value is
kept an integer in [1, max_target] (subtraction only from a larger value,
division only when exact, no detour through large products), so the stored
`solution` reads like a person's and few draws are wasted.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.synthetic import Example, SyntheticConfig, SyntheticTaskBuilder

_MAX_ATTEMPTS = 10_000


@dataclasses.dataclass(eq=False)
class CountdownConfig(SyntheticConfig):
    """Difficulty: how many numbers, how large they and the target may be."""

    num_numbers: int = 3
    max_number: int = 99
    max_target: int = 100


def _below(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in [0, n); rng.random() costs a fifth of rng.integers()."""
    return int(rng.random() * n)


def random_equation(rng: np.random.Generator, numbers: list[int],
                    max_value: int) -> tuple[int, str] | None:
    """Combine all `numbers` once each into (value, expression) at random.

    Every intermediate value is an integer in [1, max_value]; None when a
    drawn pair of operands allows no such operation.
    """
    # (value, text, is_compound); compound operands get parentheses when reused.
    pool = [(n, str(n), False) for n in numbers]
    while len(pool) > 1:
        i = _below(rng, len(pool))
        j = _below(rng, len(pool) - 1)
        j += j >= i  # an ordered pair of distinct positions
        (a, a_text, a_compound), (b, b_text, b_compound) = pool[i], pool[j]
        results = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if a % b == 0 else 0}
        operations = [op for op, value in results.items() if 1 <= value <= max_value]
        if not operations:
            return None
        op = operations[_below(rng, len(operations))]
        text = (f"({a_text})" if a_compound else a_text) + f" {op} " + (
            f"({b_text})" if b_compound else b_text)
        pool = [item for k, item in enumerate(pool) if k not in (i, j)]
        pool.append((results[op], text, True))
    value, text, _ = pool[0]
    return value, text


def sample_countdown(rng: np.random.Generator, *, num_numbers: int, max_number: int,
                     max_target: int) -> Example:
    """One problem: {'numbers', 'target', 'solution'} with 1 <= target <= max_target."""
    for _ in range(_MAX_ATTEMPTS):
        numbers = [int(n) for n in rng.integers(1, max_number + 1, size=num_numbers)]
        equation = random_equation(rng, numbers, max_value=max_target)
        if equation is not None:
            target, solution = equation
            return {"numbers": numbers, "target": target, "solution": solution}
    raise ValueError(
        f"No countdown problem with a target <= {max_target} found in {_MAX_ATTEMPTS} "
        f"tries from {num_numbers} numbers up to {max_number}; raise max_target.")


class Countdown(SyntheticTaskBuilder):
    """Countdown: numbers, a target reachable with + - * / using each number at
    most once, and one valid solution expression."""

    BUILDER_CONFIGS = [
        CountdownConfig(name="3_numbers", description="3 numbers in 1..99, target <= 100",
                        num_numbers=3, train_size=20_000),
        CountdownConfig(name="4_numbers", description="4 numbers in 1..99, target <= 100",
                        num_numbers=4, train_size=20_000),
    ]

    def _features(self):
        return {
            "numbers": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "target": np.int32,
            "solution": tfds.features.Text(),
        }

    def _sample(self, rng):
        config = self.builder_config
        return sample_countdown(rng, num_numbers=config.num_numbers,
                                max_number=config.max_number, max_target=config.max_target)

    def _problem_key(self, example):
        return tuple(sorted(example["numbers"])), example["target"]
