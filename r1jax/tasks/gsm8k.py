"""GSM8K: grade-school word problems (TFDS `gsm8k`, prepared where internet exists; see `r1jax.data.real`)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1jax.data.real import load_gsm8k
from r1jax.tasks.base import EvalDefaults, Task, register_task


@register_task("gsm8k")
@dataclasses.dataclass(frozen=True)
class GSM8KTask(Task):
    accuracy_reward = "accuracy"  # math-verify against the number after '####'
    eval_defaults = EvalDefaults(max_new_tokens=1024)

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del manual_dir
        return load_gsm8k(split, data_dir=data_dir)

    def question(self, example) -> str:
        return example["question"]
