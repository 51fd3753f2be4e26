"""Weight import and export: Hugging Face safetensors directories and GGUF files.

Our parameter layout keeps heads as their own axis ([D, H, E] for q/k/v, [H, E, D] for
the output projection), so every conversion is a transpose plus a reshape. One table,
`_tensor_table`, names each of our parameters, its HF tensor, both conversions, and which
slice of the HF tensor holds a given slice of ours (for loading straight into shards on a
mesh); import, export and GGUF share it. A model with LoRA adapters exports merged
(`save_hf`), or its adapters alone in PEFT's layout (`save_peft`).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from r1jax.models.config import ModelConfig, check_sizes
from r1jax.models.lora import TARGETS, lora_tensors, merge_lora
from r1jax.models.transformer import Transformer
from r1jax.sharding import shard_model, tree_shardings
from r1jax.tokenizers import Tokenizer, save_tokenizer

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


# ---- the naming table ---------------------------------------------------------------

class _Tensor(NamedTuple):
    """One of our parameters as an HF tensor.

    `hf_index(index)` maps an index of ours (a tuple of slices with bounds) to
    `(index into the HF tensor, cut)`: `to_ours(hf[hf_index])[cut]` is `ours[index]`, so a
    shard is read without reading the rest of the tensor.
    """

    hf_name: str
    to_ours: Callable  # HF array (whole, or a block of whole heads) -> ours
    to_hf: Callable
    hf_index: Callable


def _tensor_table(cfg: ModelConfig) -> dict[str, _Tensor]:
    """our dotted path -> its `_Tensor`."""
    e = cfg.head_dim

    def heads(s):  # the HF rows of whole heads s; `cut` then takes the head_dim slice
        return slice(s.start * e, s.stop * e)

    same = (lambda w: w, lambda w: w, lambda i: (i, ()))
    transpose = (lambda w: w.T, lambda w: w.T, lambda i: (i[::-1], ()))
    heads_in = (lambda w: w.T.reshape(w.shape[1], -1, e), lambda w: w.reshape(w.shape[0], -1).T,
                lambda i: ((heads(i[1]), i[0]), (..., i[2])))  # HF [n*E, D] <-> ours [D, n, E]
    heads_bias = (lambda b: b.reshape(-1, e), lambda b: b.reshape(-1),
                  lambda i: ((heads(i[0]),), (..., i[1])))  # HF [n*E] <-> ours [n, E]
    heads_out = (lambda w: w.T.reshape(-1, e, w.shape[0]), lambda w: w.reshape(-1, w.shape[-1]).T,
                 lambda i: ((i[2], heads(i[0])), (slice(None), i[1])))  # HF [D, H*E] <-> ours [H, E, D]
    table = {"embed": _Tensor("model.embed_tokens.weight", *same),
             "final_norm.scale": _Tensor("model.norm.weight", *same)}
    if not cfg.tie_embeddings:
        table["lm_head"] = _Tensor("lm_head.weight", *transpose)
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        table.update({
            ours + "attn_norm.scale": _Tensor(hf + "input_layernorm.weight", *same),
            ours + "mlp_norm.scale": _Tensor(hf + "post_attention_layernorm.weight", *same),
            ours + "attn.q": _Tensor(hf + "self_attn.q_proj.weight", *heads_in),
            ours + "attn.k": _Tensor(hf + "self_attn.k_proj.weight", *heads_in),
            ours + "attn.v": _Tensor(hf + "self_attn.v_proj.weight", *heads_in),
            ours + "attn.o": _Tensor(hf + "self_attn.o_proj.weight", *heads_out),
            ours + "mlp.gate": _Tensor(hf + "mlp.gate_proj.weight", *transpose),
            ours + "mlp.up": _Tensor(hf + "mlp.up_proj.weight", *transpose),
            ours + "mlp.down": _Tensor(hf + "mlp.down_proj.weight", *transpose),
        })
        if cfg.qkv_bias:
            table.update({
                ours + "attn.q_bias": _Tensor(hf + "self_attn.q_proj.bias", *heads_bias),
                ours + "attn.k_bias": _Tensor(hf + "self_attn.k_proj.bias", *heads_bias),
                ours + "attn.v_bias": _Tensor(hf + "self_attn.v_proj.bias", *heads_bias),
            })
    return table


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def _assemble(cfg: ModelConfig, make_value: Callable, mesh: Mesh | None = None, *,
              hf_shapes: dict[str, tuple] | None = None, source: str = "") -> Transformer:
    """A Transformer whose parameter `name` is `make_value(name, _Tensor, abstract variable, sharding)`.

    The module is built abstractly (`nnx.eval_shape`), so no random weights are
    initialised and no second full copy of the model exists during loading. `sharding`
    is the parameter's place on `mesh` (`tree_shardings`), None without a mesh.
    With `hf_shapes` (HF tensor name -> shape, as a file's header lists them), every tensor is
    checked before the first value is made, and then the model's size against memory: a
    checkpoint that does not fit its config, or the machine, is refused before any of it is read.
    """
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = {} if mesh is None else dict(nnx.to_flat_state(tree_shardings(abstract_state, mesh)))
    table = _tensor_table(cfg)
    if hf_shapes is not None:
        _check_shapes(cfg, table, abstract_state, hf_shapes, source)
        _check_memory(cfg, source, mesh)
    leaves = []
    for path, variable in nnx.to_flat_state(abstract_state):
        name = _dotted(path)
        sharding = shardings[path].get_value() if mesh is not None else None
        leaves.append((path, variable.replace(make_value(name, table[name], variable, sharding))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _check_shapes(cfg: ModelConfig, table: dict[str, _Tensor], abstract_state, hf_shapes: dict[str, tuple],
                  source: str) -> None:
    """Every tensor the config needs, present in `hf_shapes` with the shape the config gives it."""
    for path, variable in nnx.to_flat_state(abstract_state):
        name = _dotted(path)
        entry = table[name]
        if entry.hf_name not in hf_shapes:
            raise _missing(source, entry.hf_name, name)
        want = jax.eval_shape(entry.to_hf, jax.ShapeDtypeStruct(variable.shape, variable.dtype)).shape
        if tuple(hf_shapes[entry.hf_name]) != want:
            raise _misfit(source, entry.hf_name, hf_shapes[entry.hf_name], name, variable.shape, cfg)


def _check_layers(cfg: ModelConfig, hf_names, field: str, source: str) -> None:
    """Refuse a config with more layers than the weights hold, before anything is sized by it.

    Everything built per layer (the naming table, the abstract module) grows with the config's
    layer count, not with the file: a `num_hidden_layers` of 1e9 would fill memory with empty
    layers long before a missing tensor were noticed. Fewer layers than the weights hold loads
    (the rest are reported as unused), as transformers does.
    """
    indices = (name.split(".")[2] for name in hf_names if name.startswith("model.layers."))
    layers = sorted({int(i) for i in indices if i.isdigit()})
    if cfg.num_layers > len(layers):
        held = f" (layers {layers[0]} to {layers[-1]})" if layers else ""
        raise CheckpointError(f"{source}: {field}={cfg.num_layers} asks for more layers than the weights "
                              f"hold: {len(layers)}{held}")


def _check_memory(cfg: ModelConfig, source: str, mesh: Mesh | None) -> None:
    """Refuse a model whose parameters alone cannot fit, rather than be killed part way through reading it.

    The estimate is a lower bound, so it refuses only what cannot load: the parameters in
    `param_dtype`, spread as thinly as `mesh` allows (over its devices on an accelerator; over the
    processes on CPU, where a host's devices share its memory). Activations, the optimizer and
    the read buffers come on top.
    """
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        have, where = _host_memory(), "this host's memory"
        shares = 1 if mesh is None else jax.process_count()
    else:
        have, where = (device.memory_stats() or {}).get("bytes_limit"), f"one {device.device_kind}'s memory"
        shares = 1 if mesh is None else mesh.size
    need = cfg.num_params * jnp.dtype(cfg.param_dtype).itemsize // shares
    if have and need > have:
        raise CheckpointError(
            f"{source}: {cfg.num_params:,} parameters {_shape_summary(cfg)} with {cfg.num_layers} layers need at "
            f"least {_size(need)} in {cfg.param_dtype}, more than the {_size(have)} of {where}; "
            "load it sharded on a larger mesh (mesh=) or with param_dtype='bfloat16'")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:,.1f} MiB"


def _host_memory() -> int | None:
    """Physical memory, or the container's limit if lower (cgroup v2); None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    try:
        return min(total, int(pathlib.Path("/sys/fs/cgroup/memory.max").read_text()))
    except (OSError, ValueError):  # no cgroup v2, or "max": no limit
        return total


def model_from_tensors(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray | None],
                       source: str, hf_shapes: dict[str, tuple] | None = None) -> Transformer:
    """Build a Transformer whose parameters come from `get_tensor(hf_name)`, a whole tensor each.

    With `hf_shapes` (each tensor's shape, read without the tensor), all are checked first.
    """
    def make_value(name, entry, variable, _):
        tensor = get_tensor(entry.hf_name)
        if tensor is None:
            raise _missing(source, entry.hf_name, name)
        try:
            value = entry.to_ours(tensor)
        except (ValueError, TypeError):  # a reshape that cannot fit: reported just below
            value = tensor
        if value.shape != variable.shape:
            raise _misfit(source, entry.hf_name, np.shape(tensor), name, variable.shape, cfg)
        return jnp.asarray(value, dtype=variable.dtype)

    return _assemble(cfg, make_value, hf_shapes=hf_shapes, source=source)


def _missing(source, hf_name, name) -> CheckpointError:
    return CheckpointError(f"{source}: tensor {hf_name!r} is missing (needed for {name})")


def _misfit(source, hf_name, hf_shape, name, shape, cfg) -> CheckpointError:
    return CheckpointError(f"{source}: tensor {hf_name!r} has shape {tuple(hf_shape)}, which does not fit "
                           f"{name} {shape} of config {_shape_summary(cfg)}")


def _shape_summary(cfg: ModelConfig) -> str:
    return (f"(vocab={cfg.vocab_size}, hidden={cfg.hidden_size}, heads={cfg.num_heads}/"
            f"{cfg.num_kv_heads}, head_dim={cfg.head_dim}, mlp={cfg.intermediate_size})")


# ---- Hugging Face directories -------------------------------------------------------

def _safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted({directory / f for f in _index_shards(index)})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) {missing} that are not in {directory}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has config.json but no *.safetensors weights "
                              "(PyTorch .bin checkpoints are not supported: re-save with safe_serialization=True)")
    return files


def _index_shards(index: pathlib.Path) -> set[str]:
    """The shard file names a `model.safetensors.index.json` maps tensors to, each a plain file name in
    the model's directory: an index that is not JSON, has no `weight_map` of names, or points outside the
    directory (`../elsewhere/x.safetensors`) is refused, naming the file."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(f"{index} is not a safetensors index ({type(err).__name__}: {err}); re-save the "
                              "checkpoint or delete the index to load the *.safetensors files beside it") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(name, str) and isinstance(shard, str) for name, shard in weight_map.items()):
        raise CheckpointError(f"{index} has no weight_map of tensor name -> shard file; re-save the checkpoint "
                              "or delete the index to load the *.safetensors files beside it")
    outside = sorted({shard for shard in weight_map.values() if pathlib.PurePath(shard).name != shard})
    if outside:
        raise CheckpointError(f"{index} maps tensors to {outside}, outside {index.parent}: a shard must be a file "
                              "of the model's own directory")
    return set(weight_map.values())


def _safe_open(f: pathlib.Path, framework: str):
    from safetensors import safe_open

    try:
        return safe_open(str(f), framework=framework)
    except Exception as err:  # safetensors reports truncation as a header/buffer mismatch
        raise CheckpointError(f"cannot read {f}: {err} (is the file truncated or not safetensors?)") from err


def _open_safetensors(files: list[pathlib.Path]) -> dict[str, Callable[[], np.ndarray]]:
    """tensor name -> a loader, so each tensor is read only when the model needs it."""
    loaders = {}
    for f in files:
        handle = _safe_open(f, "flax")  # whole tensors as jax arrays, converted on the device
        for name in handle.keys():
            loaders[name] = (lambda h=handle, n=name, f=f: _read_tensor(h, n, f))
    return loaders


def _read_tensor(handle, name, f):
    try:
        return handle.get_tensor(name)
    except Exception as err:
        raise CheckpointError(f"cannot read tensor {name!r} from {f}: {err} (is the file truncated?)") from err


def _sharded_model(cfg: ModelConfig, header: dict[str, tuple[pathlib.Path, tuple]], source: str,
                   mesh: Mesh) -> Transformer:
    """A Transformer whose parameters are global arrays on `mesh`, read from the files of `header`
    (tensor name -> its file and shape) shard by shard: this process reads only the slices its own
    devices hold."""
    def make_value(name, entry, variable, sharding):
        f = header[entry.hf_name][0]
        return _read_shards(_safe_open(f, "numpy").get_slice(entry.hf_name), entry, f, variable, sharding)

    hf_shapes = {name: shape for name, (_, shape) in header.items()}
    return _assemble(cfg, make_value, mesh, hf_shapes=hf_shapes, source=source)


def _read_shards(tensor, entry: _Tensor, f: pathlib.Path, variable, sharding: NamedSharding) -> jax.Array:
    """One parameter as a global array whose local shards are read from `tensor`, a safetensors slice.

    `tensor` keeps its file mapped, and the pages that reads touch count in the process's
    memory while it is, so `_sharded_model` opens the file anew for each parameter and
    nothing keeps `tensor` once this returns.
    """
    def read(index):
        # make_array_from_callback passes slice(None) for a whole dimension
        hf_index, cut = entry.hf_index(tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, variable.shape)))
        try:
            block = tensor[hf_index]
        except Exception as err:
            raise CheckpointError(f"cannot read tensor {entry.hf_name!r} from {f}: {err} "
                                  "(is the file truncated?)") from err
        return np.asarray(entry.to_ours(block)[cut], dtype=variable.dtype)

    return jax.make_array_from_callback(variable.shape, sharding, read)


def _read_header(files: list[pathlib.Path]) -> dict[str, tuple[pathlib.Path, tuple]]:
    """tensor name -> (the file that holds it, its shape), from the files' headers: no tensor is read."""
    header = {}
    for f in files:
        handle = _safe_open(f, "numpy")
        header.update({name: (f, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()})
    return header


def load_hf(directory: PathLike, *, mesh: Mesh | None = None, **config_overrides) -> Transformer:
    """Load a `LlamaForCausalLM` / `Qwen2ForCausalLM` directory saved by transformers.

    With `mesh`, every parameter is built directly as a global array in its shards
    (`tree_shardings`), and each process reads from the files only the slices its own
    devices hold: no process ever holds the whole model, so a model larger than one host's
    memory loads on a multi-host mesh. Without, the model lives whole on the default device.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no config.json; expected a Hugging Face model directory")
    cfg = _read_config(config_path, config_overrides)
    files = _safetensors_files(directory)
    header = _read_header(files)
    # before anything is sized by the config's layer count; `_assemble` checks the rest
    _check_layers(cfg, header, "num_hidden_layers", str(config_path))
    _warn_unused(cfg, header, directory)
    if mesh is not None:
        return _sharded_model(cfg, header, str(directory), mesh)
    tensors = _open_safetensors(files)
    return model_from_tensors(cfg, lambda name: tensors[name]() if name in tensors else None, str(directory),
                              hf_shapes={name: shape for name, (_, shape) in header.items()})


def _read_config(config_path: pathlib.Path, overrides: dict) -> ModelConfig:
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {config_path}: {err}") from err
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_path} holds a JSON {type(hf).__name__}, not an object")
    try:
        return ModelConfig.from_hf(hf, **overrides)
    except ValueError as err:  # a field's message, to which only the file was missing
        raise CheckpointError(f"{config_path}: {err}") from err


def _warn_unused(cfg: ModelConfig, names, directory: pathlib.Path) -> None:
    used = {entry.hf_name for entry in _tensor_table(cfg).values()}
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # some exporters write the tied copy too
    unused = sorted(set(names) - used)
    if unused:
        log.warning("%s: ignoring %d tensors r1jax does not use, e.g. %s", directory, len(unused), unused[:3])


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
    overwritten. LoRA adapters are merged into their weights first (W + alpha / r A B).
    """
    from safetensors.flax import save_file  # handles bfloat16, unlike safetensors.numpy

    model = merge_lora(model)
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
        entry = table[_dotted(path)]
        tensors[entry.hf_name] = jnp.asarray(entry.to_hf(variable[...]), out_dtype)
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


def save_peft(model: Transformer, directory: PathLike, *, base_model: str | None = None) -> pathlib.Path:
    """Write `model`'s LoRA adapters alone as PEFT does (`adapter_config.json`, `adapter_model.safetensors`),
    for `peft.PeftModel.from_pretrained(base, directory)` and vLLM's LoRA loading over the base checkpoint
    (`base_model`, its path or hub name, recorded in the config). The adapters stay float32.
    """
    from safetensors.flax import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "adapter_model.safetensors"
    if weights.exists():
        raise FileExistsError(f"{directory} already holds adapters ({weights.name}); choose an empty directory")
    tensors, config = lora_tensors(model)
    save_file({k: jnp.asarray(v, jnp.float32) for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(TARGETS[t].split(".")[-1] for t in config.targets),
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "inference_mode": True, "init_lora_weights": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
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


# ModelConfig field -> the GGUF metadata key that holds it, so that errors name the key
_GGUF_KEYS = {
    "hidden_size": "llama.embedding_length",
    "intermediate_size": "llama.feed_forward_length",
    "num_layers": "llama.block_count",
    "num_heads": "llama.attention.head_count",
    "num_kv_heads": "llama.attention.head_count_kv",
    "head_dim": "llama.rope.dimension_count",
    "max_position_embeddings": "llama.context_length",
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
}


def gguf_config(reader, **overrides) -> ModelConfig:
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported; r1jax reads 'llama' GGUFs")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise CheckpointError("GGUF has no token_embd.weight tensor")
    cfg = {field: _gguf_field(reader, key) for field, key in _GGUF_KEYS.items()}
    cfg.update(
        vocab_size=int(embed.shape[-1]),
        num_kv_heads=_gguf_field(reader, _GGUF_KEYS["num_kv_heads"], cfg["num_heads"]),
        head_dim=_gguf_field(reader, _GGUF_KEYS["head_dim"], 0),  # 0: hidden_size // num_heads
        rope_theta=float(_gguf_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_gguf_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in {t.name for t in reader.tensors},
        max_position_embeddings=_gguf_field(reader, _GGUF_KEYS["max_position_embeddings"], 2048),
        architecture="llama",
    )
    cfg.update(overrides)
    check_sizes(cfg, {field: key for field, key in _GGUF_KEYS.items() if field not in overrides})
    return ModelConfig(**cfg)


def _hf_name(gguf_name: str) -> str | None:
    """The inverse of `_gguf_name`; None for tensors r1jax does not read."""
    top = {g: hf for hf, g in _GGUF_NAMES.items()}
    per_layer = {g: hf for hf, g in _GGUF_LAYER_NAMES.items()}
    if gguf_name in top:
        return top[gguf_name]
    blk, _, rest = gguf_name.partition(".")
    layer, _, rest = rest.partition(".")
    if blk == "blk" and rest in per_layer:
        return f"model.layers.{layer}.{per_layer[rest]}"
    return None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two RoPE halves of q/k rows; undo it for the
    # HF 'rotate_half' layout that the rest of r1jax uses
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: PathLike, **config_overrides) -> Transformer:
    """Load a Llama-architecture GGUF file, dequantising every tensor to float32.

    Always whole on the default device: GGUF packs quantised blocks, so there is no cheap
    slice of a tensor to read per shard; `from_pretrained(..., mesh=)` shards it afterwards.
    """
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot read GGUF {path}: {err} (is the file truncated?)") from err
    try:
        cfg = gguf_config(reader, **config_overrides)
    except ValueError as err:  # a field's message, to which only the file was missing
        raise CheckpointError(f"{path}: {err}") from err
    by_name = {t.name: t for t in reader.tensors}
    # ggml lists dims fastest-first
    hf_shapes = {_hf_name(t.name): tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    hf_shapes.pop(None, None)
    _check_layers(cfg, hf_shapes, _GGUF_KEYS["num_layers"], str(path))

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

    return model_from_tensors(cfg, get, str(path), hf_shapes=hf_shapes)


def from_pretrained(path: PathLike, *, mesh: Mesh | None = None, **config_overrides) -> Transformer:
    """Load a model from an HF directory (config.json + safetensors) or a `.gguf` file.

    Keyword arguments override `ModelConfig` fields, e.g. `dtype="bfloat16"`,
    `param_dtype="bfloat16"`, `remat=True`. With `mesh`, the parameters come back sharded
    on it: an HF directory is read shard by shard (`load_hf`); a GGUF, whose tensors are
    quantised in packed blocks, is loaded whole on every process and then sharded
    (`shard_model`).
    """
    path = pathlib.Path(path)
    if path.suffix == ".gguf":
        model = load_gguf(path, **config_overrides)
        return model if mesh is None else shard_model(model, mesh)
    if path.is_dir():
        return load_hf(path, mesh=mesh, **config_overrides)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass an HF model directory or a .gguf file")
    raise CheckpointError(f"{path} is neither an HF model directory nor a .gguf file")
