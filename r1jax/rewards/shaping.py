"""Optional reward shaping offered by open-r1: length and repetition terms.

Pure functions of the completion; the registered rewards read the example's
gold `answer` where correctness matters. Lengths are in characters, since the
host-side evaluator sees text, not tokens.
"""
from __future__ import annotations

import math
from typing import Optional

from r1jax.rewards.math import math_accuracy
from r1jax.rewards.registry import register_reward


def cosine_scaled_reward(
    length: int,
    correct: bool,
    *,
    max_length: int,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
) -> float:
    """Cosine length schedule ("Demystifying Long Chain-of-Thought Reasoning").

        r = lo + (hi - lo) * (1 + cos(pi * min(length, max_length) / max_length)) / 2

    Correct answers: (lo, hi) = (min_value_correct, max_value_correct), so short
    correct answers earn the most. Wrong answers: (lo, hi) = (max_value_wrong,
    min_value_wrong), so a short wrong answer is punished hardest and a long one
    (the model kept thinking) least.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    progress = min(max(length, 0), max_length) / max_length
    if correct:
        low, high = min_value_correct, max_value_correct
    else:
        low, high = max_value_wrong, min_value_wrong
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def repetition_penalty(text: str, *, ngram_size: int = 3, max_penalty: float = -1.0) -> float:
    """max_penalty * (1 - distinct n-grams / n-grams) over lower-cased words.

    0.0 for text without repetition (or shorter than one n-gram), approaching
    `max_penalty` (<= 0) as the text repeats itself.
    """
    if ngram_size < 1:
        raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0 (it is a penalty), got {max_penalty}")
    words = text.lower().split()
    total = len(words) - ngram_size + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(words[offset:] for offset in range(ngram_size)))))
    return max_penalty * (1.0 - distinct / total)


@register_reward("cosine_length")
def cosine_length_reward(completion: str, answer: str, max_length: int = 4096, **_) -> Optional[float]:
    """Cosine length reward keyed on math accuracy; None where accuracy is None."""
    accuracy = math_accuracy(completion, answer)
    if accuracy is None:
        return None
    return cosine_scaled_reward(len(completion), accuracy == 1.0, max_length=max_length)


@register_reward("repetition_penalty")
def repetition_penalty_reward(completion: str, **_) -> float:
    """3-gram repetition penalty in [-1, 0]."""
    return repetition_penalty(completion)
