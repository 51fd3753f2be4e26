"""The general (non-reasoning) prompts of R1's all-scenario RL stage, judged by a reward model.

Their examples carry `kind == "general"`; GRPO scores them with its `model_reward` judge
instead of a rule (`r1jax.data.preferences`). There is no rule-checkable answer, so
`accuracy` is None (cannot be judged) for every completion.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1jax.data.preferences import general_prompts
from r1jax.tasks.base import Task, register_task


@register_task("general")
@dataclasses.dataclass(frozen=True)
class GeneralTask(Task):
    num_prompts: int = 64
    seed: int = 0

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del data_dir, manual_dir
        return general_prompts(self.seed, self.num_prompts, split=split)

    def question(self, example) -> str:
        return example["question"]

    def accuracy(self, completion, example):
        return None

    def answer(self, completion):
        return None
