"""Math answer accuracy: extract the final answer, compare it with the gold one.

Comparison goes through the `math-verify` library (LaTeX, fractions, decimals,
percentages, sets, intervals, equations), with two shortcuts and one fallback:

  * plain numbers on both sides ("72", "-3.50", "1,000", "3/4", "\\frac{3}{4}")
    are compared exactly as fractions without touching sympy (most GSM8K and
    MATH answers, and the reason a worker scores thousands of completions per
    second); only a decimal against a fraction is left to math-verify's rounding;
  * parsed golds and verdicts are cached, since GRPO scores every prompt's gold
    against a whole group of completions;
  * without math-verify installed (or when it cannot parse the prediction) a
    small exact comparer takes over: numbers ("1/2", "\\frac{1}{2}", "0.5",
    "50%" read as 50) compare as fractions, anything else as normalised LaTeX
    strings. A warning says once that the fallback is in use.

A gold answer that cannot be parsed (math-verify finds no expression in it, or it
is empty) gives None: the sample cannot be judged and is left out of the
advantage. Giving it 1.0 (or 0.0) would reward (or punish) the model for a data
bug; the first is a known open-r1 bug.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
from fractions import Fraction
from typing import Optional

from r1jax.rewards.extraction import extract_final_answer
from r1jax.rewards.registry import register_reward

log = logging.getLogger(__name__)

# A longer "final answer" is the model rambling; judged wrong without parsing.
MAX_ANSWER_CHARS = 1_000
# math-verify's own per-parse/per-comparison limit (signal based, main thread only);
# the evaluator's worker timeout is the backstop everywhere else.
MATH_VERIFY_TIMEOUT_SECONDS = 5

_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_INTEGER_RATIO = re.compile(r"([+-]?\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\[!,;: ]|\\displaystyle|\s+|\$")
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def math_accuracy(completion: str, gold: str, *, answer_tag: str = "answer") -> Optional[float]:
    """1.0 if the completion's final answer equals `gold`, 0.0 if not, None if
    `gold` cannot be parsed.

    The final answer is taken from the answer tag, else the last `\\boxed{}`, else
    the text after "the answer is" (see `extract_final_answer`); a completion
    with none of these scores 0.0.
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    gold = _strip_answer(str(gold)) if gold is not None else ""
    if not gold:
        return None
    predicted = extract_final_answer(completion, answer_tag)
    if predicted is not None and len(predicted) <= MAX_ANSWER_CHARS:
        verdict = _compare_plain_numbers(gold, predicted)
        if verdict is not None:
            return verdict
    if _math_verify() is None:
        if not _normalize_latex(gold):
            return None
        if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
            return 0.0
        return float(fallback_equal(gold, predicted))
    if not _parse(gold).has_expression:
        return None
    if predicted is None or len(predicted) > MAX_ANSWER_CHARS:
        return 0.0
    return float(_verify(gold, predicted))


def _compare_plain_numbers(gold: str, predicted: str) -> Optional[float]:
    """1.0/0.0 when both sides are plain numbers (integers, decimals, a/b,
    \\frac{a}{b}) and exact arithmetic settles it; None to defer to math-verify.

    Equal values are equal. Unequal values are unequal unless a decimal meets a
    ratio ("0.333" vs "1/3"): math-verify rounds there, so it decides.
    Percentages are left to math-verify, which reads "50%" as both 50 and 0.5.
    """
    if "%" in gold or "%" in predicted:
        return None
    gold_number = parse_exact_number(gold)
    if gold_number is None:
        return None
    predicted_number = parse_exact_number(predicted)
    if predicted_number is None:
        return None
    if gold_number == predicted_number:
        return 1.0
    if _is_ratio(gold) and "." in predicted or _is_ratio(predicted) and "." in gold:
        return None
    return 0.0


def _is_ratio(text: str) -> bool:
    return "/" in text or "frac" in text


def fallback_equal(gold: str, predicted: str) -> bool:
    """Exact comparison used without math-verify: numbers as fractions, else
    normalised LaTeX strings ("\\dfrac"→"\\frac", no spaces, `\\left`, `$`, …)."""
    gold_number, predicted_number = parse_exact_number(gold), parse_exact_number(predicted)
    if gold_number is not None and predicted_number is not None:
        return gold_number == predicted_number
    normalized_gold = _normalize_latex(gold)
    return bool(normalized_gold) and normalized_gold == _normalize_latex(predicted)


def parse_exact_number(text: str) -> Optional[Fraction]:
    """"-12", "1,234.5", "3/4", "\\frac{3}{4}", "-\\dfrac{3}{4}", "50%" → Fraction,
    anything else → None. A percent sign is dropped ("50%" → 50), matching how
    GSM8K-style golds write percentages."""
    text = _normalize_latex(text).removesuffix("\\%").removesuffix("%")
    try:
        if _DECIMAL.fullmatch(text):
            return Fraction(text.replace(",", ""))
        match = _INTEGER_RATIO.fullmatch(text) or _LATEX_FRACTION.fullmatch(text)
        if match is None:
            return None
        *sign, numerator, denominator = match.groups()
        value = Fraction(int(numerator), int(denominator))
        return -value if sign == ["-"] else value
    except (ValueError, ZeroDivisionError):
        return None


def _strip_answer(text: str) -> str:
    return text.strip().removesuffix(".").strip()


def _normalize_latex(text: str) -> str:
    text = _LATEX_TEXT.sub(r"\1", text)
    text = _LATEX_NOISE.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("^\\circ", "").replace("^{\\circ}", "")
    return text.removesuffix(".")


@functools.lru_cache(maxsize=None)
def _math_verify():
    """The math_verify module, or None (with one warning) if it is not installed."""
    try:
        import math_verify
    except ImportError:
        log.warning("math-verify is not installed (pip install math-verify); "
                    "math_accuracy falls back to exact number/string comparison")
        return None
    return math_verify


def _timeout_seconds() -> Optional[int]:
    # math-verify times out with signal.alarm, which only works in the main thread.
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_SECONDS
    return None


class _Parsed:
    __slots__ = ("items", "has_expression")

    def __init__(self, items, has_expression):
        self.items = items
        self.has_expression = has_expression


@functools.lru_cache(maxsize=16_384)
def _parse(text: str) -> _Parsed:
    math_verify = _math_verify()
    latex = text if "$" in text else f"${text}$"
    items = math_verify.parse(latex, parsing_timeout=_timeout_seconds())
    import sympy  # already imported by math_verify
    has_expression = any(isinstance(item, (sympy.Basic, sympy.MatrixBase)) for item in items)
    return _Parsed(items, has_expression)


@functools.lru_cache(maxsize=65_536)
def _verify(gold: str, predicted: str) -> bool:
    parsed = _parse(predicted)
    if not parsed.items:
        return fallback_equal(gold, predicted)
    return bool(_math_verify().verify(_parse(gold).items, parsed.items,
                                      timeout_seconds=_timeout_seconds()))


@register_reward("accuracy")
def accuracy_reward(completion: str, answer: str, **_) -> Optional[float]:
    """Math accuracy against the example's gold `answer` field."""
    return math_accuracy(completion, answer)
