"""Causal grouped-query attention, computed one of four ways with the same numbers.

    out = attend(q, k, v, query_slots=..., key_mask=..., kind="blockwise")

A query at cache slot `query_slots[t]` sees the keys at slots <= its own whose `key_mask` is
set (and, for packed rows, of its own segment). The kinds differ only in what they cost:

- "einsum": scores and probabilities as [B, H, T, S] float32 arrays, two batched einsums.
  The fastest on CPU for short rows; autodiff keeps the probabilities of every layer for
  the backward pass: 32 rows x 9 heads x 568^2 floats = 370 MB a layer at 512 tokens.
- "blockwise": flash attention in plain JAX. Queries and keys in blocks of `block_size`; an
  online softmax over the key blocks; key blocks wholly in a query block's future are not
  visited (the loop's trip count follows the query's slot, so one decode step costs what
  the filled part of the cache costs); a custom VJP that keeps only the output and one
  log-sum-exp per query, and recomputes each block's probabilities in the backward pass.
  Memory: O(B H T E) plus one [B, H, block, block] block, whatever the length.
- "dot_product_attention": `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU).
- "splash": the Pallas splash-attention kernel of TPUs (`r1jax.models.splash`); elsewhere it
  runs in Pallas' interpret mode, which is slow and only for checking it.

Shapes: B batch, T queries, S keys (cache slots), H query heads, K key/value heads,
G = H / K queries per key head, E head dim.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

KINDS = ("einsum", "blockwise", "dot_product_attention", "splash")
NEG = jnp.finfo(jnp.float32).min  # a finite floor: a row with no visible key stays finite, not NaN


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, query_slots: jax.Array, key_mask: jax.Array,
           segment_ids: jax.Array | None = None, kind: str = "einsum", block_size: int = 512) -> jax.Array:
    """Attention of q [B, T, H, E] over k, v [B, K, S, E]; returns [B, T, H, E] in q's dtype.

    query_slots: int [T], non-decreasing: the cache slot of each query (`arange(T)` without a
        cache, `index + arange(T)` with one). A query sees keys at slots <= its own.
    key_mask: bool [B, S], the real (non-padding) keys.
    segment_ids: int [B, T] with T == S (packed rows, no cache): a query sees only keys of its
        own segment.
    kind: one of `KINDS` (module doc); block_size: the block of "blockwise" and "splash".

    A query that sees no key at all (a padding position) gets some finite output, which differs
    between kinds; no real position reads it.
    """
    if kind not in KINDS:
        raise ValueError(f"attention kind {kind!r}; choose one of {KINDS}")
    scale = q.shape[-1] ** -0.5
    if kind == "blockwise":
        groups = q.shape[2] // k.shape[1]
        return blockwise_attention(q, k, v, query_slots=query_slots, key_mask=key_mask,
                                   segment_ids=segment_ids, block_size=block_size, groups=groups)
    if kind == "splash":
        from r1jax.models.splash import splash_attention  # Pallas is imported only where it is used
        return splash_attention(q, k, v, query_slots=query_slots, key_mask=key_mask, segment_ids=segment_ids,
                                block_size=block_size)
    allowed = _allowed(query_slots, jnp.arange(k.shape[2]), key_mask, segment_ids, segment_ids)  # [B, T, S]
    if kind == "dot_product_attention":
        return jax.nn.dot_product_attention(
            q, k.transpose(0, 2, 1, 3).astype(q.dtype), v.transpose(0, 2, 1, 3).astype(q.dtype),
            mask=allowed[:, None], scale=scale)
    batch, time, heads, dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, time, kv_heads, heads // kv_heads, dim)
    scores = jnp.einsum("btkge,bkse->bkgts", q, k.astype(q.dtype)).astype(jnp.float32) * scale
    scores = jnp.where(allowed[:, None, None], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bkse->btkge", probs, v.astype(q.dtype))
    return out.reshape(batch, time, heads, dim)


def _allowed(query_slots, key_slots, key_mask, query_segments, key_segments):
    """bool [B, Tq, Sk]: which key each query sees."""
    allowed = (key_slots[None, :] <= query_slots[:, None])[None] & key_mask[:, None, :]
    if query_segments is not None:
        allowed &= query_segments[:, :, None] == key_segments[:, None, :]
    return allowed


# ---- blockwise (flash) attention in plain JAX ------------------------------------------------

def blockwise_attention(q, k, v, *, query_slots, key_mask, segment_ids=None, block_size=512, groups=None):
    """`attend(..., kind="blockwise")`: q [B, T, H, E], k and v [B, K, S, E] -> [B, T, H, E].

    The forward pass, for each block of queries Q_i: over the key blocks j that hold a slot the
    block's last query can see, the online softmax
        m = max(m, rowmax(S_ij)),  l = l e^(m_old - m) + rowsum(e^(S_ij - m)),
        acc = acc e^(m_old - m) + e^(S_ij - m) V_j,      S_ij = Q_i K_j^T / sqrt(E),
    and out_i = acc / l, L_i = m + log l. The backward pass (Dao et al., 2022, algorithm 2),
    with D = rowsum(dO * O) and P_ij = e^(S_ij - L_i) recomputed block by block:
        dV_j += P_ij^T dO_i,  dS_ij = P_ij * (dO_i V_j^T - D_i),
        dK_j += dS_ij^T Q_i / sqrt(E),  dQ_i += dS_ij K_j / sqrt(E).
    Nothing of size T x S is kept from the forward to the backward.
    """
    batch, time, heads, dim = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    groups = heads // kv_heads if groups is None else groups
    block_q = min(block_size, time)
    block_k = min(block_size, slots)
    padded_time, padded_slots = -(-time // block_q) * block_q, -(-slots // block_k) * block_k
    # [B, K, G, T, E]: a key head's queries side by side, as the cache lays out its keys
    grouped = q.reshape(batch, time, kv_heads, groups, dim).transpose(0, 2, 3, 1, 4)
    query_slots = jnp.asarray(query_slots, jnp.int32)
    query_segments = key_segments = segment_ids
    if padded_time != time:  # padded queries repeat the last slot: no key block more to visit
        grouped = jnp.pad(grouped, ((0, 0),) * 3 + ((0, padded_time - time), (0, 0)))
        query_slots = jnp.pad(query_slots, (0, padded_time - time), mode="edge")
        if query_segments is not None:
            query_segments = jnp.pad(query_segments, ((0, 0), (0, padded_time - time)), constant_values=-1)
    if padded_slots != slots:  # padded keys are masked (a decode cache is sized to whole blocks instead)
        k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, padded_slots - slots), (0, 0))) for x in (k, v))
        key_mask = jnp.pad(key_mask, ((0, 0), (0, padded_slots - slots)))
        if key_segments is not None:
            key_segments = jnp.pad(key_segments, ((0, 0), (0, padded_slots - slots)), constant_values=-2)
    out = _flash(grouped, k.astype(q.dtype), v.astype(q.dtype), query_slots, key_mask.astype(bool),
                 query_segments, key_segments, block_q, block_k)
    out = out[:, :, :, :time].transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, time, heads, dim)


def _scores(q, k, query_slots, key_start, key_mask, query_segments, key_segments):
    """Scaled scores [B, K, G, bq, bk] of a query block against a key block, and the visibility mask."""
    s = jnp.einsum("bkgqe,bkse->bkgqs", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    key_slots = key_start + jnp.arange(k.shape[2])
    allowed = _allowed(query_slots, key_slots, key_mask, query_segments, key_segments)[:, None, None]
    return s, allowed


def _slice(x, start, size, axis):
    return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _key_blocks_seen(last_query_slot, block_k, num_key_blocks):
    """How many key blocks, from the first, hold a slot <= `last_query_slot` (the rest are all future)."""
    return jnp.clip(last_query_slot // block_k + 1, 0, num_key_blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _flash(q, k, v, query_slots, key_mask, query_segments, key_segments, block_q, block_k):
    return _flash_fwd(q, k, v, query_slots, key_mask, query_segments, key_segments, block_q, block_k)[0]


def _flash_fwd(q, k, v, query_slots, key_mask, query_segments, key_segments, block_q, block_k):
    batch, kv_heads, groups, time, dim = q.shape
    num_key_blocks = k.shape[2] // block_k

    def query_block(i):
        start = i * block_q
        q_i = jax.lax.dynamic_slice_in_dim(q, start, block_q, 3)
        slots_i = jax.lax.dynamic_slice_in_dim(query_slots, start, block_q, 0)
        segments_i = _slice(query_segments, start, block_q, 1)

        def key_block(j, carry):
            m, l, acc = carry
            k_j, v_j = (jax.lax.dynamic_slice_in_dim(x, j * block_k, block_k, 2) for x in (k, v))
            s, allowed = _scores(q_i, k_j, slots_i, j * block_k, _slice(key_mask, j * block_k, block_k, 1),
                                 segments_i, _slice(key_segments, j * block_k, block_k, 1))
            m_new = jnp.maximum(m, jnp.where(allowed, s, NEG).max(-1))
            p = jnp.where(allowed, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            acc = acc * correction[..., None] + jnp.einsum("bkgqs,bkse->bkgqe", p.astype(v.dtype), v_j,
                                                           preferred_element_type=jnp.float32)
            return m_new, l * correction + p.sum(-1), acc

        stats = jnp.full((batch, kv_heads, groups, block_q), NEG, jnp.float32)
        carry = (stats, jnp.zeros_like(stats), jnp.zeros((*stats.shape, dim), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, _key_blocks_seen(slots_i[-1], block_k, num_key_blocks), key_block, carry)
        seen = l > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        return out.astype(q.dtype), jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)

    out, lse = jax.lax.map(query_block, jnp.arange(time // block_q))  # [nq, B, K, G, bq(, E)]
    out = jnp.moveaxis(out, 0, 3).reshape(batch, kv_heads, groups, time, dim)
    lse = jnp.moveaxis(lse, 0, 3).reshape(batch, kv_heads, groups, time)
    return out, (q, k, v, query_slots, key_mask, query_segments, key_segments, out, lse)


def _flash_bwd(block_q, block_k, residuals, d_out):
    q, k, v, query_slots, key_mask, query_segments, key_segments, out, lse = residuals
    num_query_blocks = q.shape[3] // block_q
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # D = rowsum(dO * O)
    last_slots = query_slots[block_q - 1::block_q]  # each query block's last (largest) slot

    def key_block(d_q, j):
        k_j, v_j = (jax.lax.dynamic_slice_in_dim(x, j * block_k, block_k, 2) for x in (k, v))
        mask_j = _slice(key_mask, j * block_k, block_k, 1)
        segments_j = _slice(key_segments, j * block_k, block_k, 1)

        def query_block(i, carry):
            d_q, d_k, d_v = carry
            start = i * block_q
            q_i, do_i = (jax.lax.dynamic_slice_in_dim(x, start, block_q, 3) for x in (q, d_out))
            lse_i, delta_i = (jax.lax.dynamic_slice_in_dim(x, start, block_q, 3) for x in (lse, delta))
            s, allowed = _scores(q_i, k_j, jax.lax.dynamic_slice_in_dim(query_slots, start, block_q, 0),
                                 j * block_k, mask_j, _slice(query_segments, start, block_q, 1), segments_j)
            p = jnp.where(allowed, jnp.exp(s - lse_i[..., None]), 0.0)
            d_v = d_v + jnp.einsum("bkgqs,bkgqe->bkse", p.astype(do_i.dtype), do_i,
                                   preferred_element_type=jnp.float32)
            d_p = jnp.einsum("bkgqe,bkse->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
            d_s = (p * (d_p - delta_i[..., None])).astype(q.dtype)
            d_k = d_k + jnp.einsum("bkgqs,bkgqe->bkse", d_s, q_i, preferred_element_type=jnp.float32)
            d_q_i = jnp.einsum("bkgqs,bkse->bkgqe", d_s, k_j, preferred_element_type=jnp.float32)
            d_q = jax.lax.dynamic_update_slice_in_dim(
                d_q, jax.lax.dynamic_slice_in_dim(d_q, start, block_q, 3) + d_q_i, start, 3)
            return d_q, d_k, d_v

        # query blocks whose last slot is before this key block see none of it
        first = jnp.sum(last_slots < j * block_k).astype(jnp.int32)
        zeros = jnp.zeros(k_j.shape, jnp.float32)
        d_q, d_k, d_v = jax.lax.fori_loop(first, num_query_blocks, query_block, (d_q, zeros, zeros))
        return d_q, (d_k, d_v)

    d_q, (d_k, d_v) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(k.shape[2] // block_k))
    scale = q.shape[-1] ** -0.5
    key_blocks = lambda x: jnp.moveaxis(x, 0, 2).reshape(k.shape)  # [nk, B, K, bk, E] -> [B, K, S, E]
    return ((d_q * scale).astype(q.dtype), (key_blocks(d_k) * scale).astype(k.dtype), key_blocks(d_v).astype(v.dtype),
            None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
