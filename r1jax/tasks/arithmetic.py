"""Integer arithmetic ("3 + 4 * (2 - 5)"), generated locally as a TFDS dataset (`r1jax.data.arithmetic`).

With no `config` the task's own options name and size the dataset, so a recipe can ask
for exactly the problems it wants (e.g. all 108 one-operation problems on 1..6); the
dataset is then generated under a name of those options ("ops1_max6_n78"), and
`config="ops1_max6_n78"` reads it back from the same data dir, e.g. to evaluate on it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1jax.data.arithmetic import Arithmetic, ArithmeticConfig
from r1jax.data.generated import load_generated
from r1jax.rewards.countdown import final_number
from r1jax.rewards.math import parse_exact_number
from r1jax.tasks.base import EvalDefaults, Task, check_positive, register_task

QUESTION = "Compute the value of {expression}. Give the exact integer result as the final answer."


@register_task("arithmetic")
@dataclasses.dataclass(frozen=True)
class ArithmeticTask(Task):
    accuracy_reward = "arithmetic"
    eval_defaults = EvalDefaults(max_new_tokens=128)

    # a built-in builder config ("2_ops", ...), one generated earlier in the data dir ("ops1_max6_n78",
    # read as it is), or None: the fields below
    config: str | None = None
    num_operations: int = 2
    max_value: int = 20
    operations: str = "+-*"  # the operators drawn from
    train_size: int = 10_000
    test_size: int = 500
    seed: int = 0
    # the question; "{expression}" is replaced by the problem
    question_template: str = QUESTION

    def __post_init__(self):
        if "{expression}" not in self.question_template:
            raise ValueError(f"question_template {self.question_template!r} has no '{{expression}}' slot")
        if not self.operations or set(self.operations) - set("+-*"):
            raise ValueError(f"operations={self.operations!r}: use a non-empty string of + - *")
        check_positive(self, "num_operations", "max_value", "train_size", "test_size")

    def builder_config(self) -> str | ArithmeticConfig:
        if self.config is not None:
            return self.config
        ops = "" if self.operations == "+-*" else "_" + "".join({"+": "add", "-": "sub", "*": "mul"}[o]
                                                                 for o in self.operations)
        return ArithmeticConfig(
            # the name is checked against every generation setting when the data is reused
            name=f"ops{self.num_operations}{ops}_max{self.max_value}_n{self.train_size}",
            seed=self.seed, train_size=self.train_size, test_size=self.test_size,
            num_operations=self.num_operations, max_value=self.max_value, operations=self.operations)

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del manual_dir
        return load_generated(Arithmetic, split, data_dir=data_dir, config=self.builder_config())

    def question(self, example) -> str:
        return self.question_template.replace("{expression}", example["expression"])

    def answer(self, completion: str) -> str | None:
        """The number the accuracy reward reads (so the majority vote counts what is graded)."""
        number = final_number(completion)
        return None if number is None else str(parse_exact_number(number))
