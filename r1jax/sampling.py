"""Batched generation with a KV cache, compiled end to end: prefill, then the decode loop.

`generate(graphdef, state, prompt_tokens, prompt_mask, rng, ...)` is the pure core the
GRPO trainer calls with its current parameters: the parameters are an argument (new
values never recompile), the sampling settings are static (each setting compiles once).
Everything here runs on device; the host side (rendering prompts, padding them with
`r1jax.batching`, placing the batch on a mesh, decoding text) is `r1jax.rollout`.

Layout of one call, for B rows, prompts padded to P and N new tokens: the cache holds
P + N - 1 slots (rounded up to whole attention blocks when decoding attends blockwise: each
decode step then reads only the blocks filled so far, `r1jax.models.attention`). Prompts
are padded on the left, so every row's newest prompt token is
in slot P - 1 and new token t goes to slot P + t for all rows at once; padding slots
stay masked as keys, and each row's RoPE positions count only its real tokens. The
prefill writes slots [0, P - 1); decode step t feeds slot P - 1 + t (the prompt's last
token at t = 0) and draws new token t from its logits.
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.models.transformer import KVCache, Transformer, cache_slots
from r1jax.sharding import activate, constrain

# Vocabulary block of the two-stage Gumbel-max draw (see `_categorical`).
_BLOCK = 256


class SampleOutput(NamedTuple):
    """What GRPO needs from a batch of generations; all arrays have B rows.

    tokens: [B, N] int32 completions; `pad_id` after a row stops.
    logprobs: [B, N] float32 log-probability of each token under the distribution it was
        drawn from, i.e. after temperature, top-k and top-p (renormalised). 0 where `mask`
        is 0, and 0 everywhere for greedy decoding (a point mass). At temperature 1 without
        top-k/top-p they are the policy's log-probs, equal to the training forward's to float32
        rounding (tested), and GRPO takes its ratio's old log-probs from here.
    mask: [B, N] int32, 1 up to and including the stop token.
    lengths: [B] int32 number of completion tokens, `mask.sum(-1)`.
    prompt_tokens, prompt_mask: [B, P] the left-padded prompts the completions continue.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    prompt_tokens: jax.Array
    prompt_mask: jax.Array


# ---- drawing one token -----------------------------------------------------------------

def _argmax(x: jax.Array) -> jax.Array:
    """First index of the maximum over the last axis (XLA:CPU's variadic-reduce argmax is ~5x slower)."""
    is_max = x == jnp.max(x, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(is_max, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1)
    return jnp.minimum(first, x.shape[-1] - 1).astype(jnp.int32)


def _categorical(rng: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw per row from softmax(logits) [B, V]; returns (index [B], log-probability [B]).

    Gumbel-max in two stages, exact because p(token) = p(block) * p(token | block): pick
    one of the ceil(V / 256) vocabulary blocks by its total probability, then a token
    inside it. That needs ~V / 128 random numbers per row instead of V: on CPU,
    `jax.random.categorical` over [32, 49152] takes about as long as a whole decode step
    of SmolLM2-135M, this about 2% of it.
    """
    batch, vocab = logits.shape
    num_blocks = -(-vocab // _BLOCK)
    padded = jnp.pad(logits, ((0, 0), (0, num_blocks * _BLOCK - vocab)), constant_values=-jnp.inf)
    blocks = padded.reshape(batch, num_blocks, _BLOCK)
    block_logits = jax.nn.logsumexp(blocks, axis=-1)  # log of each block's unnormalised mass
    block_rng, token_rng = jax.random.split(rng)
    block = _argmax(block_logits + jax.random.gumbel(block_rng, block_logits.shape))
    within = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [B, 256]
    offset = _argmax(within + jax.random.gumbel(token_rng, within.shape))
    chosen_logit = jnp.take_along_axis(within, offset[:, None], axis=1)[:, 0]
    logprob = chosen_logit - jax.nn.logsumexp(block_logits, axis=-1)
    return block * _BLOCK + offset, logprob


def nucleus(logits: jax.Array, top_p: float) -> jax.Array:
    """Top-p filter: keep the smallest set of most probable tokens whose mass reaches top_p.

    logits [B, V] -> the same with every other token set to -inf. Tokens tied with the
    least probable kept one are kept too. The threshold is found without sorting the
    vocabulary (XLA:CPU's sort of [32, 49152] takes ~0.5 s): bisection on the bit pattern
    of the float32 probability threshold, which orders non-negative floats like the floats
    themselves, so 31 halvings land on the exact smallest kept probability.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def as_float(bits):
        return jax.lax.bitcast_convert_type(bits, jnp.float32)[:, None]

    def halve(_, bounds):
        kept, dropped = bounds  # mass(probs >= kept) >= top_p > mass(probs >= dropped)
        middle = kept + (dropped - kept) // 2
        reaches = jnp.sum(jnp.where(probs >= as_float(middle), probs, 0.0), axis=-1) >= top_p
        return jnp.where(reaches, middle, kept), jnp.where(reaches, dropped, middle)

    max_bits = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32)
    kept, _ = jax.lax.fori_loop(0, 31, halve, (jnp.zeros_like(max_bits), max_bits + 1))
    return jnp.where(probs >= as_float(kept), logits, -jnp.inf)


def sample_token(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int = 0,
                 top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Draw a token per row from logits [B, V]; returns (tokens [B] int32, logprobs [B] f32).

    The sampling distribution is softmax(logits / temperature) restricted to the top_k
    most likely tokens (0 = all; exactly k, ties broken by index), then to the top_p
    nucleus, renormalised; `logprobs` are under that distribution. temperature == 0 is
    greedy (logprob 0). The settings are Python numbers: each branch is chosen at trace
    time, so the default top_p == 1 and top_k == 0 cost nothing.
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return _argmax(logits), jnp.zeros(logits.shape[:1], jnp.float32)
    logits = logits / temperature
    candidates = None
    if top_k:
        logits, candidates = jax.lax.top_k(logits, top_k)
    if top_p < 1:
        logits = nucleus(logits, top_p)
    choice, logprob = _categorical(rng, logits)
    if candidates is not None:
        choice = jnp.take_along_axis(candidates, choice[:, None], axis=1)[:, 0]
    return choice.astype(jnp.int32), logprob


# ---- the model with a cache ------------------------------------------------------------

def cache_mask(prompt_mask: jax.Array, cache_length: int) -> jax.Array:
    """[B, S] key mask of the cache: the prompt's padding is masked, generated slots are not.

    Slots not yet written need no masking: a query at slot i only sees keys at slots <= i.
    """
    batch, prompt_len = prompt_mask.shape
    generated = jnp.ones((batch, cache_length - prompt_len), prompt_mask.dtype)
    return jnp.concatenate([prompt_mask, generated], axis=1)


def prefill(model: Transformer, prompt_tokens: jax.Array, prompt_mask: jax.Array,
            cache_length: int) -> KVCache:
    """Write left-padded prompts [B, P] into a fresh cache of `cache_length` slots (index P).

    Returns no logits, so XLA drops the LM head. `generate` prefills all but the newest
    prompt token and feeds that one as the first decode step, which gives the only logits
    it needs, [B, V]: the prefill's own would be [B, P, V] (400 MB for SmolLM2 at B=32,
    P=64) and a fifth of its FLOPs.
    """
    batch, prompt_len = prompt_tokens.shape
    cache = KVCache.zeros(model.config, batch, cache_length)
    cache_axes = ("batch", "kv_heads", "cache_seq", "head_dim")
    cache = cache._replace(keys=tuple(constrain(k, cache_axes) for k in cache.keys),
                           values=tuple(constrain(v, cache_axes) for v in cache.values))
    if prompt_len == 0:
        return cache
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    _, cache = model(prompt_tokens, attention_mask=cache_mask(prompt_mask, cache_length),
                     positions=positions, cache=cache)
    return cache


def decode_step(model: Transformer, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feed one token per row (tokens, positions [B]) at slot `cache.index`; next-token logits [B, V]."""
    logits, cache = model(tokens[:, None], attention_mask=key_mask, positions=positions[:, None], cache=cache)
    return logits[:, 0], cache


# ---- the compiled generation loop ------------------------------------------------------

class _Loop(NamedTuple):
    step: jax.Array  # number of tokens drawn so far
    cache: KVCache
    last_token: jax.Array  # [B]
    done: jax.Array  # [B] bool: the row has drawn a stop token
    lengths: jax.Array  # [B]
    tokens: jax.Array  # [B, N]
    logprobs: jax.Array  # [B, N]


def _check_settings(max_new_tokens, temperature, top_p, top_k, vocab_size):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; it must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; use a value >= 0 (0 means greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}; it must be in (0, 1] (1 disables the nucleus filter)")
    if not 0 <= top_k <= vocab_size:
        raise ValueError(f"top_k={top_k}; it must be in [0, vocab_size={vocab_size}] (0 disables it)")


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "max_new_tokens", "temperature", "top_p", "top_k", "pad_id", "mesh", "rows_per_prompt"))
def _generate(graphdef, state, prompt_tokens, prompt_mask, rng, stop_ids, *, max_new_tokens, temperature,
              top_p, top_k, pad_id, mesh, rows_per_prompt):
    # the mesh is a static argument (not only an `activate` around the call) so that the
    # compiled program is cached per mesh
    with activate(mesh) if mesh is not None else contextlib.nullcontext():
        return _sample_loop(graphdef, state, prompt_tokens, prompt_mask, rng, stop_ids, max_new_tokens,
                            temperature, top_p, top_k, pad_id, rows_per_prompt)


def _sample_loop(graphdef, state, prompt_tokens, prompt_mask, rng, stop_ids, max_new_tokens, temperature,
                 top_p, top_k, pad_id, rows_per_prompt=1) -> SampleOutput:
    model = nnx.merge(graphdef, state)
    _check_settings(max_new_tokens, temperature, top_p, top_k, model.config.vocab_size)
    batch, prompt_len = prompt_tokens.shape
    cache_length = cache_slots(model.config, prompt_len + max_new_tokens - 1)
    prompt_tokens = constrain(prompt_tokens.astype(jnp.int32), ("batch", None))
    prompt_mask = constrain(prompt_mask.astype(jnp.int32), ("batch", None))
    key_mask = cache_mask(prompt_mask, cache_length)
    prompt_lengths = prompt_mask.sum(axis=1)
    draw = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)

    def emit(loop: _Loop, logits) -> _Loop:
        """Draw token number `loop.step` from `logits` and record it (pad for stopped rows)."""
        token, logprob = draw(logits, jax.random.fold_in(rng, loop.step))
        active = ~loop.done
        token = jnp.where(active, token, pad_id)
        is_stop = jnp.any(token[:, None] == stop_ids, axis=1) & active
        return loop._replace(
            step=loop.step + 1, last_token=token, done=loop.done | is_stop,
            lengths=loop.lengths + active,
            tokens=loop.tokens.at[:, loop.step].set(token),
            logprobs=loop.logprobs.at[:, loop.step].set(jnp.where(active, logprob, 0.0)))

    def keep_going(loop: _Loop):
        return (loop.step < max_new_tokens) & ~jnp.all(loop.done)  # exits early once all rows stop

    def step(loop: _Loop) -> _Loop:
        # step t feeds the newest token (the prompt's last at t = 0) to slot P - 1 + t
        logits, cache = decode_step(model, loop.last_token, prompt_lengths - 1 + loop.step, key_mask,
                                    loop.cache)
        return emit(loop._replace(cache=cache), logits)

    if rows_per_prompt > 1:  # each prompt once, its cache then copied to the rows that continue it
        group = slice(None, None, rows_per_prompt)
        cache = prefill(model, prompt_tokens[group, :-1], prompt_mask[group, :-1], cache_length)
        cache = cache.repeat_rows(rows_per_prompt)
    else:
        cache = prefill(model, prompt_tokens[:, :-1], prompt_mask[:, :-1], cache_length)
    zeros = jnp.zeros((batch,), jnp.int32)
    loop = _Loop(step=jnp.zeros((), jnp.int32), cache=cache, last_token=prompt_tokens[:, -1],
                 done=jnp.zeros((batch,), bool), lengths=zeros,
                 tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                 logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32))
    loop = jax.lax.while_loop(keep_going, step, loop)
    mask = (jnp.arange(max_new_tokens)[None, :] < loop.lengths[:, None]).astype(jnp.int32)
    out = SampleOutput(loop.tokens, loop.logprobs, mask, loop.lengths, prompt_tokens, prompt_mask)
    # rows stay where their prompts were: each host reads back its own (`distributed.local_rows`)
    return SampleOutput(*(constrain(x, ("batch",) + (None,) * (x.ndim - 1)) for x in out))


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, stop_ids: Sequence[int] = (), pad_id: int = 0,
             mesh: Mesh | None = None, rows_per_prompt: int = 1) -> SampleOutput:
    """Sample `max_new_tokens` continuations of left-padded prompts, compiled as one XLA program.

    graphdef, state: `nnx.split(model)` of a `Transformer`; `state` is traced, so a
        training step's new parameters reuse the compiled program.
    prompt_tokens, prompt_mask: [B, P] int, padded on the LEFT (mask 0 then 1 in each
        row), at least one real token per row. Keep P to a few values to limit compiles.
    rng: a JAX PRNG key; token t of every row uses `fold_in(rng, t)`.
    max_new_tokens, temperature, top_p, top_k: see `sample_token`; temperature 0 is greedy
        (top_p and top_k then do nothing). Each distinct value compiles once.
    stop_ids: a row stops after drawing any of these (e.g. EOS); () never stops early.
    pad_id: written after a row's stop token.
    mesh: when given, activations follow `r1jax.sharding`'s logical table on it (the
        batch split over the data axes); inputs should already be placed on it.
    rows_per_prompt: G > 1 when the rows come in groups of G consecutive identical prompts
        (`r1jax.batching.pad_left(..., repeat=G)`, GRPO's groups): each prompt is prefilled once and its KV
        cache copied to its G rows. Checked on the host when the prompts are addressable here.

    The decode loop is a `lax.while_loop` that feeds one token per step through the KV
    cache (updated in place as loop state) and exits once every row has stopped.
    """
    if jnp.ndim(prompt_tokens) != 2 or jnp.shape(prompt_mask) != jnp.shape(prompt_tokens):
        raise ValueError(f"prompt_tokens and prompt_mask must both be [batch, prompt_len], got "
                         f"{jnp.shape(prompt_tokens)} and {jnp.shape(prompt_mask)}")
    if rows_per_prompt > 1:
        _check_groups(prompt_tokens, prompt_mask, rows_per_prompt)
    stop_ids = jnp.asarray(np.asarray(stop_ids, np.int32).reshape(-1))  # traced: a new stop set reuses the program
    return _generate(graphdef, state, prompt_tokens, prompt_mask, rng, stop_ids,
                     max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                     top_k=int(top_k), pad_id=int(pad_id), mesh=mesh, rows_per_prompt=int(rows_per_prompt))


def _check_groups(prompt_tokens, prompt_mask, group: int) -> None:
    rows = prompt_tokens.shape[0]
    if rows % group:
        raise ValueError(f"{rows} rows do not split into groups of rows_per_prompt={group}")
    if not getattr(prompt_tokens, "is_fully_addressable", True):
        return  # rows of other processes: the caller (rollout) builds the groups itself
    for x in (np.asarray(prompt_tokens), np.asarray(prompt_mask)):
        if not (x.reshape(rows // group, group, -1) == x[::group, None]).all():
            raise ValueError(f"rows_per_prompt={group}, but the prompts of some group of {group} consecutive "
                             "rows differ; repeat each prompt (pad_left(..., repeat=G)) or pass rows_per_prompt=1")
