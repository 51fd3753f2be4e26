"""The reward-model stage: a Bradley-Terry reward model on preference pairs, the judge of general prompts.

Its result is a judge (`RewardModelJudge`), not an export: the stage always runs, and a
finished run restores its last checkpoint and returns at once.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

from jax.sharding import Mesh

from r1jax.data import PromptIterator
from r1jax.models import from_pretrained
from r1jax.models.reward_model import RewardModel
from r1jax.pipelines.stages.runner import STOPPED
from r1jax.tokenizers import Tokenizer
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.reward_model import RewardModelJudge, RewardModelSettings, RewardModelTraining
from r1jax.train.state import OptimizerSettings


def reward_model_stage(output: pathlib.Path, init: pathlib.Path, *, pairs: Sequence[tuple[str, str, str]],
                       loop: LoopSettings, optimizer: OptimizerSettings, settings: RewardModelSettings,
                       tokenizer: Tokenizer, mesh: Mesh, seed: int):
    """A reward model with the body of the checkpoint `init`, trained on (prompt, chosen, rejected)
    `pairs`, `settings.batch_size` of them a step; its judge, or `STOPPED`."""
    training = RewardModelTraining(settings, tokenizer=tokenizer, mesh=mesh)
    result = run_training(
        loop, workdir=output, model=RewardModel.from_transformer(from_pretrained(init, mesh=mesh)),
        optimizer=optimizer.optimizer(loop.steps), loss_fn=training.objective(),
        data=PromptIterator(pairs, batch_size=settings.batch_size, seed=seed), make_batches=training.make_batches,
        mesh=mesh, name="reward_model", seed=seed, plot_keys=("loss", "accuracy"))
    if not result.completed:
        return STOPPED
    return RewardModelJudge(result.state.graphdef, result.state.params, tokenizer, mesh)
