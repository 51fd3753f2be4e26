"""A LoRA policy trained on a mesh of 8 fake CPU devices, against one device, for tests/train/test_lora_training.py.

    python -m tests.support.lora_sharded     # run through tests/support/launch.py (devices=8)

Asserts that the adapters shard as their weights do (the logical axes of the weight's input and
output dims), that two SFT steps on the mesh data=2, fsdp=2, tensor=2 give the single device's
losses and adapters, that the base keeps its arrays and shardings, and that the reference's zero
adapters keep the adapters' shardings.
"""
from __future__ import annotations


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from r1jax.models.lora import LoRAConfig, LoRAParam, add_lora
    from r1jax.sharding import make_mesh
    from r1jax.train.objectives import SFTBatch, sft_objective
    from r1jax.train.state import make_optimizer, reference_params, split_trainable, train_state_from_model
    from r1jax.train.step import make_train_step
    from tests.support.tiny import random_model, tiny_config

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (8, 12)).astype(np.int32)
    batch = SFTBatch(tokens=tokens, attention_mask=np.ones_like(tokens),
                     completion_mask=np.tile((np.arange(12) >= 4).astype(np.int32), (8, 1)))

    def train(mesh):
        model = add_lora(random_model(tiny_config()), LoRAConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(0))
        for _, variable in nnx.to_flat_state(nnx.state(model, LoRAParam)):  # a trained adapter: B not 0
            variable.set_value(variable[...] + 0.05)
        # eps 1e-3 keeps Adam's update ~linear in the gradient: 1e-8 would blow rounding up in tiny ones
        state = train_state_from_model(model, make_optimizer(1e-2, schedule="constant", eps=1e-3), mesh)
        base = {path: v.get_value() for path, v in nnx.to_flat_state(split_trainable(state.params)[1])}
        reference = reference_params(state.params)
        step = make_train_step(sft_objective(), state, mesh)
        losses = []
        for i in range(2):
            state, metrics = step(state, batch, jax.random.key(i))
            losses.append(float(metrics["loss"]))
        for path, v in nnx.to_flat_state(split_trainable(state.params)[1]):
            assert v.get_value() is base[path] and not v.get_value().is_deleted(), path
        return state, reference, losses

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state, reference, losses = train(mesh)
    one_state, _, one_losses = train(make_mesh({"data": 1}, devices=jax.devices()[:1]))
    np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
    adapters = dict(nnx.to_flat_state(split_trainable(state.params)[0]))
    for path, v in nnx.to_flat_state(split_trainable(one_state.params)[0]):
        np.testing.assert_allclose(np.asarray(adapters[path].get_value()), np.asarray(v.get_value()), atol=1e-6,
                                   err_msg=str(path))
    attn = state.model().layers[0].attn
    specs = {name: getattr(attn, name).get_value().sharding.spec for name in ("q", "o")}
    assert attn.q_lora.a.get_value().sharding.spec == P(specs["q"][0], None), attn.q_lora.a.get_value().sharding
    assert attn.q_lora.b.get_value().sharding.spec == P(None, *specs["q"][1:]), attn.q_lora.b.get_value().sharding
    assert attn.o_lora.a.get_value().sharding.spec == P(*specs["o"][:2], None), attn.o_lora.a.get_value().sharding
    assert "tensor" in str(specs["q"]) and "fsdp" in str(specs["q"]), specs  # the mesh shards the weights at all
    zero = dict(nnx.to_flat_state(split_trainable(reference)[0]))
    for path, v in nnx.to_flat_state(split_trainable(state.params)[0]):
        assert zero[path].get_value().sharding == v.get_value().sharding, path
        assert not jnp.any(zero[path].get_value()), path
    print("ok", losses)


if __name__ == "__main__":
    main()
