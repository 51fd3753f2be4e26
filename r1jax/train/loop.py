"""The outer training loop shared by every stage (pretraining, SFT, GRPO).

It owns what does not depend on the loss: building the sharded train state, resuming
from the newest Orbax checkpoint that restores (params, optimizer, step and data
position; `Checkpointer.restore_latest` skips a damaged newer one, with a warning), one
jitted step, periodic evaluation, checkpoints every N steps and on SIGTERM, metrics to
JSONL/TensorBoard/progress bar, and the plots at the end. A stage supplies only how a
step's batches are made (`make_batches`) and how the policy is evaluated.

Resuming is exact: step `s` draws its randomness from `fold_in(rng, s)` and its data
from the iterator position saved with the checkpoint, so a run killed and restarted
computes the same updates as one that never stopped.

Several processes run the loop together (`r1jax.distributed`): the data iterator hands
each its share of a batch, Orbax saves and restores the sharded state (onto any mesh and
process count), a SIGTERM on any host stops every host at the same step, and process 0
alone writes metrics and plots.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from r1jax.checkpoint import Checkpointer, Preemption, model_signature
from r1jax.distributed import is_primary
from r1jax.metrics import MetricsLogger, plot_metrics
from r1jax.models import Transformer
from r1jax.models.config import RUNTIME_FIELDS
from r1jax.train.state import TrainState, train_state_from_model
from r1jax.train.step import make_train_step, metrics_to_host

log = logging.getLogger(__name__)


class ResumableIterator(Protocol):
    def __next__(self) -> Any: ...
    def state(self) -> dict: ...
    def restore(self, state: dict) -> None: ...


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How one training run steps, evaluates, logs and checkpoints: a config's training section
    (with the run's `OptimizerSettings`, `r1jax.pipelines.settings.training_from`)."""

    steps: int  # optimizer steps of the run
    save_every: int = 50  # a checkpoint every this many steps (and at the last)
    keep_checkpoints: int = 2  # the newest this many are kept
    eval_every: int = 0  # 0: only at the end
    log_every: int = 1
    num_microbatches: int = 1  # gradient accumulation: each batch's rows split into this many

    def __post_init__(self):
        counts = {"steps": self.steps, "save_every": self.save_every, "keep_checkpoints": self.keep_checkpoints,
                  "log_every": self.log_every, "num_microbatches": self.num_microbatches}
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: use a whole number >= 1")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every={self.eval_every!r}: use a whole number >= 0 (0: at the end only)")


PLOT_KEYS = ("loss", "reward", "accuracy", "response_length", "kl")


# make_batches(state, examples, rng) -> (list of device batches, host metrics of the step)
MakeBatches = Callable[[TrainState, Any, jax.Array], tuple[list[dict], dict[str, float]]]
EvaluateFn = Callable[[TrainState, int], dict[str, float]]


class TrainResult(NamedTuple):
    state: TrainState
    eval_metrics: dict[str, float]  # of the last evaluation
    completed: bool  # False when SIGTERM stopped the run early (a checkpoint holds its progress)


def run_training(settings: LoopSettings, *, workdir: str | pathlib.Path, model: Transformer,
                 optimizer: optax.GradientTransformation, loss_fn, data: ResumableIterator,
                 make_batches: MakeBatches, mesh: Mesh, evaluate: EvaluateFn | None = None,
                 name: str = "train", seed: int = 0, progress: bool = True,
                 plot_keys: Sequence[str] = PLOT_KEYS) -> TrainResult:
    """Train `model` for `settings.steps` optimizer steps (or resume and finish); return the final state.

    Every batch `make_batches` returns is one `train_step` (e.g. GRPO's mu iterations x
    minibatches). `seed`: the steps' randomness; `progress`: a progress bar; `plot_keys`: the
    metrics plotted to metrics.png at the end.
    """
    workdir = pathlib.Path(workdir)
    signature = model_signature(model.config, nnx.state(model, nnx.Param), ignore=RUNTIME_FIELDS)
    checkpointer = Checkpointer(workdir, save_every=settings.save_every, keep=settings.keep_checkpoints,
                                model_signature=signature)
    state = train_state_from_model(model, optimizer, mesh)
    train_step = make_train_step(loss_fn, state, mesh, num_microbatches=settings.num_microbatches)
    start = 0
    try:
        restored = checkpointer.restore_latest(_with_shardings(state))
    except BaseException:  # e.g. DamagedCheckpointError: release Orbax's threads before raising
        checkpointer.close()
        raise
    if restored is not None:
        start, state, host = restored
        data.restore(host["data"])
        log.info("%s: resumed from step %d in %s", name, start, workdir)
    metrics_logger = MetricsLogger(workdir, total_steps=settings.steps, progress=progress)
    metrics_logger.truncate_after(start)
    rng = jax.random.key(seed)
    eval_metrics: dict[str, float] = {}
    stop = False
    with Preemption() as preemption, metrics_logger, checkpointer:
        for step in range(start, settings.steps):
            started = time.perf_counter()
            step_rng = jax.random.fold_in(rng, step)
            batches, host_metrics = make_batches(state, next(data), jax.random.fold_in(step_rng, 0))
            device_metrics = None
            for i, batch in enumerate(batches):
                state, device_metrics = train_step(state, batch, jax.random.fold_in(step_rng, i + 1))
            row = {**host_metrics, **metrics_to_host(device_metrics)}
            row["step_seconds"] = time.perf_counter() - started
            done = step + 1
            if evaluate is not None and ((settings.eval_every and done % settings.eval_every == 0)
                                         or done == settings.steps):
                eval_metrics = evaluate(state, done)
                row.update({f"eval/{k}": v for k, v in eval_metrics.items()})
            if done % settings.log_every == 0 or done == settings.steps:
                metrics_logger.log(done, row)
            if row.get("skipped_steps", 0) > 0 and row.get("skipped", 0):
                log.warning("%s step %d: non-finite loss or gradient, update skipped", name, done)
            stop = preemption.should_stop(done)
            saved = checkpointer.save(done, state, {"data": data.state()}, force=stop or done == settings.steps)
            if stop:
                # not saved: the step's directory holds a damaged checkpoint (the Checkpointer said so)
                log.warning("%s: preempted (SIGTERM) at step %d; %s, exiting", name, done,
                            f"checkpoint saved in {checkpointer.directory}" if saved else "NO checkpoint of this step")
                break
    try:
        if is_primary():  # the one writer of metrics
            plot_metrics(workdir / "metrics.jsonl", workdir / "metrics.png", keys=plot_keys)
    except ValueError as err:  # none of the keys logged, e.g. a zero-step run
        log.info("no plot: %s", err)
    return TrainResult(state, eval_metrics, completed=not stop)


def _with_shardings(state: TrainState):
    """The state's abstract twin, with the shardings Orbax should restore into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

