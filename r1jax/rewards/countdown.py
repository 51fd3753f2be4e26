"""Verifiers for the synthetic Countdown and arithmetic tasks.

Countdown: given numbers and a target, write an expression with + - * / and
parentheses that uses each given number at most once and equals the target,
e.g. numbers [25, 5, 3, 1], target 61: "(25 - 5) * 3 + 1".

The expression is untrusted model output, so it is never `eval`ed: `ast` parses
it and only integer literals, the four binary operators and parentheses are
accepted. Arithmetic is exact (Fraction), so 7 / 2 * 2 is 7, not 7.000000001.
"""
from __future__ import annotations

import ast
import operator
from collections import Counter
from fractions import Fraction
from typing import Optional, Sequence

from r1jax.rewards.extraction import extract_final_answer, extract_tag
from r1jax.rewards.math import parse_exact_number
from r1jax.rewards.registry import register_reward

# Any honest Countdown expression is short; longer input is rejected before
# parsing (deeply nested parentheses would otherwise exhaust the parser).
MAX_EXPRESSION_CHARS = 300
# Bounds intermediate values: no power operator exists, but 300 characters of
# "999*999*..." still builds a large integer; this keeps every step cheap.
_MAX_MAGNITUDE_BITS = 256

_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class ExpressionError(ValueError):
    """The text is not an expression of integers, + - * / and parentheses."""


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integer literals it uses.

    Raises ExpressionError for anything outside the whitelist (names, calls,
    unary minus, floats, `**`, …) and for division by zero.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise ExpressionError(f"not a valid expression: {error}") from None
    literals: list[int] = []
    return _evaluate(tree.body, literals), literals


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate(node.left, literals)
        right = _evaluate(node.right, literals)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ExpressionError("division by zero")
        value = _OPERATORS[type(node.op)](left, right)
        if max(abs(value.numerator), value.denominator).bit_length() > _MAX_MAGNITUDE_BITS:
            raise ExpressionError("intermediate value too large")
        return value
    raise ExpressionError(f"{type(node).__name__} is not allowed; use integers, + - * / and parentheses")


def countdown_reward(
    completion: str,
    numbers: Sequence[int],
    target: int,
    *,
    use_all_numbers: bool = False,
    answer_tag: str = "answer",
    **_,
) -> float:
    """1.0 if the answer expression reaches `target` using each of `numbers` at
    most once (exactly once with `use_all_numbers`), else 0.0.

    The expression is the content of the last `<answer>` tag, or the last
    non-empty line when there is no tag; a trailing "= 61" is ignored.
    """
    numbers = _as_int_list(numbers, "numbers")
    target = _as_int(target, "target")
    expression = extract_tag(completion, answer_tag)
    if expression is None:
        lines = [line for line in completion[-MAX_EXPRESSION_CHARS * 2:].splitlines() if line.strip()]
        expression = lines[-1] if lines else ""
    expression = expression.split("=", 1)[0].strip()
    try:
        value, used = evaluate_expression(expression)
    except ExpressionError:
        return 0.0
    available, requested = Counter(numbers), Counter(used)
    if requested - available:  # a number not given, or given fewer times
        return 0.0
    if use_all_numbers and requested != available:
        return 0.0
    return float(value == target)


def arithmetic_reward(completion: str, answer: str, *, answer_tag: str = "answer", **_) -> Optional[float]:
    """1.0 if the final answer is exactly the number `answer` ("7", "-3/4",
    "2.5" and "5/2" are equal), 0.0 if not, None if `answer` is not a number."""
    gold = parse_exact_number(str(answer))
    if gold is None:
        return None
    predicted = final_number(completion, answer_tag)
    return float(predicted is not None and parse_exact_number(predicted) == gold)


def final_number(completion: str, answer_tag: str = "answer") -> Optional[str]:
    """The final answer as `arithmetic_reward` reads it: `extract_final_answer`, else the last non-empty
    line; then what follows its last "=". None when that is not a number."""
    predicted = extract_final_answer(completion, answer_tag)
    if predicted is None:
        lines = [line for line in completion[-200:].splitlines() if line.strip()]
        predicted = lines[-1].strip() if lines else ""
    predicted = predicted.split("=")[-1].strip()
    return predicted if parse_exact_number(predicted) is not None else None


def _as_int(value, field: str) -> int:
    # __index__ admits numpy integers and rejects floats and strings.
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"countdown field {field!r} must be an integer, got {value!r}")
    return operator.index(value)


def _as_int_list(values, field: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"countdown field {field!r} must be a list of integers, got {values!r}")
    return [_as_int(value, field) for value in values]


register_reward("countdown")(countdown_reward)
register_reward("arithmetic")(arithmetic_reward)
