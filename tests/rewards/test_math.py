"""Answer extraction and math accuracy (math-verify and the exact fallback)."""
import time
from fractions import Fraction

import pytest

from r1jax.rewards import (extract_boxed, extract_final_answer, extract_tag, fallback_equal,
                           get_reward, math_accuracy, parse_exact_number)
from r1jax.rewards import math as math_module

# (text, last boxed content)
BOXED = [
    (r"so \boxed{42}", "42"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\boxed{5}}", "5"),                         # nested: innermost
    (r"\boxed{1} then \boxed{2}", "2"),                  # last one
    (r"\boxed{3} then \boxed{unclosed", "3"),            # malformed last is skipped
    (r"\boxed 7.", "7"),                                 # brace-less form
    (r"\fbox{9}", "9"),
    (r"\boxed{", None),
    ("no box", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", BOXED)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_tag_takes_last_complete_block():
    assert extract_tag("<answer>1</answer><answer>2</answer>", "answer") == "2"
    assert extract_tag("<answer>1</answer><answer>2", "answer") == "1"
    assert extract_tag("<answer>unclosed", "answer") is None
    assert extract_tag("</answer>", "answer") is None


# (completion, final answer)
FINAL = [
    ("<think>the answer is 3</think><answer>4</answer>", "4"),       # tag beats phrase
    (r"<answer>so \boxed{4}</answer>", "4"),                        # box inside the tag
    (r"\boxed{5} <answer>6</answer>", "6"),                         # tag beats earlier box
    ("Hence the answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("THE ANSWER IS 3.5. Done", "3.5"),
    ("The answer is: **12**", "12"),
    ("<answer> 7. </answer>", "7"),
    ("nothing final here", None),
    ("<answer></answer>", None),
]


@pytest.mark.parametrize("completion, expected", FINAL)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


# (completion, gold, reward)
ACCURACY = [
    ("<answer>72</answer>", "72", 1.0),
    ("<answer>71</answer>", "72", 0.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),                     # fraction vs decimal
    (r"\boxed{\dfrac{2}{4}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\boxed{5}}", "5", 1.0),                         # nested boxes
    ("The answer is 1,000.", "1000", 1.0),                    # thousands separator
    ("<answer>3.50</answer>", "3.5", 1.0),                    # decimals, exactly
    ("<answer>72.000001</answer>", "72", 0.0),
    ("The answer is $50\\%$.", r"\frac{1}{2}", 1.0),          # percentage
    (r"\boxed{\{1, 2\}}", r"\{2, 1\}", 1.0),                  # sets
    (r"\boxed{[1, 2)}", "[1,2)", 1.0),                        # intervals
    (r"\boxed{(1, 2)}", "[1,2)", 0.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),                 # symbolic equality
    (r"\boxed{x = 5}", "5", 1.0),
    (r"<think>the answer is 3</think><answer>4</answer>", "3", 0.0),
    ("no final answer", "72", 0.0),
    ("", "72", 0.0),
    (r"\boxed{72", "72", 0.0),                                # unclosed box: no answer
    (r"\boxed{7} 😀 \u200b", "7", 1.0),                       # odd unicode around it
    (r"\boxed{\frac{2}{6}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\frac{2}{5}}", r"\frac{1}{3}", 0.0),
    (r"\boxed{0.333333}", r"\frac{1}{3}", 1.0),              # decimal vs fraction: math-verify rounds
]


@pytest.mark.parametrize("completion, gold, expected", ACCURACY)
def test_math_accuracy(completion, gold, expected):
    assert math_accuracy(completion, gold) == expected


@pytest.mark.parametrize("gold", ["", "   ", r"\frac{", "???", None])
def test_unparseable_gold_is_none_not_a_free_reward(gold):
    assert math_accuracy(r"\boxed{5}", gold) is None
    assert math_accuracy("", gold) is None


def test_registered_accuracy_reads_answer_field():
    accuracy = get_reward("accuracy")
    assert accuracy(r"\boxed{9}", answer="9", question="3*3?", extra=[1]) == 1.0
    assert accuracy(r"\boxed{9}", answer="") is None


def test_garbage_is_fast_and_wrong():
    garbage = "x" * 1_000_000 + r"\boxed{" * 2_000 + "<answer>" * 1_000 + "the answer is " * 100
    start = time.perf_counter()
    assert math_accuracy(garbage, "5") == 0.0
    assert math_accuracy(r"\boxed{" + "9" * 5_000 + "}", "5") == 0.0  # over MAX_ANSWER_CHARS
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("text, value", [
    ("-12", Fraction(-12)), ("1,234.5", Fraction(24690, 20)), ("3/4", Fraction(3, 4)),
    (r"\frac{3}{4}", Fraction(3, 4)), (r"-\dfrac{3}{4}", Fraction(-3, 4)), ("50%", Fraction(50)),
    (r"$0.25$", Fraction(1, 4)), ("1/0", None), ("x", None), ("1e5", None), ("", None),
])
def test_parse_exact_number(text, value):
    assert parse_exact_number(text) == value


@pytest.mark.parametrize("gold, predicted, equal", [
    (r"\frac{1}{2}", "0.5", True), ("1/2", r"\dfrac{1}{2}", True), (r"50\%", "50", True),
    (r"\text{Monday}", "Monday", True), ("x+1", r"x + 1", True), (r"\left(1,2\right)", "(1,2)", True),
    ("2", "3", False), ("x+1", "1+x", False), ("", "", False),
])
def test_fallback_equal(gold, predicted, equal):
    assert fallback_equal(gold, predicted) is equal


def test_fallback_without_math_verify(monkeypatch):
    monkeypatch.setattr(math_module, "_math_verify", lambda: None)
    assert math_accuracy(r"\boxed{\frac{1}{2}}", "0.5") == 1.0
    assert math_accuracy(r"\boxed{\text{B}}", r"\text{B}") == 1.0
    assert math_accuracy(r"\boxed{x}", "y") == 0.0
    assert math_accuracy("no answer", "y") == 0.0
    assert math_accuracy(r"\boxed{1}", " ") is None


def test_plain_numbers_never_reach_math_verify(monkeypatch):
    def unavailable():
        raise AssertionError("math-verify was called for plain numbers")
    monkeypatch.setattr(math_module, "_math_verify", unavailable)
    assert math_accuracy("<answer>1,000</answer>", "1000") == 1.0
    assert math_accuracy(r"\boxed{\dfrac{6}{8}}", "3/4") == 1.0
    assert math_accuracy(r"\boxed{-2.50}", "-2.5") == 1.0
    assert math_accuracy(r"\boxed{\frac{2}{5}}", r"\frac{1}{3}") == 0.0
    assert math_accuracy("<answer>71</answer>", "72") == 0.0
