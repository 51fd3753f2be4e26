"""`from_pretrained(path, mesh=...)`: each parameter built in its shards, read slice by slice.

The multi-device loads run in fresh Python processes (tests/support/sharded_load.py), since the
fake device count and `jax.distributed` must be set before JAX starts.
"""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from r1jax.models import CheckpointError, ModelConfig, from_pretrained
from r1jax.sharding import make_mesh
from tests.support.hf_checkpoints import tiny_checkpoint
from tests.support.launch import launch, wait

SCRIPT = "tests.support.sharded_load"
DTYPES = ("float32", "bfloat16")


def _flat_params(model) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(v.get_value()).astype(np.float32)
            for path, v in nnx.to_flat_state(nnx.state(model))}


# ---- parity: 8 devices in one process, every parameter as the whole load gives it ---------


def _qwen2_untied_with_biases(directory):
    """tiny_checkpoint's Qwen2 with random (not zero) q/k/v biases and its own LM head, stored in
    bfloat16, so that every kind of tensor conversion reads non-trivial slices of either dtype."""
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    tiny_checkpoint(directory, "qwen2")
    tensors = load_file(str(directory / "model.safetensors"))
    rng = np.random.default_rng(0)
    for name in [n for n in tensors if n.endswith("bias")]:
        tensors[name] = rng.standard_normal(tensors[name].shape, np.float32)
    tensors["lm_head.weight"] = rng.standard_normal(tensors["model.embed_tokens.weight"].shape, np.float32)
    save_file({name: t.astype(ml_dtypes.bfloat16) for name, t in tensors.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return directory


@pytest.fixture(scope="module")
def tiny(hf_checkpoint, tmp_path_factory):
    return {"llama": hf_checkpoint("llama"),
            "qwen2": _qwen2_untied_with_biases(tmp_path_factory.mktemp("tiny") / "qwen2")}


@pytest.fixture(scope="module")
def eight_devices(tiny, tmp_path_factory):
    """Every checkpoint of `tiny` loaded onto mesh data=2, fsdp=2, tensor=2: {arch: {key: array}}."""
    out = tmp_path_factory.mktemp("eight_devices")
    wait(launch(SCRIPT, ["parity", str(out), *map(str, tiny.values()), "--mesh", "data=2,fsdp=2,tensor=2"],
                processes=1, devices=8, log_dir=out, name="parity"))
    return {arch: dict(np.load(out / f"{arch}.npz")) for arch in tiny}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sharded_load_equals_whole_load(tiny, eight_devices, arch):
    """Bit for bit, in float32 and in bfloat16 (from a float32 or a bfloat16 file), and sharded by the axes."""
    sharded = eight_devices[arch]
    for dtype in DTYPES:
        whole = _flat_params(from_pretrained(tiny[arch], param_dtype=dtype))
        assert len(whole) == (20 if arch == "llama" else 27)
        for name, value in whole.items():
            np.testing.assert_array_equal(sharded[f"{dtype}/value/{name}"], value, err_msg=f"{dtype} {name}")
    # q [D=64, H=4, E=16] is (embed/fsdp, heads/tensor, whole); o [H, E, D] likewise
    assert str(sharded["float32/spec/layers/0/attn/q"]) == str(P("fsdp", "tensor", None))
    np.testing.assert_array_equal(sharded["float32/shard_shape/layers/0/attn/q"], [32, 2, 16])
    np.testing.assert_array_equal(sharded["float32/shard_shape/layers/0/attn/o"], [2, 16, 32])
    np.testing.assert_array_equal(sharded["float32/shard_shape/layers/0/mlp/down"], [64, 32])
    if arch == "qwen2":
        np.testing.assert_array_equal(sharded["float32/shard_shape/layers/0/attn/k_bias"], [1, 16])
        np.testing.assert_array_equal(sharded["float32/shard_shape/lm_head"], [32, 150])


# ---- the sharded path's errors: one device, in this process --------------------------


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_sharded_load_reports_missing_and_misshaped_tensors(tiny, tmp_path):
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    missing = _edited_copy(tiny["llama"], tmp_path / "missing",
                           lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="missing.*model.layers.1.mlp.up_proj.weight.*missing"):
        from_pretrained(missing, mesh=mesh)
    wrong_k = {"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 64), np.float32)}
    misshaped = _edited_copy(tiny["llama"], tmp_path / "misshaped", lambda t: t.update(wrong_k))
    with pytest.raises(CheckpointError, match=r"misshaped.*k_proj.weight.*shape \(8, 64\).*layers.0.attn.k"):
        from_pretrained(misshaped, mesh=mesh)


# ---- memory: what one process of a two-process run holds while loading ----------------


def _write_checkpoint(directory: Path, cfg: ModelConfig) -> float:
    """A random float32 Llama checkpoint written with numpy, one file per layer plus an index; its MB."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    files = [shapes] + [{f"model.layers.{i}.{name}": shape for name, shape in {
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f)}.items()} for i in range(cfg.num_layers)]
    directory.mkdir()
    weight_map = {}
    for i, file_shapes in enumerate(files):
        name = f"model-{i:05d}.safetensors"
        save_file({n: rng.random(s, np.float32) for n, s in file_shapes.items()}, str(directory / name))
        weight_map.update(dict.fromkeys(file_shapes, name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    return 4 * cfg.num_params / 2**20


def _memory_runs(tmp: Path, checkpoint: Path) -> dict[str, list[dict]]:
    """Both loading paths, each as two processes of 4 devices on mesh fsdp=8: {path: [per-process figures]}."""
    runs = {path: launch(SCRIPT, ["memory", str(tmp / f"{path}.json"), str(checkpoint), "--path", path,
                                  "--mesh", "fsdp=8"], processes=2, devices=4, log_dir=tmp, name=path)
            for path in ("sharded", "whole")}
    for processes in runs.values():
        wait(processes)
    return {path: [json.loads((tmp / f"{path}{i}.json").read_text()) for i in range(2)] for path in runs}


def _assert_holds_only_its_shards(tmp: Path, cfg: ModelConfig):
    model_mb = _write_checkpoint(tmp / "checkpoint", cfg)
    runs = _memory_runs(tmp, tmp / "checkpoint")
    for path, figures in runs.items():
        for i, fig in enumerate(figures):
            print(f"{path} load, process {i}/2, model {model_mb:.0f} MB, local shards {fig['local_shards_mb']:.0f} MB: "
                  f"peak anonymous memory +{fig['anon_peak_increase_mb']:.0f} MB, "
                  f"peak RSS (VmHWM, with mapped file pages) +{fig['hwm_increase_mb']:.0f} MB")
    for sharded, whole in zip(runs["sharded"], runs["whole"]):
        assert sharded["model_mb"] == pytest.approx(model_mb, rel=1e-3)
        assert sharded["local_shards_mb"] < 0.55 * model_mb  # half the model on this process's 4 of 8 devices
        assert sharded["anon_peak_increase_mb"] < 0.7 * model_mb
        assert sharded["hwm_increase_mb"] < 0.7 * model_mb
        assert sharded["anon_peak_increase_mb"] < whole["anon_peak_increase_mb"]
        assert sharded["hwm_increase_mb"] < whole["hwm_increase_mb"]


def test_sharded_load_holds_only_its_shards(tmp_path):
    """A 358 MB Llama-shaped model (vocab 32000, width 768, MLP 3072, 8 layers, tied embeddings)."""
    _assert_holds_only_its_shards(tmp_path, ModelConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=3072, num_layers=8, num_heads=12, num_kv_heads=4,
        tie_embeddings=True))
