"""Distillation at the compute of an RL run (DeepSeek-R1's Table 6, finding (e)): how many SFT steps
of the student on the teacher's traces cost what the student's own RL run cost."""
from __future__ import annotations

import json
import logging
import pathlib
from typing import NamedTuple

import numpy as np

from r1jax.models import from_pretrained
from r1jax.pipelines.stages.rejection import Traces
from r1jax.tokenizers import Tokenizer
from r1jax.train.grpo import GRPOSettings

log = logging.getLogger(__name__)


class DistillBudget(NamedTuple):
    """The student RL run's FLOPs, and the SFT steps (of `flops_per_step` each) that cost as much."""

    rl_flops: float
    steps: int
    flops_per_step: float


def rl_flops(metrics_file: pathlib.Path, *, rows_per_step: int, prompt_tokens: float, flops_per_token: int,
             with_reference: bool) -> float:
    """FLOPs of a GRPO run from its logged response lengths: sampling (1 forward), the
    reference (1 forward) and the update (forward + backward = 3 forwards) per token."""
    forwards = 1 + (1 if with_reference else 0) + 3
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    tokens = sum(rows_per_step * (prompt_tokens + row["response_length"]) for row in rows)
    return float(forwards * flops_per_token * tokens)


def budget_stage(output: pathlib.Path, student: pathlib.Path, student_rl: pathlib.Path, traces: Traces, *,
                 tokenizer: Tokenizer, settings: GRPOSettings, batch_size: int) -> DistillBudget | None:
    """The budget of distilling the teacher's `traces` into the `student` checkpoint at the compute of
    its RL run (the export `student_rl`, its metrics.jsonl beside it), with batches of `batch_size`;
    None without traces. Writes nothing (`output` is unused)."""
    del output
    pairs = traces.pairs
    if not pairs:
        log.warning("rejection sampling kept no teacher traces: no distillation to compare")
        return None
    prompt_tokens = float(np.mean([len(tokenizer.encode(p)) for p, _ in pairs]))
    completion_tokens = float(np.mean([len(tokenizer.encode(c)) + 1 for _, c in pairs]))
    flops_per_token = from_pretrained(student).config.flops_per_token()
    flops = rl_flops(student_rl.parent / "metrics.jsonl",
                     rows_per_step=settings.prompts_per_step * settings.num_generations, prompt_tokens=prompt_tokens,
                     flops_per_token=flops_per_token, with_reference=settings.beta != 0)
    per_step = 3 * flops_per_token * min(batch_size, len(pairs)) * (prompt_tokens + completion_tokens)
    return DistillBudget(flops, max(1, round(flops / per_step)), per_step)
