"""Host <-> device glue of a rollout: prompts to padded tokens, samples back to text.

Shared by the GRPO loop (sample a group per prompt, score, train) and by evaluation
(sample k per prompt at the paper's temperature, score, pass@1 / cons@k).
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.data import format_prompt, question_text
from r1jax.evaluation import EVAL_TEMPERATURE, EVAL_TOP_P, cons_at_k, mean_response_length, pass_at_1
from r1jax.rewards.extraction import extract_final_answer
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


def evaluate_policy(graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer,
                    examples: Sequence[dict], *, task: str, template: str,
                    correct_fn: Callable[..., float | None],
                    scores: Mapping[str, Callable[..., float | None]] | None = None, rng,
                    num_samples: int, max_prompt_length: int, max_new_tokens: int,
                    temperature: float = EVAL_TEMPERATURE, top_p: float = EVAL_TOP_P, mesh: Mesh,
                    batch_prompts: int = 64) -> dict[str, float]:
    """pass@1 averaged over `num_samples` samples per prompt, cons@k, length and mean `scores`.

    scores: name -> reward function (e.g. {"format_reward": format, "language": language});
      the result holds each one's mean over the samples it can judge (not None).

    Rewards are scored inline (no worker pool): evaluation is rare and its completions
    are short, and keeping it synchronous makes its numbers independent of timeouts.
    """
    scores = dict(scores or {})
    correct, answers, lengths = [], [], []
    scored: dict[str, list[float]] = {name: [] for name in scores}
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start:start + batch_prompts]
        out = rollout(graphdef, params, tokenizer, prompt_texts(chunk, task, template),
                      jax.random.fold_in(rng, start), repeat=num_samples,
                      max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, mesh=mesh)
        lengths.extend(out.lengths.tolist())
        for i, completion in enumerate(out.completions):
            example = chunk[i // num_samples]
            score = correct_fn(completion, **example)
            correct.append(bool(score) if score is not None else False)
            answers.append(extract_final_answer(completion))
            for name, score_fn in scores.items():
                value = score_fn(completion, **example)
                if value is not None:
                    scored[name].append(value)
    correct_grid = np.asarray(correct).reshape(len(examples), num_samples)
    answer_grid = [answers[i * num_samples:(i + 1) * num_samples] for i in range(len(examples))]
    result = {"pass_at_1": pass_at_1(correct_grid),
              f"cons_at_{num_samples}": cons_at_k(answer_grid, correct_grid),
              "response_length": mean_response_length(lengths)}
    for name, values in scored.items():
        result[name] = float(np.mean(values)) if values else float("nan")
    return result
