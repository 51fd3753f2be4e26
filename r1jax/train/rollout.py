"""Host <-> device glue of a rollout: prompts to padded tokens, samples back to text.

Shared by the GRPO loop (sample a group per prompt, score, train) and by evaluation
(`r1jax.evaluate`: sample k per prompt at the paper's temperature, score, pass@1 / cons@k).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.data import format_prompt, question_text
from r1jax.sampling import SampleOutput, generate
from r1jax.sharding import make_global_batch
from r1jax.tokenizers import Tokenizer


def prompt_texts(examples: Sequence[dict], task: str, template: str) -> list[str]:
    return [format_prompt(question_text(example, task), template) for example in examples]


def bucket_length(length: int, multiple: int = 32) -> int:
    """Pad lengths up to a multiple, so that a run compiles for a few prompt shapes only."""
    return -(-length // multiple) * multiple


def encode_prompts(tokenizer: Tokenizer, texts: Sequence[str], *, max_prompt_length: int,
                   repeat: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 tokens and mask [len(texts) * repeat, P], each prompt `repeat` times in a row."""
    ids = [tokenizer.encode(text, add_bos=tokenizer.bos_id is not None) for text in texts]
    longest = max(len(row) for row in ids)
    if longest > max_prompt_length:
        raise ValueError(f"a prompt has {longest} tokens, more than max_prompt_length={max_prompt_length}; "
                         "raise max_prompt_length or shorten the prompts")
    width = bucket_length(longest)
    tokens = np.full((len(ids) * repeat, width), tokenizer.pad_id, np.int32)
    mask = np.zeros_like(tokens)
    for i, row in enumerate(ids):
        for j in range(i * repeat, (i + 1) * repeat):
            tokens[j, width - len(row):] = row
            mask[j, width - len(row):] = 1
    return tokens, mask


class Rollout(NamedTuple):
    samples: SampleOutput  # device arrays, rows grouped by prompt
    completions: list[str]  # decoded text of each row
    lengths: np.ndarray  # [rows] completion lengths, on the host


def rollout(graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer, texts: Sequence[str], rng,
            *, repeat: int, max_prompt_length: int, max_new_tokens: int, temperature: float, top_p: float,
            mesh: Mesh) -> Rollout:
    """Sample `repeat` completions of each prompt text and decode them."""
    tokens, mask = encode_prompts(tokenizer, texts, max_prompt_length=max_prompt_length, repeat=repeat)
    tokens, mask = make_global_batch((tokens, mask), mesh)
    samples = generate(graphdef, params, tokens, mask, rng, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, stop_ids=tuple(sorted(tokenizer.stop_ids)),
                       pad_id=tokenizer.pad_id, mesh=mesh)
    # the one device-to-host copy of a rollout: the reward functions read text
    host_tokens, lengths = jax.device_get((samples.tokens, samples.lengths))
    completions = [tokenizer.decode(row[:n]) for row, n in zip(host_tokens, lengths)]
    return Rollout(samples, completions, np.asarray(lengths))


def training_batch(samples: SampleOutput) -> dict[str, jax.Array]:
    """Prompt + completion rows in the layout of `r1jax.train.objectives`."""
    tokens = jnp.concatenate([samples.prompt_tokens, samples.tokens], axis=1)
    attention_mask = jnp.concatenate([samples.prompt_mask, samples.mask], axis=1)
    completion_mask = jnp.concatenate([jnp.zeros_like(samples.prompt_mask), samples.mask], axis=1)
    return {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask}
