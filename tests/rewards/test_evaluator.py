"""The parallel reward evaluator: weighting, None masking, and surviving reward
functions that raise, hang or kill their worker."""
import concurrent.futures
import logging
import math
import os
import time

import numpy as np
import pytest

from r1jax.rewards import RewardEvaluator, register_reward, sandbox_capabilities
from r1jax.rewards.sandbox import SANDBOX_UID_BASE


# Misbehaving rewards. Module-level, so worker processes can unpickle them by name.
@register_reward("test_raises")
def raises_reward(completion, **_):
    if "boom" in completion:
        raise RuntimeError("boom")
    return 1.0


@register_reward("test_hangs")
def hangs_reward(completion, **_):
    if "hang" in completion:
        time.sleep(3600)
    return 0.5


@register_reward("test_dies")
def dies_reward(completion, **_):
    if "die" in completion:
        os._exit(3)
    return 0.25


@register_reward("test_slow")
def slow_reward(completion, **_):
    time.sleep(0.3)
    return 1.0


@register_reward("test_fields")
def fields_reward(completion, prompt=None, **fields):
    # 1.0 iff the prompt arrived and the example's own "completion" field did not.
    return float(prompt == "P" and "completion" not in fields)


COMPLETIONS = ["<think>a</think><answer>4</answer>", "<answer>5</answer>",
               "<think>a</think><answer>4</answer>"]
EXAMPLES = [{"answer": "4"}, {"answer": "4"}, {"answer": ""}]  # the last gold is unparseable


def test_weighted_total_and_none_masking():
    with RewardEvaluator({"accuracy": 1.0, "format": 0.5}, num_workers=2) as evaluator:
        result = evaluator.evaluate(COMPLETIONS, EXAMPLES)
    np.testing.assert_array_equal(result.per_function["accuracy"], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(result.per_function["format"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(result.total, [1.5, 0.0, np.nan])
    np.testing.assert_array_equal(result.valid, [True, True, False])
    assert result.total.dtype == np.float32 and result.per_function["format"].dtype == np.float32
    metrics = result.metrics
    assert metrics["rewards/accuracy"] == 0.5 and metrics["rewards/accuracy_none"] == 1
    assert metrics["rewards/format"] == pytest.approx(2 / 3)
    assert metrics["rewards/total"] == 0.75
    assert metrics["rewards/valid_fraction"] == pytest.approx(2 / 3)
    assert metrics["rewards/errors"] == metrics["rewards/timeouts"] == 0
    assert metrics["rewards/seconds"] > 0 and metrics["rewards/samples_per_second"] > 0
    assert result.failures == []


def test_inline_mode_matches_workers():
    with RewardEvaluator({"accuracy": 1.0, "format": 0.5}, num_workers=0) as evaluator:
        result = evaluator.evaluate(COMPLETIONS, EXAMPLES)
    np.testing.assert_array_equal(result.total, [1.5, 0.0, np.nan])


def test_raising_reward_is_a_logged_failure(caplog):
    completions, examples = ["ok", "boom", "ok"], [{}] * 3
    with caplog.at_level(logging.WARNING, logger="r1jax.rewards.evaluator"):
        with RewardEvaluator({"test_raises": 1.0, "format_tag_count": 1.0}, num_workers=2) as evaluator:
            zeroed = evaluator.evaluate(completions, examples)
    np.testing.assert_array_equal(zeroed.per_function["test_raises"], [1.0, np.nan, 1.0])
    np.testing.assert_array_equal(zeroed.total, [1.0, 0.0, 1.0])  # on_error="zero"
    assert zeroed.valid.all()
    assert zeroed.metrics["rewards/errors"] == 1 and zeroed.metrics["rewards/test_raises_errors"] == 1
    [failure] = zeroed.failures
    assert (failure.row, failure.reward, failure.kind) == (1, "test_raises", "error")
    assert "RuntimeError: boom" in failure.message
    assert "test_raises" in caplog.text and "RuntimeError: boom" in caplog.text

    with RewardEvaluator({"test_raises": 1.0}, num_workers=1, on_error="mask") as evaluator:
        masked = evaluator.evaluate(completions, examples)
    np.testing.assert_array_equal(masked.valid, [True, False, True])
    np.testing.assert_array_equal(masked.total, [1.0, np.nan, 1.0])


def test_hanging_reward_is_killed_and_training_continues():
    completions = ["a", "hang", "b", "c", "d", "e"]
    with RewardEvaluator({"test_hangs": 1.0, "format_tag_count": 0.0}, num_workers=2,
                         timeout={"test_hangs": 0.5}, chunk_size=3) as evaluator:
        start = time.monotonic()
        result = evaluator.evaluate(completions, [{}] * len(completions))
        assert time.monotonic() - start < 5.0
        np.testing.assert_array_equal(result.per_function["test_hangs"], [0.5, np.nan, 0.5, 0.5, 0.5, 0.5])
        np.testing.assert_array_equal(result.per_function["format_tag_count"], [0.0] * 6)
        np.testing.assert_array_equal(result.total, [0.5, 0.0, 0.5, 0.5, 0.5, 0.5])
        assert result.metrics["rewards/timeouts"] == 1
        assert result.metrics["rewards/worker_restarts"] == 1
        assert result.failures[0].kind == "timeout" and result.failures[0].row == 1
        # The replacement worker serves the next batch.
        again = evaluator.evaluate(["x", "y"], [{}, {}])
        np.testing.assert_array_equal(again.total, [0.5, 0.5])
        assert again.metrics["rewards/worker_restarts"] == 0


def test_reward_that_kills_its_worker_is_an_error():
    completions = ["a", "die", "b", "c"]
    with RewardEvaluator({"test_dies": 1.0}, num_workers=2, chunk_size=2) as evaluator:
        result = evaluator.evaluate(completions, [{}] * 4)
    np.testing.assert_array_equal(result.per_function["test_dies"], [0.25, np.nan, 0.25, 0.25])
    [failure] = result.failures
    assert failure.kind == "error" and "worker process died (exit code 3)" in failure.message


def test_submit_returns_at_once_and_results_come_in_order():
    with RewardEvaluator({"test_slow": 1.0, "format": 1.0}, num_workers=2) as evaluator:
        start = time.monotonic()
        first = evaluator.submit(["a", "b"], [{}, {}])
        second = evaluator.submit(["<think>r</think><answer>a</answer>"], [{}])
        assert time.monotonic() - start < 0.2  # 0.3 s of reward work is still pending
        assert isinstance(first, concurrent.futures.Future)
        np.testing.assert_array_equal(second.result(timeout=10).total, [2.0])
        assert first.done()
        np.testing.assert_array_equal(first.result().total, [1.0, 1.0])


def test_close_stops_workers_and_refuses_new_work():
    evaluator = RewardEvaluator({"format": 1.0}, num_workers=2)
    processes = [worker.process for worker in evaluator._pool._workers]
    assert all(process.is_alive() for process in processes)
    with evaluator:
        pass
    assert not any(process.is_alive() for process in processes)
    with pytest.raises(RuntimeError, match="closed"):
        evaluator.submit(["x"], [{}])
    evaluator.close()  # idempotent


def test_weight_zero_is_logged_only_and_kwargs_are_bound():
    completion = "<answer>(25 - 5) * 3 + 1</answer>"
    example = {"numbers": [25, 5, 3, 1, 7], "target": 61}
    with RewardEvaluator({"countdown": 1.0, "format": 0.0}, num_workers=0,
                         reward_kwargs={"countdown": {"use_all_numbers": True}}) as evaluator:
        result = evaluator.evaluate([completion], [example])
    assert result.per_function["countdown"][0] == 0.0  # 7 unused, and all were required
    assert result.metrics["rewards/format"] == 0.0 and result.total[0] == 0.0
    with RewardEvaluator({"countdown": 2.0}, num_workers=0) as evaluator:
        assert evaluator.evaluate([completion], [example]).total[0] == 2.0


def test_prompts_reach_rewards_and_example_completion_is_dropped():
    with RewardEvaluator({"test_fields": 1.0}, num_workers=1) as evaluator:
        result = evaluator.evaluate(["c"], [{"completion": "gold text"}], prompts=["P"])
    assert result.total[0] == 1.0


def test_empty_batch():
    with RewardEvaluator({"format": 1.0}, num_workers=1) as evaluator:
        result = evaluator.evaluate([], [])
    assert result.total.shape == (0,) and math.isnan(result.metrics["rewards/total"])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(weights={"acuracy": 1.0}), ValueError, "unknown reward 'acuracy'; known rewards: .*accuracy"),
    (dict(weights={}), ValueError, "non-empty mapping"),
    (dict(weights={"format": "1"}), ValueError, "finite number"),
    (dict(weights={"format": math.inf}), ValueError, "finite number"),
    (dict(weights={"format": 1.0}, on_error="ignore"), ValueError, "on_error must be one of"),
    (dict(weights={"format": 1.0}, reward_kwargs={"code": {}}), ValueError, "not in weights"),
    (dict(weights={"format": 1.0}, timeout={"code": 1.0}), ValueError, "not in weights"),
    (dict(weights={"format": 1.0}, timeout=0.0), ValueError, "positive timeout"),
    (dict(weights={"format": 1.0}, num_workers=-1), ValueError, "num_workers must be >= 0"),
])
def test_bad_configuration_is_explained(kwargs, error, message):
    weights = kwargs.pop("weights")
    with pytest.raises(error, match=message):
        RewardEvaluator(weights, **kwargs)


def test_unpicklable_reward_is_explained():
    register_reward("test_lambda")(lambda completion, **_: 1.0)
    with pytest.raises(ValueError, match="must be picklable"):
        RewardEvaluator({"test_lambda": 1.0}, num_workers=1)


def test_bad_batches_are_explained():
    with RewardEvaluator({"format": 1.0}, num_workers=0) as evaluator:
        with pytest.raises(ValueError, match="2 completions but 1 examples"):
            evaluator.submit(["a", "b"], [{}])
        with pytest.raises(TypeError, match=r"completions\[0\] must be a str"):
            evaluator.submit([None], [{}])
        with pytest.raises(TypeError, match=r"examples\[0\] must be a mapping"):
            evaluator.submit(["a"], ["not a dict"])
        with pytest.raises(ValueError, match="1 prompts for 2 completions"):
            evaluator.submit(["a", "b"], [{}, {}], prompts=["p"])


@pytest.mark.skipif(not sandbox_capabilities().isolated, reason="needs the full sandbox (root)")
def test_killed_code_worker_leaves_no_sandboxed_process():
    program = ("```python\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n"
               "time.sleep(100)\n```")
    with RewardEvaluator({"code": 1.0}, num_workers=1, timeout=1.0) as evaluator:
        worker_pid = evaluator._pool._workers[0].process.pid
        result = evaluator.evaluate([program], [{"tests": [{"input": "", "output": "x"}]}])
        assert result.failures[0].kind == "timeout"
        assert _sandbox_processes_of(worker_pid) == []  # zombies included


def _sandbox_processes_of(owner_pid: int) -> list[int]:
    low = SANDBOX_UID_BASE + owner_pid * 64
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as status:
                uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if low <= uid < low + 64:
            pids.append(int(entry))
    return pids


def test_unpicklable_example_raises_and_the_evaluator_recovers():
    with RewardEvaluator({"format": 1.0}, num_workers=1) as evaluator:
        with pytest.raises(Exception, match="pickle"):
            evaluator.evaluate(["x"], [{"callback": lambda: None}])
        np.testing.assert_array_equal(evaluator.evaluate(["x"], [{}]).total, [0.0])
