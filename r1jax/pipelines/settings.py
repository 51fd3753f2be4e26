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
import math
import os
import pathlib
import typing
from typing import Any, Mapping, Sequence

from ml_collections.config_dict import placeholder

from r1jax.evaluation import EVAL_TEMPERATURE, EVAL_TOP_P
from r1jax.models import ModelConfig
from r1jax.models.config import RUNTIME_FIELDS
from r1jax.models.lora import LoRAConfig
from r1jax.rewards import get_reward, list_rewards
from r1jax.train.grpo import GRPOSettings
from r1jax.train.loop import LoopSettings
from r1jax.train.state import OptimizerSettings


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what to change.

    The command line (`r1jax.pipelines.cli`) shows it as one line, without a traceback.
    """


class SettingError(ValueError):
    """A settings dataclass refusing one of its fields; read from a config section (`config_section`,
    `settings_from`), it becomes a `ConfigError` naming `config.<section>.<field>`."""

    def __init__(self, field: str, value, why: str):
        super().__init__(f"{field}={value!r}: {why}")
        self.field, self.value, self.why = field, value, why


@contextlib.contextmanager
def config_section(where: str):
    """Turn a ValueError raised while reading `config.<where>` into a ConfigError that names it."""
    try:
        yield
    except ConfigError:
        raise
    except SettingError as error:
        raise ConfigError(f"config.{where}.{error.field}={error.value!r}: {error.why}") from None
    except ValueError as error:
        raise ConfigError(f"config.{where}: {error}") from None


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
    keep_problems: bool = False  # also store each problem's completions and verdicts with the result

    def __post_init__(self):
        if self.num_samples < 1 or self.num_prompts < 0:
            raise ValueError(f"eval needs num_samples >= 1 and num_prompts >= 0, got {self}")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got temperature={self.temperature}, "
                             f"top_p={self.top_p}")
        for name in self.scores.values():
            get_reward(name)


@dataclasses.dataclass(frozen=True)
class ColdStartSettings:
    """The cold-start data (DeepSeek-R1, stage 1; `cold_start_stage`): R1-Zero sampled on the first
    `prompts` training prompts, `samples_per_prompt` times each, plus `annotated` worked solutions.

    A config's cold_start section holds these beside the SFT run's own settings (`training_from`).
    """

    prompts: int = 0  # training prompts sampled (the first ones); 0: all of them
    samples_per_prompt: int = 4  # R1-Zero samples drawn per prompt, filtered for correctness and readability
    temperature: float = EVAL_TEMPERATURE  # of those samples; 0: greedy
    top_p: float = EVAL_TOP_P
    annotated: int = 0  # worked solutions in R1's format written out in full and added to the kept samples

    def __post_init__(self):
        _check_sampling(self)
        _check_whole(self, "annotated", 0, "the worked solutions added to the cold-start set, an integer >= 0")


@dataclasses.dataclass(frozen=True)
class RejectionSettings:
    """Rejection sampling of the reasoning-RL model (DeepSeek-R1, stage 3; `rejection_stage`): the first
    `prompts` training prompts, `samples_per_prompt` samples each; the correct, clean ones are the SFT set."""

    prompts: int = 0  # training prompts sampled (the first ones); 0: all of them
    samples_per_prompt: int = 4  # the stage's num_samples
    temperature: float = EVAL_TEMPERATURE  # 0: greedy
    top_p: float = EVAL_TOP_P

    def __post_init__(self):
        _check_sampling(self)


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
    """How much of an SFT set is the stand-in base's pretraining corpus (the R1 recipe's cold_start, sft and
    student.distill sections), as the paper mixes non-reasoning data into its SFT so that SFT keeps what the
    base knew; unused with a real checkpoint (`config.init`), which comes without such a corpus."""

    replay: float = 0.0  # the share of the SFT set's pairs drawn from the base's corpus, in [0, 1)

    def __post_init__(self):
        if not (_is_finite(self.replay) and 0 <= self.replay < 1):
            raise SettingError("replay", self.replay, "the share of base-corpus pairs in the SFT set must be in "
                               "[0, 1)")


def _check_sampling(settings) -> None:
    """The fields every section that samples training prompts shares: prompts, samples_per_prompt,
    temperature, top_p (NaN and infinities refused: NaN passes every comparison)."""
    _check_whole(settings, "prompts", 0, "the number of training prompts to sample, an integer >= 0 (0: all of them)")
    _check_whole(settings, "samples_per_prompt", 1, "the samples drawn per prompt, an integer >= 1")
    if not (_is_finite(settings.temperature) and settings.temperature >= 0):
        raise SettingError("temperature", settings.temperature, "the sampling temperature, a finite number >= 0 "
                           "(0: greedy)")
    if not (_is_finite(settings.top_p) and 0 < settings.top_p <= 1):
        raise SettingError("top_p", settings.top_p, "the share of probability top-p sampling keeps, in (0, 1] "
                           "(1: all of it)")


def _check_whole(settings, name: str, minimum: int, why: str) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingError(name, value, why)


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def settings_from(section: Mapping[str, Any] | None, *classes, where: str, **fixed):
    """One instance of each dataclass in `classes` from the fields of a config `section`.

    A field that belongs to none of them is an error naming it; `fixed` fields are
    given to every class that has them (and need not be in the section).
    """
    given = dict(section or {})
    overridden = sorted(name for name in fixed
                        if name in given and given[name] is not None and given[name] != fixed[name])
    if overridden:
        raise ConfigError(f"config.{where}.{overridden[0]}={given[overridden[0]]!r} is set by the recipe "
                          f"({fixed[overridden[0]]!r}) from another part of the config; set it there")
    values = {**given, **fixed}
    for name, value in values.items():
        # NaN passes every comparison a range check makes (nan < 0 is False): refuse it, and
        # infinities, before a class sees them
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{where}.{name}={value}: must be a finite number")
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


def training_section(*classes, exclude: Sequence[str] = (), **values) -> dict:
    """A config's section of one training run: every field of `LoopSettings`, `OptimizerSettings`
    and `classes` (e.g. `GRPOSettings`, `SFTSettings`) at its default unless given in `values`,
    which may also hold the stage's other fields; `exclude`: fields the recipe sets from
    elsewhere (e.g. a top-level `template`), which the section must not offer.

    Listing them all lets the command line set any of them in a locked config
    (`--config.sft.num_microbatches=2`); `steps` and `learning_rate` have no default. A field
    whose default is None becomes a typed placeholder (`--config.grpo.epsilon_high=0.28` parses
    as a float).
    """
    return {**_field_defaults((LoopSettings, OptimizerSettings, *classes), exclude), **values}


def settings_section(*classes, **values) -> dict:
    """A config section of settings `classes` only (e.g. `RejectionSettings`): every field at its default
    unless given in `values`, so that the command line can set any of them in a locked config
    (`--config.rejection.top_p=1.0`); a value no class has a field for is a TypeError naming it.
    A field whose default is None becomes a typed placeholder, as in `training_section`."""
    unknown = sorted(set(values) - {field.name for cls in classes for field in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{', '.join(cls.__name__ for cls in classes)} has no field {', '.join(unknown)}")
    return {**_field_defaults(classes), **values}


def _field_defaults(classes, exclude: Sequence[str] = ()) -> dict:
    """Every field of `classes` with a default, at it (None: a typed placeholder), but `exclude`."""
    defaults = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.default is dataclasses.MISSING or field.name in exclude:
                continue
            defaults[field.name] = (field.default if field.default is not None
                                    else placeholder(_optional_type(hints[field.name], field.name)))
    return defaults


def _optional_type(hint, name: str) -> type:
    """T of an `Optional[T]` (`T | None`) field."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)]
    if len(kinds) != 1 or not isinstance(kinds[0], type):
        raise TypeError(f"field {name!r} defaults to None but its type {hint} is not T | None")
    return kinds[0]


def training_from(section: Mapping[str, Any], *classes, where: str, other: Sequence[str] = (), **fixed) -> tuple:
    """(`LoopSettings`, `OptimizerSettings`, one instance of each of `classes`) of a training section,
    the optimizer's schedule checked against the loop's steps.

    `other`: fields of the section that the recipe reads itself (e.g. a replay share), not settings
    of the run; `fixed`: as in `settings_from`.
    """
    values = {name: value for name, value in dict(section).items() if name not in other}
    loop, optimizer, *rest = settings_from(values, LoopSettings, OptimizerSettings, *classes, where=where, **fixed)
    with config_section(where):
        optimizer.check(loop.steps)
    return (loop, optimizer, *rest)


def grpo_training(section: Mapping[str, Any], *, where: str, **fixed
                  ) -> tuple[GRPOSettings, LoopSettings, OptimizerSettings]:
    """A GRPO section: its `GRPOSettings` and the run's loop and optimizer, the loop's
    `num_microbatches` checked against the rows of one update (whole groups in each microbatch)."""
    loop, optimizer, grpo = training_from(section, GRPOSettings, where=where, **fixed)
    rows = grpo.prompts_per_step * grpo.num_generations // grpo.num_minibatches
    group = grpo.num_generations if grpo.prompts_per_step % grpo.num_minibatches == 0 else 1
    if rows % (loop.num_microbatches * group):
        raise ConfigError(f"config.{where}: num_microbatches={loop.num_microbatches} does not split an update's "
                          f"{rows} rows (prompts_per_step x num_generations / num_minibatches) into whole groups "
                          f"of {group}; use a divisor of {rows // group}")
    return grpo, loop, optimizer


def lora_settings(config) -> LoRAConfig:
    """The `LoRAConfig` of a config's `lora` section (rank, alpha, targets): the policy's adapters, or none
    (rank 0, or no section: the whole model trains). An experiment offers it on the command line with
    `c.lora = settings_section(LoRAConfig)` (`--config.lora.rank=16`)."""
    section = dict(config.get("lora") or {})
    if "targets" in section and section["targets"] is not None and not isinstance(section["targets"], str):
        section["targets"] = tuple(section["targets"])
    return settings_from(section, LoRAConfig, where="lora")


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


def check_workdir(workdir) -> pathlib.Path:
    """`config.workdir` as a path; an empty one (which would write into the current directory) is refused."""
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
        raise ConfigError(f"config.workdir={workdir!r}: name the run's directory (--config.workdir=PATH); an empty "
                          "one would write into the current directory")
    return pathlib.Path(workdir)


# what a run may change of a pretrained checkpoint's ModelConfig: how it computes, not what it is
MODEL_OVERRIDES = ("dtype", "param_dtype", *RUNTIME_FIELDS)


def check_model_overrides(section: Mapping[str, Any], where: str = "model") -> dict[str, Any]:
    """The `ModelConfig` overrides of a run from a pretrained checkpoint, checked before any work.

    The checkpoint's sizes come from its own config.json or GGUF header: a section that sets one
    (`num_layers`, `hidden_size`, ...) would build a model its weights do not fit, so only
    `MODEL_OVERRIDES` are accepted, each checked as `ModelConfig` checks it (a dtype typo, an unknown
    remat policy, a block size of 0).
    """
    overrides = dict(section)
    for field in overrides:
        if field not in MODEL_OVERRIDES:
            raise ConfigError(f"config.{where}.{field}: a pretrained checkpoint's sizes come from its own config; "
                              f"the {where} section may set {', '.join(MODEL_OVERRIDES)}")
    try:  # a one-of-everything model: only the overrides can make it invalid
        ModelConfig(vocab_size=1, hidden_size=2, intermediate_size=1, num_layers=1, num_heads=1, num_kv_heads=1,
                    **overrides)
    except (TypeError, ValueError) as error:  # jnp.dtype raises TypeError for an unknown dtype
        raise ConfigError(f"config.{where}: {error}") from None
    return overrides


def check_mesh(mesh: Mapping[str, int], where: str = "mesh") -> dict[str, int]:
    """A mesh section ({axis: size}, -1 for the devices left) with every size a whole number >= 1 or -1."""
    mesh = dict(mesh)
    for axis, size in mesh.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"config.{where}.{axis}={size!r}: a mesh axis size is a whole number >= 1, or -1 "
                              "for the devices the other axes leave")
    return mesh


def check_count(value, where: str, *, minimum: int = 0) -> int:
    """A whole-number setting (e.g. `reward_workers`) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{where}={value!r}: use a whole number >= {minimum}")
    return value


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


__all__ = ["ColdStartSettings", "ConfigError", "EvalSettings", "LoRAConfig", "RejectionSettings", "ReplaySettings",
           "SettingError", "check_count", "check_mesh", "check_rewards", "check_workdir", "config_section",
           "grpo_training", "lora_settings", "make_workdir", "reward_weights", "settings_from", "settings_section",
           "training_from", "training_section"]
