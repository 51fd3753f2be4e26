"""Splash attention: the Pallas flash-attention kernel of TPUs behind `attend(..., kind="splash")`.

    out = splash_attention(q, k, v, query_slots=slots, key_mask=key_mask, block_size=512)

JAX's splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) computes
attention block by block in the TPU's vector memory, skips the blocks a static mask leaves
empty, and has its own backward kernels (a custom VJP) that recompute the probabilities:
nothing of size T x S is kept for the backward pass. `attend`'s visibility rule maps onto it:

- causal: a static `CausalMask((T, S), offset=S - T)`, i.e. the queries are the last T of the
  S slots (`arange(T)` when T == S, `P + arange(T)` after a P-slot prefix). Queries written at
  slots c + arange(T) of a longer cache (a prompt prefilled into a fresh cache: c + T < S) are
  brought there by rotating k, v by S - T - c slots, one copy of k and v; the slots rotated to
  the front lie in the queries' future and are masked like padding.
- key padding: `SegmentIds`. A padding key gets the segment id `PADDING`, which no query has.
- packed rows: the queries' and the real keys' segment ids are `segment_ids` (else all 0).
- grouped-query attention: the kernel's MHA form takes K key heads for H query heads (query
  head h reads key head h // G), so k and v are not repeated.
- batch: `jax.vmap` over B; on an active mesh (`r1jax.sharding.activate`) a `shard_map`
  first, so that each device runs the kernel on its own rows and heads (XLA cannot split a
  Pallas call itself and would gather its inputs whole onto every device).

A query that sees no key at all (a left-padding position) is not NaN: the kernel masks a
score to a finite floor (-0.7 x float32 max), so such a query averages the values of the
blocks it visits; no real position reads it, and its zero cotangent keeps the gradients clean.

The kernel works in blocks of `block_size` queries and keys (clipped to T and S), which must
be multiples of 128 and divide T and S; elsewhere `splash_attention` raises a ValueError
pointing to attention="blockwise", the same numbers in plain JAX.

On any backend but TPU the kernel runs in Pallas' interpret mode: the same kernel code run
as ordinary JAX operations, slow (seconds for a few hundred tokens), only for the parity
tests that check it against the einsum path on CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from r1jax import sharding

LANES = 128  # the kernel's blocks are whole multiples of the TPU's 128 lanes
PADDING = jnp.iinfo(jnp.int32).min  # the segment id of padding keys: no query has it


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, query_slots: jax.Array, key_mask: jax.Array,
                     segment_ids: jax.Array | None = None, block_size: int = 512) -> jax.Array:
    """`attend(..., kind="splash")`: q [B, T, H, E], k and v [B, K, S, E] -> [B, T, H, E] in q's dtype.

    query_slots: int [T], `c + arange(T)` with c + T <= S (`arange(T)` when T == S).
    key_mask: bool [B, S], the real keys; segment_ids: int [B, T] with T == S, or None.
    block_size: the query and key block, clipped to T and S; it must be a multiple of 128
        that divides T and S.

    Scores are q k^T / sqrt(E) with float32 accumulation; k and v are cast to q's dtype.
    """
    batch, time, _, dim = q.shape
    slots = k.shape[2]
    block_q, block_kv = min(block_size, time), min(block_size, slots)
    _check(q.shape, k.shape, v.shape, segment_ids, block_size, block_q, block_kv)
    key_mask = key_mask.astype(bool)
    if slots != time:  # queries at c + arange(T): move them to the last T slots
        k, v, key_mask = _rotate_to_end(k, v, key_mask, jnp.asarray(query_slots)[0], time)
    query_segments = jnp.zeros((batch, time), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    key_segments = jnp.where(key_mask, 0 if segment_ids is None else query_segments, PADDING)
    q = (q.astype(jnp.float32) * dim ** -0.5).astype(q.dtype).transpose(0, 2, 1, 3)  # [B, H, T, E]
    k, v = k.astype(q.dtype), v.astype(q.dtype)

    def rows(q, k, v, query_segments, key_segments):
        kernel = _kernel(q.shape[1], time, slots, block_q, block_kv, jax.default_backend() != "tpu")
        return jax.vmap(kernel)(q, k, v, splash.SegmentIds(q=query_segments, kv=key_segments))

    out = _on_mesh(rows, q, k, v, query_segments, key_segments)
    return out.transpose(0, 2, 1, 3)


def _check(q_shape, k_shape, v_shape, segment_ids, block_size, block_q, block_kv):
    (batch, time, heads, dim), (kv_heads, slots) = q_shape, k_shape[1:3]
    instead = 'use attention="blockwise" (the same numbers in plain JAX) for these shapes'
    if k_shape != v_shape or k_shape[0] != batch or k_shape[3] != dim:
        raise ValueError(f"splash attention: k {k_shape} and v {v_shape} must be [B, K, S, E] for q {q_shape}")
    if heads % kv_heads:
        raise ValueError(f"splash attention: {heads} query heads do not share {kv_heads} key/value heads evenly")
    if slots < time:
        raise ValueError(f"splash attention: {time} queries over {slots} key slots; the queries must be the "
                         f"last of the slots")
    if segment_ids is not None and slots != time:
        raise ValueError(f"splash attention: segment_ids need as many queries as key slots, got {time} and {slots}")
    if block_q % LANES or block_kv % LANES or time % block_q or slots % block_kv:
        raise ValueError(f"splash attention works in blocks of a multiple of {LANES} queries and keys that divide "
                         f"the {time} queries and {slots} keys; block_size={block_size} gives blocks of "
                         f"{block_q} x {block_kv}: {instead}")


def _rotate_to_end(k, v, key_mask, first_slot, time):
    """k, v [B, K, S, E] and key_mask [B, S] rotated right by S - T - first_slot slots, so that the
    queries' slots become the last T; the slots that wrap to the front (after the queries' last
    slot: their future) are masked."""
    slots = k.shape[2]
    shift = slots - time - first_slot
    k, v = jnp.roll(k, shift, axis=2), jnp.roll(v, shift, axis=2)
    return k, v, jnp.roll(key_mask, shift, axis=1) & (jnp.arange(slots) >= shift)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, time: int, slots: int, block_q: int, block_kv: int, interpret: bool):
    """The splash kernel of one row: q [H, T, E], k and v [K, S, E], SegmentIds([T], [S]) -> [H, T, E].

    Built once per shape: preprocessing the mask into block tables is host-side NumPy work that
    would otherwise repeat in every layer's trace.
    """
    mask = splash.MultiHeadMask([splash.CausalMask((time, slots), offset=slots - time)] * heads)
    blocks = splash.BlockSizes(
        block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
        block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
        # a separate dq kernel: the fused one keeps S / block_kv partial dq's, each as large as q
        block_q_dq=block_q, block_kv_dq=block_kv)
    with jax.ensure_compile_time_eval():  # the mask tables are constants, never tracers of one trace
        return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def _on_mesh(rows, q, k, v, query_segments, key_segments):
    """`rows(...)` per device under `shard_map` when a mesh is active: rows split as the batch
    is, heads as the `heads` axis is where both H and K divide evenly; else `rows(...)` as is."""
    mesh = sharding.active_mesh()
    if mesh is None:
        return rows(q, k, v, query_segments, key_segments)
    spec = lambda axes, shape: sharding.fit_spec(sharding.logical_to_spec(axes), shape, mesh)
    q_spec = spec(("batch", "heads", None, None), q.shape)
    k_spec = spec(("batch", "kv_heads", None, None), k.shape)
    if q_spec[1] != k_spec[1]:  # query head h reads key head h // G only if both split the same way
        q_spec, k_spec = (jax.sharding.PartitionSpec(s[0], None, None, None) for s in (q_spec, k_spec))
    segment_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    return jax.shard_map(rows, mesh=mesh, in_specs=(q_spec, k_spec, k_spec, segment_spec, segment_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, query_segments, key_segments)
