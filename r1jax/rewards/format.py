"""Format rewards for the R1-Zero template: reasoning and answer in tags.

The template asks for `<think> reasoning </think> <answer> answer </answer>`;
some write-ups use `<reasoning>` instead of `<think>`, so tag names are arguments.
Three modes:

  strict     1.0 iff the whole output (leading/trailing whitespace aside) is
             `<think>R</think> <answer>A</answer>` with non-empty R and A, only
             whitespace between the blocks and each tag exactly once; else 0.0.
  soft       1.0 iff each of the four tags occurs exactly once, in order, with a
             non-empty answer; text around the blocks is allowed.
  tag_count  0.25 for each of the four tags that occurs exactly once (partial
             credit that gives a gradient early in training).

Tags are located with str.count / str.find, so the cost is linear even for a
megabyte of repeated tags.
"""
from __future__ import annotations

import re

from r1jax.rewards.extraction import extract_boxed
from r1jax.rewards.registry import register_reward

FORMAT_MODES = ("strict", "soft", "tag_count")


def format_reward(
    completion: str,
    *,
    mode: str = "strict",
    think_tag: str = "think",
    answer_tag: str = "answer",
    think_prefilled: bool = False,
    **_,
) -> float:
    """Format score of `completion` in [0, 1] (see the module docstring for modes).

    think_prefilled: the prompt already ends with `<think>` (a common R1-Zero
      prompt), so the completion is checked as if it started with that tag. A
      completion that opens `<think>` again then repeats the tag and fails.
    """
    if mode not in FORMAT_MODES:
        raise ValueError(f"format mode must be one of {FORMAT_MODES}, got {mode!r}")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    text = f"<{think_tag}>" + completion if think_prefilled else completion
    tags = (f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>")
    once = [text.count(tag) == 1 for tag in tags]
    if mode == "tag_count":
        return 0.25 * sum(once)
    if not all(once):
        return 0.0
    think_open, think_close, answer_open, answer_close = (text.find(tag) for tag in tags)
    if not think_open < think_close < answer_open < answer_close:
        return 0.0
    answer = text[answer_open + len(tags[2]):answer_close]
    if not answer.strip():
        return 0.0
    if mode == "soft":
        return 1.0
    reasoning = text[think_open + len(tags[0]):think_close]
    before = text[:think_open]
    between = text[think_close + len(tags[1]):answer_open]
    after = text[answer_close + len(tags[3]):]
    layout_ok = not before.strip() and not between.strip() and not after.strip()
    return 1.0 if layout_ok and reasoning.strip() else 0.0


@register_reward("format")
def strict_format_reward(completion: str, **_) -> float:
    """`<think>…</think><answer>…</answer>` and nothing else."""
    return format_reward(completion, mode="strict")


@register_reward("format_soft")
def soft_format_reward(completion: str, **_) -> float:
    """Both blocks present once each and in order; other text allowed."""
    return format_reward(completion, mode="soft")


@register_reward("format_tag_count")
def tag_count_reward(completion: str, **_) -> float:
    """0.25 per think/answer tag that occurs exactly once."""
    return format_reward(completion, mode="tag_count")


@register_reward("format_reasoning")
def reasoning_format_reward(completion: str, **_) -> float:
    """Strict format with the `<reasoning>`/`<answer>` tag names."""
    return format_reward(completion, mode="strict", think_tag="reasoning")


@register_reward("boxed_format")
def boxed_format_reward(completion: str, **_) -> float:
    """1.0 iff the completion boxes exactly one non-empty final answer, `\\boxed{…}` (braces balanced):
    the answer format of prompts that say "put the final answer in \\boxed{}"."""
    if completion.count("\\boxed") != 1:
        return 0.0
    answer = extract_boxed(completion)
    return 1.0 if answer is not None and answer.strip() else 0.0


# "... The answer is 42." at the very end: a short final phrase, on the last line
_FINAL_PHRASE = re.compile(r"(?i)\bthe answer is\s+([^\n]{1,40}?)\s*\.?\s*$")


@register_reward("answer_phrase_format")
def answer_phrase_format_reward(completion: str, **_) -> float:
    """1.0 iff the completion ends with "The answer is X." (X: up to 40 characters on the last line):
    the answer format of prompts that say "end your reply with 'The answer is N.'"."""
    return 1.0 if _FINAL_PHRASE.search(completion.strip()) else 0.0
