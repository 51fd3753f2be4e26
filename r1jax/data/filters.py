"""Host-side predicates on a sampled completion, shared by R1's data stages.

DeepSeek-R1 builds SFT data twice from its own samples: the cold-start set (stage 1,
readable long chains of thought) and the rejection-sampled set (stage 3, "we filter out
chain-of-thought with mixed languages, long paragraphs, and code blocks" and keep only
correct answers). The checks here are pure functions of the text (and, for truncation,
of the sampler's length and stop flag), so each stage decides its own order and counts
why samples were dropped.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from r1jax.rewards.language import dominant_language, language_consistency
from r1jax.rewards.shaping import repetition_penalty

# Defaults of the filters. A repetition loop repeats most of its n-grams, while ordinary
# reasoning repeats few; 40% sits well between the two.
NGRAM_SIZE = 3
REPETITION_THRESHOLD = 0.4
# The paper filters "mixed languages"; a stray foreign word or symbol is not that.
MIN_LANGUAGE_SHARE = 0.9


class Check(NamedTuple):
    """The verdict of a filter with several criteria: `passed`, or the first `reason` it failed.

    Truthy iff passed, so `if is_readable(text):` reads as it should.
    """

    passed: bool
    reason: Optional[str] = None

    def __bool__(self) -> bool:
        return self.passed


PASSED = Check(True)


def is_overlong(completion_length: int, max_new_tokens: int, stopped: bool) -> bool:
    """True if the sampler hit its token budget without drawing a stop token.

    Such a completion was cut off: its answer, if any, is not its final word.
    A completion that stops on exactly its last allowed token is not overlong.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return not stopped and completion_length >= max_new_tokens


def repeated_ngram_share(text: str, ngram_size: int = NGRAM_SIZE) -> float:
    """Share of the word n-grams of `text` (lower-cased) that repeat an earlier one, in [0, 1).

    1 - distinct / total, the measure behind `rewards.shaping.repetition_penalty`;
    0.0 for text shorter than one n-gram. "a b c a b c" has 4 3-grams, 3 distinct: 0.25.
    """
    return -repetition_penalty(text, ngram_size=ngram_size, max_penalty=-1.0)


def is_repetitive(text: str, *, ngram_size: int = NGRAM_SIZE,
                  threshold: float = REPETITION_THRESHOLD) -> bool:
    """True if more than `threshold` of the n-grams of `text` repeat an earlier one."""
    if not 0 <= threshold < 1:
        raise ValueError(f"repetition threshold must be in [0, 1), got {threshold}")
    return repeated_ngram_share(text, ngram_size) > threshold


def is_language_consistent(text: str, language: Optional[str] = None, *,
                           min_share: float = MIN_LANGUAGE_SHARE) -> bool:
    """True if at least `min_share` of the words of `text` are in one language.

    language: the target ("en", "zh", ...; see `rewards.language`). None judges the text
      against its own dominant language, which catches a chain of thought that switches
      languages without naming the one it should be in.
    Text without words (only math or code) has nothing to mix: consistent.
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    if language is None:
        language = dominant_language(text)
        if language is None:
            return True
    share = language_consistency(text, language)
    return share is None or share >= min_share


def split_think_answer(completion: str, *, think_tag: str = "think",
                       answer_tag: str = "answer") -> Optional[tuple[str, str]]:
    """(reasoning, answer) of `<think>R</think> <answer>A</answer>`, or None if not in that layout.

    Each of the four tags must occur exactly once, in order, with only whitespace
    outside the two blocks. R and A are returned as written (not stripped) and may be empty.
    """
    tags = (f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>")
    if any(completion.count(tag) != 1 for tag in tags):
        return None
    think_open, think_close, answer_open, answer_close = (completion.find(tag) for tag in tags)
    if not think_open < think_close < answer_open < answer_close:
        return None
    outside = (completion[:think_open], completion[think_close + len(tags[1]):answer_open],
               completion[answer_close + len(tags[3]):])
    if any(part.strip() for part in outside):
        return None
    return (completion[think_open + len(tags[0]):think_close],
            completion[answer_open + len(tags[2]):answer_close])


def is_readable(completion: str, *, language: Optional[str] = None,
                min_language_share: float = MIN_LANGUAGE_SHARE, ngram_size: int = NGRAM_SIZE,
                repetition_threshold: float = REPETITION_THRESHOLD, think_tag: str = "think",
                answer_tag: str = "answer") -> Check:
    """The paper's cold-start readability criterion on an R1-Zero completion.

    Checked in this order, the first failure naming the reason:
      "malformed"        not exactly `<think>…</think> <answer>…</answer>` (see `split_think_answer`)
      "empty_reasoning"  nothing but whitespace between the think tags
      "empty_summary"    nothing but whitespace between the answer tags
      "mixed_language"   the reasoning fails `is_language_consistent`
      "repetitive"       the reasoning fails `is_repetitive`
    """
    blocks = split_think_answer(completion, think_tag=think_tag, answer_tag=answer_tag)
    if blocks is None:
        return Check(False, "malformed")
    reasoning, answer = blocks
    if not reasoning.strip():
        return Check(False, "empty_reasoning")
    if not answer.strip():
        return Check(False, "empty_summary")
    if not is_language_consistent(reasoning, language, min_share=min_language_share):
        return Check(False, "mixed_language")
    if is_repetitive(reasoning, ngram_size=ngram_size, threshold=repetition_threshold):
        return Check(False, "repetitive")
    return PASSED


def dedup_key(text: str) -> str:
    """`text` lower-cased (casefolded) with every run of whitespace made one space, ends trimmed.

    Two completions with the same key say the same thing; keep one of them.
    """
    return " ".join(text.casefold().split())
