"""HumanEval from the wheel's data file: the problems, and their canonical solutions scored by the task."""
import gzip
import json

import pytest

from r1jax.rewards import sandbox_capabilities
from r1jax.tasks import get_task, parse_task_specs
from r1jax.tasks.humaneval import wheel_data_file

needs_sandbox = pytest.mark.skipif(not sandbox_capabilities().isolated,
                                   reason="sandboxed runs need root (namespaces and a user switch)")


def test_the_wheels_164_problems_load_by_split():
    task = get_task("humaneval")
    problems = task.load("test")
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[0]["entry_point"] == "has_close_elements"
    assert set(problems[0]) == {"task_id", "code_prompt", "entry_point", "test", "canonical_solution"}
    assert [p["task_id"] for p in task.load("test[160:]")] == [f"HumanEval/{i}" for i in range(160, 164)]
    with pytest.raises(ValueError, match=r"no split 'train'; the splits are \['test'\]"):
        task.load("train")
    spec, = parse_task_specs("humaneval/complete:test[:5]")
    assert spec.task == get_task("humaneval", config="complete") and len(spec.task.load(spec.split)) == 5


def test_a_data_file_of_the_same_form_is_read(tmp_path):
    with gzip.open(wheel_data_file(), "rt") as file:
        first = json.loads(file.readline())
    (tmp_path / "mine.jsonl").write_text(json.dumps(first) + "\n")
    assert get_task("humaneval", data_file=str(tmp_path / "mine.jsonl")).load("test") == [
        {k.replace("prompt", "code_prompt"): first[k] for k in ("task_id", "prompt", "entry_point", "test",
                                                                "canonical_solution")}]
    del first["test"]
    (tmp_path / "broken.jsonl").write_text(json.dumps(first) + "\n")
    with pytest.raises(ValueError, match="problem HumanEval/0 has no test"):
        get_task("humaneval", data_file=str(tmp_path / "broken.jsonl")).load("test")


@needs_sandbox
def test_canonical_bodies_and_fenced_programs_pass_and_wrong_ones_fail():
    task = get_task("humaneval")
    for problem in task.load("test[:4]"):
        body = problem["canonical_solution"]
        assert task.accuracy(body, problem) == 1.0, problem["task_id"]
        chat = f"<think>easy</think> <answer>\n```python\n{problem['code_prompt']}{body}```\n</answer>"
        assert task.accuracy(chat, problem) == 1.0, problem["task_id"]
        assert task.accuracy("    return None\n", problem) == 0.0, problem["task_id"]
