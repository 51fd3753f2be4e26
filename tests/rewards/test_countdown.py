"""Countdown and arithmetic verifiers: safe parsing, number use, exact values."""
import time
from fractions import Fraction

import numpy as np
import pytest

from r1jax.rewards import (ExpressionError, arithmetic_reward, countdown_reward,
                           evaluate_expression, get_reward)

NUMBERS, TARGET = [25, 5, 3, 1], 61

# (completion, reward) for numbers [25, 5, 3, 1], target 61
CASES = [
    ("<answer>(25 - 5) * 3 + 1</answer>", 1.0),
    ("<think>try</think>\n<answer>\n(25-5)*3+1\n</answer>", 1.0),
    ("<answer>(25 - 5) * 3 + 1 = 61</answer>", 1.0),     # trailing "= target" ignored
    ("I think so.\n(25 - 5) * 3 + 1\n\n", 1.0),          # no tag: last non-empty line
    ("<answer>(25 - 5) * 3</answer>", 0.0),              # wrong value
    ("<answer>25 + 25 + 11</answer>", 0.0),              # 25 twice, 11 not given
    ("<answer>60 + 1</answer>", 0.0),                    # 60 not given
    ("<answer>(25 - 5) * 3 + 1 + 0</answer>", 0.0),      # 0 not given
    ("<answer>-(1 - 25 + 5) * 3 + 4</answer>", 0.0),     # unary minus not allowed
    ("<answer>(25 - 5) * 3 + 1.0</answer>", 0.0),        # floats not allowed
    ("<answer>__import__('os').system('true')</answer>", 0.0),
    ("<answer>61</answer>", 0.0),
    ("<answer>(25 - 5) * 3 + 1", 0.0),                   # unclosed tag: the last line is not an expression
    ("", 0.0),
    ("<answer></answer>", 0.0),
]


@pytest.mark.parametrize("completion, expected", CASES)
def test_countdown(completion, expected):
    assert countdown_reward(completion, NUMBERS, TARGET) == expected


def test_numbers_at_most_once_or_all_by_option():
    completion = "<answer>(25 - 5) * 3 + 1</answer>"
    assert countdown_reward(completion, [25, 5, 3, 1, 7], 61) == 1.0
    assert countdown_reward(completion, [25, 5, 3, 1, 7], 61, use_all_numbers=True) == 0.0
    assert countdown_reward("<answer>3 + 3</answer>", [3, 3, 9], 6) == 1.0  # repeated given number
    assert countdown_reward("<answer>3 + 3 + 3</answer>", [3, 3, 9], 9) == 0.0


def test_exact_fraction_arithmetic():
    assert countdown_reward("<answer>7 / 2 * 2</answer>", [7, 2, 2], 7) == 1.0
    assert countdown_reward("<answer>(1 / 3) * 3</answer>", [1, 3, 3], 1) == 1.0
    assert countdown_reward("<answer>1 / (5 - 5)</answer>", [1, 5, 5], 1) == 0.0  # division by zero
    assert evaluate_expression("(8 - 2) / 4") == (Fraction(3, 2), [8, 2, 4])


@pytest.mark.parametrize("expression", [
    "2 ** 10", "-5 + 6", "+5", "1.5 * 2", "abs(1)", "[1][0]", "x + 1", "1 // 2", "5 % 3",
    "True + 1", "'1' + '2'", "(" * 200 + "1" + ")" * 200, "1 +", "", "1; 2", "lambda: 1",
])
def test_evaluate_expression_rejects_everything_else(expression):
    with pytest.raises(ExpressionError):
        evaluate_expression(expression)


def test_huge_intermediate_values_are_rejected_quickly():
    start = time.perf_counter()
    with pytest.raises(ExpressionError, match="too large"):
        evaluate_expression("*".join(["99999999"] * 30))  # 10^240 > 2^256
    assert time.perf_counter() - start < 0.5


def test_garbage_and_unicode():
    start = time.perf_counter()
    assert countdown_reward("(" * 1_000_000, NUMBERS, TARGET) == 0.0
    assert countdown_reward("<answer>" * 100_000 + "x" * 500_000, NUMBERS, TARGET) == 0.0
    assert countdown_reward("<answer>（25 − 5）× 3 + 1</answer>", NUMBERS, TARGET) == 0.0
    assert time.perf_counter() - start < 2.0


def test_bad_example_fields_are_explained():
    with pytest.raises(TypeError, match="'numbers' must be a list of integers"):
        countdown_reward("<answer>1</answer>", "25,5,3,1", 61)
    with pytest.raises(TypeError, match="'target' must be an integer"):
        countdown_reward("<answer>1</answer>", NUMBERS, 61.5)
    assert countdown_reward("<answer>(25 - 5) * 3 + 1</answer>", np.array(NUMBERS), np.int64(61)) == 1.0


def test_registered_countdown_ignores_extra_fields():
    assert get_reward("countdown")("<answer>(25-5)*3+1</answer>", numbers=NUMBERS, target=TARGET,
                                   question="q", answer="61") == 1.0


@pytest.mark.parametrize("completion, answer, expected", [
    ("<answer>7</answer>", "7", 1.0),
    ("<answer>2.5</answer>", "5/2", 1.0),
    ("<answer>-3/4</answer>", "-0.75", 1.0),
    ("<answer>3</answer>", "4", 0.0),
    ("so 3 * 4 = 12", "12", 1.0),                       # last line, after "="
    ("no number", "12", 0.0),
    ("<answer>7</answer>", "seven", None),              # gold not a number
])
def test_arithmetic(completion, answer, expected):
    assert arithmetic_reward(completion, answer, expression="3 + 4") == expected
    assert get_reward("arithmetic")(completion, answer=answer, expression="3+4") == expected
