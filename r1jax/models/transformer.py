"""Decoder-only transformer in Flax NNX covering Llama (2, 3.x, SmolLM2) and Qwen2/2.5.

RMSNorm, RoPE (with Llama-3 scaling), grouped-query attention with an optional KV
cache, SwiGLU MLP, optional q/k/v biases, tied or untied embeddings. Parameters carry
logical axis names in their `axes` metadata; `r1jax.sharding` maps them to a mesh.

Shapes use these letters: B batch, T query time, S key time (cache length), D model
width, H query heads, K key/value heads, G = H // K heads per group, E head dim,
F MLP width, V vocabulary, L layers.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.attention import attend
from r1jax.models.config import ModelConfig
from r1jax.models.lora import apply_lora
from r1jax.sharding import constrain


class KVCache(NamedTuple):
    """Per-layer keys and values, [B, K, S, E] each; `index` is the next slot to write.

    Heads come before slots so that attention's batched dots (batch dims B, K) read the
    cache in place: in [B, S, K, E] XLA:CPU transposed the whole cache in every layer of
    every decode step, a third of the step time for SmolLM2 at 190 slots.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    index: jax.Array  # int32 scalar

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, length: int) -> "KVCache":
        shape = (batch, config.num_kv_heads, length, config.head_dim)
        zeros = tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
        return cls(zeros, zeros, jnp.zeros((), jnp.int32))

    def repeat_rows(self, repeats: int) -> "KVCache":
        """Each row `repeats` times in a row: one prompt's cache for the rows that continue it."""
        repeat = lambda x: constrain(jnp.repeat(x, repeats, axis=0), ("batch", "kv_heads", "cache_seq", "head_dim"))
        return KVCache(tuple(map(repeat, self.keys)), tuple(map(repeat, self.values)), self.index)


def attention_kind(config: ModelConfig, query_len: int, key_len: int) -> str:
    """The attention path `config.attention` takes for `query_len` queries over `key_len` keys.

    "auto": cuDNN's fused `dot_product_attention` on GPU for a training forward, splash on TPU
    where the rows are whole blocks; elsewhere, and for decoding (a few queries over a long
    cache: blockwise reads only the filled blocks), einsum while all keys fit one block (it is
    the fastest there, and what it keeps for the backward is small) and blockwise beyond.
    "splash" itself falls back to blockwise where the rows are not whole blocks.
    """
    backend, block = jax.default_backend(), config.attention_block
    splash_fits = query_len % block == 0 and key_len % block == 0
    if config.attention == "splash" and not splash_fits:
        return "blockwise"  # the kernel takes whole blocks only: e.g. one-token decode steps
    if config.attention != "auto":
        return config.attention
    if backend == "gpu" and query_len > 1:
        return "dot_product_attention"
    if backend == "tpu" and splash_fits:
        return "splash"
    return "einsum" if key_len <= block else "blockwise"


def cache_slots(config: ModelConfig, needed: int) -> int:
    """The slots of a decoding cache that must hold `needed` tokens.

    Whole attention blocks when one-token decode steps attend blockwise, so that no step pads
    the cache to blocks (a copy of it); the extra slots are never seen (they lie in the future of
    every query).
    """
    if attention_kind(config, 1, needed) != "blockwise":
        return needed
    return -(-needed // config.attention_block) * config.attention_block


def matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """[B, T, D] @ [D, F] -> [B, T, F], as one [B*T, D] @ [D, F] matmul.

    With the batch and time dims kept apart, XLA:CPU lays out the weight gradient's operand
    transposed and writes a transposed copy of every [B, T, F] activation gradient in the
    backward pass (a tenth of a SmolLM2 GRPO update); flattened first, the dot reads it as is.
    """
    batch, time, _ = x.shape
    return (x.reshape(batch * time, -1) @ w).reshape(batch, time, -1)


def _param(rngs: nnx.Rngs, shape, axes, config: ModelConfig, std: float | None = 0.02) -> nnx.Param:
    dtype = jnp.dtype(config.param_dtype)
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0:
        value = jnp.zeros(shape, dtype)
    else:
        value = std * jax.random.truncated_normal(rngs.params(), -2, 2, shape, dtype)
    return nnx.Param(value, axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, (config.hidden_size,), ("act_embed",), config, std=None)
        self.eps = config.rms_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x):
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(config: ModelConfig) -> jax.Array:
    """Inverse frequencies [E/2], with the Llama-3 long-context rescaling when configured."""
    e = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    wavelen = 2 * jnp.pi / inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate [B, T, N, E] by positions [B, T] (the HF 'rotate_half' layout)."""
    angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [B, T, E/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def segment_positions(segment_ids: jax.Array, token_mask: jax.Array) -> jax.Array:
    """int32 [B, T]: how many real tokens of the same segment come before each token.

    The RoPE positions of packed rows: each segment counts from 0 as if it were alone.
    """
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
    earlier = jnp.tril(jnp.ones(same_segment.shape[1:], bool), -1)
    count = (same_segment & earlier & token_mask[:, None, :].astype(bool)).sum(-1)
    return count.astype(jnp.int32)


class Attention(nnx.Module):
    lora_input_dims = {"q": 1, "k": 1, "v": 1, "o": 2}  # the projections a LoRA adapts (`r1jax.models.lora`)

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, h, k, e = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.q = _param(rngs, (d, h, e), ("embed", "heads", "head_dim"), config)
        self.k = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), config)
        self.v = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), config)
        self.o = _param(rngs, (h, e, d), ("heads", "head_dim", "embed"), config)
        if config.qkv_bias:
            self.q_bias = _param(rngs, (h, e), ("heads", "head_dim"), config, std=0)
            self.k_bias = _param(rngs, (k, e), ("kv_heads", "head_dim"), config, std=0)
            self.v_bias = _param(rngs, (k, e), ("kv_heads", "head_dim"), config, std=0)

    def _project(self, x, name):
        dtype = jnp.dtype(self.config.dtype)
        w = getattr(self, name)[...].astype(dtype)
        y = apply_lora(self, name, x, matmul_2d(x, w.reshape(w.shape[0], -1)))
        y = y.reshape(*x.shape[:2], *w.shape[1:])
        if self.config.qkv_bias:
            y = y + getattr(self, name + "_bias")[...].astype(dtype)
        return y

    def __call__(self, x, positions, key_mask, inv_freq, cache_kv=None, cache_index=None, segment_ids=None):
        """x [B, T, D]; key_mask [B, S] marks real (non-padding) keys; returns ([B, T, D], (k, v)).

        segment_ids [B, T] (no cache): a query sees only the keys of its own segment.
        """
        cfg = self.config
        q = apply_rope(self._project(x, "q"), positions, inv_freq)
        k = apply_rope(self._project(x, "k"), positions, inv_freq).transpose(0, 2, 1, 3)  # [B, K, T, E]
        v = self._project(x, "v").transpose(0, 2, 1, 3)
        q = constrain(q, ("batch", "seq", "heads", "head_dim"))
        batch, time = x.shape[:2]
        if cache_kv is None:
            # a query at slot t sees keys at slots <= t: left padding keeps slot order = time order
            query_slot = jnp.arange(time)
        elif cache_kv[0].shape[2] + time == key_mask.shape[1]:
            # a full cache (a shared prompt, `Transformer.__call__`): this chunk's keys follow it
            k = jnp.concatenate([cache_kv[0], k.astype(cache_kv[0].dtype)], axis=2)
            v = jnp.concatenate([cache_kv[1], v.astype(cache_kv[1].dtype)], axis=2)
            query_slot = cache_kv[0].shape[2] + jnp.arange(time)
        else:
            # write this chunk into the cache at [index, index + T) and attend to the whole cache
            k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype), cache_index, 2)
            v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype), cache_index, 2)
            query_slot = cache_index + jnp.arange(time)
        k = constrain(k, ("batch", "kv_heads", "cache_seq", "head_dim"))
        v = constrain(v, ("batch", "kv_heads", "cache_seq", "head_dim"))
        kind = attention_kind(cfg, time, k.shape[2])

        def core(q, k, v, query_slot, key_mask, segment_ids):
            return attend(q, k, v, query_slots=query_slot, key_mask=key_mask, segment_ids=segment_ids, kind=kind,
                          block_size=cfg.attention_block)

        if cfg.remat == "attention":  # keep q, k, v for the backward; recompute scores and probabilities
            core = _in_order_checkpoint(core, None)
        out = core(q, k, v, query_slot, key_mask, segment_ids)
        # one [H*E, D] matmul: as an einsum over (h, e), XLA:CPU re-laid out the weight every decode step
        out = out.reshape(batch, time, cfg.num_heads * cfg.head_dim)
        y = matmul_2d(out, self.o[...].astype(q.dtype).reshape(cfg.num_heads * cfg.head_dim, -1))
        y = apply_lora(self, "o", out, y)
        return y, (k, v)


class MLP(nnx.Module):
    lora_input_dims = {"gate": 1, "up": 1, "down": 1}

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.dtype = jnp.dtype(config.dtype)
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), config)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), config)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), config)

    def __call__(self, x):
        gate = apply_lora(self, "gate", x, matmul_2d(x, self.gate[...].astype(self.dtype)))
        up = apply_lora(self, "up", x, matmul_2d(x, self.up[...].astype(self.dtype)))
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "mlp"))
        return apply_lora(self, "down", hidden, matmul_2d(hidden, self.down[...].astype(self.dtype)))


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, key_mask, inv_freq, cache_kv=None, cache_index=None, segment_ids=None):
        y, kv = self.attn(self.attn_norm(x), positions, key_mask, inv_freq, cache_kv, cache_index, segment_ids)
        x = x + y
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ("batch", "seq", "act_embed")), kv


def _run_block(block, x, positions, key_mask, inv_freq, cache_kv, cache_index, segment_ids):
    return block(x, positions, key_mask, inv_freq, cache_kv, cache_index, segment_ids)


def _run_block_remat(block, *args, policy=None):
    """`_run_block` whose activations are recomputed in the backward pass instead of stored
    (all of them, or those `policy` does not save: `jax.checkpoint_policies`).

    Recomputed *in the backward pass*, in the order of the layers: with `jax.checkpoint`
    alone, nothing ties a layer's recomputation to the gradient arriving from the layer above,
    and XLA:CPU merged every layer's recomputation back into the forward pass, so that all the
    activations were alive at once and remat saved nothing (a 512-token SmolLM2 GRPO step asked
    for 26.7 GiB with remat, 29.5 GiB without). Here the recomputation depends on that gradient
    (`_in_order_checkpoint`), so it runs in the backward pass, one layer at a time.

    A pure function of the block's parameters, rather than `nnx.remat` of the module: the
    parameters enter as arguments, so this works at any trace level (inside `lax.map` or a
    `while_loop`), where `nnx.remat` refuses Params traced outside it. Outside a differentiated
    function it is the plain block, so decoding is unchanged.
    """
    graphdef, state = nnx.split(block)
    run = lambda state, *args: _run_block(nnx.merge(graphdef, state), *args)
    return _in_order_checkpoint(run, policy)(state, *args)


def _in_order_checkpoint(fn, policy):
    """`jax.checkpoint(fn, policy=policy)` whose recomputation waits for the output's gradient."""
    checkpointed = jax.checkpoint(fn, policy=policy)

    @jax.custom_vjp
    def run(*args):
        return fn(*args)

    def forward(*args):
        return jax.vjp(checkpointed, *args)  # (outputs, vjp): the vjp holds what the policy saves

    def backward(vjp, cotangents):
        # XLA:CPU drops optimization barriers before it eliminates common subexpressions, and then
        # merged each recomputation back into the forward pass. A data dependency survives: the
        # saved values plus 0 x one element of the incoming gradient (not simplified away, as
        # 0 x NaN is NaN), so the recomputation is new work that needs that gradient first.
        anchor = next(x for x in jax.tree.leaves(cotangents) if jnp.issubdtype(x.dtype, jnp.floating))
        zero = anchor.reshape(-1)[0] * 0
        vjp = jax.tree.map(lambda x: x + zero.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, vjp)
        return vjp(cotangents)

    run.defvjp(forward, backward)
    return run


# how each `ModelConfig.remat` runs a block ("attention" is applied inside `Attention`)
_BLOCK_RUNNERS = {
    "none": _run_block,
    "attention": _run_block,
    "block": _run_block_remat,
    # keep every matmul without batch dims (the projections and the MLP, `matmul_2d`) and
    # recompute the rest: norms, RoPE, activations, attention
    "dots_saveable": functools.partial(_run_block_remat,
                                       policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
}


class Transformer(nnx.Module):
    """`model(tokens)` -> logits [B, T, V]; see `__call__` for padding and the KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), config)
        self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config, rngs=rngs)
        if not config.tie_embeddings:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), config)

    def __call__(self, tokens, *, attention_mask=None, positions=None, cache: KVCache | None = None,
                 segment_ids=None):
        """Logits for int32 tokens [B, T]: `head_weight()` applied to `hidden_states(...)`.

        attention_mask: [B, T] (or [B, S] over the cache slots when `cache` is given),
            1 for real tokens and 0 for padding. Pad on the left so that every row's last
            token is its newest one. Defaults to all ones.
        positions: [B, T] RoPE positions. Defaults to the count of real tokens before each
            one (`cumsum(attention_mask) - 1`), so a left-padded row gets the same
            positions as it would unpadded.
        cache: a `KVCache`; the tokens are written at `cache.index` and the call returns
            `(logits, new_cache)` instead of logits alone. A full cache (`cache.index` equal to
            its length, e.g. a prefilled prompt) with an attention_mask over its slots and the
            T tokens is extended instead: the new cache has T more slots. Nothing but the
            prefix and the tokens is then stored (a training forward against a shared prompt).
        segment_ids: int [B, T] for packed rows holding several sequences side by side (no
            cache): a token attends only to earlier real tokens with its own segment id, and
            default positions restart at 0 in each segment, so every sequence gets the
            logits it would get alone.
        """
        out = self.hidden_states(tokens, attention_mask=attention_mask, positions=positions, cache=cache,
                                 segment_ids=segment_ids)
        hidden, new_cache = out if cache is not None else (out, None)
        logits = constrain(hidden @ self.head_weight().T, ("batch", "seq", "vocab"))
        return logits if cache is None else (logits, new_cache)

    def hidden_states(self, tokens, *, attention_mask=None, positions=None, cache: KVCache | None = None,
                      segment_ids=None):
        """The final (normed) hidden states [B, T, D] that the LM head turns into logits; arguments
        and the cache as in `__call__` (with a cache: `(hidden, new_cache)`). A loss that needs the
        logits at a few positions only (GRPO's completion tokens) applies the head there itself
        (`r1jax.losses.head_logprobs`).
        """
        cfg = self.config
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array [batch, time], got {tokens.dtype}{tokens.shape}")
        batch, time = tokens.shape
        key_len = time if cache is None else cache.keys[0].shape[2]
        if cache is not None and attention_mask is not None and attention_mask.shape[1] == key_len + time:
            key_len += time  # a full cache that the tokens extend (see `cache` above)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, key_len), jnp.int32)
        if attention_mask.shape != (batch, key_len):
            raise ValueError(f"attention_mask must be [batch, {'time' if cache is None else 'cache length'}] = "
                             f"{(batch, key_len)}, got {attention_mask.shape}")
        key_mask = attention_mask.astype(bool)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) are for training forwards; decode without them")
            segment_ids = jnp.asarray(segment_ids)
            if segment_ids.shape != (batch, time):
                raise ValueError(f"segment_ids must be [batch, time] = {(batch, time)}, got {segment_ids.shape}")
        if positions is None:
            if cache is not None:
                raise ValueError("pass positions explicitly when decoding with a cache")
            if segment_ids is None:
                positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
            else:
                positions = segment_positions(segment_ids, key_mask)

        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.dtype)
        x = constrain(x, ("batch", "seq", "act_embed"))
        inv_freq = rope_frequencies(cfg)
        # remat saves activation memory for a backward pass, also through a cache (the GRPO forward
        # runs a group's completions against its prompt's cache); decoding is not differentiated
        run = _BLOCK_RUNNERS[cfg.remat]
        new_keys, new_values = [], []
        for i, block in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = run(block, x, positions, key_mask, inv_freq, cache_kv,
                            None if cache is None else cache.index, segment_ids)
            new_keys.append(k)
            new_values.append(v)
        x = self.final_norm(x)
        if cache is None:
            return x
        return x, KVCache(tuple(new_keys), tuple(new_values), cache.index + time)

    def head_weight(self) -> jax.Array:
        """The output embedding [V, D] in the compute dtype: logits = hidden @ head_weight().T."""
        head = self.embed[...] if self.config.tie_embeddings else self.lm_head[...].T
        return head.astype(self.config.dtype)
