"""Batched generation with a KV cache, compiled end to end: prefill, then the decode loop.

`generate(graphdef, state, prompt_tokens, prompt_mask, rng, ...)` is the pure core the
GRPO trainer calls with its current parameters: the parameters are an argument (new
values never recompile), the sampling settings are static (each setting compiles once).
`Sampler` wraps it for host-side use: it takes ragged token lists, left-pads them to a
few fixed prompt lengths ("buckets") so that shapes repeat, and places the batch on a mesh.

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
from jax.sharding import Mesh, NamedSharding

from r1jax.batching import pad_left
from r1jax.models.transformer import KVCache, Transformer, cache_slots
from r1jax.sharding import activate, constrain, logical_to_spec

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
        (`pad_left(..., repeat=G)`, GRPO's groups): each prompt is prefilled once and its KV
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


# ---- host-side front end ---------------------------------------------------------------

def _default_buckets(max_length: int) -> tuple[int, ...]:
    buckets = [min(16, max_length)]
    while buckets[-1] < max_length:
        buckets.append(min(2 * buckets[-1], max_length))
    return tuple(buckets)


class Sampler:
    """Ragged prompts in, `SampleOutput` out, through one compiled `generate` per shape.

        sampler = Sampler(model, pad_id=tokenizer.pad_id, stop_ids=[tokenizer.eos_id])
        out = sampler([[1, 5, 9], [1, 7]], max_new_tokens=256, rng=jax.random.key(0))

    model: a `Transformer`, re-split on every call so in-place updates (an optimizer
        step) are seen; or `(graphdef, state)`, whose state a call's `state=` replaces.
    pad_id: the token that fills prompt padding and completions after their stop.
    stop_ids: tokens that end a row; None means the model config's `eos_token_id`.
    prompt_buckets: prompt lengths to pad up to (default: powers of two from 16 to
        `max_position_embeddings`), so that varying prompts reuse a few compiled programs.
    mesh: split the batch over its data axes (`r1jax.sharding` table); the state is placed
        on it by its logical axes (a no-op when it already is).
    """

    def __init__(self, model: Transformer | tuple[nnx.GraphDef, nnx.State], *, pad_id: int,
                 stop_ids: Sequence[int] | None = None, prompt_buckets: Sequence[int] | None = None,
                 mesh: Mesh | None = None):
        if isinstance(model, Transformer):
            self.model, self.graphdef, self.state = model, None, None
            self.config = model.config
        else:
            self.model = None
            self.graphdef, self.state = model
            self.config = nnx.merge(self.graphdef, self.state).config
        if stop_ids is None:
            stop_ids = () if self.config.eos_token_id is None else (self.config.eos_token_id,)
        self.pad_id = int(pad_id)
        self.stop_ids = tuple(int(i) for i in stop_ids)
        self.prompt_buckets = tuple(sorted(prompt_buckets or _default_buckets(self.config.max_position_embeddings)))
        self.mesh = mesh

    def __call__(self, prompts, prompt_mask=None, *, max_new_tokens: int, rng: jax.Array,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 state: nnx.State | None = None) -> SampleOutput:
        """Sample continuations of `prompts`.

        prompts: a list of token-id lists, or a [B, P] array padded on the left with
            `prompt_mask` [B, P] (1 = real token; default all ones).
        Other settings as in `generate`. Returns arrays with B rows; the prompts come back
        left-padded to the bucket length P.
        """
        tokens, mask = self._pad_prompts(prompts, prompt_mask)
        longest = int(mask.sum(axis=1).max())
        if longest + max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                             f"model's max_position_embeddings={self.config.max_position_embeddings}")
        if self.model is not None:
            graphdef, current_state = nnx.split(self.model)
        else:
            graphdef, current_state = self.graphdef, self.state
        state = current_state if state is None else state
        tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
        if self.mesh is not None:
            tokens, mask, state = self._place(tokens, mask, state)
        return generate(graphdef, state, tokens, mask, rng, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=self.stop_ids,
                        pad_id=self.pad_id, mesh=self.mesh)

    def _pad_prompts(self, prompts, prompt_mask) -> tuple[np.ndarray, np.ndarray]:
        """Left-pad to the bucket length; [B, P] int32 tokens and mask, checked on the host."""
        if isinstance(prompts, (list, tuple)):
            if prompt_mask is not None:
                raise ValueError("prompt_mask goes with a padded [batch, length] array, not with token lists")
            if not prompts or any(len(p) == 0 for p in prompts):
                raise ValueError("every prompt needs at least one token (e.g. BOS), and the batch at least one prompt")
            tokens, mask = pad_left(prompts, self.pad_id, dtype=np.int64)  # int64: out-of-range ids are caught below
        else:
            tokens = np.asarray(prompts)
            mask = np.ones(tokens.shape, np.int32) if prompt_mask is None else np.asarray(prompt_mask).astype(np.int32)
            if tokens.ndim != 2 or mask.shape != tokens.shape:
                raise ValueError(f"prompts must be [batch, length] with a mask of the same shape, got "
                                 f"{tokens.shape} and {mask.shape}")
            if not np.isin(mask, (0, 1)).all() or (np.diff(mask, axis=1) < 0).any() or not mask[:, -1].all():
                raise ValueError("prompt_mask must be 0/1 and pad on the left (zeros, then ones, with each row's "
                                 "last token real); re-pad right-padded prompts on the left")
        if not (np.issubdtype(tokens.dtype, np.integer) and tokens.min() >= 0
                and tokens.max() < self.config.vocab_size):
            raise ValueError(f"prompt tokens must be integers in [0, vocab_size={self.config.vocab_size})")
        width = tokens.shape[1]
        bucket = next((b for b in self.prompt_buckets if b >= width), None)
        if bucket is None:
            raise ValueError(f"a prompt of {width} tokens is longer than the largest prompt bucket "
                             f"{self.prompt_buckets[-1]}; pass larger prompt_buckets to Sampler")
        extra = ((0, 0), (bucket - width, 0))
        return (np.pad(tokens, extra, constant_values=self.pad_id).astype(np.int32),
                np.pad(mask, extra).astype(np.int32))

    def _place(self, tokens, mask, state):
        data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if tokens.shape[0] % data_parallel:
            raise ValueError(f"batch {tokens.shape[0]} does not split over the mesh's {data_parallel} "
                             "data-parallel devices; use a multiple of it")
        batch_sharding = NamedSharding(self.mesh, logical_to_spec(("batch", None)))
        param_shardings = jax.tree.map(
            lambda v: NamedSharding(self.mesh, logical_to_spec(v.get_metadata("axes", None))),
            state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        return (jax.device_put(tokens, batch_sharding), jax.device_put(mask, batch_sharding),
                jax.device_put(state, param_shardings))
