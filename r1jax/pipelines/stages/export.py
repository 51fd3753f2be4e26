"""Model exports, the result of every training stage: written all at once or not at all.

A finished export has its `config.json` (exports are renamed into place, so a kill never
leaves a half-written one); an export of another architecture than the config asks for is
refused with an error that says what differs, and nothing is touched.
"""
from __future__ import annotations

import json
import pathlib
import shutil

from flax import nnx

from r1jax.checkpoint import IncompatibleCheckpointError
from r1jax.distributed import barrier, host_copy, is_primary
from r1jax.models import ModelConfig, Transformer, save_peft, save_pretrained
from r1jax.tokenizers import Tokenizer

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
    _export(lambda model, path: save_pretrained(model, path, tokenizer=tokenizer), model, directory)


def export_adapters(model: Transformer, directory: pathlib.Path, *, base_model: pathlib.Path | str):
    """Save `model`'s LoRA adapters alone in PEFT's layout (`r1jax.models.save_peft`) in `directory`, all at
    once, replacing an earlier one (of a run killed before its model export, which marks the stage done)."""
    _export(lambda model, path: save_peft(model, path, base_model=str(base_model)), model, directory, replace=True)


def _export(write, model: Transformer, directory: pathlib.Path, *, replace: bool = False):
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, host_copy(state))
    if is_primary():
        partial = directory.with_name(directory.name + ".partial")
        if partial.exists():  # our own leftover of a run killed while exporting
            shutil.rmtree(partial)
        write(model, partial)
        if replace and directory.exists():
            shutil.rmtree(directory)
        partial.rename(directory)
    barrier(f"export {directory}")


def split(model: Transformer):
    """(graphdef, params) of a model, the form the sampler and evaluation take."""
    return nnx.split(model, nnx.Param)
