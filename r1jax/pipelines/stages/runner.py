"""The one runner of a recipe's stages: it owns skip, resume and "stopped".

A recipe is an ordered table of `Stage`s. Each stage makes one place of the workdir
(its `output`) from the results of earlier stages (its `inputs`); the runner

- skips a stage whose result is already there (`finished(output)` returns it: a model
  export is renamed into place only when complete, so a kill never leaves half of one),
- runs the others in order, each resuming from its own checkpoints (`run_training`,
  rejection sampling's chunks) when a killed run left some,
- stops at the first stage that reports `STOPPED` (SIGTERM: its checkpoint holds its
  progress), or before the next stage when the notice came after a stage's last step (during
  its final save), and says which one, so that the same command resumes there.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from r1jax.checkpoint import preemption_requested
from r1jax.models import ModelConfig
from r1jax.pipelines.stages.export import exported

log = logging.getLogger(__name__)


class _Stopped:
    """What a stage returns when SIGTERM stopped it (a checkpoint holds its progress)."""

    def __repr__(self) -> str:
        return "STOPPED"


STOPPED = _Stopped()


def finished_model(output: pathlib.Path, wanted: ModelConfig | None = None) -> pathlib.Path | None:
    """`output/model`, a finished model export, or None when it is not there yet; refuses a model of
    another architecture than `wanted` (see `exported`). The default `Stage.finished`."""
    model = output / "model"
    return model if exported(model, wanted) else None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a recipe: `run(output, *results of inputs)` makes `output` and returns its result.

    name      the key of its result, and what a stopped run reports
    run       returns the result (a model directory, a dataset, a judge ...) or `STOPPED`
    inputs    names of earlier stages (or of `given` results) whose results `run` takes, in order
    output    its place in the workdir (default: `name`)
    finished  output -> the result when it is already there, else None (default: a model export
              in `output/model`); None: the stage always runs, finding its own finished work
    """

    name: str
    run: Callable[..., Any]
    inputs: Sequence[str] = ()
    output: str | None = None
    finished: Callable[[pathlib.Path], Any] | None = finished_model


def given(name: str, path) -> Stage:
    """A stage whose result is the existing `path` (e.g. a checkpoint to start from); it makes nothing
    (it is always finished, so that a preemption notice stops a run before a stage that works)."""
    return Stage(name, lambda output: pathlib.Path(path), output=".", finished=lambda output: pathlib.Path(path))


class Run(NamedTuple):
    """The results of the stages by name, and the stage that was stopped (None: all finished)."""

    results: dict[str, Any]
    stopped: str | None = None


def run_stages(workdir, stages: Sequence[Stage], given: Mapping[str, Any] | None = None) -> Run:
    """Run the `stages` in order in `workdir`, skipping those whose result is there; stop at the first
    that is stopped, or before a stage when a preemption notice is pending (`preemption_requested`).
    `given`: results that no stage makes (e.g. a starting checkpoint).

    The table is checked before any stage runs: each name once, each input made earlier.
    """
    workdir = pathlib.Path(workdir)
    results = dict(given or {})
    _check_table(stages, known=set(results))
    started = time.perf_counter()
    for stage in stages:
        output = workdir / (stage.output or stage.name)
        result = stage.finished(output) if stage.finished is not None else None
        if result is not None:
            log.info("stage %s: done (%s)", stage.name, output)
        else:
            if preemption_requested():  # e.g. a SIGTERM during the last save of the stage before
                log.warning("preempted (SIGTERM) before stage %s; rerun the same command to resume", stage.name)
                return Run(results, stopped=stage.name)
            log.info("stage %s (%.0fs)", stage.name, time.perf_counter() - started)
            result = stage.run(output, *(results[name] for name in stage.inputs))
            if result is STOPPED:
                log.info("stage %s stopped; rerun the same command to resume it", stage.name)
                return Run(results, stopped=stage.name)
        results[stage.name] = result
    return Run(results)


def _check_table(stages: Sequence[Stage], known: set[str]) -> None:
    known = set(known)
    for stage in stages:
        if not isinstance(stage, Stage):
            raise TypeError(f"a recipe is a sequence of Stage, got {stage!r}")
        if stage.name in known:
            raise ValueError(f"stage {stage.name!r} comes twice (or is also given); name each stage once")
        missing = [name for name in stage.inputs if name not in known]
        if missing:
            raise ValueError(f"stage {stage.name!r} takes {missing}, which no earlier stage makes; "
                             f"made before it: {sorted(known)}")
        known.add(stage.name)
