"""R1's readable output format: `|special_token|<reasoning_process>|special_token|<summary>`.

DeepSeek-R1 writes its cold-start data, and so its outputs after the cold start, in this
format instead of R1-Zero's `<think>/<answer>` tags. Here: the format (markers and a
summary template), splitting a text into reasoning and summary, and the "r1_format"
reward that the RL stages after the cold start use.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from r1jax.rewards.extraction import extract_final_answer
from r1jax.rewards.registry import register_reward

ANSWER_SLOT = "{answer}"

@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """R1's output format: `reasoning_open` reasoning `reasoning_close` summary.

    The paper writes both markers as `|special_token|`. The summary is `summary_template`
    with `{answer}` replaced by the final answer; `extract_final_answer` must read the answer
    back from it (`to_r1_format` checks). The default `\\boxed{}` suits the accuracy and
    arithmetic rewards; the countdown reward reads only `<answer>` tags or a bare last line,
    so for countdown use "<answer>{answer}</answer>". A tokenizer should know the markers as
    single tokens (e.g. `train_sentencepiece(user_defined_symbols=...)`).
    """

    reasoning_open: str = "|special_token|"
    reasoning_close: str = "|special_token|"
    summary_template: str = "The answer is $\\boxed{" + ANSWER_SLOT + "}$."

    def __post_init__(self):
        if not self.reasoning_open.strip() or not self.reasoning_close.strip():
            raise ValueError(f"the reasoning markers must be visible text, got {self.reasoning_open!r} "
                             f"and {self.reasoning_close!r}")
        if ANSWER_SLOT not in self.summary_template:
            raise ValueError(f"summary_template must contain {ANSWER_SLOT} where the answer goes, got "
                             f"{self.summary_template!r}")
        markers = (self.reasoning_open, self.reasoning_close)
        if any(marker in self.summary_template for marker in markers):
            raise ValueError("summary_template must not contain the reasoning markers: the summary "
                             "would no longer split off")

    def summary(self, answer: str) -> str:
        return self.summary_template.replace(ANSWER_SLOT, answer)

    def contains_marker(self, text: str) -> bool:
        return self.reasoning_open in text or self.reasoning_close in text


R1_OUTPUT_FORMAT = OutputFormat()


def split_r1_output(text: str, output_format: OutputFormat = R1_OUTPUT_FORMAT) -> Optional[tuple[str, str]]:
    """(reasoning, summary) of a text in R1's output format, both stripped; None if it is not one.

    The text must open with `reasoning_open` (after leading whitespace), close the reasoning
    with the next `reasoning_close`, contain no further marker, and have a non-empty
    reasoning and summary.
    """
    body = text.lstrip()
    if not body.startswith(output_format.reasoning_open):
        return None
    rest = body[len(output_format.reasoning_open):]
    close = rest.find(output_format.reasoning_close)
    if close < 0:
        return None
    reasoning = rest[:close].strip()
    summary = rest[close + len(output_format.reasoning_close):].strip()
    if output_format.contains_marker(reasoning) or output_format.contains_marker(summary):
        return None
    if not reasoning or not summary:
        return None
    return reasoning, summary


def extract_summary_answer(text: str, output_format: OutputFormat = R1_OUTPUT_FORMAT) -> Optional[str]:
    """The final answer stated in the summary of an R1-format text (`extract_final_answer` on
    the summary alone), or None if the text is not in the format or states none."""
    parts = split_r1_output(text, output_format)
    return extract_final_answer(parts[1]) if parts is not None else None


@register_reward("r1_format")
def r1_format_reward(completion: str, *, output_format: OutputFormat = R1_OUTPUT_FORMAT, **_) -> float:
    """1.0 if `completion` is in R1's output format (`split_r1_output` accepts it), else 0.0."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    return 1.0 if split_r1_output(completion, output_format) is not None else 0.0
