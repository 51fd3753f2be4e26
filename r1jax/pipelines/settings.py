"""Config sections to settings dataclasses, one to one, checked before any work starts.

A recipe's config is plain `ml_collections` sections; each maps onto the fields of one
or more dataclasses (`settings_from`). A field no dataclass has is an error that names
it, so a typo in an experiment module fails at once instead of being ignored.

A recipe checks every section it will use, and creates its workdir (`make_workdir`),
before it does any work: a bad value is a `ConfigError` naming the field, seconds after
the start rather than after pretraining, and an existing workdir is left as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from typing import Any, Mapping

from r1jax.rewards import get_reward, list_rewards
from r1jax.train.state import check_schedule


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what to change.

    The command line (`r1jax.pipelines.cli`) shows it as one line, without a traceback.
    """


@contextlib.contextmanager
def config_section(where: str):
    """Turn a ValueError raised while reading `config.<where>` into a ConfigError that names it."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"config.{where}: {error}") from None


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
        if self.save_every < 1 or self.eval_every < 0:
            raise ValueError(f"need save_every >= 1 and eval_every >= 0; got {self}")
        check_schedule(self.learning_rate, self.warmup_steps, self.steps, self.schedule)


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
        raise ConfigError(f"config.{where} has no field {', '.join(map(repr, unknown))}; its fields are "
                          f"{sorted(set().union(*names))}")
    built = []
    for cls, fields in zip(classes, names):
        with config_section(where):
            try:
                built.append(cls(**{k: v for k, v in values.items() if k in fields}))
            except TypeError as error:  # a required field is missing
                raise ValueError(str(error)) from None
    return built[0] if len(built) == 1 else tuple(built)


def training_settings(section: Mapping[str, Any], *, where: str, schedule: str = "cosine") -> TrainSettings:
    """The `steps`, `learning_rate` and `warmup_steps` (and `batch_size`, where there is one) of a
    section that holds other fields too (pretraining, SFT, the reward model), checked as the
    stage will use them: `schedule` is the one that stage trains with."""
    with config_section(where):
        if "batch_size" in section and section["batch_size"] < 1:
            raise ValueError(f"batch_size={section['batch_size']}: use 1 or more")
        return TrainSettings(steps=section["steps"], learning_rate=section["learning_rate"],
                             warmup_steps=section["warmup_steps"], schedule=schedule)


def reward_weights(**weights: float) -> dict[str, float]:
    """A config's rewards section: every registered reward, weight 0 (not used) unless given.

    Listing them all lets the command line switch one on in a locked config
    (`--config.rewards.language=0.5`), and makes a misspelt name an unknown field.
    """
    for name in weights:
        get_reward(name)
    return {name: float(weights.get(name, 0.0)) for name in list_rewards()}


def check_rewards(rewards: Mapping[str, float]) -> dict[str, float]:
    """The rewards a config uses: each name registered (`r1jax.rewards`), weight 0 meaning not used."""
    with config_section("rewards"):
        for name, weight in rewards.items():
            get_reward(name)
            if not abs(float(weight)) < float("inf"):
                raise ValueError(f"{name}={weight}: use a finite weight (0: not used)")
    used = {name: float(weight) for name, weight in rewards.items() if weight != 0}
    if not used:
        raise ConfigError("config.rewards gives no reward a weight: set at least one, e.g. "
                          f"--config.rewards.{next(iter(rewards), 'format')}=1.0")
    return used


def make_workdir(workdir) -> pathlib.Path:
    """Create `config.workdir` (and its parents), the first thing a recipe writes, once every
    setting is checked; a path that cannot be a writable directory is a ConfigError."""
    path = pathlib.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"config.workdir={str(workdir)!r} cannot be created ({error.strerror}); choose a "
                          "writable directory with --config.workdir=PATH") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"config.workdir={str(workdir)!r} is not writable; choose another with "
                          "--config.workdir=PATH")
    return path


__all__ = ["ConfigError", "EvalSettings", "TrainSettings", "check_rewards", "config_section", "make_workdir",
           "reward_weights", "settings_from", "training_settings"]
