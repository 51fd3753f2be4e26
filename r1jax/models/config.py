"""One config for the decoder-only transformer families r1jax trains: Llama and Qwen2."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

import jax.numpy as jnp

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# how attention is computed (`r1jax.models.attention`); the same weights and numbers either way
ATTENTION = ("auto", "einsum", "blockwise", "dot_product_attention", "splash")
# what the backward pass recomputes instead of keeping (`Transformer`): nothing; each block's
# attention core; each whole block (its input alone is kept); each block but its matmul outputs
REMAT = ("none", "attention", "block", "dots_saveable")
# fields that change how the numbers are computed, not the numbers or the weights: a checkpoint
# resumes under other values of these
RUNTIME_FIELDS = ("remat", "attention", "attention_block", "head_chunk_size")
# the sizes a model is built from; each must be a positive integer (head_dim may be 0: derived)
SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
         "max_position_embeddings")
# what config.json calls them, so that an error names the key the user can find in the file
HF_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "num_kv_heads": "num_key_value_heads"}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (HF `rope_type="llama3"`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Llama/Qwen2 decoder.

    The dtype policy lives here and nowhere else: parameters are stored in
    `param_dtype` (float32 master weights by default) and every matmul runs in
    `dtype` (bfloat16 on TPU/GPU; float32 on CPU, where bf16 is emulated and slow).
    Normalisation statistics, softmax and RoPE are always computed in float32.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0 means hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v, Llama does not
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    architecture: str = "llama"  # "llama" or "qwen2": only matters for export
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    # one of REMAT; True and False (the old switch) mean "block" and "none"
    remat: str = "none"
    # one of ATTENTION (`r1jax.models.attention`); "auto" resolves per call by backend and length
    # (`attention_kind`): dot_product_attention (cuDNN) on GPU, splash on TPU where its blocks fit,
    # and einsum for rows up to `attention_block` keys, blockwise beyond, elsewhere
    attention: str = "auto"
    attention_block: int = 512  # query and key block of blockwise and splash attention
    # positions per chunk of the LM head in the losses (`r1jax.losses.head_logprobs`): the
    # [chunk, V] logits are the most that exist at once
    head_chunk_size: int = 2048

    def __post_init__(self):
        check_sizes(vars(self))
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.architecture not in ARCHITECTURES.values():
            raise ValueError(f"architecture={self.architecture!r}; expected one of {sorted(ARCHITECTURES.values())}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r}; choose one of {ATTENTION}")
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "block" if self.remat else "none")
        if self.remat not in REMAT:
            raise ValueError(f"remat={self.remat!r}; choose one of {REMAT} (or True / False: block / none)")
        for field in ("attention_block", "head_chunk_size"):
            if not (_is_int(getattr(self, field)) and getattr(self, field) > 0):
                raise ValueError(f"{field}={getattr(self, field)!r}; expected a positive integer")
        for field in ("param_dtype", "dtype"):
            jnp.dtype(getattr(self, field))  # fail early on a typo such as "bfloat"

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attn + mlp + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + self.hidden_size

    def flops_per_token(self, context: int = 0) -> int:
        """Forward matmul FLOPs per token (2 per multiply-add), attention over `context` keys."""
        # the input embedding is a gather, not a matmul; the LM head is one even when tied
        matmul_params = self.num_params - (0 if self.tie_embeddings else self.vocab_size * self.hidden_size)
        attention = 2 * self.num_layers * self.num_heads * self.head_dim * context
        return 2 * matmul_params + 2 * attention

    # ---- Hugging Face config.json <-> ModelConfig -------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
        archs = hf.get("architectures") or []
        arch = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"unsupported architecture {archs or hf.get('model_type')!r}; r1jax loads "
                f"{sorted(ARCHITECTURES)}")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported (no Llama/Qwen2 release uses it)")
        rope = hf.get("rope_scaling") or hf.get("rope_parameters")
        scaling = None
        if rope and rope.get("rope_type", rope.get("type")) == "llama3":
            scaling = RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]),
                                  float(rope["high_freq_factor"]),
                                  int(rope["original_max_position_embeddings"]))
        elif rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise ValueError(f"unsupported rope_scaling {rope!r}; r1jax implements 'default' and 'llama3'")
        theta = hf.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):  # generation may stop at several ids; the model config keeps the first
            eos = eos[0] if eos else None
        missing = [key for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads") if hf.get(key) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing; each must be a positive integer")
        cfg = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            # absent (or null) means one key/value head per query head, and no head_dim means D // H;
            # a 0 is refused by check_sizes rather than read as absent
            num_kv_heads=_default(hf.get("num_key_value_heads"), hf["num_attention_heads"]),
            head_dim=_default(hf.get("head_dim"), 0),
            rope_theta=_positive_number("rope_theta", theta),
            rope_scaling=scaling,
            rms_norm_eps=_positive_number("rms_norm_eps", hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=bool(hf.get("attention_bias", arch == "qwen2")),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            architecture=arch,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
        )
        cfg.update(overrides)
        check_sizes(cfg, {f: HF_NAMES.get(f, f) for f in cfg if f not in overrides})
        return cls(**cfg)

    def to_hf(self) -> dict[str, Any]:
        arch = {v: k for k, v in ARCHITECTURES.items()}[self.architecture]
        hf = {
            "architectures": [arch],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": self.param_dtype,
        }
        if self.architecture == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = False
        elif not self.qkv_bias:
            raise ValueError("Qwen2 checkpoints always carry q/k/v biases; set qkv_bias=True")
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return hf


def check_sizes(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Refuse sizes no model has, before anything is built from them.

    `values` holds the `SIZES` fields (and `bos_token_id`/`eos_token_id`); `names` maps a field
    to what the message calls it (config.json's `num_hidden_layers` for `num_layers`). Every
    size must be a positive integer: bools, floats and strings are refused rather than rounded
    or parsed, since `12.5` or `"64"` in a config means the file is not what it claims to be.
    """
    names = names or {}

    def name(field):
        return names.get(field, field)

    for field in SIZES:
        value = values[field]
        if field == "head_dim" and _is_int(value) and value == 0:
            continue  # 0: hidden_size // num_heads, checked below
        if not (_is_int(value) and value > 0):
            raise ValueError(f"{name(field)}={value!r}; expected a positive integer")
    for field in ("bos_token_id", "eos_token_id"):
        value = values.get(field)
        if value is not None and not (_is_int(value) and value >= 0):
            raise ValueError(f"{name(field)}={value!r}; expected a token id (an integer >= 0) or null")
    hidden, heads, kv_heads = values["hidden_size"], values["num_heads"], values["num_kv_heads"]
    head_dim = values["head_dim"]
    if head_dim == 0 and hidden % heads:
        raise ValueError(f"{name('hidden_size')}={hidden} is not a multiple of {name('num_heads')}={heads}; "
                         "each head takes an equal slice of the width (or set head_dim)")
    head_dim = head_dim or hidden // heads
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} is odd; rotary embeddings rotate pairs of dimensions")
    if heads % kv_heads:
        raise ValueError(f"{name('num_heads')}={heads} is not a multiple of {name('num_kv_heads')}={kv_heads}; "
                         "grouped-query attention shares each key/value head by a whole group of query heads")


def _is_int(value) -> bool:
    # bool is an int in Python, and numpy ints are not Python ints: numbers.Integral takes both ways
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _default(value, default):
    return default if value is None else value


def _positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}; expected a positive number")
    return float(value)
