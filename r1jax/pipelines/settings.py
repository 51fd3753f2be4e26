"""Config sections to settings dataclasses, one to one, checked before any work starts.

A recipe's config is plain `ml_collections` sections; each maps onto the fields of one
or more dataclasses (`settings_from`). A field no dataclass has is an error that names
it, so a typo in an experiment module fails at once instead of being ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from r1jax.rewards import get_reward


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The optimisation of one training stage (the loop and AdamW with warmup)."""

    steps: int
    learning_rate: float
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine" (r1jax.train.state.make_schedule)
    weight_decay: float = 0.0
    save_every: int = 50
    eval_every: int = 0  # 0: evaluate at the end only

    def __post_init__(self):
        if self.steps < 0 or self.warmup_steps < 0 or self.save_every < 1 or self.eval_every < 0:
            raise ValueError(f"need steps >= 0, warmup_steps >= 0, save_every >= 1, eval_every >= 0; got {self}")
        if not self.learning_rate > 0 or self.learning_rate == float("inf"):
            raise ValueError(f"learning_rate={self.learning_rate}: use a finite positive number")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """A held-out evaluation: pass@1 over `num_samples` samples per prompt, cons@k, format, length."""

    split: str = "test"
    num_prompts: int = 0  # 0: the whole split
    num_samples: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 0  # 0: the GRPO stage's
    max_prompt_length: int = 512
    # result key -> registered reward averaged over the samples (e.g. {"format_reward": "format"})
    scores: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"format_reward": "format"})

    def __post_init__(self):
        if self.num_samples < 1 or self.num_prompts < 0:
            raise ValueError(f"eval needs num_samples >= 1 and num_prompts >= 0, got {self}")
        for name in self.scores.values():
            get_reward(name)


def settings_from(section: Mapping[str, Any] | None, *classes, where: str, **fixed):
    """One instance of each dataclass in `classes` from the fields of a config `section`.

    A field that belongs to none of them is an error naming it; `fixed` fields are
    given to every class that has them (and need not be in the section).
    """
    values = {**dict(section or {}), **fixed}
    names = [{f.name for f in dataclasses.fields(cls)} for cls in classes]
    unknown = sorted(set(values) - set().union(*names) - set(fixed))
    if unknown:
        raise ValueError(f"config.{where} has no field {', '.join(map(repr, unknown))}; its fields are "
                         f"{sorted(set().union(*names))}")
    built = []
    for cls, fields in zip(classes, names):
        try:
            built.append(cls(**{k: v for k, v in values.items() if k in fields}))
        except TypeError as error:  # a required field is missing
            raise ValueError(f"config.{where}: {error}") from None
    return built[0] if len(built) == 1 else tuple(built)


def check_rewards(rewards: Mapping[str, float]) -> dict[str, float]:
    """A config's reward weights, each name registered (`r1jax.rewards`)."""
    if not rewards:
        raise ValueError("config.rewards is empty: name at least one registered reward and its weight")
    for name in rewards:
        get_reward(name)
    return {name: float(weight) for name, weight in rewards.items()}


__all__ = ["EvalSettings", "TrainSettings", "check_rewards", "settings_from"]
