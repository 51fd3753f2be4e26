"""The building blocks the recipes chain: each stage leaves its result in a workdir folder.

A stage whose result is already there is skipped (a finished model export has its
`config.json`; exports are renamed into place, so a kill never leaves a half-written
one), and a stage that was killed resumes from its latest checkpoint through
`run_training`. A result that does not match the config is refused with an error that
says what differs, and nothing is touched.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil
from typing import Callable, Mapping, Sequence

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from r1jax.checkpoint import IncompatibleCheckpointError
from r1jax.data import PromptIterator
from r1jax.distributed import barrier, host_copy, is_primary
from r1jax.evaluation.evaluate import evaluate_policy
from r1jax.files import write_json_atomically
from r1jax.models import ModelConfig, Transformer, from_pretrained, save_pretrained
from r1jax.pipelines.settings import EvalSettings, TrainSettings
from r1jax.rewards import RewardEvaluator, get_reward
from r1jax.rollout import PromptRenderer
from r1jax.tasks import Task
from r1jax.tokenizers import Tokenizer
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.sft import SFT, SFTSettings
from r1jax.train.state import make_optimizer, train_state_from_model

log = logging.getLogger(__name__)

_ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                        "num_kv_heads")


def exported(directory: pathlib.Path, wanted: ModelConfig | None = None) -> bool:
    """Whether a finished export is in `directory`; refuses one of another architecture."""
    config_file = directory / "config.json"
    if not config_file.exists():
        return False
    if wanted is not None:
        saved = ModelConfig.from_hf(json.loads(config_file.read_text()))
        differ = [f"{f}: {getattr(saved, f)} vs {getattr(wanted, f)}" for f in _ARCHITECTURE_FIELDS
                  if getattr(saved, f) != getattr(wanted, f)]
        if differ:
            raise IncompatibleCheckpointError(
                f"{directory} holds a model that does not match this config ({', '.join(differ)}; saved "
                "vs config). Use a new --config.workdir, or delete that workdir to start over; nothing "
                "was changed.")
    return True


def export_model(model: Transformer, directory: pathlib.Path, tokenizer: Tokenizer | None = None):
    """Save `model` (and its tokenizer files) as a Hugging Face checkpoint in `directory`, all at once or
    not at all.

    With several processes, every process calls it: the weights are gathered, process 0
    writes them, and the others wait until the export is in place.
    """
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, host_copy(state))
    if is_primary():
        partial = directory.with_name(directory.name + ".partial")
        if partial.exists():  # our own leftover of a run killed while exporting
            shutil.rmtree(partial)
        save_pretrained(model, partial, tokenizer=tokenizer)
        partial.rename(directory)
    barrier(f"export {directory}")


def sft_stage(workdir: pathlib.Path, *, init: Transformer | pathlib.Path, examples: Sequence,
              to_pairs: Callable | None, tokenizer: Tokenizer, steps: int, batch_size: int,
              learning_rate: float, warmup_steps: int, mesh: Mesh, seed: int, name: str,
              max_length: int = 256, packing: bool = False, schedule: str = "cosine", weight_decay: float = 0.01,
              model_overrides: Mapping | None = None, evaluate=None) -> Transformer | None:
    """Supervised training of `init` on `examples` (pairs, or examples `to_pairs` turns into pairs).

    Exports the result (with the tokenizer's files) to `workdir/model` and returns it;
    returns None when SIGTERM stopped the run (a checkpoint holds its progress) and the
    export when it already exists.
    """
    out = workdir / "model"
    if exported(out):
        return from_pretrained(out, mesh=mesh)
    model = (from_pretrained(init, mesh=mesh, **dict(model_overrides or {})) if isinstance(init, pathlib.Path)
             else init)
    sft = SFT(SFTSettings(max_length=max_length, packing=packing), tokenizer=tokenizer, mesh=mesh, to_pairs=to_pairs)
    result = run_training(
        LoopSettings(steps=steps, save_every=max(steps // 3, 1), seed=seed, plot_keys=("loss", "accuracy")),
        workdir=workdir, model=model,
        optimizer=make_optimizer(learning_rate, warmup_steps, steps, schedule=schedule, weight_decay=weight_decay),
        loss_fn=sft.objective(), data=PromptIterator(examples, batch_size=batch_size, seed=seed),
        make_batches=sft.make_batches, mesh=mesh, evaluate=evaluate, name=name)
    if not result.completed:
        return None
    export_model(result.state.model(), out, tokenizer)
    return from_pretrained(out, mesh=mesh)


def evaluate_stage(graphdef, params, renderer: PromptRenderer, examples: Sequence[dict], *, task: Task,
                   settings: EvalSettings, max_new_tokens: int, mesh: Mesh, seed: int,
                   per_prompt: bool = False) -> dict:
    """Held-out pass@1 over `settings.num_samples` samples, cons@k, length and the mean of each of
    `settings.scores` (result key -> registered reward name), with standard errors (and the
    per-prompt values, for paired comparisons: `r1jax.evaluation.evaluate.evaluate_policy`)."""
    return evaluate_policy(
        graphdef, params, renderer, examples, task=task,
        scores={key: get_reward(name) for key, name in dict(settings.scores).items()},
        rng=jax.random.key(seed), num_samples=settings.num_samples, max_prompt_length=settings.max_prompt_length,
        max_new_tokens=settings.max_new_tokens or max_new_tokens, temperature=settings.temperature,
        top_p=settings.top_p, mesh=mesh, per_prompt=per_prompt)


def grpo_stage(workdir: pathlib.Path, *, init: pathlib.Path, train: Sequence[dict], tokenizer: Tokenizer,
               task: Task, rewards: Mapping[str, float], settings: GRPOSettings, train_settings: TrainSettings,
               mesh: Mesh, seed: int, reward_workers: int, evaluate: Callable | None = None, model_reward=None,
               model_overrides: Mapping | None = None, sampler_mesh: Mesh | None = None) -> pathlib.Path | None:
    """GRPO from the checkpoint `init` on the `train` prompts of `task`, with the KL reference = `init`.

    Exports the result (with the tokenizer's files) to `workdir/model` and returns that
    path; None when SIGTERM stopped the run. `model_overrides`: `ModelConfig` fields such
    as the dtype policy and remat. `model_reward` is an optional judge for prompts the rule
    rewards do not cover (see `r1jax.train.grpo`). `sampler_mesh`: where the rollout runs
    (None: `mesh`).
    """
    out = workdir / "model"
    if exported(out):
        return out
    for name in rewards:
        get_reward(name)
    model = from_pretrained(init, mesh=mesh, **dict(model_overrides or {}))  # each host reads its shards
    t = train_settings
    with RewardEvaluator(dict(rewards), num_workers=reward_workers) as evaluator:
        stage = GRPO(settings, tokenizer=tokenizer, rewards=evaluator, task=task, mesh=mesh, model_reward=model_reward,
                     sampler_mesh=sampler_mesh)
        # the reference keeps a copy of the initial parameters (`set_reference`): one load serves both
        stage.set_reference(train_state_from_model(model, optax.identity(), mesh))
        result = run_training(
            LoopSettings(steps=t.steps, save_every=t.save_every, eval_every=t.eval_every, seed=seed),
            workdir=workdir, model=model,
            optimizer=make_optimizer(t.learning_rate, t.warmup_steps, t.steps, schedule=t.schedule,
                                     weight_decay=t.weight_decay),
            loss_fn=stage.objective(), data=PromptIterator(train, batch_size=settings.prompts_per_step, seed=seed),
            make_batches=stage.make_batches, mesh=mesh, evaluate=evaluate, name=workdir.name)
    if not result.completed:
        return None
    export_model(result.state.model(), out, tokenizer)
    return out


def cached(path: pathlib.Path, compute: Callable[[], dict], *, needs: Sequence[str] = ()) -> dict:
    """`compute()`'s result, stored as JSON at `path` the first time (evaluations are slow).

    A stored result without every key in `needs` (written by an older version) is computed
    again and replaced: it is derived data, and the checkpoint it came from is still there.
    """
    if path.exists():
        stored = json.loads(path.read_text())
        if all(key in stored for key in needs):
            return stored
    value = compute()  # every process computes it (a collective); process 0 writes it
    if is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, value, indent=2)
    barrier(f"cached {path}")
    return value


def split(model: Transformer):
    """(graphdef, params) of a model, the form the sampler and evaluation take."""
    return nnx.split(model, nnx.Param)
