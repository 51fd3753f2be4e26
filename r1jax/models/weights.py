"""Weight import and export: Hugging Face safetensors directories and GGUF files.

Our parameter layout keeps heads as their own axis ([D, H, E] for q/k/v, [H, E, D] for
the output projection), so every conversion is a transpose plus a reshape. One table,
`_tensor_table`, names each of our parameters, its HF tensor and both conversions;
import, export and GGUF share it.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models.config import ModelConfig
from r1jax.models.transformer import Transformer
from r1jax.tokenizers import Tokenizer, save_tokenizer

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


# ---- the naming table ---------------------------------------------------------------

def _tensor_table(cfg: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
    """our dotted path -> (HF tensor name, hf_to_ours(array), ours_to_hf(array))."""
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    same = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)

    def heads_in(n):  # HF [n*E, D] <-> ours [D, n, E]
        return (lambda w: w.T.reshape(d, n, e), lambda w: w.reshape(d, n * e).T)

    def heads_bias(n):  # HF [n*E] <-> ours [n, E]
        return (lambda b: b.reshape(n, e), lambda b: b.reshape(n * e))

    heads_out = (lambda w: w.T.reshape(h, e, d), lambda w: w.reshape(h * e, d).T)  # HF [D, H*E]
    table = {"embed": ("model.embed_tokens.weight", *same),
             "final_norm.scale": ("model.norm.weight", *same)}
    if not cfg.tie_embeddings:
        table["lm_head"] = ("lm_head.weight", *transpose)
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        table.update({
            ours + "attn_norm.scale": (hf + "input_layernorm.weight", *same),
            ours + "mlp_norm.scale": (hf + "post_attention_layernorm.weight", *same),
            ours + "attn.q": (hf + "self_attn.q_proj.weight", *heads_in(h)),
            ours + "attn.k": (hf + "self_attn.k_proj.weight", *heads_in(k)),
            ours + "attn.v": (hf + "self_attn.v_proj.weight", *heads_in(k)),
            ours + "attn.o": (hf + "self_attn.o_proj.weight", *heads_out),
            ours + "mlp.gate": (hf + "mlp.gate_proj.weight", *transpose),
            ours + "mlp.up": (hf + "mlp.up_proj.weight", *transpose),
            ours + "mlp.down": (hf + "mlp.down_proj.weight", *transpose),
        })
        if cfg.qkv_bias:
            table.update({
                ours + "attn.q_bias": (hf + "self_attn.q_proj.bias", *heads_bias(h)),
                ours + "attn.k_bias": (hf + "self_attn.k_proj.bias", *heads_bias(k)),
                ours + "attn.v_bias": (hf + "self_attn.v_proj.bias", *heads_bias(k)),
            })
    return table


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def model_from_tensors(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray | None],
                       source: str) -> Transformer:
    """Build a Transformer whose parameters come from `get_tensor(hf_name)`.

    The module is built abstractly (`nnx.eval_shape`), so no random weights are
    initialised and no second full copy of the model exists during loading.
    """
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    table = _tensor_table(cfg)
    flat = nnx.to_flat_state(abstract_state)
    leaves = []
    for path, variable in flat:
        name = _dotted(path)
        hf_name, to_ours, _ = table[name]
        tensor = get_tensor(hf_name)
        if tensor is None:
            raise CheckpointError(f"{source}: tensor {hf_name!r} is missing (needed for {name})")
        try:
            value = to_ours(tensor)
        except (ValueError, TypeError):  # a reshape that cannot fit: reported just below
            value = tensor
        if value.shape != variable.shape:
            raise CheckpointError(
                f"{source}: tensor {hf_name!r} has shape {tuple(np.shape(tensor))}, which does not fit "
                f"{name} {variable.shape} of config {_shape_summary(cfg)}")
        leaves.append((path, variable.replace(jnp.asarray(value, dtype=variable.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _shape_summary(cfg: ModelConfig) -> str:
    return (f"(vocab={cfg.vocab_size}, hidden={cfg.hidden_size}, heads={cfg.num_heads}/"
            f"{cfg.num_kv_heads}, head_dim={cfg.head_dim}, mlp={cfg.intermediate_size})")


# ---- Hugging Face directories -------------------------------------------------------

def _safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({directory / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) {missing} that are not in {directory}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has config.json but no *.safetensors weights "
                              "(PyTorch .bin checkpoints are not supported: re-save with safe_serialization=True)")
    return files


def _open_safetensors(files: list[pathlib.Path]) -> dict[str, Callable[[], np.ndarray]]:
    """tensor name -> a loader, so each tensor is read only when the model needs it."""
    from safetensors import safe_open

    loaders = {}
    for f in files:
        try:
            # the flax framework reads bfloat16, which plain numpy cannot
            handle = safe_open(str(f), framework="flax")
        except Exception as err:  # safetensors reports truncation as a header/buffer mismatch
            raise CheckpointError(f"cannot read {f}: {err} (is the file truncated or not safetensors?)") from err
        for name in handle.keys():
            loaders[name] = (lambda h=handle, n=name, f=f: _read_tensor(h, n, f))
    return loaders


def _read_tensor(handle, name, f):
    try:
        return handle.get_tensor(name)
    except Exception as err:
        raise CheckpointError(f"cannot read tensor {name!r} from {f}: {err} (is the file truncated?)") from err


def load_hf(directory: PathLike, **config_overrides) -> Transformer:
    """Load a `LlamaForCausalLM` / `Qwen2ForCausalLM` directory saved by transformers."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no config.json; expected a Hugging Face model directory")
    cfg = ModelConfig.from_hf(json.loads(config_path.read_text()), **config_overrides)
    tensors = _open_safetensors(_safetensors_files(directory))
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some exporters write the tied copy too
    used = {hf for hf, _, _ in _tensor_table(cfg).values()}
    unused = sorted(set(tensors) - used)
    if unused:
        log.warning("%s: ignoring %d tensors r1jax does not use, e.g. %s", directory, len(unused), unused[:3])
    return model_from_tensors(cfg, lambda name: tensors[name]() if name in tensors else None, str(directory))


def save_hf(model: Transformer, directory: PathLike, *, tokenizer: Tokenizer | None = None,
            dtype: str | None = None, max_shard_bytes: int = 2 * 1024**3) -> pathlib.Path:
    """Write `config.json`, `generation_config.json` and safetensors (sharded with an index past
    `max_shard_bytes`).

    The result loads with `transformers.AutoModelForCausalLM.from_pretrained` and vLLM. With
    `tokenizer`, its files go beside the weights (`r1jax.tokenizers.save_tokenizer`: the vocabulary,
    the chat template, the special tokens) and `generation_config.json` lists every one of its stop ids
    as `eos_token_id`, so generation ends at the end of a turn (`<|im_end|>`), as in r1jax's sampler;
    without one, it holds the model config's BOS and EOS.
    Existing weight, tokenizer or generation config files in `directory` are refused rather than
    overwritten.
    """
    from safetensors.flax import save_file  # handles bfloat16, unlike safetensors.numpy

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = list(directory.glob("*.safetensors"))
    if existing:
        raise FileExistsError(f"{directory} already holds weights ({existing[0].name}); choose an empty directory")
    cfg = model.config
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model_max_length=cfg.max_position_embeddings)
    else:
        generation = directory / "generation_config.json"
        if generation.exists():
            raise FileExistsError(f"{directory} already holds {generation.name}; choose an empty directory")
        ids = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
        generation.write_text(json.dumps({k: v for k, v in ids.items() if v is not None}, indent=2))
    out_dtype = jnp.dtype(dtype or cfg.param_dtype)
    state = nnx.state(model, nnx.Param)
    table = _tensor_table(cfg)
    tensors = {}
    for path, variable in nnx.to_flat_state(state):
        hf_name, _, to_hf = table[_dotted(path)]
        tensors[hf_name] = jnp.asarray(to_hf(variable[...]), out_dtype)
    shards = list(_split_shards(tensors, max_shard_bytes))
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_config = cfg.to_hf()
    hf_config["torch_dtype"] = out_dtype.name
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    return directory


def _split_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    shard, size = {}, 0
    for name, t in tensors.items():
        if shard and size + t.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = t
        size += t.nbytes
    if shard:
        yield shard


# ---- GGUF ---------------------------------------------------------------------------

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_NAMES:
        return _GGUF_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}"


def _gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value.item() if value.size == 1 else value.tolist()


def gguf_config(reader, **overrides) -> ModelConfig:
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; r1jax reads 'llama' GGUFs")
    p = "llama."
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    heads = _gguf_field(reader, p + "attention.head_count")
    hidden = _gguf_field(reader, p + "embedding_length")
    names = {t.name for t in reader.tensors}
    cfg = dict(
        vocab_size=int(embed.shape[-1]),
        hidden_size=hidden,
        intermediate_size=_gguf_field(reader, p + "feed_forward_length"),
        num_layers=_gguf_field(reader, p + "block_count"),
        num_heads=heads,
        num_kv_heads=_gguf_field(reader, p + "attention.head_count_kv", heads),
        head_dim=_gguf_field(reader, p + "rope.dimension_count", hidden // heads),
        rope_theta=float(_gguf_field(reader, p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(_gguf_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        max_position_embeddings=_gguf_field(reader, p + "context_length", 2048),
        architecture="llama",
        bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two RoPE halves of q/k rows; undo it for the
    # HF 'rotate_half' layout that the rest of r1jax uses
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: PathLike, **config_overrides) -> Transformer:
    """Load a Llama-architecture GGUF file, dequantising every tensor to float32."""
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot read GGUF {path}: {err} (is the file truncated?)") from err
    cfg = gguf_config(reader, **config_overrides)
    by_name = {t.name: t for t in reader.tensors}

    def get(hf_name):
        tensor = by_name.get(_gguf_name(hf_name))
        if tensor is None:
            return None
        w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        w = w.reshape([int(n) for n in reversed(tensor.shape)])  # ggml lists dims fastest-first
        if hf_name.endswith("q_proj.weight"):
            w = _unpermute(w, cfg.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = _unpermute(w, cfg.num_kv_heads)
        return w

    return model_from_tensors(cfg, get, str(path))


def from_pretrained(path: PathLike, **config_overrides) -> Transformer:
    """Load a model from an HF directory (config.json + safetensors) or a `.gguf` file.

    Keyword arguments override `ModelConfig` fields, e.g. `dtype="bfloat16"`,
    `param_dtype="bfloat16"`, `remat=True`.
    """
    path = pathlib.Path(path)
    if path.suffix == ".gguf":
        return load_gguf(path, **config_overrides)
    if path.is_dir():
        return load_hf(path, **config_overrides)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass an HF model directory or a .gguf file")
    raise CheckpointError(f"{path} is neither an HF model directory nor a .gguf file")
