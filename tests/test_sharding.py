"""Mesh, logical-axis rules and state shardings; the train step on 8 devices and on 2 processes.

The multi-device runs happen in fresh Python processes (tests/support/multiprocess_train.py,
launched by tests/support/launch.py), since the fake device count and `jax.distributed` must be
set before JAX starts. They are launched when this module's first test needs them and
run while this process computes the one-device reference.
"""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from r1jax.models import ModelConfig, Transformer
from r1jax.sharding import (MESH_AXES, batch_sharding, fit_spec, logical_to_spec, make_global_batch,
                            make_mesh, tree_shardings)
from r1jax.train import abstract_train_state, make_optimizer
from tests.support import multiprocess_train
from tests.support.launch import launch, wait

SCRIPT = "tests.support.multiprocess_train"
MESH_222 = AbstractMesh((2, 2, 2), MESH_AXES)
SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, tie_embeddings=True)


def test_make_mesh_sizes_and_errors():
    devices = jax.devices()[:1]
    mesh = make_mesh({"fsdp": -1}, devices=devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 1}, devices=devices)
    with pytest.raises(ValueError, match="at most one"):
        make_mesh({"data": -1, "fsdp": -1}, devices=devices)
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh({"data": 2, "fsdp": 2}, devices=devices)


def test_logical_axes_map_to_mesh_axes():
    assert logical_to_spec(("batch", "seq", "act_embed")) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "heads", "head_dim")) == P("fsdp", "tensor", None)
    # a mesh axis shards at most one dimension of an array
    assert logical_to_spec(("mlp", "heads")) == P("tensor", None)
    assert logical_to_spec(None) == P()


def test_fit_spec_drops_mesh_axes_that_do_not_divide():
    assert fit_spec(P("tensor", "fsdp"), (9, 576), MESH_222) == P(None, "fsdp")
    # 6 rows split 2 ways over data, not 4 ways over data x fsdp
    assert fit_spec(P(("data", "fsdp")), (6, 3), MESH_222) == P("data", None)
    assert fit_spec(P(("data", "fsdp")), (8,), MESH_222) == P(("data", "fsdp"))


def test_train_state_shardings_follow_the_axes_metadata():
    """Parameters and the Adam moments that mirror them are sharded alike; counters replicated.

    SmolLM2-135M shapes, abstractly: nothing is allocated.
    """
    tx = make_optimizer(1e-4)
    state = abstract_train_state(lambda: Transformer(SMOLLM2, rngs=nnx.Rngs(0)), tx)
    shardings = tree_shardings(state, MESH_222)
    params = shardings.params
    assert params["embed"].get_value().spec == P("tensor", "fsdp")  # [49152, 576]
    layer = params["layers"][0]
    # q [576, 9, 64]: 9 heads do not split over tensor=2, so that dimension is replicated
    assert layer["attn"]["q"].get_value().spec == P("fsdp", None, None)
    assert layer["mlp"]["gate"].get_value().spec == P("fsdp", "tensor")  # [576, 1536]
    assert layer["mlp"]["down"].get_value().spec == P("tensor", "fsdp")
    assert layer["attn_norm"]["scale"].get_value().spec == P(None)
    adam = shardings.opt_state[1][0]
    assert adam.mu["layers"][0]["mlp"]["gate"].get_value().spec == P("fsdp", "tensor")
    assert adam.count.spec == P()
    assert shardings.step.spec == P() and shardings.skipped_steps.spec == P()


def test_make_global_batch_on_one_process():
    mesh = make_mesh({"data": -1}, devices=jax.devices()[:1])
    batch = make_global_batch({"tokens": np.arange(6).reshape(3, 2)}, mesh)
    assert batch["tokens"].sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(batch["tokens"], np.arange(6).reshape(3, 2))
    with pytest.raises(ValueError, match="leading batch dimension"):
        make_global_batch({"scalar": np.float32(1.0)}, mesh)


# ---- the same training on 1 device, on 8 devices, and on 2 processes -----------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Final parameters of the reference (this process, one device) and of the sharded runs."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    processes = {
        "eight_devices": launch(SCRIPT, ["--mesh", "data=2,fsdp=2,tensor=2", "--out", str(tmp / "eight_devices.npz")],
                                processes=1, devices=8, log_dir=tmp, name="eight_devices"),
        "two_processes": launch(SCRIPT, ["--mesh", "fsdp=2,tensor=2", "--from-model",
                                         "--out", str(tmp / "two_processes.npz")],
                                processes=2, devices=2, log_dir=tmp, name="two_processes"),
    }
    results = {"one_device": multiprocess_train.run(make_mesh({"data": 1}, devices=jax.devices()[:1]))}
    for name, group in processes.items():
        wait(group)
        results[name] = dict(np.load(tmp / f"{name}.npz"))
    return results


def _assert_same_params(actual, expected):
    names = [k for k in expected if not k.startswith("shard_shape/")]
    assert len(names) == 21 and set(names) <= set(actual)
    for name in names:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
    # and training moved them: the comparison is not between two untouched copies
    assert max(np.abs(expected[n]).max() for n in names) > 0


def test_eight_devices_train_like_one(runs):
    """Mesh data=2, fsdp=2, tensor=2, the state created there already sharded."""
    eight = runs["eight_devices"]
    _assert_same_params(eight, runs["one_device"])
    # each device holds a shard, not a copy: embed [64, 32] is (vocab/tensor, embed/fsdp)
    np.testing.assert_array_equal(eight["shard_shape/embed"], [32, 16])
    np.testing.assert_array_equal(eight["shard_shape/layers/0/attn/q"], [16, 2, 8])
    np.testing.assert_array_equal(runs["one_device"]["shard_shape/embed"], [64, 32])


def test_two_processes_train_like_one(runs):
    """Two JAX processes with 2 devices each (fsdp=2, tensor=2), each feeding half the batch.

    The state starts from a model each process built whole and moved onto the mesh.
    """
    two = runs["two_processes"]
    _assert_same_params(two, runs["one_device"])
    np.testing.assert_array_equal(two["shard_shape/layers/0/mlp/gate"], [16, 32])
