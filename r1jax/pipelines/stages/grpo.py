"""The GRPO stage: RL from a checkpoint with rule rewards (and an optional judge), exported when done."""
from __future__ import annotations

import pathlib
from typing import Callable, Mapping, Sequence

import optax
from flax import nnx
from jax.sharding import Mesh

from r1jax.models import from_pretrained
from r1jax.models.lora import LoRAConfig, add_lora
from r1jax.pipelines.stages.export import export_adapters, export_model
from r1jax.pipelines.stages.runner import STOPPED
from r1jax.rewards import RewardEvaluator, get_reward
from r1jax.tasks import Task
from r1jax.tokenizers import Tokenizer
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.state import OptimizerSettings, train_state_from_model


def grpo_stage(output: pathlib.Path, init: pathlib.Path, model_reward=None, *, train: Sequence[dict],
               tokenizer: Tokenizer, task: Task, rewards: Mapping[str, float], settings: GRPOSettings,
               loop: LoopSettings, optimizer: OptimizerSettings, mesh: Mesh, seed: int, reward_workers: int,
               evaluate: Callable | None = None, model_overrides: Mapping | None = None,
               sampler_mesh: Mesh | None = None, lora: LoRAConfig = LoRAConfig()):
    """GRPO from the checkpoint `init` on the `train` prompts of `task`, with the KL reference = `init`,
    resumed from `output`'s checkpoints.

    Exports the result (with the tokenizer's files) to `output/model` and returns that
    path; `STOPPED` when SIGTERM stopped the run. `model_overrides`: `ModelConfig` fields such
    as the dtype policy and remat. `model_reward` is an optional judge for prompts the rule
    rewards do not cover (see `r1jax.train.grpo`). `sampler_mesh`: where the rollout runs
    (None: `mesh`). `lora` with a rank: a LoRA policy, its adapters trained on the frozen `init`, which
    is then also the KL reference (no second copy); the export is merged, and `output/adapter` holds the
    adapters alone in PEFT's layout.
    """
    for name in rewards:
        get_reward(name)
    model = from_pretrained(init, mesh=mesh, **dict(model_overrides or {}))  # each host reads its shards
    add_lora(model, lora, rngs=nnx.Rngs(seed))
    with RewardEvaluator(dict(rewards), num_workers=reward_workers) as evaluator:
        stage = GRPO(settings, tokenizer=tokenizer, rewards=evaluator, task=task, mesh=mesh, model_reward=model_reward,
                     sampler_mesh=sampler_mesh)
        # the reference keeps a copy of the initial parameters (`set_reference`): one load serves both
        stage.set_reference(train_state_from_model(model, optax.identity(), mesh))
        result = run_training(
            loop, workdir=output, model=model, optimizer=optimizer.optimizer(loop.steps),
            loss_fn=stage.objective(), data=stage.prompt_iterator(train, seed=seed),
            make_batches=stage.make_batches, mesh=mesh, evaluate=evaluate, name=output.name, seed=seed)
    if not result.completed:
        return STOPPED
    if lora.rank:  # first: the model's export marks the stage done
        export_adapters(result.state.model(), output / "adapter", base_model=init)
    export_model(result.state.model(), output / "model", tokenizer)
    return output / "model"
