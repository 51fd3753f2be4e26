"""Reflection in completions: how often a policy stops to re-check or correct itself, and whether it pays.

DeepSeek-R1 (sec. 2.2.4, Table 3) reports that during R1-Zero's RL the model learns, unprompted, to
interrupt its reasoning ("Wait, wait. Wait. That's an aha moment ... Let's reevaluate this step-by-
step") and that such behaviour grows with training. These measures make that visible on any task.

The rule (documented so that a figure can be checked by hand): a completion *reflects* when it
contains one of `REFLECTION_MARKERS` as a whole word or phrase, ignoring case. The markers are the
paper's own words for re-examining a step and the common English phrasings of re-checking and
correcting; a task whose completions re-check in other words passes its own `markers`. A marker
counts wherever it stands (in the reasoning or after it), once per completion: the rate is the share
of completions that reflect at all, not a count of reflections.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import numpy as np

REFLECTION_MARKERS = ("wait", "re-check", "recheck", "double-check", "double check", "let me check",
                      "let's check", "check again", "re-evaluate", "reevaluate", "re-examine", "reconsider",
                      "mistake", "correction", "i was wrong")


@functools.lru_cache(maxsize=16)
def _pattern(markers: tuple[str, ...]) -> re.Pattern:
    if not markers or not all(isinstance(m, str) and m.strip() for m in markers):
        raise ValueError(f"reflection markers must be non-empty strings, got {markers!r}")
    # \b on both sides: "wait" is not found in "awaits"; the longest marker first where they overlap
    alternatives = "|".join(re.escape(m.strip()) for m in sorted(markers, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def reflects(completion: str, markers: Sequence[str] = REFLECTION_MARKERS) -> bool:
    """The completion re-checks or corrects a step: it holds one of `markers` as a whole word or phrase."""
    return _pattern(tuple(markers)).search(completion) is not None


def reflection_flags(completions: Iterable[str], markers: Sequence[str] = REFLECTION_MARKERS) -> np.ndarray:
    """bool [n]: `reflects` of each completion."""
    pattern = _pattern(tuple(markers))
    return np.asarray([pattern.search(text) is not None for text in completions], bool).reshape(-1)


def reflection_metrics(flags: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    """`reflection_rate`, the share of completions that reflect, and (with `correct`, the accuracy of
    each, NaN where it was not judged) `accuracy_reflecting` and `accuracy_not_reflecting`, the accuracy
    of those that do and do not. A class with no judged completion leaves its key out (neither 0, which
    would read "reflection never helps", nor NaN, which compares unequal to itself in logs and tests)."""
    flags = np.asarray(flags, bool).reshape(-1)
    if not flags.size:
        raise ValueError("no completions to measure reflection on")
    metrics = {"reflection_rate": float(flags.mean())}
    if correct is not None:
        correct = np.asarray(correct, np.float64).reshape(-1)
        if correct.shape != flags.shape:
            raise ValueError(f"{flags.size} reflection flags but {correct.size} accuracies: one per completion")
        for name, rows in (("accuracy_reflecting", flags), ("accuracy_not_reflecting", ~flags)):
            judged = correct[rows & np.isfinite(correct)]
            if judged.size:
                metrics[name] = float(judged.mean())
    return metrics
