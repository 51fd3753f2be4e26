"""The SFT stage: supervised training of a model on (prompt, completion) pairs, exported when done."""
from __future__ import annotations

import pathlib
from typing import Callable, Mapping, Sequence

from flax import nnx
from jax.sharding import Mesh

from r1jax.data import PromptIterator
from r1jax.models import Transformer, from_pretrained
from r1jax.models.lora import LoRAConfig, add_lora
from r1jax.pipelines.stages.export import export_adapters, export_model
from r1jax.pipelines.stages.runner import STOPPED
from r1jax.tokenizers import Tokenizer
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.sft import SFT, SFTSettings
from r1jax.train.state import OptimizerSettings


def sft_stage(output: pathlib.Path, init: Transformer | pathlib.Path, examples: Sequence, *,
              to_pairs: Callable | None, tokenizer: Tokenizer, loop: LoopSettings, optimizer: OptimizerSettings,
              batches: SFTSettings, mesh: Mesh, seed: int, name: str, model_overrides: Mapping | None = None,
              evaluate=None, lora: LoRAConfig = LoRAConfig()):
    """Supervised training of `init` (a checkpoint, or a model) on `examples` (pairs, or examples
    `to_pairs` turns into pairs), resumed from `output`'s checkpoints. A set of fewer examples
    than `batches.batch_size` is seen whole at every step.

    Exports the result (with the tokenizer's files) to `output/model` and returns that path;
    `STOPPED` when SIGTERM stopped the run (a checkpoint holds its progress). `lora` with a rank: LoRA
    adapters train on the frozen checkpoint `init`; the export is merged, and `output/adapter` holds the
    adapters alone in PEFT's layout.
    """
    if lora.rank and not isinstance(init, pathlib.Path):
        raise ValueError("a LoRA policy adapts a checkpoint: give `init` as its path")
    model = (from_pretrained(init, mesh=mesh, **dict(model_overrides or {})) if isinstance(init, pathlib.Path)
             else init)
    add_lora(model, lora, rngs=nnx.Rngs(seed))
    sft = SFT(batches, tokenizer=tokenizer, mesh=mesh, to_pairs=to_pairs, num_microbatches=loop.num_microbatches)
    result = run_training(
        loop, workdir=output, model=model, optimizer=optimizer.optimizer(loop.steps), loss_fn=sft.objective(),
        data=PromptIterator(examples, batch_size=min(batches.batch_size, len(examples)), seed=seed),
        make_batches=sft.make_batches, mesh=mesh, evaluate=evaluate, name=name, seed=seed,
        plot_keys=("loss", "accuracy"))
    if not result.completed:
        return STOPPED
    if lora.rank:  # first: the model's export marks the stage done
        export_adapters(result.state.model(), output / "adapter", base_model=init)
    export_model(result.state.model(), output / "model", tokenizer)
    return output / "model"
