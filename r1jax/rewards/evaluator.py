"""Score a batch of completions with weighted reward functions, in parallel.

    with RewardEvaluator({"accuracy": 1.0, "format": 0.5}, num_workers=2) as rewards:
        future = rewards.submit(completions, examples)   # returns at once
        ...                                              # device work overlaps
        result = future.result()
        advantages = group_advantages(result.total[result.valid], ...)

How missing rewards enter the total (a "weighted" reward is one with weight != 0;
weight-0 rewards are computed and logged only):

  * a reward function returned None ("cannot be judged", e.g. an unparseable
    gold answer): the sample is invalid (`valid[i] = False`, `total[i] = NaN`)
    and should be left out of the advantage;
  * a reward function raised, hung past its timeout, or killed its worker:
    a failure, logged and counted; with on_error="zero" (default) it counts as
    0.0 in the total and the sample stays valid, with on_error="mask" it is
    treated like None.

`per_function[name][i]` is NaN whenever that function produced no value (None,
error or timeout). `total[i]` is the weighted sum over weighted rewards, NaN for
invalid samples, so code that forgets `valid` fails loudly instead of learning
from a made-up reward.

Workers are started with multiprocessing's "forkserver" method (safe next to
JAX's threads), so, as with any multiprocessing code, a script must create the
evaluator under `if __name__ == "__main__":`. Reward functions reach the workers
by pickling, so they must be importable module-level functions.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import time
import weakref
from typing import Mapping, Optional, Sequence

import numpy as np

from r1jax.rewards.pool import ERROR, NONE, OK, TIMEOUT, WorkerPool
from r1jax.rewards.registry import get_reward

log = logging.getLogger(__name__)

ON_ERROR_POLICIES = ("zero", "mask")
# Failures logged one by one per batch; the rest only counted.
_FAILURES_LOGGED_PER_BATCH = 3


@dataclasses.dataclass(frozen=True)
class RewardFailure:
    row: int
    reward: str
    kind: str  # "error" or "timeout"
    message: str


@dataclasses.dataclass(frozen=True)
class RewardResult:
    per_function: dict[str, np.ndarray]  # name -> float32 [batch], NaN where no value
    total: np.ndarray                    # float32 [batch], NaN where not valid
    valid: np.ndarray                    # bool [batch]
    metrics: dict[str, float]
    failures: list[RewardFailure]


class RewardEvaluator:
    """Weighted rule-based rewards, scored in a pool of worker processes.

    weights: reward name (see `list_rewards()`) -> weight in the total.
    num_workers: worker processes; 0 scores in a background thread of this
      process without these timeouts (for debugging; the math reward still
      bounds itself, see rewards/math.py).
    timeout: seconds per reward call, or a mapping name -> seconds (names left
      out get 10 s). Sandboxed code rewards need room for all their tests.
    reward_kwargs: name -> keyword arguments bound to that reward function,
      e.g. {"code": {"all_or_nothing": True}}.
    on_error: "zero" or "mask", how failed calls enter the total (module doc).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        num_workers: int = 2,
        timeout: float | Mapping[str, float] = 10.0,
        reward_kwargs: Optional[Mapping[str, Mapping]] = None,
        on_error: str = "zero",
        chunk_size: Optional[int] = None,
        mp_context: str = "forkserver",
    ):
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"weights must be a non-empty mapping name -> weight, got {weights!r}")
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weight of reward {name!r} must be a finite number, got {weight!r}")
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        reward_kwargs = dict(reward_kwargs or {})
        unknown = set(reward_kwargs) - set(weights)
        if unknown:
            raise ValueError(f"reward_kwargs for rewards not in weights: {sorted(unknown)}")
        timeouts = dict(timeout) if isinstance(timeout, Mapping) else {}
        default_timeout = 10.0 if isinstance(timeout, Mapping) else float(timeout)
        unknown = set(timeouts) - set(weights)
        if unknown:
            raise ValueError(f"timeouts for rewards not in weights: {sorted(unknown)}")

        self.names = list(weights)
        self.weights = {name: float(weight) for name, weight in weights.items()}
        self.on_error = on_error
        functions = []
        for name in self.names:
            function = get_reward(name)
            if name in reward_kwargs:
                function = functools.partial(function, **reward_kwargs[name])
            functions.append((name, function))
        self._pool = WorkerPool(
            functions, num_workers=num_workers, chunk_size=chunk_size, mp_context=mp_context,
            timeouts=[float(timeouts.get(name, default_timeout)) for name in self.names])
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="r1jax-rewards")
        self._closed = False
        self._finalizer = weakref.finalize(self, _shut_down, self._executor, self._pool)

    def submit(self, completions: Sequence[str], examples: Sequence[Mapping],
               prompts: Optional[Sequence[str]] = None) -> concurrent.futures.Future:
        """Start scoring and return a Future of a RewardResult. Batches are scored
        one after another in submission order."""
        if self._closed:
            raise RuntimeError("this RewardEvaluator is closed")
        items = _make_items(completions, examples, prompts)
        return self._executor.submit(self._score, items)

    def evaluate(self, completions: Sequence[str], examples: Sequence[Mapping],
                 prompts: Optional[Sequence[str]] = None) -> RewardResult:
        """Score a batch and wait for the result."""
        return self.submit(completions, examples, prompts).result()

    def close(self):
        """Wait for submitted batches, then stop the worker processes. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "RewardEvaluator":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _score(self, items: list[tuple[str, dict]]) -> RewardResult:
        start = time.perf_counter()
        outcomes, pool_stats = self._pool.run(items)
        seconds = time.perf_counter() - start
        return _combine(self.names, self.weights, self.on_error, outcomes, seconds, pool_stats)


def _shut_down(executor: concurrent.futures.Executor, pool: WorkerPool):
    executor.shutdown(wait=True)
    pool.close()


def _make_items(completions, examples, prompts) -> list[tuple[str, dict]]:
    completions, examples = list(completions), list(examples)
    if len(completions) != len(examples):
        raise ValueError(f"got {len(completions)} completions but {len(examples)} examples; "
                         "repeat each example once per completion (e.g. per GRPO group member)")
    if prompts is not None:
        prompts = list(prompts)
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
    items = []
    for row, (completion, example) in enumerate(zip(completions, examples)):
        if not isinstance(completion, str):
            raise TypeError(f"completions[{row}] must be a str, got {type(completion).__name__}")
        if not isinstance(example, Mapping):
            raise TypeError(f"examples[{row}] must be a mapping of fields, got {type(example).__name__}")
        # The completion is passed positionally; an example's own (e.g. a
        # distillation target) would clash with it.
        fields = {key: value for key, value in example.items() if key != "completion"}
        if prompts is not None:
            fields["prompt"] = prompts[row]
        items.append((completion, fields))
    return items


def _combine(names, weights, on_error, outcomes, seconds, pool_stats) -> RewardResult:
    batch = len(outcomes)
    total = np.zeros(batch, np.float64)
    valid = np.ones(batch, bool)
    per_function, metrics, failures = {}, {}, []
    for index, name in enumerate(names):
        status = np.array([row[index][0] for row in outcomes], np.int8).reshape(batch)
        values = np.array([row[index][1] for row in outcomes], np.float64).reshape(batch)
        for row in np.flatnonzero((status == ERROR) | (status == TIMEOUT)):
            kind = "timeout" if status[row] == TIMEOUT else "error"
            failures.append(RewardFailure(int(row), name, kind, outcomes[row][index][2] or ""))
        per_function[name] = values.astype(np.float32)
        judged = values[status == OK]
        metrics[f"rewards/{name}"] = float(judged.mean()) if judged.size else math.nan
        metrics[f"rewards/{name}_none"] = float(np.sum(status == NONE))
        metrics[f"rewards/{name}_errors"] = float(np.sum(status == ERROR))
        metrics[f"rewards/{name}_timeouts"] = float(np.sum(status == TIMEOUT))
        if weights[name] == 0:
            continue
        missing = status == NONE
        if on_error == "mask":
            missing |= status != OK
        valid &= ~missing
        total += weights[name] * np.where(status == OK, values, 0.0)
    total[~valid] = np.nan
    _log_failures(failures)
    metrics["rewards/total"] = float(total[valid].mean()) if valid.any() else math.nan
    metrics["rewards/valid_fraction"] = float(valid.mean()) if batch else math.nan
    metrics["rewards/errors"] = float(sum(f.kind == "error" for f in failures))
    metrics["rewards/timeouts"] = float(sum(f.kind == "timeout" for f in failures))
    metrics["rewards/worker_restarts"] = float(pool_stats["worker_restarts"])
    metrics["rewards/seconds"] = seconds
    metrics["rewards/samples_per_second"] = batch / seconds if seconds > 0 else math.nan
    return RewardResult(per_function, total.astype(np.float32), valid, metrics, failures)


def _log_failures(failures: list[RewardFailure]):
    for failure in failures[:_FAILURES_LOGGED_PER_BATCH]:
        log.warning("reward %r %s on sample %d: %s", failure.reward, failure.kind,
                    failure.row, failure.message)
    if len(failures) > _FAILURES_LOGGED_PER_BATCH:
        log.warning("... and %d more reward failures in this batch",
                    len(failures) - _FAILURES_LOGGED_PER_BATCH)
