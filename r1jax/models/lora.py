"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the transformer's projections.

A targeted projection y = x W becomes

    y = x W + (alpha / r) (x A) B,      A [in, r], B [r, out],

with A drawn as PEFT draws it (uniform in +-1/sqrt(in), kaiming-uniform with a = sqrt(5))
and B = 0, so a freshly adapted model computes exactly what its base computes. The
adapters are `LoRAParam`s, a subclass of `nnx.Param`: everything that moves a model's
parameters (sharding, the sampler, Orbax) moves them too, while the train state trains
them alone (`r1jax.train.state.trainable_filter`) and the base stays frozen.

    model = from_pretrained(path)
    add_lora(model, LoRAConfig(rank=16, alpha=32), rngs=nnx.Rngs(0))

A and B keep the shape of the weight's input and output dims (q: A [D, r], B [r, H, E]),
so they carry the weight's logical axes and shard as the base does on every mesh.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

# our projection names, and the Hugging Face / PEFT module each one is
TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
SUFFIX = "_lora"  # the adapter of projection `q` is the module's attribute `q_lora`


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """A config's `lora` section: adapters of `rank` r on the `targets` projections, scaled by alpha / r.

    rank 0: no adapters, the whole model trains (full fine-tuning).
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(TARGETS)  # any of q, k, v, o, gate, up, down

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"rank={self.rank!r}: the adapters' rank, a whole number >= 0 (0: no LoRA)")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha={self.alpha!r}: a finite number > 0 (the adapters are scaled by alpha / rank)")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise ValueError(f"targets={targets!r}: name one or more of {tuple(TARGETS)}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRAParam(nnx.Param):
    """An adapter matrix: a parameter that trains while the base's `nnx.Param`s stay frozen."""


class LoRA(nnx.Module):
    """The adapter of one projection: `lora(x)` = scale (x A) B for x [B, T, *in_shape], as [B, T, prod(out)]."""

    def __init__(self, in_shape, in_axes, out_shape, out_axes, config: LoRAConfig, *, rngs: nnx.Rngs):
        fan_in = math.prod(in_shape)
        bound = 1 / math.sqrt(fan_in)
        self.a = LoRAParam(jax.random.uniform(rngs.params(), (*in_shape, config.rank), jnp.float32, -bound, bound),
                           axes=(*in_axes, None))
        self.b = LoRAParam(jnp.zeros((config.rank, *out_shape), jnp.float32), axes=(None, *out_axes))
        self.scale = config.scale

    def __call__(self, x: jax.Array) -> jax.Array:
        rank = self.b.shape[0]
        a = self.a[...].astype(x.dtype).reshape(-1, rank)
        b = self.b[...].astype(x.dtype).reshape(rank, -1)
        batch, time = x.shape[:2]
        hidden = x.reshape(batch * time, -1) @ a
        return (self.scale * (hidden @ b)).reshape(batch, time, -1)

    def delta(self) -> jax.Array:
        """scale A B in the weight's own shape [*in, *out] (float32): what merging adds to W."""
        rank = self.b.shape[0]
        a, b = self.a[...], self.b[...]
        delta = self.scale * (a.reshape(-1, rank) @ b.reshape(rank, -1))
        return delta.reshape(*a.shape[:-1], *b.shape[1:])


def apply_lora(module: nnx.Module, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """`y` (= x W_name, flattened to [B, T, out]) plus the adapter of `name` if `module` has one."""
    adapter = getattr(module, name + SUFFIX, None)
    return y if adapter is None else y + adapter(x)


def _adaptable(model: nnx.Module):
    """(path, module, projection name, its number of input dims) of every projection a LoRA can target:
    the modules that list theirs in `lora_input_dims` (the transformer's `Attention` and `MLP`)."""
    for path, module in nnx.iter_modules(model):
        for name, input_dims in getattr(module, "lora_input_dims", {}).items():
            yield path, module, name, input_dims


def add_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Give `model` (in place; also returned) adapters on `config.targets`; rank 0 leaves it as it is."""
    if config.rank == 0:
        return model
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    for _, module, name, input_dims in _adaptable(model):
        if name not in config.targets:
            continue
        weight = getattr(module, name)
        axes = weight.get_metadata().get("axes") or (None,) * weight.ndim
        adapter = LoRA(weight.shape[:input_dims], axes[:input_dims], weight.shape[input_dims:], axes[input_dims:],
                       config, rngs=rngs)
        setattr(module, name + SUFFIX, adapter)
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(module, LoRA) for _, module in nnx.iter_modules(model))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` without adapters, each folded into its weight: W + scale A B (the model itself if
    it has none). Its forward equals the adapted model's up to rounding."""
    if not has_lora(model):
        return model
    model = nnx.clone(model)
    for _, module, name, _ in list(_adaptable(model)):
        adapter = getattr(module, name + SUFFIX, None)
        if adapter is None:
            continue
        weight = getattr(module, name)
        weight.set_value((weight[...].astype(jnp.float32) + adapter.delta()).astype(weight.dtype))
        delattr(module, name + SUFFIX)
    return model


def lora_tensors(model: nnx.Module) -> tuple[dict[str, jax.Array], LoRAConfig]:
    """The adapters in PEFT's layout: {`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`:
    [r, in], `...lora_B.weight`: [out, r]} (torch's [out, in] Linear layout, float32), and their config."""
    tensors, names, scales = {}, [], set()
    for path, module, name, _ in _adaptable(model):
        adapter = getattr(module, name + SUFFIX, None)
        if adapter is None:
            continue
        layer = path[path.index("layers") + 1]
        rank = adapter.b.shape[0]
        prefix = f"base_model.model.model.layers.{layer}.{TARGETS[name]}"
        tensors[prefix + ".lora_A.weight"] = adapter.a[...].reshape(-1, rank).T
        tensors[prefix + ".lora_B.weight"] = adapter.b[...].reshape(rank, -1).T
        names += [name] if name not in names else []
        scales.add((rank, adapter.scale))
    if not tensors:
        raise ValueError("the model has no LoRA adapters to export")
    (rank, scale), = scales  # add_lora gives every adapter the same rank and scale
    return tensors, LoRAConfig(rank=rank, alpha=scale * rank, targets=tuple(names))
