"""Training objectives: a model and a batch in, a scalar loss and metrics out.

Each `*_objective(...)` returns a `loss_fn(model, batch, rng, *, tokens_per_microbatch)`
for `make_train_step`; the step machinery is shared and only this function varies
between GRPO and SFT. The math lives in `r1jax.losses`; this file only binds it to a
model and to a typed batch: GRPO reads a `r1jax.rollout.RolloutBatch`, SFT an `SFTBatch`.

Every per-token array is aligned with `tokens`: `logps[:, t]` is the log-prob of
`tokens[:, t]` given `tokens[:, :t]`, i.e. it comes from the logits at position t - 1
(`sequence_logprobs`). Column 0 has no prediction and must be 0 in `completion_mask`.
"""
from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from r1jax.losses import grpo_loss, head_logprobs, sft_loss, token_logprobs
from r1jax.rollout import RolloutBatch
from r1jax.sampling import prefill


@struct.dataclass
class SFTBatch:
    """Prompt + target rows for SFT (`r1jax.train.sft.SFT.encode`), aligned like a `RolloutBatch`.

    tokens          int [B, T]
    attention_mask  [B, T]  1 on real tokens, 0 on padding
    completion_mask [B, T]  1 on the target tokens the loss counts
    segment_ids     [B, T]  optional: packed rows, several sequences per row (see
                            `Transformer.__call__`); 0 on padding
    """
    tokens: jax.Array
    attention_mask: jax.Array
    completion_mask: jax.Array
    segment_ids: jax.Array | None = None
    rows_per_group: ClassVar[int] = 1  # rows are independent: any split into microbatches will do


def _shift_right(x: jax.Array) -> jax.Array:
    """Move the per-position value of the prediction at t - 1 to the token at t; column 0 gets 0."""
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0)))


def sequence_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """f32 [B, T]: `logps[:, t] = log p(tokens[:, t] | tokens[:, :t])`, and `logps[:, 0] = 0`.

    logits: [B, T, V], logits[:, t] predicting the token at t + 1 (a causal LM's output).
    """
    # score every position against the next token rather than slicing the logits:
    # a [:, :-1] slice of the largest array of the step would be copied
    next_token_logps = token_logprobs(logits, jnp.roll(tokens, -1, axis=1))
    return _shift_right(next_token_logps)


def completion_logprobs(model, tokens: jax.Array, attention_mask: jax.Array, columns: int | None = None, *,
                        rows_per_group: int = 1) -> tuple[jax.Array, jax.Array]:
    """(logps, entropy) f32 [B, C] of the last C = `columns` columns of `tokens` (None, or more than
    T - 1: all but column 0).

    `logps[:, j] = log p(tokens[:, T - C + j] | tokens[:, :T - C + j])`, `entropy` the entropy of
    that prediction (no gradient). The LM head runs at those C positions only
    (`r1jax.losses.head_logprobs`): a GRPO rollout's completions fill the last `max_new_tokens`
    columns, and the prompt's logits, half of a [B, T, V] array, are never needed.

    rows_per_group: G > 1 when every G consecutive rows share their columns before the last
        C + 1 (a rollout's prompt, repeated for its G completions): each group's prompt then
        runs through the model once, and its keys and values serve the G rows (`_shared_prompt`),
        the same numbers for 1 / G of the prompt's work. A row whose prompt differs from its
        group's first row gets NaN log-probs (so a train step skips the update, loudly).
    """
    time = tokens.shape[1]
    if columns is not None and columns < 1:
        raise ValueError(f"columns={columns}: score at least one column (None: all of them)")
    # more columns than there are predictions (a batch shorter than a rollout) means all of them
    columns = time - 1 if columns is None else min(columns, time - 1)
    if rows_per_group > 1 and columns < time - 1:
        hidden = _shared_prompt(model, tokens, attention_mask, time - columns - 1, rows_per_group)
    else:
        hidden = model.hidden_states(tokens, attention_mask=attention_mask)[:, time - columns - 1:time - 1]
    return head_logprobs(hidden, model.head_weight(), tokens[:, time - columns:],
                         chunk_size=model.config.head_chunk_size)


def _shared_prompt(model, tokens, attention_mask, shared: int, group: int) -> jax.Array:
    """Hidden states [B, T - 1 - shared, D] of columns shared..T-2, the first `shared` columns run once per group.

    The prompt part goes into a KV cache of the group's first rows (`r1jax.sampling.prefill`, as the
    sampler does), the cache is repeated G times (its gradient sums over the group), and the rest of
    each row runs as one chunk against it:
    the keys, positions and masks of the full forward, so the same hidden states.
    """
    batch, time = tokens.shape
    if batch % group:
        raise ValueError(f"{batch} rows do not split into groups of rows_per_group={group}")
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    # a cache of the prompt alone, which the completions extend: no slots kept for them
    cache = prefill(model, tokens[::group, :shared], attention_mask[::group, :shared], shared)
    hidden, _ = model.hidden_states(tokens[:, shared:time - 1], attention_mask=attention_mask[:, :time - 1],
                                    positions=positions[:, shared:time - 1], cache=cache.repeat_rows(group))
    first = lambda x: jnp.repeat(x[::group, :shared], group, axis=0)
    same = jnp.all((tokens[:, :shared] == first(tokens)) & (attention_mask[:, :shared] == first(attention_mask)),
                   axis=1)
    return jnp.where(same[:, None, None], hidden, jnp.nan)


def _masked_mean(x, mask):
    mask = mask.astype(jnp.float32)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1)


def grpo_objective(*, beta: float = 0.04, epsilon_low: float = 0.2, epsilon_high: float | None = None,
                   loss_type: str = "grpo", max_completion_length: int | None = None,
                   importance_sampling_level: str = "token", completion_columns: int | None = None):
    """The GRPO loss (`r1jax.losses.grpo_loss`, same options) of the policy on a `RolloutBatch`.

    With one update per rollout (mu = 1) leave the batch's `old_logps` None: the sampling
    policy is the current one, so its log-probs are the current ones without gradient.
    With beta == 0 `ref_logps` is not read (nor needed).
    completion_columns: the completions lie in the last this many columns of `tokens`
        (`completion_mask` must be 0 before them): the LM head and the loss run there only
        (`completion_logprobs`). None: every column. A batch's own `completion_columns` (a
        rollout's width, set by `training_batch`) takes precedence.
    A batch whose `rows_per_group` is G > 1 runs each group's prompt once (`completion_logprobs`).
    Metrics: those of `grpo_loss` plus `entropy`, the mean policy entropy over completion tokens.
    """

    def loss_fn(model, batch: RolloutBatch, rng, *, tokens_per_microbatch):
        del rng  # deterministic
        if not isinstance(batch, RolloutBatch):
            raise TypeError(f"the GRPO objective reads a RolloutBatch (r1jax.rollout), got {type(batch).__name__}")
        tokens = batch.tokens
        columns = completion_columns if batch.completion_columns is None else batch.completion_columns
        logps, token_entropy = completion_logprobs(model, tokens, batch.attention_mask, columns,
                                                   rows_per_group=batch.rows_per_group)
        scored = slice(tokens.shape[1] - logps.shape[1], None)  # the columns logps covers
        completion_mask = batch.completion_mask[:, scored]
        old_logps = jax.lax.stop_gradient(logps) if batch.old_logps is None else batch.old_logps[:, scored]
        if beta != 0 and batch.ref_logps is None:
            raise ValueError(f"beta={beta} needs the reference log-probs: set the batch's `ref_logps` [B, T] "
                             "(see make_logprobs_fn) or set beta=0")
        if batch.advantages is None:
            raise ValueError("the batch has no advantages: score the rollout first (group_advantages)")
        loss, metrics = grpo_loss(
            logps, old_logps, batch.ref_logps[:, scored] if beta != 0 else None, batch.advantages,
            completion_mask, epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta,
            loss_type=loss_type, max_completion_length=max_completion_length,
            importance_sampling_level=importance_sampling_level,
            # the step averages microbatches, so a token sum divided by the per-microbatch
            # share of the global count gives mean_m(S_m / (N / M)) = sum(S) / N exactly
            num_global_tokens=tokens_per_microbatch)
        metrics["entropy"] = _masked_mean(token_entropy, completion_mask)
        return loss, metrics

    return loss_fn


def next_token_targets(batch: SFTBatch) -> tuple[jax.Array, jax.Array]:
    """(targets, target_mask) [B, T]: position t predicts token t + 1 where that token counts.

    The last position predicts nothing, nor does the last token of a packed segment: the
    next token belongs to another sequence.
    """
    targets = jnp.roll(batch.tokens, -1, axis=1)
    target_mask = jnp.roll(batch.completion_mask, -1, axis=1).at[:, -1].set(0).astype(bool)
    if batch.segment_ids is not None:
        target_mask &= jnp.roll(batch.segment_ids, -1, axis=1) == batch.segment_ids
    return targets, target_mask


def sft_forward(model, batch: SFTBatch) -> jax.Array:
    """The logits of a (possibly packed) SFT batch."""
    return model(batch.tokens, attention_mask=batch.attention_mask, segment_ids=batch.segment_ids)


def sft_objective():
    """Token cross-entropy on the `completion_mask` tokens, averaged over the whole global batch.

    Every token weighs the same however the batch is cut into microbatches and devices
    (a per-microbatch mean would weigh tokens of short microbatches more), and whether
    the rows are padded or packed.
    Metrics: `accuracy` (argmax == target) over the counted tokens.
    """

    def loss_fn(model, batch: SFTBatch, rng, *, tokens_per_microbatch):
        del rng
        logits = sft_forward(model, batch)
        targets, target_mask = next_token_targets(batch)
        mean_loss, metrics = sft_loss(logits, targets, target_mask)
        num_tokens = target_mask.astype(jnp.float32).sum()
        return mean_loss * num_tokens / jnp.maximum(tokens_per_microbatch, 1), metrics

    return loss_fn
