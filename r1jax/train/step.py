"""The one jitted update step, shared by GRPO and SFT: only the loss function varies.

    train_step = make_train_step(grpo_objective(beta=0.04), state, mesh, num_microbatches=4)
    state, metrics = train_step(state, batch, rng)      # compiled once, state donated

The step splits the global batch into microbatches, accumulates their gradients with a
`lax.scan`, and applies one optimizer update, unless the loss or a gradient is not
finite: then params and optimizer state stay as they were and `skipped_steps` grows.
It differentiates and updates the trainable parameters only (`split_trainable`: all of them,
or a model's LoRA adapters); the frozen rest (the LoRA base) is an input that is neither
differentiated nor donated.
A batch is a typed pytree of [B, ...] arrays (`r1jax.rollout.RolloutBatch`,
`r1jax.train.objectives.SFTBatch`, `r1jax.train.reward_model.PreferenceBatch`) with the two
fields the step itself reads (`Batch`).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.sharding import activate, batch_sharding, num_batch_shards, put_on_mesh, tree_shardings
from r1jax.train.objectives import completion_logprobs
from r1jax.train.state import TrainState, split_trainable


class Batch(Protocol):
    """What the step reads of a batch; the loss function reads the rest."""
    completion_mask: jax.Array  # [B, T]: the tokens the loss counts (column 0 never does)
    rows_per_group: int  # rows that must stay together, in order, in one microbatch (a GRPO group)

# loss_fn(model, microbatch, rng, *, tokens_per_microbatch) -> (scalar loss, {name: scalar})
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _split_microbatches(batch, num_microbatches: int, mesh: Mesh, group: int = 1):
    """[B, ...] -> [M, B / M, ...] with groups m, m + M, m + 2M, ... of `group` rows in microbatch m.

    Strided rather than contiguous: every device's rows stay on that device (when it holds a
    multiple of M groups), so each microbatch is spread over all data-parallel devices and
    nothing moves. A group's rows stay together and in order (a batch's `rows_per_group`).
    """
    data_spec = batch_sharding(mesh).spec

    def split(x):
        rows, rest = x.shape[0], x.shape[1:]
        x = x.reshape(rows // (num_microbatches * group), num_microbatches, group, *rest).swapaxes(0, 1)
        x = x.reshape(num_microbatches, rows // num_microbatches, *rest)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, *data_spec)))

    return jax.tree.map(split, batch)


def _merge_microbatches(x: jax.Array, group: int = 1) -> jax.Array:
    """The inverse of `_split_microbatches`: [M, B / M, ...] -> [B, ...]."""
    m, rows, rest = x.shape[0], x.shape[1], x.shape[2:]
    x = x.reshape(m, rows // group, group, *rest).swapaxes(0, 1)
    return x.reshape(m * rows, *rest)


def _check_rows(batch, num_microbatches: int, mesh: Mesh, group: int = 1) -> None:
    sizes = {jax.tree_util.keystr(path): x.shape[0] if x.ndim else None
             for path, x in jax.tree_util.tree_leaves_with_path(batch)}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every batch entry needs the same leading batch size, got {sizes}")
    rows, parts = next(iter(sizes.values())), num_microbatches * num_batch_shards(mesh)
    if rows % parts:
        raise ValueError(f"a batch of {rows} rows does not split into {num_microbatches} microbatches "
                         f"x {num_batch_shards(mesh)} data-parallel shards; make the global batch "
                         f"a multiple of {parts}")
    if rows % (num_microbatches * group):
        raise ValueError(f"a batch of {rows} rows does not split into {num_microbatches} microbatches of whole "
                         f"groups of {group} rows (the batch's rows_per_group); make the batch a multiple "
                         f"of {num_microbatches * group} rows or use fewer microbatches")


def make_train_step(loss_fn: LossFn, state: TrainState, mesh: Mesh, *, num_microbatches: int = 1,
                    rules=None) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """Jitted `train_step(state, batch, rng) -> (state, metrics)` for states shaped like `state`.

    loss_fn: `loss_fn(model, microbatch, rng, *, tokens_per_microbatch) -> (loss, metrics)`,
        e.g. `grpo_objective(...)` or `sft_objective()`. The batch's loss is the mean of the
        microbatch losses; `tokens_per_microbatch` (the global batch's count of
        `completion_mask` tokens over `num_microbatches`) lets a loss normalised by tokens
        divide a microbatch's token sum by it and so be exact for any microbatching.
        A microbatch is the batch's own type, with groups of `batch.rows_per_group` rows whole.
    state: a `TrainState`, concrete or abstract; only its structure and shapes are read.
    num_microbatches: gradient accumulation steps; the global batch size must be a
        multiple of num_microbatches x the data-parallel devices (`data` x `fsdp`).

    The returned function donates `state` (its buffers are reused for the new one, but for the
    frozen parameters of a LoRA model, which are passed through as they are) and
    keeps every array in the shardings of `tree_shardings(state, mesh)`; batches are split
    over `batch_sharding(mesh)` (with several processes, build them with
    `make_global_batch`). `.jitted.lower(state, batch, rng)` lowers the jitted step (memory and cost analysis).

    Metrics, replicated scalars: the loss function's own (means over microbatches, so a
    min or max is a mean of per-microbatch ones), `loss`, `grad_norm` (before clipping),
    `update_norm`, `param_norm` (of the trainable parameters, after the update), `skipped` (1 if this update was
    skipped) and `skipped_steps`.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    state_shardings = tree_shardings(state, mesh, rules)
    param_shardings, frozen_shardings = split_trainable(state_shardings.params)
    # inside the jitted step the state holds the trainable parameters only; the frozen ones come beside it
    state_shardings = state_shardings.replace(params=param_shardings)
    replicated = NamedSharding(mesh, P())
    graphdef, tx = state.graphdef, state.tx

    def microbatch_loss(params, frozen, microbatch, rng, tokens_per_microbatch):
        model = nnx.merge(graphdef, params, frozen)
        return loss_fn(model, microbatch, rng, tokens_per_microbatch=tokens_per_microbatch)

    grad_fn = jax.value_and_grad(microbatch_loss, has_aux=True)

    def train_step(state: TrainState, frozen: nnx.State, batch: Batch, rng: jax.Array):
        if not (hasattr(batch, "completion_mask") and hasattr(batch, "rows_per_group")):
            raise TypeError(f"a {type(batch).__name__} is not a train batch: give a typed batch with "
                            "`completion_mask` and `rows_per_group` (RolloutBatch, SFTBatch, PreferenceBatch)")
        group = batch.rows_per_group
        _check_rows(batch, num_microbatches, mesh, group)
        with activate(mesh):
            # column 0 has no prediction (see objectives), so it never counts
            num_tokens = batch.completion_mask[:, 1:].astype(jnp.float32).sum()
            tokens_per_microbatch = num_tokens / num_microbatches
            microbatches = _split_microbatches(batch, num_microbatches, mesh, group)
            rngs = jax.random.split(rng, num_microbatches)

            def accumulate(totals, inputs):
                microbatch, microbatch_rng = inputs
                (loss, metrics), grads = grad_fn(state.params, frozen, microbatch, microbatch_rng,
                                                 tokens_per_microbatch)
                return jax.tree.map(jnp.add, totals, (grads, loss, metrics)), None

            first = jax.tree.map(lambda x: x[0], (microbatches, rngs))
            (loss_shape, metrics_shape), grads_shape = jax.eval_shape(
                grad_fn, state.params, frozen, *first, tokens_per_microbatch)
            zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
            totals = (jax.lax.with_sharding_constraint(zeros(grads_shape), param_shardings),
                      zeros(loss_shape), zeros(metrics_shape))
            totals, _ = jax.lax.scan(accumulate, totals, (microbatches, rngs))
            grads, loss, metrics = jax.tree.map(lambda x: x / num_microbatches, totals)

            grad_norm = optax.global_norm(grads)
            is_finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)

            def if_finite(new, old):
                return jax.tree.map(lambda n, o: jnp.where(is_finite, n, o), new, old)

            new_state = state.replace(
                step=state.step + is_finite.astype(jnp.int32),
                params=if_finite(params, state.params),
                opt_state=if_finite(opt_state, state.opt_state),
                skipped_steps=state.skipped_steps + (~is_finite).astype(jnp.int32))
            metrics = {
                **metrics,
                "loss": loss,
                "grad_norm": grad_norm,
                "update_norm": jnp.where(is_finite, optax.global_norm(updates), 0.0),
                "param_norm": optax.global_norm(new_state.params),
                "skipped": (~is_finite).astype(jnp.float32),
                "skipped_steps": new_state.skipped_steps,
            }
        return new_state, metrics

    jitted = jax.jit(train_step,
                     in_shardings=(state_shardings, frozen_shardings, batch_sharding(mesh), replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)

    def split_step(state, batch, rng, call=jitted):
        trainable, frozen = split_trainable(state.params)
        return call(state.replace(params=trainable), frozen, batch, rng)

    def placed_train_step(state, batch, rng):
        # Arrays from numpy, make_global_batch or another jitted function differ in type
        # (whether it names the mesh) even with equal shapes, and each new type would
        # compile the step again: placing them first gives them one type.
        new_state, metrics = split_step(state, *put_on_mesh((batch, rng), (batch_sharding(mesh), replicated)))
        frozen = split_trainable(state.params)[1]
        return new_state.replace(params=nnx.merge_state(new_state.params, frozen)), metrics

    # for .lower(state, batch, rng): memory and cost analysis
    placed_train_step.jitted = _Lowerable(lambda *args: split_step(*args, call=jitted.lower))
    return placed_train_step


class _Lowerable:
    """The jitted step's `.lower`, taking a whole state (`make_train_step`)."""

    def __init__(self, lower):
        self.lower = lower


def make_logprobs_fn(state: TrainState, mesh: Mesh, *, num_microbatches: int = 1, rules=None,
                     completion_columns: int | None = None, rows_per_group: int = 1
                     ) -> Callable[[nnx.State, jax.Array, jax.Array], jax.Array]:
    """Jitted `logprobs_fn(params, tokens, attention_mask) -> logps` f32 [B, T].

    `logps[:, t] = log p(tokens[:, t] | tokens[:, :t])` (column 0 is 0), the layout of
    `old_logps` and `ref_logps`. `params` is any parameter state shaped like
    `state.params`: the frozen reference copy (`copy_params`) for `ref_logps`, or
    `state.params` for `old_logps` when a rollout is used for several updates.
    completion_columns: only the last this many columns are scored (the LM head runs
        there only; the other columns are 0), as in `grpo_objective`. None: all. A call's
        `completion_columns=` (a batch's, which varies with the rollout) overrides it;
        each value compiles once.
    rows_per_group: G when every G consecutive rows share a prompt, run once per group
        (`r1jax.train.objectives.completion_logprobs`).
    Computed `num_microbatches` rows-groups at a time to bound the memory of the logits.
    """
    graphdef = state.graphdef
    param_shardings = tree_shardings(state.params, mesh, rules)
    data = batch_sharding(mesh)

    def logprobs_fn(params, tokens, attention_mask, columns):
        batch = {"tokens": tokens, "attention_mask": attention_mask}
        _check_rows(batch, num_microbatches, mesh, rows_per_group)
        with activate(mesh):
            def one(microbatch):
                model = nnx.merge(graphdef, params)
                logps, _ = completion_logprobs(model, microbatch["tokens"], microbatch["attention_mask"],
                                               columns, rows_per_group=rows_per_group)
                return jnp.pad(logps, ((0, 0), (tokens.shape[1] - logps.shape[1], 0)))

            logps = jax.lax.map(one, _split_microbatches(batch, num_microbatches, mesh, rows_per_group))
            return _merge_microbatches(logps, rows_per_group)

    jitted = jax.jit(logprobs_fn, in_shardings=(param_shardings, data, data), out_shardings=data,
                     static_argnums=3)

    def placed_logprobs_fn(params, tokens, attention_mask, *, completion_columns=completion_columns):
        # see make_train_step for the placing
        return jitted(params, *put_on_mesh((tokens, attention_mask), data), completion_columns)

    placed_logprobs_fn.jitted = jitted
    return placed_logprobs_fn


def metrics_to_host(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics as Python floats; a device-to-host sync, so call it only when logging."""
    return {name: float(value) for name, value in jax.device_get(metrics).items()}
