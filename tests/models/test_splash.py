"""Splash attention (`r1jax.models.splash`) against the einsum path of `attend`.

On CPU the Pallas kernel runs in interpret mode: its own code, slowly, so the shapes here are
the least it takes (blocks of 128 queries and keys, two blocks a row) and each check runs once.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models import ModelConfig, Transformer
from r1jax.models.attention import attend
from r1jax.models.splash import splash_attention
from tests.support import ROOT

BATCH, HEADS, KV_HEADS, DIM, BLOCK = 2, 4, 2, 64, 128
# (rtol, atol) of outputs and gradients: float32 tight; bfloat16 rounds q, k, v, the
# probabilities and the output differently in the two paths
TOLERANCE = {"float32": (1e-4, 1e-5), "bfloat16": (2e-2, 2e-2)}


def _qkv(time, slots, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, time, HEADS, DIM))
    k, v = rng.normal(size=(2, BATCH, KV_HEADS, slots, DIM))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _outputs_and_grads(kind, q, k, v, real, **masks):
    """attend's output and the gradients w.r.t. q, k, v of a random linear loss over the real
    query positions `real` [B, T] alone (what a padding position returns is unspecified)."""
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * real[:, :, None, None]

    def loss(q, k, v):
        out = attend(q, k, v, kind=kind, block_size=BLOCK, **masks)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_splash_equals_einsum(q, k, v, real, dtype, **masks):
    rtol, atol = TOLERANCE[dtype]
    out, grads = _outputs_and_grads("splash", q, k, v, real, **masks)
    want_out, want_grads = _outputs_and_grads("einsum", q, k, v, real, **masks)
    assert np.isfinite(np.asarray(out, np.float32)).all()  # padding positions too: no NaN to poison gradients
    assert out.dtype == q.dtype
    f32 = lambda x: np.asarray(x, np.float32)
    np.testing.assert_allclose(f32(out)[real], f32(want_out)[real], rtol=rtol, atol=atol)
    for name, got, want in zip("qkv", grads, want_grads):
        assert got.dtype == want.dtype, name
        np.testing.assert_allclose(f32(got), f32(want), rtol=rtol, atol=atol, err_msg=f"d{name}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_left_padded_rows(dtype):
    """Row 1 is left-padded past its first key block: its first padding queries see no key at all."""
    time = 2 * BLOCK
    q, k, v = _qkv(time, time, dtype)
    key_mask = np.ones((BATCH, time), bool)
    key_mask[1, :150] = False
    _assert_splash_equals_einsum(q, k, v, key_mask, dtype, query_slots=jnp.arange(time),
                                 key_mask=jnp.asarray(key_mask))


def test_packed_rows():
    """Segments of 100, 120 and 36 tokens in row 0; in row 1 30 padding tokens, then two segments.
    The padding has the first segment's id: the key mask alone keeps it out."""
    time = 2 * BLOCK
    q, k, v = _qkv(time, time, "float32", seed=2)
    segment_ids = np.array([[1] * 100 + [2] * 120 + [3] * 36,
                            [1] * 30 + [1] * 130 + [2] * 96])
    key_mask = np.ones((BATCH, time), bool)
    key_mask[1, :30] = False
    _assert_splash_equals_einsum(q, k, v, key_mask, "float32", query_slots=jnp.arange(time),
                                 key_mask=jnp.asarray(key_mask), segment_ids=jnp.asarray(segment_ids))


@pytest.mark.parametrize("first_slot", [BLOCK, 64, 0])
def test_queries_within_a_longer_cache(first_slot):
    """T = 128 queries at slots c + arange(T) of S = 256: after a 128-slot prefix (c + T = S, the
    kernel's own causal offset), and inside a cache whose later slots are still empty but not
    masked (a prompt prefilled into a fresh cache, c + T < S: the keys are rotated into place)."""
    time, slots = BLOCK, 2 * BLOCK
    q, k, v = _qkv(time, slots, "float32", seed=3)
    key_mask = np.ones((BATCH, slots), bool)
    key_mask[1, :40] = False
    query_slots = first_slot + np.arange(time)
    real = key_mask[:, query_slots]
    _assert_splash_equals_einsum(q, k, v, real, "float32", query_slots=jnp.asarray(query_slots),
                                 key_mask=jnp.asarray(key_mask))


@pytest.mark.parametrize("time,block", [(192, 128), (64, 128), (256, 96)])
def test_shapes_the_kernel_cannot_take_name_the_alternative(time, block):
    q, k, v = _qkv(time, time, "float32")
    with pytest.raises(ValueError, match='attention="blockwise"'):
        splash_attention(q, k, v, query_slots=jnp.arange(time), key_mask=jnp.ones((BATCH, time), bool),
                         block_size=block)


@pytest.mark.slow  # interpret mode through a whole model: about 15 s on 2 cores
def test_transformer_with_splash_attention_equals_einsum():
    """A 2-layer model's logits at the real positions of left-padded 256-token rows, and its
    parameter gradients, are the einsum model's."""
    config = ModelConfig(vocab_size=128, hidden_size=256, intermediate_size=256, num_layers=2, num_heads=HEADS,
                         num_kv_heads=KV_HEADS, attention_block=BLOCK)
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, config.vocab_size, (BATCH, 2 * BLOCK))
    mask = np.ones_like(tokens)
    mask[1, :90] = 0
    tokens[1, :90] = 0

    def loss(model):
        logits = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)).astype(jnp.float32)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * mask) / mask.sum(), logits

    results = {}
    for kind in ("splash", "einsum"):
        model = Transformer(config.replace(attention=kind), rngs=nnx.Rngs(0))
        results[kind] = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    (value, logits), grads = results["splash"]
    (want_value, want_logits), want_grads = results["einsum"]
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(want_logits)[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    leaves = lambda grads: jax.tree.leaves(nnx.state(grads, nnx.Param))
    for got, want in zip(leaves(grads), leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-6)


# run in a fresh process: the fake device count must be set before JAX starts
MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from r1jax import sharding
from r1jax.models.attention import attend

rng = np.random.default_rng(5)
q = jnp.asarray(rng.normal(size=(2, 256, 4, 64)), jnp.float32)
k, v = jnp.asarray(rng.normal(size=(2, 2, 2, 256, 64)), jnp.float32)
key_mask = np.ones((2, 256), bool)
key_mask[1, :150] = False
weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32) * key_mask[:, :, None, None]

def run(kind):
    def loss(q, k, v):
        out = attend(q, k, v, query_slots=jnp.arange(256), key_mask=jnp.asarray(key_mask), kind=kind, block_size=128)
        return jnp.sum(out * weights), out
    if kind == "splash":
        assert "shard_map" in str(jax.make_jaxpr(loss)(q, k, v))
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads

want, want_grads = run("einsum")
for shape in ({"data": 2}, {"tensor": 2}):
    with sharding.activate(sharding.make_mesh(shape)):
        out, grads = run("splash")
    np.testing.assert_allclose(np.asarray(out)[key_mask], np.asarray(want)[key_mask], rtol=1e-4, atol=1e-5)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
print("equal on both meshes")
"""


@pytest.mark.slow
def test_on_a_mesh_each_device_runs_its_rows_and_heads():
    """Under `sharding.activate`, rows split over `data` and heads over `tensor` (2 fake CPU
    devices): the same outputs and gradients as the einsum path."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equal on both meshes" in result.stdout
