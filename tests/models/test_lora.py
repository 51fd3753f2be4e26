"""LoRA adapters: the config, the forward against a numpy reference, zero adapters = the base, merging."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models.lora import LoRA, LoRAConfig, LoRAParam, add_lora, has_lora, lora_tensors, merge_lora

TOKENS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 1, 0, 6]], np.int32)


def adapted(tiny_config, tiny_model, seed=0, **lora):
    """The tiny model with adapters whose B is random too (a trained adapter), and its base's logits."""
    model = tiny_model(tiny_config(), seed=seed)
    base_logits = np.asarray(model(TOKENS))
    add_lora(model, LoRAConfig(**lora), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(2)
    for _, variable in nnx.to_flat_state(nnx.state(model, LoRAParam)):
        variable.set_value(jnp.asarray(rng.normal(0, 0.1, variable.shape), jnp.float32))
    return model, base_logits


@pytest.mark.parametrize("bad", [dict(rank=-1), dict(rank=2.0), dict(alpha=0), dict(alpha=float("nan")),
                                 dict(targets=("q", "lm_head")), dict(targets=())])
def test_config_refuses(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoRAConfig(**{"rank": 4, **bad})


def test_zero_initialised_adapters_give_the_base_logits_exactly(tiny_config, tiny_model):
    model = tiny_model(tiny_config())
    base_logits = np.asarray(model(TOKENS))
    add_lora(model, LoRAConfig(rank=4, alpha=8), rngs=nnx.Rngs(0))
    adapters = nnx.state(model, LoRAParam)
    assert len(nnx.to_flat_state(adapters)) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    a = adapters["layers"][0]["attn"]["q_lora"]["a"][...]
    assert a.shape == (32, 4) and np.abs(a).max() <= 1 / np.sqrt(32) and np.abs(a).min() > 0  # PEFT's uniform
    np.testing.assert_array_equal(np.asarray(model(TOKENS)), base_logits)


def test_rank_zero_adds_nothing(tiny_config, tiny_model):
    model = tiny_model(tiny_config())
    add_lora(model, LoRAConfig(rank=0), rngs=nnx.Rngs(0))
    assert not has_lora(model)


def test_adapter_matches_numpy_reference():
    """y = x W + (alpha / r) x A B, for a weight with two output dims (q [D, H, E]) and one with two input dims."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6)).astype(np.float32)
    config = LoRAConfig(rank=2, alpha=5.0)
    lora = LoRA((6,), ("embed",), (2, 4), ("heads", "head_dim"), config, rngs=nnx.Rngs(0))
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(2, 2, 4))
    lora.a.set_value(jnp.asarray(a, jnp.float32))
    lora.b.set_value(jnp.asarray(b, jnp.float32))
    expected = 2.5 * x.astype(np.float64).reshape(6, 6) @ a @ b.reshape(2, 8)
    np.testing.assert_allclose(np.asarray(lora(jnp.asarray(x))), expected.reshape(2, 3, 8), rtol=1e-5, atol=1e-5)
    assert lora.a.get_metadata()["axes"] == ("embed", None) and lora.b.get_metadata()["axes"] == (None, "heads",
                                                                                                     "head_dim")
    np.testing.assert_allclose(np.asarray(lora.delta()), 2.5 * (a @ b.reshape(2, 8)).reshape(6, 2, 4), rtol=1e-5)


def test_adapted_model_matches_numpy_forward_of_merged_weights(tiny_config, tiny_model):
    """A model with trained adapters computes what its base computes with W + (alpha / r) A B in place of W
    (each weight merged in numpy float64), so every targeted projection applies its adapter once, correctly."""
    model, base_logits = adapted(tiny_config, tiny_model, rank=3, alpha=6.0, targets=("q", "o", "up", "down"))
    logits = np.asarray(model(TOKENS))
    assert np.abs(logits - base_logits).max() > 1e-3  # the adapters do something
    merged = tiny_model(tiny_config())
    for i, layer in enumerate(model.layers):
        for module, name in ((layer.attn, "q"), (layer.attn, "o"), (layer.mlp, "up"), (layer.mlp, "down")):
            adapter = getattr(module, name + "_lora")
            a, b = np.asarray(adapter.a[...], np.float64), np.asarray(adapter.b[...], np.float64)
            w = np.asarray(getattr(module, name)[...], np.float64)
            delta = 2.0 * a.reshape(-1, 3) @ b.reshape(3, -1)
            target = getattr(merged.layers[i].attn if module is layer.attn else merged.layers[i].mlp, name)
            target.set_value(jnp.asarray((w + delta.reshape(w.shape)), jnp.float32))
        assert not hasattr(layer.attn, "k_lora") and not hasattr(layer.mlp, "gate_lora")
    np.testing.assert_allclose(logits, np.asarray(merged(TOKENS)), rtol=1e-4, atol=1e-5)
    # merge_lora does the same, and drops the adapters
    folded = merge_lora(model)
    assert not has_lora(folded) and has_lora(model)
    np.testing.assert_allclose(np.asarray(folded(TOKENS)), logits, rtol=1e-4, atol=1e-5)


def test_adapters_shard_as_their_weights(tiny_config, tiny_model):
    """A and B carry the weight's logical axes on its input and output dims, so `shard_model` places them."""
    from r1jax.sharding import make_mesh, shard_model

    model, _ = adapted(tiny_config, tiny_model, rank=2)
    shard_model(model, make_mesh({"data": -1}))
    attn, mlp = model.layers[0].attn, model.layers[0].mlp
    assert attn.o_lora.a.get_metadata()["axes"] == ("heads", "head_dim", None)
    assert mlp.down_lora.b.get_metadata()["axes"] == (None, "embed")
    assert attn.k_lora.b.shape == (2, 2, 8) and attn.o_lora.a.shape == (4, 8, 2)


def test_peft_layout_names_and_shapes(tiny_config, tiny_model):
    model, _ = adapted(tiny_config, tiny_model, rank=2, alpha=4.0, targets=("k", "down"))
    tensors, config = lora_tensors(model)
    assert config == LoRAConfig(rank=2, alpha=4.0, targets=("k", "down"))
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (2, 32)
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 2)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (2, 64)
    assert len(tensors) == 2 * 2 * 2


def test_adapters_are_differentiable_alone(tiny_config, tiny_model):
    """The gradient over the adapters (the base held fixed) is nonzero for both A and B of a trained adapter."""
    model, _ = adapted(tiny_config, tiny_model, rank=2, targets=("v",))
    graphdef, adapters, base = nnx.split(model, LoRAParam, nnx.Param)
    loss = lambda adapters: nnx.merge(graphdef, adapters, base)(TOKENS).std()
    grads = jax.grad(loss)(adapters)
    for _, g in nnx.to_flat_state(grads):
        assert np.abs(np.asarray(g[...])).max() > 0


def test_exports_load_in_peft_and_transformers_with_equal_logits(hf_checkpoint, tmp_path):
    """The adapters alone (PEFT's layout) over the base checkpoint in `peft`, and the merged model in
    `transformers`, give the adapted model's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from r1jax.models import from_pretrained, save_hf, save_peft

    path = hf_checkpoint("qwen2")  # q/k/v biases too
    model = from_pretrained(path)
    add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "gate", "down")), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    for _, variable in nnx.to_flat_state(nnx.state(model, LoRAParam)):
        variable.set_value(jnp.asarray(rng.normal(0, 0.2, variable.shape), jnp.float32))
    ids = rng.integers(0, model.config.vocab_size, (2, 12))
    ours = np.asarray(model(jnp.asarray(ids)))

    def hf_logits(hf_model):
        with torch.no_grad():
            return hf_model(torch.tensor(ids)).logits.float().numpy()

    base = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    assert np.abs(hf_logits(base) - ours).max() > 1e-2  # the adapters matter
    adapter_dir = save_peft(model, tmp_path / "adapter", base_model=str(path))
    adapted = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    np.testing.assert_allclose(hf_logits(adapted), ours, atol=1e-4, rtol=0)
    merged = transformers.AutoModelForCausalLM.from_pretrained(save_hf(model, tmp_path / "merged")).eval()
    np.testing.assert_allclose(hf_logits(merged), ours, atol=1e-4, rtol=0)
