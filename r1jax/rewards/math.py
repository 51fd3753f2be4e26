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

Time bound. sympy can spend forever on an answer like `9^{9^{9^{9}}}`, in C
code that holds the GIL, so only a signal (main thread only) or killing a
process stops it. Hence:

  * on the main thread (a script, an evaluator worker process) each math-verify
    step (parsing the gold, parsing the answer, comparing) is cut off after
    MATH_VERIFY_TIMEOUT_SECONDS by math-verify's own SIGALRM timeout. Python
    handles the signal between C operations, so the integer operation under
    way when it fires can overrun the limit (under a second in our tests); in
    the evaluator, killing the worker past its timeout is the hard bound;
  * on any other thread math-verify runs in a helper process of that thread's
    own, killed after MATH_VERIFY_TIMEOUT_SECONDS for the whole comparison.
    The helper starts with the thread's first such comparison (a second or two
    for a process's first one) and costs a pipe round trip per comparison
    after that. Like the evaluator's workers, it needs a script's entry point
    under `if __name__ == "__main__":`.

An answer that runs out of time scores 0.0, like any other wrong answer; the
verdict is cached, so a repeated pathological answer costs the time once.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
from fractions import Fraction
from typing import Optional

from r1jax.rewards.extraction import extract_final_answer
from r1jax.rewards.pool import NONE, OK, TIMEOUT, WorkerPool
from r1jax.rewards.registry import register_reward

log = logging.getLogger(__name__)

# A longer "final answer" is the model rambling; judged wrong without parsing.
MAX_ANSWER_CHARS = 1_000
# Time limit per math-verify step on the main thread, per comparison elsewhere
# (module doc). Well below the evaluator's default 10 s timeout, so a
# pathological answer scores 0.0 instead of costing a worker restart.
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
    with none of these scores 0.0. Returns within about
    MATH_VERIFY_TIMEOUT_SECONDS per math-verify step on the main thread, per
    call on other threads; an answer that runs out of time scores 0.0 (module doc).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    gold = _strip_answer(str(gold)) if gold is not None else ""
    if not gold:
        return None
    predicted = extract_final_answer(completion, answer_tag)
    if predicted is not None and len(predicted) > MAX_ANSWER_CHARS:
        predicted = None
    if predicted is not None:
        verdict = _compare_plain_numbers(gold, predicted)
        if verdict is not None:
            return verdict
    if _math_verify() is None:
        if not _normalize_latex(gold):
            return None
        return 0.0 if predicted is None else float(fallback_equal(gold, predicted))
    if threading.current_thread() is threading.main_thread():
        return _math_verify_verdict(predicted, gold=gold)
    return _math_verify_verdict_in_helper(gold, predicted)


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


def _math_verify_verdict(predicted: Optional[str], *, gold: str) -> Optional[float]:
    """None if `gold` has no expression, else 1.0/0.0, computed in this thread.

    Bounded only on the main thread; the argument order is the one WorkerPool
    calls reward functions with, so the helper process can run it as it is.
    """
    if not _parse(gold).has_expression:
        return None
    if predicted is None:
        return 0.0
    return float(_verify(gold, predicted))


_helpers = threading.local()


@functools.lru_cache(maxsize=65_536)
def _math_verify_verdict_in_helper(gold: str, predicted: Optional[str]) -> Optional[float]:
    """`_math_verify_verdict` run in this thread's helper process, which is
    killed (and replaced) past MATH_VERIFY_TIMEOUT_SECONDS.

    One helper per thread, so concurrent callers never wait for each other's
    pathological answers; it exits when the thread's storage is dropped (its
    pipe closes) or with the program (it is a daemon).
    """
    helper = getattr(_helpers, "pool", None)
    if helper is None:
        helper = _helpers.pool = WorkerPool(
            [("math_verify", _math_verify_verdict)], num_workers=1,
            timeouts=[MATH_VERIFY_TIMEOUT_SECONDS])
    outcomes, _ = helper.run([(predicted, {"gold": gold})])
    status, value, message = outcomes[0][0]
    if status == OK:
        return value
    if status == NONE:
        return None
    if status == TIMEOUT:
        log.warning("math-verify took over %g s on answer %.100r (gold %.100r); scored 0.0",
                    MATH_VERIFY_TIMEOUT_SECONDS, predicted, gold)
        return 0.0
    raise RuntimeError(f"math-verify failed in its helper process: {message}")


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
