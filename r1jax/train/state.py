"""The train state, its optimizer, and how to create it already sharded on a mesh.

    optimizer = make_optimizer(1e-6, warmup_steps=10, total_steps=1000)
    state = create_train_state(lambda: Transformer(config, rngs=nnx.Rngs(0)), optimizer, mesh)
    state = train_state_from_model(from_pretrained(path), optimizer, mesh)   # or from weights

A model with LoRA adapters (`r1jax.models.lora.add_lora`) trains its adapters alone: the
optimizer's state mirrors them only, the step differentiates them only, and the base's
parameters ride along in `params` unchanged, never donated, so that a frozen reference can
share them (`reference_params`) instead of copying the model.

The state is a pytree of arrays (ready for `jax.jit` and Orbax) whose static part, the
model's graph definition and the optimizer, rides along in the tree definition, as in
`flax.training.train_state.TrainState`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from r1jax.models.lora import LoRAParam
from r1jax.sharding import shard_model, tree_shardings

SCHEDULES = ("cosine", "constant")


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state and counters of one training run.

    step: optimizer updates applied so far (skipped steps do not count).
    params: the model's `nnx.Param` state (float32 master weights), LoRA adapters included.
    opt_state: the optimizer's state; its moments mirror the trainable part of `params`
        (`split_trainable`: all of it, or the LoRA adapters alone), `axes` metadata included.
    skipped_steps: updates skipped because the loss or a gradient was not finite.
    """

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    skipped_steps: jax.Array
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def model(self, params: nnx.State | None = None) -> nnx.Module:
        """The model with `params` (default: this state's), for sampling or evaluation."""
        return nnx.merge(self.graphdef, self.params if params is None else params)


def check_schedule(learning_rate: float, warmup_steps: int, total_steps: int | None, schedule: str = "cosine"):
    """Refuse a schedule that cannot train: raises ValueError naming the argument to change.

    A NaN, infinite or non-positive rate would train (and export) a NaN model, and a warmup
    as long as the run never reaches the peak rate (cosine: never starts to decay).
    `total_steps` None: the run's length is not known yet; only the other arguments are checked.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; use one of {SCHEDULES}")
    if not 0 < learning_rate < float("inf"):  # False for NaN too
        raise ValueError(f"learning_rate={learning_rate}: use a finite positive number")
    if total_steps is None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps}: use 0 or more")
        return
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and steps >= 1, got warmup_steps={warmup_steps}, "
                         f"steps={total_steps}")
    if schedule == "cosine" and warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} leaves no room for the cosine decay over "
                         f"steps={total_steps}; lower warmup_steps or raise steps")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is longer than the run (steps={total_steps}), which would "
                         "end before reaching its learning rate; lower warmup_steps or raise steps")


def make_schedule(learning_rate: float, warmup_steps: int, total_steps: int,
                  schedule: str = "cosine") -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then cosine decay to 0 at `total_steps`, or constant."""
    check_schedule(learning_rate, warmup_steps, total_steps, schedule)
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps, 0.0)
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                                 optax.constant_schedule(learning_rate)], [warmup_steps])


def _is_matrix(params):
    # no weight decay on norm scales and biases, the usual (HF Trainer, nanoGPT) choice
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(learning_rate: float, warmup_steps: int = 0, total_steps: int = 1,
                   schedule: str = "cosine", weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW on a warmup + cosine/constant schedule after global-norm gradient clipping.

    `max_grad_norm=None` (or 0) turns clipping off. Weight decay applies to matrices only.
    """
    lr = make_schedule(learning_rate, warmup_steps, total_steps, schedule)
    adamw = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_is_matrix)
    if not max_grad_norm:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer of one training run (`make_optimizer`): AdamW, its learning rate warmed up
    over `warmup_steps` and then held or decayed to 0 at the run's last step (the loop's `steps`)."""

    learning_rate: float
    warmup_steps: int = 0
    schedule: str = "cosine"  # or "constant" (`SCHEDULES`)
    weight_decay: float = 0.0  # of the matrices only

    def __post_init__(self):
        check_schedule(self.learning_rate, self.warmup_steps, None, self.schedule)
        if not 0 <= self.weight_decay < float("inf"):
            raise ValueError(f"weight_decay={self.weight_decay}: use a finite number >= 0")

    def check(self, total_steps: int) -> None:
        """Refuse a schedule that does not fit a run of `total_steps` (ValueError)."""
        check_schedule(self.learning_rate, self.warmup_steps, total_steps, self.schedule)

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return make_optimizer(self.learning_rate, self.warmup_steps, total_steps, schedule=self.schedule,
                              weight_decay=self.weight_decay)


def trainable_filter(params: nnx.State):
    """What of `params` trains: the LoRA adapters when there are any, else every parameter."""
    has_adapters = any(isinstance(v, LoRAParam) for _, v in nnx.to_flat_state(params))
    return LoRAParam if has_adapters else nnx.Param


def split_trainable(params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(trainable, frozen) parts of `params` (`trainable_filter`; frozen is empty without adapters);
    `nnx.merge_state(trainable, frozen)` puts them back together. Works on a tree of shardings too."""
    return nnx.split_state(params, trainable_filter(params), ...)


def reference_params(params: nnx.State) -> nnx.State:
    """The frozen reference policy of `params` (GRPO's KL term): for a model with LoRA adapters, its base,
    i.e. the same base arrays (shared, not copied: the step never donates them) with zero adapters; else a
    copy of every parameter (`copy_params`)."""
    trainable, frozen = split_trainable(params)
    if not nnx.to_flat_state(frozen):
        return copy_params(params)
    return nnx.merge_state(jax.tree.map(jnp.zeros_like, trainable), frozen)


def _new_state(graphdef, params, tx) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(split_trainable(params)[0]),
                      skipped_steps=jnp.zeros((), jnp.int32), graphdef=graphdef, tx=tx)


def abstract_train_state(model_fn: Callable[[], nnx.Module], tx: optax.GradientTransformation) -> TrainState:
    """The state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves), without allocating it.

    What Orbax needs to restore a checkpoint, and what `create_train_state` shards.
    """
    return jax.eval_shape(lambda: _new_state(*nnx.split(model_fn(), nnx.Param), tx))


def create_train_state(model_fn: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                       mesh: Mesh, rules=None) -> TrainState:
    """A freshly initialised state, each array created directly in its shards on `mesh`.

    `model_fn()` builds the model (e.g. `lambda: Transformer(config, rngs=nnx.Rngs(0))`);
    it runs inside `jax.jit`, so no device ever holds the whole unsharded model. The
    model's state must be all `nnx.Param`.
    """
    abstract = abstract_train_state(model_fn, tx)
    init = lambda: _new_state(*nnx.split(model_fn(), nnx.Param), tx)
    return jax.jit(init, out_shardings=tree_shardings(abstract, mesh, rules))()


def train_state_from_model(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh,
                           rules=None) -> TrainState:
    """A state starting from an already-built model (e.g. `from_pretrained`), sharded on `mesh`.

    The model's parameters are moved onto the mesh in place (`shard_model`) and shared,
    not copied, with the state: the first train step donates them, so use `state.model()`
    from then on.
    """
    graphdef, params = nnx.split(shard_model(model, mesh, rules), nnx.Param)
    init_rest = lambda p: (tx.init(p), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    trainable = split_trainable(params)[0]
    opt_state, step, skipped_steps = jax.jit(init_rest, out_shardings=tree_shardings(
        jax.eval_shape(init_rest, trainable), mesh, rules))(trainable)
    return TrainState(step=step, params=params, opt_state=opt_state, skipped_steps=skipped_steps,
                      graphdef=graphdef, tx=tx)


def copy_params(params: nnx.State) -> nnx.State:
    """A copy of `params` with the same shardings, e.g. the frozen reference policy.

    Needed because the train step donates (overwrites) the state's own buffers.
    """
    return jax.tree.map(jnp.copy, params)
