"""The tiny model the tests share: its config, and weights that cost no compilation.

XLA on a loaded CPU takes seconds to compile a model's random initialisers, so the models here are
built abstractly (or their random values dropped) and given numpy or closed-form weights instead.
"""
from __future__ import annotations

import math

# 2 layers of width 32, 4 query and 2 key/value heads of 8: a real GQA model that compiles in a second
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny_config(**overrides):
    """`ModelConfig` of the tiny model; `overrides` replace or add fields (vocab_size=..., num_layers=1)."""
    from r1jax.models import ModelConfig

    return ModelConfig(**{**TINY, **overrides})


def random_model(config, *, seed: int = 0, std: float = 0.02):
    """A `Transformer(config)` with normal(0, std) weights from numpy's `default_rng(seed)` (norm scales 1).

    The draws follow the parameters in `nnx.to_flat_state` order, so a (config, seed, std) is one model.
    """
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from r1jax.models import Transformer

    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = variable.get_value().shape
        value = rng.normal(0, std, shape) if len(shape) >= 2 else np.ones(shape)
        variable.set_value(jnp.asarray(value, jnp.float32))
    return model


def fixed_model(config):
    """The model with fixed weights: a smooth function of position instead of random numbers.

    Tests compare runs bit-for-bit-ish across processes; these weights cost nothing and XLA drops
    the unused random ones.
    """
    import jax.numpy as jnp
    from flax import nnx

    from r1jax.models import Transformer

    model = Transformer(config, rngs=nnx.Rngs(0))
    for i, (_, variable) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        shape = variable.get_value().shape
        if len(shape) >= 2:  # norm scales keep their ones
            phase = jnp.arange(math.prod(shape), dtype=jnp.float32) * 0.7 + i
            variable.set_value(0.05 * jnp.sin(phase).reshape(shape))
    return model
