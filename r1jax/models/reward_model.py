"""A reward model: our transformer's body with a scalar head in place of the LM head.

    reward_model = RewardModel.from_transformer(sft_model)     # or RewardModel(config, rngs=...)
    rewards = reward_model(tokens, attention_mask=mask)         # f32 [B], one score per row

The score is read from the final hidden state of each row's last real token, so it
judges the whole prompt + response. Rows may be padded on the left (as the sampler
pads) or on the right: the causal mask and the count-based positions of `Transformer`
give that token the same hidden state either way.

The body is the `Transformer`'s own modules (`embed`, `layers`, `final_norm`, under
the same names), run without the LM head; parameters keep their logical `axes`, so
`r1jax.sharding` shards a reward model like the policy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.config import ModelConfig
from r1jax.models.transformer import Transformer, rope_frequencies
from r1jax.sharding import constrain


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """int32 [B]: the position of each row's last real token in a [B, T] 0/1 mask (0 for an empty row)."""
    positions = jnp.arange(attention_mask.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(attention_mask.astype(bool), positions, 0), axis=-1)


def _run_block(block, x, positions, key_mask, inv_freq):
    return block(x, positions, key_mask, inv_freq)[0]


class RewardModel(nnx.Module):
    """`reward_model(tokens, attention_mask=...)` -> f32 [B] scalar rewards."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, backbone: Transformer | None = None):
        """A fresh reward model, or one whose body is `backbone`'s modules (shared, not copied)."""
        if backbone is None:
            # XLA drops the unused LM head's initialiser when this runs under jit
            backbone = Transformer(config, rngs=rngs)
        elif backbone.config != config:
            raise ValueError(f"the backbone's config {backbone.config} differs from config {config}")
        self.config = config
        self.embed = backbone.embed
        self.layers = backbone.layers
        self.final_norm = backbone.final_norm
        # final_norm makes hidden states ~unit RMS: this std gives initial rewards ~N(0, 1)
        std = config.hidden_size ** -0.5
        self.score = nnx.Param(std * jax.random.normal(rngs.params(), (config.hidden_size,),
                                                       jnp.dtype(config.param_dtype)), axes=("embed",))

    @classmethod
    def from_transformer(cls, model: Transformer, *, rngs: nnx.Rngs | None = None) -> "RewardModel":
        """A reward model initialised from `model` (e.g. the SFT policy) and a fresh scalar head.

        The body's parameters are copied: training the reward model donates its buffers,
        which must not be `model`'s own.
        """
        if not isinstance(model, Transformer):
            raise TypeError(f"from_transformer needs a Transformer, got {type(model).__name__}")
        graphdef, state = nnx.split(model)
        copy = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
        return cls(model.config, rngs=rngs if rngs is not None else nnx.Rngs(0), backbone=copy)

    def hidden_states(self, tokens, *, attention_mask=None) -> jax.Array:
        """Final (normalised) hidden states [B, T, D] of int tokens [B, T]; see `Transformer.__call__`."""
        cfg = self.config
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array [batch, time], got {tokens.dtype}{tokens.shape}")
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, jnp.int32)
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask must have the shape of tokens {tokens.shape}, "
                             f"got {attention_mask.shape}")
        positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        key_mask = attention_mask.astype(bool)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.dtype)
        x = constrain(x, ("batch", "seq", "act_embed"))
        inv_freq = rope_frequencies(cfg)
        run = _run_block if cfg.remat == "none" else nnx.remat(_run_block)  # any policy: the whole block
        for block in self.layers:
            x = run(block, x, positions, key_mask, inv_freq)
        return self.final_norm(x)

    def __call__(self, tokens, *, attention_mask=None) -> jax.Array:
        """f32 [B]: the reward of each row, read at its last real (attention_mask == 1) token."""
        tokens = jnp.asarray(tokens)
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, jnp.int32)
        hidden = self.hidden_states(tokens, attention_mask=attention_mask)
        last = last_token_index(attention_mask)
        final = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
        return final.astype(jnp.float32) @ self.score[...].astype(jnp.float32)
