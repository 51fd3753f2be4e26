"""A pathological answer costs the math reward a bounded time wherever it runs:
the main thread, another thread, the evaluator's workers and the evaluator
without workers. `9^{9^{9^{9}}}` is the reference case: sympy never finishes it,
and in a thread it holds the GIL, so only a signal or a process kill stops it."""
import threading
import time

import numpy as np
import pytest

from r1jax.rewards import RewardEvaluator, accuracy_reward
from r1jax.rewards import math as math_module

TOWER = r"\boxed{9^{9^{9^{9}}}}"
BOUND = math_module.MATH_VERIFY_TIMEOUT_SECONDS
EVALUATOR_TIMEOUT = 10.0  # RewardEvaluator's documented default
# Scheduling on a loaded machine, and a signal that lands only after the
# C-level integer operation in progress.
MARGIN = 3.0

# Other answers sympy cannot finish; checked against a 1 s bound to keep the file fast.
PATHOLOGICAL = {
    "tower_of_tens": r"\boxed{10^{10^{10}}}",
    "factorial_of_a_power": r"\boxed{(2^{1000000})!}",
    "factorial_tower": r"\boxed{((10!)!)!}",
    "large_factorial": r"\boxed{10000000!}",
    "tower_of_twos": r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "megabyte_answer": "<answer>" + "9^{" * 300_000 + "</answer>",
}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def timed_in_thread(function, *args, warm_up=True, **kwargs):
    """(result, seconds) of one call in a fresh thread. The warm-up starts the
    thread's helper process first: its start is not part of the per-call bound."""
    box = {}

    def target():
        if warm_up:
            assert accuracy_reward(r"\boxed{\sqrt{4}}", answer=r"\sqrt{4}") == 1.0
        box["timed"] = timed(function, *args, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the reward call hung in a worker thread"
    return box["timed"]


def test_tower_on_main_thread_is_cut_off():
    score, seconds = timed(accuracy_reward, TOWER, answer="5")
    assert score == 0.0
    assert seconds < BOUND + MARGIN


def test_tower_on_worker_thread_is_cut_off():
    score, seconds = timed_in_thread(accuracy_reward, TOWER, answer="6")
    assert score == 0.0
    assert seconds < BOUND + MARGIN


@pytest.mark.parametrize("num_workers", [1, 0])
def test_tower_through_evaluator_costs_at_most_its_timeout(num_workers):
    with RewardEvaluator({"accuracy": 1.0}, num_workers=num_workers) as evaluator:
        evaluator.evaluate([r"\boxed{\sqrt{9}}"], [{"answer": "3"}])  # start workers and helpers
        start = time.perf_counter()
        result = evaluator.evaluate([TOWER, r"\boxed{\sqrt{49}}"],
                                    [{"answer": str(7 + num_workers)}, {"answer": "7"}])
        seconds = time.perf_counter() - start
    assert seconds < min(BOUND, EVALUATOR_TIMEOUT) + MARGIN
    np.testing.assert_array_equal(result.per_function["accuracy"], [0.0, 1.0])
    assert result.valid.all() and not result.failures


def test_evaluator_timeout_below_math_verify_kills_the_worker():
    with RewardEvaluator({"accuracy": 1.0}, num_workers=1, timeout=1.0) as evaluator:
        evaluator.evaluate([r"\boxed{\sqrt{9}}"], [{"answer": "3"}])
        start = time.perf_counter()
        result = evaluator.evaluate([TOWER], [{"answer": "11"}])
        seconds = time.perf_counter() - start
    assert seconds < 1.0 + MARGIN
    assert [failure.kind for failure in result.failures] == ["timeout"]
    assert result.total[0] == 0.0 and result.valid[0]  # on_error="zero"


@pytest.mark.parametrize("completion", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_answers_on_main_thread(completion, monkeypatch):
    monkeypatch.setattr(math_module, "MATH_VERIFY_TIMEOUT_SECONDS", 1)
    score, seconds = timed(accuracy_reward, completion, answer="12")
    assert score == 0.0
    assert seconds < 1 + MARGIN


def test_helper_process_is_killed_past_the_bound(monkeypatch):
    # The helper's own math-verify alarm is 5 s; the 1 s kill must come first.
    monkeypatch.setattr(math_module, "MATH_VERIFY_TIMEOUT_SECONDS", 1)
    for completion in (TOWER, PATHOLOGICAL["factorial_tower"]):
        score, seconds = timed_in_thread(accuracy_reward, completion, answer="13")
        assert score == 0.0
        assert seconds < 1 + MARGIN


def test_worker_thread_keeps_verdicts_of_normal_answers():
    cases = [(r"\boxed{\{1, 2\}}", r"\{2, 1\}", 1.0), (r"\boxed{[1, 2)}", "[1,2)", 1.0),
             (r"\boxed{(1, 2)}", "[1,2)", 0.0), (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
             (r"\boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{1}", r"\frac{", None)]

    def score_all():
        return [accuracy_reward(completion, answer=gold) for completion, gold, _ in cases]

    scores, _ = timed_in_thread(score_all, warm_up=False)
    assert scores == [expected for _, _, expected in cases]
