"""The SFT stage: supervised training of a model on (prompt, completion) pairs, exported when done."""
from __future__ import annotations

import pathlib
from typing import Callable, Mapping, Sequence

from jax.sharding import Mesh

from r1jax.data import PromptIterator
from r1jax.models import Transformer, from_pretrained
from r1jax.pipelines.stages.export import export_model
from r1jax.pipelines.stages.runner import STOPPED
from r1jax.tokenizers import Tokenizer
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.sft import SFT, SFTSettings
from r1jax.train.state import make_optimizer


def sft_stage(output: pathlib.Path, init: Transformer | pathlib.Path, examples: Sequence, *,
              to_pairs: Callable | None, tokenizer: Tokenizer, steps: int, batch_size: int,
              learning_rate: float, warmup_steps: int, mesh: Mesh, seed: int, name: str,
              max_length: int = 256, packing: bool = False, schedule: str = "cosine", weight_decay: float = 0.01,
              model_overrides: Mapping | None = None, evaluate=None):
    """Supervised training of `init` (a checkpoint, or a model) on `examples` (pairs, or examples
    `to_pairs` turns into pairs), resumed from `output`'s checkpoints.

    Exports the result (with the tokenizer's files) to `output/model` and returns that path;
    `STOPPED` when SIGTERM stopped the run (a checkpoint holds its progress).
    """
    model = (from_pretrained(init, mesh=mesh, **dict(model_overrides or {})) if isinstance(init, pathlib.Path)
             else init)
    sft = SFT(SFTSettings(max_length=max_length, packing=packing), tokenizer=tokenizer, mesh=mesh, to_pairs=to_pairs)
    result = run_training(
        LoopSettings(steps=steps, save_every=max(steps // 3, 1), seed=seed, plot_keys=("loss", "accuracy")),
        workdir=output, model=model,
        optimizer=make_optimizer(learning_rate, warmup_steps, steps, schedule=schedule, weight_decay=weight_decay),
        loss_fn=sft.objective(), data=PromptIterator(examples, batch_size=batch_size, seed=seed),
        make_batches=sft.make_batches, mesh=mesh, evaluate=evaluate, name=name)
    if not result.completed:
        return STOPPED
    export_model(result.state.model(), output / "model", tokenizer)
    return output / "model"
