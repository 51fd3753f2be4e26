"""Cold-start SFT data in R1's readable output format (DeepSeek-R1, stage 1).

R1 fine-tunes the base model on a few thousand long chains of thought before RL. Part of
them are R1-Zero outputs "gathered in a readable format", with the output format

    |special_token|<reasoning_process>|special_token|<summary>

This module turns R1-Zero completions (`<think>…</think> <answer>…</answer>`) into that
format (defined in `r1jax.rewards.r1_format`) and keeps only the correct, readable,
deduplicated ones.

The summary is written from the R1-Zero answer with a template, by default
"The answer is $\\boxed{A}$.": the `\\boxed{}` is what `extract_final_answer` reads first
outside answer tags, so the accuracy rewards score the new format unchanged (a `\\boxed{}`
inside the reasoning comes earlier and does not win over it).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Optional

from r1jax.data.filters import (MIN_LANGUAGE_SHARE, NGRAM_SIZE, REPETITION_THRESHOLD, dedup_key,
                                is_readable, split_think_answer)
from r1jax.rewards.extraction import extract_final_answer
from r1jax.rewards.r1_format import R1_OUTPUT_FORMAT, OutputFormat, extract_summary_answer

# Why build_cold_start drops a record, in the order the checks run.
COLD_START_DROP_REASONS = ("ungradable", "incorrect", "malformed", "empty_reasoning", "empty_summary",
                           "mixed_language", "repetitive", "unconvertible", "duplicate")


def to_r1_format(completion: str, output_format: OutputFormat = R1_OUTPUT_FORMAT, *,
                 think_tag: str = "think", answer_tag: str = "answer") -> Optional[str]:
    """An R1-Zero completion rewritten as `open reasoning close summary`, or None.

    None when the completion is not exactly one think block and one answer block (see
    `filters.split_think_answer`), either block is empty, or the reasoning or answer
    contains a marker (the result would not split back unambiguously), or the summary
    does not read back as the same answer.
    The reasoning is kept as written, minus surrounding whitespace; the answer is
    `extract_final_answer`'s reading of the answer block (a `\\boxed{}` in it, else its text).
    """
    blocks = split_think_answer(completion, think_tag=think_tag, answer_tag=answer_tag)
    if blocks is None:
        return None
    reasoning = blocks[0].strip()
    answer = extract_final_answer(completion, answer_tag)
    if not reasoning or answer is None:
        return None
    if output_format.contains_marker(reasoning) or output_format.contains_marker(answer):
        return None
    converted = (output_format.reasoning_open + reasoning + output_format.reasoning_close
                 + output_format.summary(answer))
    # e.g. an answer with an unbalanced brace breaks the \boxed{} it is written into
    if extract_summary_answer(converted, output_format) != answer:
        return None
    return converted


def build_cold_start(
    records: Iterable[Mapping[str, Any]],
    *,
    correct_fn: Callable[..., Optional[float]],
    language: Optional[str] = None,
    output_format: OutputFormat = R1_OUTPUT_FORMAT,
    min_language_share: float = MIN_LANGUAGE_SHARE,
    ngram_size: int = NGRAM_SIZE,
    repetition_threshold: float = REPETITION_THRESHOLD,
    think_tag: str = "think",
    answer_tag: str = "answer",
) -> tuple[list[tuple[str, str]], dict]:
    """The cold-start SFT pairs (prompt, R1-format completion) from R1-Zero samples.

    records: dicts with "prompt" (the text the completion continues), "completion" (an
      R1-Zero output) and the example's fields (e.g. "answer") that `correct_fn` reads.
    correct_fn: a reward `fn(completion, **fields) -> float | None` (e.g. `get_reward("accuracy")`);
      a truthy score is correct, None means the record cannot be judged.
    language: the language the reasoning must be in; None: whichever dominates it.

    A record is kept if it is correct, readable (`filters.is_readable`), convertible
    (`to_r1_format`) and not a duplicate (same prompt, same `dedup_key` of the converted
    completion) of one kept before it. Returns (pairs in input order, stats) with stats
    {"records": n, "kept": n_kept, "dropped": {reason: count for COLD_START_DROP_REASONS}}.
    """
    pairs, dropped, seen, total = [], Counter(), set(), 0
    for index, record in enumerate(records):
        total += 1
        if "prompt" not in record or "completion" not in record:
            raise ValueError(f"record {index} has fields {sorted(record)}; a cold-start record needs "
                             "'prompt' and 'completion' (plus the fields correct_fn reads, e.g. 'answer')")
        completion = record["completion"]
        fields = {key: value for key, value in record.items() if key != "completion"}
        score = correct_fn(completion, **fields)
        readable = is_readable(completion, language=language, min_language_share=min_language_share,
                               ngram_size=ngram_size, repetition_threshold=repetition_threshold,
                               think_tag=think_tag, answer_tag=answer_tag)
        converted = to_r1_format(completion, output_format, think_tag=think_tag, answer_tag=answer_tag)
        key = (record["prompt"], dedup_key(converted or ""))
        if score is None:
            reason = "ungradable"
        elif not score:
            reason = "incorrect"
        elif not readable:
            reason = readable.reason
        elif converted is None:
            reason = "unconvertible"
        elif key in seen:
            reason = "duplicate"
        else:
            seen.add(key)
            pairs.append((record["prompt"], converted))
            continue
        dropped[reason] += 1
    stats = {"records": total, "kept": len(pairs),
             "dropped": {reason: dropped[reason] for reason in COLD_START_DROP_REASONS}}
    return pairs, stats
