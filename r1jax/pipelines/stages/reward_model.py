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
from r1jax.train.state import make_optimizer


def reward_model_stage(output: pathlib.Path, init: pathlib.Path, *, pairs: Sequence[tuple[str, str, str]], section,
                       tokenizer: Tokenizer, mesh: Mesh, seed: int):
    """A reward model with the body of the checkpoint `init`, trained on (prompt, chosen, rejected)
    `pairs` (`section`: steps, batch_size, learning_rate, warmup_steps); its judge, or `STOPPED`."""
    training = RewardModelTraining(RewardModelSettings(), tokenizer=tokenizer, mesh=mesh)
    result = run_training(
        LoopSettings(steps=section.steps, save_every=section.steps, seed=seed, plot_keys=("loss", "accuracy")),
        workdir=output, model=RewardModel.from_transformer(from_pretrained(init, mesh=mesh)),
        optimizer=make_optimizer(section.learning_rate, section.warmup_steps, section.steps, weight_decay=0.01),
        loss_fn=training.objective(), data=PromptIterator(pairs, batch_size=section.batch_size, seed=seed),
        make_batches=training.make_batches, mesh=mesh, name="reward_model")
    if not result.completed:
        return STOPPED
    return RewardModelJudge(result.state.graphdef, result.state.params, tokenizer, mesh)
