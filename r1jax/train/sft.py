"""Supervised fine-tuning on (prompt, completion) pairs, on the shared step machinery.

Serves the stand-in pretraining of our tiny base models, R1's cold start, the SFT after
rejection sampling and distillation: only the data differs. The loss counts the
completion tokens (and the EOS that ends them), never the prompt.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax.sharding import make_global_batch
from r1jax.tokenizers import Tokenizer
from r1jax.train.objectives import sft_objective


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    max_length: int = 256  # prompt + completion tokens; longer pairs are an error, not truncated


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], *, max_length: int,
                 pad_to_multiple: int = 32) -> dict[str, np.ndarray]:
    """Left-padded rows `prompt + completion + EOS` in the layout of `r1jax.train.objectives`."""
    rows, completion_lengths = [], []
    for prompt, completion in pairs:
        prompt_ids = tokenizer.encode(prompt, add_bos=tokenizer.bos_id is not None)
        completion_ids = tokenizer.encode(completion) + [tokenizer.eos_id]
        if len(prompt_ids) + len(completion_ids) > max_length:
            raise ValueError(f"an SFT example has {len(prompt_ids) + len(completion_ids)} tokens, more than "
                             f"max_length={max_length}; raise max_length or filter long examples")
        rows.append(prompt_ids + completion_ids)
        completion_lengths.append(len(completion_ids))
    width = -(-max(len(r) for r in rows) // pad_to_multiple) * pad_to_multiple
    tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    attention_mask = np.zeros_like(tokens)
    completion_mask = np.zeros_like(tokens)
    for i, (row, n) in enumerate(zip(rows, completion_lengths)):
        tokens[i, width - len(row):] = row
        attention_mask[i, width - len(row):] = 1
        completion_mask[i, width - n:] = 1
    return {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask}


class SFT:
    """The SFT stage: `objective()` for the train step and `make_batches` for the loop.

    The data iterator yields lists of (prompt, completion) pairs, or of examples that
    `to_pairs(examples, np_rng)` turns into pairs; the latter draws completions afresh at
    every step (e.g. sampled noisy solutions) from a generator seeded by the step's key,
    so a resumed run sees the same completions.
    """

    def __init__(self, settings: SFTSettings, *, tokenizer: Tokenizer, mesh: Mesh,
                 to_pairs: Callable[[Sequence, np.random.Generator], list[tuple[str, str]]] | None = None):
        self.settings = settings
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.to_pairs = to_pairs

    def objective(self):
        return sft_objective()

    def make_batches(self, state, pairs: Sequence, rng):
        del state
        if self.to_pairs is not None:
            seed = np.asarray(jax.random.key_data(rng)).ravel().tolist()
            pairs = self.to_pairs(pairs, np.random.default_rng(seed))
        batch = encode_pairs(self.tokenizer, pairs, max_length=self.settings.max_length)
        num_tokens = int(batch["completion_mask"].sum())
        return [make_global_batch(batch, self.mesh)], {"completion_tokens": float(num_tokens)}
