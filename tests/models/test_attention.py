"""r1jax.models.attention: blockwise (flash) attention against a float64 numpy reference and the
einsum path's gradients; what it keeps for the backward; the sampler's block-limited decode; the
model on an 8-device mesh (in a subprocess)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models import Transformer
from r1jax.models.attention import attend
from tests.support import ROOT
from tests.support.tiny import tiny_config


def np_attention(q, k, v, query_slots, key_mask, segment_ids=None):
    """float64 reference: q [B, T, H, E], k and v [B, K, S, E]; the rows that see no key are 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, time, heads, dim = q.shape
    groups = heads // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)  # [B, H, S, E]
    scores = np.einsum("bthe,bhse->bhts", q, k) / np.sqrt(dim)
    allowed = (np.arange(k.shape[2])[None, :] <= np.asarray(query_slots)[:, None])[None] & np.asarray(key_mask)[:, None]
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    scores = np.where(allowed[:, None], scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    weights = np.where(allowed[:, None], np.exp(scores - np.where(np.isfinite(peak), peak, 0)), 0)
    weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bhts,bhse->bthe", weights, v), allowed.any(-1)  # [B, T, H, E], [B, T] seen


# (queries, keys, first query slot, packed segments, block): every path through the blocks
CASES = {
    "one block": (16, 16, 0, False, 16),
    "several blocks, ragged": (37, 37, 0, False, 8),
    "packed rows": (24, 24, 0, True, 8),
    "chunk after a prefix": (13, 40, 27, False, 8),
    "decode step": (1, 64, 41, False, 16),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_blockwise_equals_numpy_and_the_einsum_gradients(case, dtype):
    time, slots, first, packed, block = CASES[case]
    rng = np.random.default_rng(0)
    batch, heads, kv_heads, dim = 3, 6, 2, 8
    dtype = jnp.dtype(dtype)
    q = jnp.asarray(rng.normal(size=(batch, time, heads, dim)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(batch, kv_heads, slots, dim)), dtype) for _ in range(2))
    query_slots = first + jnp.arange(time)
    key_mask = np.ones((batch, slots), bool)
    key_mask[1, :5] = False  # left padding
    key_mask[2, :min(first + 1, slots) + 3] = False  # a row whose first queries see nothing
    segments = jnp.asarray(np.sort(rng.integers(0, 3, (batch, time)), axis=1)) if packed else None
    want, seen = np_attention(q, k, v, query_slots, key_mask, segments)
    weight = jnp.asarray(rng.normal(size=q.shape) * seen[:, :, None, None], jnp.float32)  # real queries only

    def loss(kind):
        def fn(q, k, v):
            out = attend(q, k, v, query_slots=query_slots, key_mask=jnp.asarray(key_mask), segment_ids=segments,
                         kind=kind, block_size=block)
            return jnp.sum(out.astype(jnp.float32) * weight), out
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (_, out), grads = loss("blockwise")
    (_, einsum_out), einsum_grads = loss("einsum")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))  # also where a query sees no key
    np.testing.assert_allclose(np.asarray(out, np.float32)[seen], want[seen], **tol)
    np.testing.assert_allclose(np.asarray(einsum_out, np.float32)[seen], want[seen], **tol)
    for got, expected in zip(grads, einsum_grads):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), **tol)


def _temp_bytes(kind, time, block=128):
    batch, heads, dim = 1, 2, 16
    q = jax.ShapeDtypeStruct((batch, time, heads, dim), jnp.float32)
    kv = jax.ShapeDtypeStruct((batch, 1, time, dim), jnp.float32)

    def loss(q, k, v):
        out = attend(q, k, v, query_slots=jnp.arange(time), key_mask=jnp.ones((batch, time), bool), kind=kind,
                     block_size=block)
        return jnp.sum(out ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_keeps_no_time_by_time_array():
    """The backward needs the forward's output and one statistic per query, not the [H, T, T]
    probabilities: the compiled gradient's scratch memory grows linearly with T, as einsum's does not."""
    time = 2048
    one_score_matrix = 2 * time * time * 4  # [H, T, T] float32
    einsum, blockwise = _temp_bytes("einsum", time), _temp_bytes("blockwise", time)
    assert einsum > one_score_matrix
    assert blockwise < one_score_matrix / 8, (blockwise, einsum)
    assert _temp_bytes("blockwise", 2 * time) < 2.5 * blockwise  # linear in T, not quadratic


def sharpened(config):
    """A random model whose logits spread over a few units (near-uniform ones make weak tests)."""
    model = Transformer(config, rngs=nnx.Rngs(0))
    model.lm_head.set_value(model.lm_head.get_value() * 8.0)
    return model


def test_block_limited_decode_samples_what_full_cache_decode_samples():
    """Decoding with attention_block=8 (each step reads only the cache blocks filled so far; the cache
    is sized to whole blocks) draws the same tokens with the same log-probs as the einsum path, which
    attends over every slot; and its log-probs are still the training forward's."""
    from r1jax.batching import pad_left
    from r1jax.rollout import training_batch
    from r1jax.sampling import generate
    from r1jax.sharding import make_mesh
    from r1jax.train.objectives import completion_logprobs

    prompts = [[5, 17, 42, 9, 33, 21, 8], [12, 5, 60], [1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
    new_tokens = 45  # the cache spans 7 blocks of 8
    tokens, prompt_mask = pad_left(prompts, 0, width=16)
    outputs = {}
    for kind in ("einsum", "blockwise"):
        model = sharpened(tiny_config(max_position_embeddings=256, attention=kind, attention_block=8))
        outputs[kind] = generate(*nnx.split(model), tokens, prompt_mask, jax.random.key(1), max_new_tokens=new_tokens,
                                 temperature=1.0, stop_ids=(3,), pad_id=0)
    np.testing.assert_array_equal(outputs["blockwise"].tokens, outputs["einsum"].tokens)
    np.testing.assert_allclose(outputs["blockwise"].logprobs, outputs["einsum"].logprobs, rtol=1e-5, atol=1e-5)
    out = outputs["blockwise"]
    assert 0 < int(out.lengths.min()) < new_tokens  # a row stopped early, others ran on
    batch = training_batch(out, make_mesh({"data": 1}, devices=jax.devices()[:1]), old_logps=True)
    graphdef, state = nnx.split(model)
    trained = jax.jit(lambda state, tokens, mask: completion_logprobs(
        nnx.merge(graphdef, state), tokens, mask, new_tokens)[0])(state, batch.tokens, batch.attention_mask)
    mask = np.asarray(out.mask).astype(bool)
    np.testing.assert_allclose(np.asarray(batch.old_logps)[:, -new_tokens:][mask], np.asarray(trained)[mask],
                               rtol=1e-5, atol=1e-5)


def _mesh_parity():
    """In a process with 8 fake devices: loss and gradients of a blockwise model sharded over
    data=2, fsdp=2, tensor=2 against the unsharded einsum model."""
    from r1jax.sharding import make_mesh
    from r1jax.sharding import shard_model

    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 64, (4, 40)), jnp.int32)
    mask = jnp.ones((4, 40), jnp.int32).at[1, :9].set(0)

    def loss(model):
        logits = model(tokens, attention_mask=mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * mask)

    results = {}
    for kind, mesh in (("einsum", None), ("blockwise", make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))):
        model = sharpened(tiny_config(max_position_embeddings=256, attention=kind, attention_block=8))
        if mesh is not None:
            model = shard_model(model, mesh)
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        results[kind] = [float(value)] + [np.asarray(g).tolist() for g in jax.tree.leaves(nnx.state(grads))]
    print(json.dumps(results))


def test_blockwise_model_on_a_mesh_equals_the_unsharded_einsum_model():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", __name__], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(results["blockwise"][0], results["einsum"][0], rtol=1e-5)
    for got, want in zip(results["blockwise"][1:], results["einsum"][1:]):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    _mesh_parity()
