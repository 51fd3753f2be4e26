"""Countdown (TinyZero's task): reach a target from a few numbers with + - * /, generated locally."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1jax.data.countdown import Countdown, CountdownConfig
from r1jax.data.generated import load_generated
from r1jax.tasks.base import EvalDefaults, Task, check_positive, register_task

QUESTION = ("Using the numbers {numbers}, create an equation that equals {target}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number can "
            "be used at most once. Give the equation without '=' as the final answer, "
            "for example (1 + 2) / 3.")


@register_task("countdown")
@dataclasses.dataclass(frozen=True)
class CountdownTask(Task):
    accuracy_reward = "countdown"
    eval_defaults = EvalDefaults(max_new_tokens=1024)

    # a built-in builder config, one generated earlier in the data dir (read as it is), or None: the fields below
    config: str | None = "3_numbers"
    num_numbers: int = 3
    max_number: int = 99
    max_target: int = 100
    train_size: int = 20_000
    test_size: int = 500
    seed: int = 0
    question_template: str = QUESTION

    def __post_init__(self):
        check_positive(self, "num_numbers", "max_number", "max_target", "train_size", "test_size")

    def builder_config(self) -> str | CountdownConfig:
        if self.config is not None:
            return self.config
        return CountdownConfig(
            name=f"n{self.num_numbers}_max{self.max_number}_t{self.max_target}_n{self.train_size}",
            seed=self.seed, train_size=self.train_size, test_size=self.test_size, num_numbers=self.num_numbers,
            max_number=self.max_number, max_target=self.max_target)

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del manual_dir
        return load_generated(Countdown, split, data_dir=data_dir, config=self.builder_config())

    def question(self, example) -> str:
        numbers = str([int(n) for n in example["numbers"]])
        return self.question_template.replace("{numbers}", numbers).replace("{target}", str(int(example["target"])))
