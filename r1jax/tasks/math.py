"""MATH (Hendrycks et al.): competition problems with boxed answers, built from a local copy."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1jax.data.real import load_math
from r1jax.tasks.base import EvalDefaults, Task, register_task


@register_task("math")
@dataclasses.dataclass(frozen=True)
class MathTask(Task):
    accuracy_reward = "accuracy"  # math-verify against the boxed answer of the solution
    eval_defaults = EvalDefaults(max_new_tokens=2048)

    manual_dir: str = ""  # the local MATH copy, needed until the dataset is prepared in data_dir

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        return load_math(split, data_dir=data_dir, manual_dir=manual_dir or self.manual_dir or None)

    def question(self, example) -> str:
        return example["question"]
