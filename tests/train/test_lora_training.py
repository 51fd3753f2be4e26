"""Training a LoRA policy: the adapters alone train, the base stays put and is shared by the KL reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models.lora import LoRAConfig, LoRAParam, add_lora
from r1jax.sharding import make_mesh
from r1jax.train.objectives import SFTBatch, sft_objective
from r1jax.train.state import make_optimizer, reference_params, split_trainable, train_state_from_model
from r1jax.train.step import make_logprobs_fn, make_train_step

TOKENS = np.array([[1, 5, 9, 13, 17, 21, 25, 29], [2, 6, 10, 14, 18, 22, 26, 30]], np.int32)
BATCH = SFTBatch(tokens=jnp.asarray(TOKENS), attention_mask=jnp.ones_like(TOKENS),
                 completion_mask=jnp.asarray(np.tile([0, 0, 1, 1, 1, 1, 1, 1], (2, 1)), jnp.int32))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def run(tiny_config, tiny_model, mesh):
    """Five SFT steps of a rank-4 LoRA policy on one batch; the reference taken before them."""
    model = add_lora(tiny_model(tiny_config()), LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(0))
    state = train_state_from_model(model, make_optimizer(3e-2, schedule="constant"), mesh)
    initial = jax.tree.map(np.asarray, state.params)
    reference = reference_params(state.params)
    train_step = make_train_step(sft_objective(), state, mesh)
    losses = []
    for i in range(5):
        state, metrics = train_step(state, BATCH, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return initial, reference, state, losses


def _flat(params, kind):
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(params)
            if isinstance(v, LoRAParam) == (kind is LoRAParam)}


def test_optimizer_holds_adapters_only(run):
    _, _, state, _ = run
    trainable, frozen = split_trainable(state.params)
    # per layer, rank 4: q 32x4 + 4x32, k and v 32x4 + 4x16, o 32x4 + 4x32, gate and up 32x4 + 4x64, down 64x4 + 4x32
    assert sum(x.size for x in jax.tree.leaves(trainable)) == 2 * 2048
    assert {type(v) for _, v in nnx.to_flat_state(trainable)} == {LoRAParam}
    moments = [x.size for x in jax.tree.leaves(state.opt_state) if x.size > 1]
    assert sum(moments) == 2 * 2 * 2048  # Adam's two moments of the adapters, none of the base
    assert sum(x.size for x in jax.tree.leaves(frozen)) > 2 * 2048


def test_steps_train_adapters_only_and_the_loss_falls(run):
    initial, _, state, losses = run
    assert losses[-1] < losses[0] - 0.05, losses
    after = _flat(state.params, LoRAParam)
    changed = [path for path, value in _flat(initial, LoRAParam).items() if not np.array_equal(value, after[path])]
    assert len(changed) == len(after)  # every A and B moved (B from 0)
    base = _flat(state.params, nnx.Param)
    for path, value in _flat(initial, nnx.Param).items():
        np.testing.assert_array_equal(base[path], value, err_msg=str(path))


def test_reference_is_the_base_sharing_its_arrays(run, tiny_config, tiny_model, mesh):
    """The reference's log-probs equal the base model's (no adapters at all), after the policy has trained;
    its base arrays are the train state's own (no second copy) and still alive after the donated steps."""
    _, reference, state, _ = run
    shared = split_trainable(reference)[1]
    for (path, ref), (_, own) in zip(nnx.to_flat_state(shared), nnx.to_flat_state(split_trainable(state.params)[1])):
        assert ref.get_value() is own.get_value(), path
    logprobs = make_logprobs_fn(state, mesh)
    reference_logps = np.asarray(logprobs(reference, BATCH.tokens, BATCH.attention_mask))
    policy_logps = np.asarray(logprobs(state.params, BATCH.tokens, BATCH.attention_mask))
    base = train_state_from_model(tiny_model(tiny_config()), make_optimizer(1e-3), mesh)
    base_logps = np.asarray(make_logprobs_fn(base, mesh)(base.params, BATCH.tokens, BATCH.attention_mask))
    np.testing.assert_array_equal(reference_logps, base_logps)
    # the trained policy's own reference switches its (now nonzero) adapters off too
    trained_reference = reference_params(state.params)
    np.testing.assert_array_equal(np.asarray(logprobs(trained_reference, BATCH.tokens, BATCH.attention_mask)),
                                  base_logps)
    assert np.abs(policy_logps - base_logps).max() > 1e-3  # the policy has moved away from it


def test_checkpoint_restores_adapters_and_their_optimizer_state(run, tiny_config, tiny_model, mesh, tmp_path):
    """The run's Orbax checkpoint (`r1jax.checkpoint`, as the loop saves it) brings a LoRA state back whole."""
    from r1jax.checkpoint import Checkpointer

    _, _, state, _ = run
    with Checkpointer(tmp_path, save_every=1, model_signature={"lora": 4}) as checkpointer:
        checkpointer.save(5, state, {"data": {}}, force=True)
    fresh = train_state_from_model(add_lora(tiny_model(tiny_config(), seed=1), LoRAConfig(rank=4, alpha=8),
                                            rngs=nnx.Rngs(7)), make_optimizer(3e-2, schedule="constant"), mesh)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), fresh)
    with Checkpointer(tmp_path, save_every=1, model_signature={"lora": 4}) as checkpointer:
        step, restored, _ = checkpointer.restore_latest(target)
    assert step == 5 and int(restored.step) == 5
    for got, want in zip(jax.tree.leaves((restored.params, restored.opt_state)),
                         jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow  # an 8-device subprocess; adapter shardings are checked in tests/models/test_lora.py
def test_a_sharded_lora_policy_trains_as_on_one_device(tmp_path):
    """Adapters shard as their weights on a data x fsdp x tensor mesh of 8 devices, and train as on one
    (tests/support/lora_sharded.py, in a fresh process with fake devices)."""
    from tests.support.launch import launch, wait

    wait(launch("tests.support.lora_sharded", [], processes=1, devices=8, log_dir=tmp_path, name="lora_sharded"))


def test_a_bfloat16_base_stays_bfloat16_while_float32_adapters_train(tiny_config, tiny_model, mesh):
    """`model.param_dtype=bfloat16` holds the frozen base in bfloat16; the adapters are float32 whatever it is."""
    model = tiny_model(tiny_config(param_dtype="bfloat16"))
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # as from_pretrained(param_dtype=) loads it
        variable.set_value(variable[...].astype(jnp.bfloat16))
    add_lora(model, LoRAConfig(rank=2), rngs=nnx.Rngs(0))
    state = train_state_from_model(model, make_optimizer(3e-2, schedule="constant"), mesh)
    trainable, frozen = split_trainable(state.params)
    assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype("bfloat16")}
    before = _flat(state.params, nnx.Param)
    state, metrics = make_train_step(sft_objective(), state, mesh)(state, BATCH, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    trainable = split_trainable(state.params)[0]
    assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype("float32")}
    for path, value in _flat(state.params, nnx.Param).items():
        np.testing.assert_array_equal(value, before[path])
