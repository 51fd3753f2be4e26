"""The generated family of Python function problems: held-out functions, hidden tests, reference solutions."""
import random

import pytest

from r1jax.rewards import get_reward, sandbox_capabilities
from r1jax.tasks import get_task
from r1jax.tasks.python_functions import BEHAVIOURS, HELD_OUT, behaviours, make_problem

needs_sandbox = pytest.mark.skipif(not sandbox_capabilities().isolated,
                                   reason="sandboxed runs need root (namespaces and a user switch)")


def run(problem, body):
    """Runs a body against the problem's check in this process (our own reference code only)."""
    namespace = {}
    exec(problem["code_prompt"] + body + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})",  # noqa: S102
         namespace)


def test_held_out_problems_are_new_functions():
    task = get_task("python_functions", train_size=400, test_size=40)
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (400, 40)
    train_keys, test_keys = {p["behaviour"] for p in train}, {p["behaviour"] for p in test}
    assert test_keys == set(HELD_OUT) and not train_keys & test_keys
    assert len(train_keys) == len(BEHAVIOURS) - len(HELD_OUT) >= 30  # every training behaviour is used
    assert not {p["entry_point"] for p in train} & {p["entry_point"] for p in test}
    assert task.load("train[:5]") == train[:5] and task.load("train") == train  # deterministic
    assert get_task("python_functions", train_size=400, seed=1).load("train") != train
    with pytest.raises(ValueError, match="no split 'validation'"):
        task.load("validation")
    with pytest.raises(ValueError, match="num_tests=0"):
        get_task("python_functions", num_tests=0)


def test_a_problem_by_hand():
    rotate = next(b for b in BEHAVIOURS if b.key == "rotate_left")
    problem = make_problem(rotate, random.Random(3), num_tests=4, task_id="x")
    k = int(problem["canonical_solution"].split("k = ")[1].split(" %")[0])
    assert f"rotated left by {k} positions" in problem["code_prompt"]
    assert problem["code_prompt"].startswith(f"def {problem['entry_point']}(items: list[int]) -> list[int]:\n")
    assert problem["code_prompt"].count(">>> ") == 2 and problem["test"].count("assert candidate(") == 4
    for line in problem["test"].splitlines()[1:]:  # the hidden values are the rotation's
        items, expected = eval(line.split("candidate(")[1].split(") == ")[0]), eval(line.split(" == ")[1])  # noqa: S307
        assert expected == (items[k % len(items):] + items[:k % len(items)] if items else [])


def test_every_reference_passes_its_hidden_tests_and_a_wrong_body_does_not():
    for behaviour in BEHAVIOURS:
        for seed in range(3):
            problem = make_problem(behaviour, random.Random(seed), num_tests=8, task_id="x")
            run(problem, problem["canonical_solution"])
            assert problem["test"].count("assert candidate(") >= 4, behaviour.key
            with pytest.raises(AssertionError):
                run(problem, "    return 'wrong'\n")


@needs_sandbox
def test_the_task_scores_through_the_sandbox():
    task = get_task("python_functions", train_size=4, test_size=4)
    fraction = get_reward("code_function_fraction")
    for problem in task.load("test"):
        assert task.accuracy(problem["canonical_solution"], problem) == 1.0, problem["task_id"]
        assert task.accuracy("    return None\n", problem) == 0.0, problem["task_id"]
        assert fraction(problem["canonical_solution"], **problem) == 1.0
    assert [len(behaviours(split)) for split in ("train", "test")] == [len(BEHAVIOURS) - len(HELD_OUT), len(HELD_OUT)]
