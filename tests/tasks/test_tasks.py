"""The task registry: every dataset in one file, and generic code that names none of them."""
import dataclasses
import re

import pytest

from r1jax.tasks import Task, get_task, list_tasks, question_of, register_task, task_from_config
from tests.support import ROOT


def test_the_registered_tasks():
    assert {"arithmetic", "countdown", "general", "gsm8k", "math"} <= set(list_tasks())


def test_questions_by_hand():
    arithmetic = get_task("arithmetic")
    assert arithmetic.question({"expression": "3 + 4 * (2 - 5)"}) == (
        "Compute the value of 3 + 4 * (2 - 5). Give the exact integer result as the final answer.")
    boxed = get_task("arithmetic", question_template="What is {expression}? Put the final answer in \\boxed{}.")
    assert boxed.question({"expression": "7 * 8"}) == "What is 7 * 8? Put the final answer in \\boxed{}."
    assert get_task("countdown").question({"numbers": [3, 5, 7], "target": 22}).startswith(
        "Using the numbers [3, 5, 7], create an equation that equals 22.")
    assert get_task("gsm8k").question({"question": "How many?"}) == "How many?"
    assert get_task("math").question({"question": "Find $x$."}) == "Find $x$."
    assert question_of({"kind": "general", "question": "Name a colour."}, arithmetic) == "Name a colour."


def test_accuracy_and_answer_agree_by_hand():
    task = get_task("arithmetic")
    example = {"expression": "7 * 8", "answer": "56"}
    # boxed, tagged, "the answer is", and a bare last line: each graded and voted on the same number
    for completion, number, correct in [("7 * 8 = \\boxed{56}", "56", 1.0), ("<answer> 54 </answer>", "54", 0.0),
                                        ("so the answer is 56.", "56", 1.0), ("7 * 8\n= 56", "56", 1.0),
                                        ("I do not know", None, 0.0)]:
        assert task.accuracy(completion, example) == correct, completion
        assert task.answer(completion) == number, completion
    countdown = get_task("countdown")
    assert countdown.accuracy("<answer> (7 - 3) * 5 + 2 </answer>", {"numbers": [3, 5, 7, 2], "target": 22}) == 1.0
    assert get_task("general").accuracy("anything", {"kind": "general"}) is None


def test_generated_tasks_load_by_their_options(tmp_path):
    task = task_from_config({"name": "arithmetic", "num_operations": 1, "max_value": 4, "train_size": 10,
                             "test_size": 5, "seed": 3})
    train, test = task.load("train", data_dir=tmp_path), task.load("test", data_dir=tmp_path)
    assert (len(train), len(test)) == (10, 5)
    assert not {ex["expression"] for ex in train} & {ex["expression"] for ex in test}
    assert all(str(eval(ex["expression"])) == ex["answer"] for ex in list(train) + list(test))  # noqa: S307


def test_bad_names_and_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'sudoku'.*arithmetic"):
        get_task("sudoku")
    with pytest.raises(ValueError, match="task 'arithmetic' has no option 'max_valu'"):
        get_task("arithmetic", max_valu=3)
    with pytest.raises(ValueError, match="has no 'name'"):
        task_from_config({"max_value": 3})
    with pytest.raises(ValueError, match="no '\\{expression\\}' slot"):
        get_task("arithmetic", question_template="What is it?")
    # a config name is a built-in one or one generated earlier in the data dir: checked when loading
    with pytest.raises(ValueError, match=r"no config 'huge'; its configs are \['3_numbers', '4_numbers'\]"):
        get_task("countdown", config="huge").load("train", data_dir=tmp_path)


def test_adding_a_task_is_one_class():
    @register_task("parity_test_only")
    @dataclasses.dataclass(frozen=True)
    class Parity(Task):
        accuracy_reward = "arithmetic"
        size: int = 4

        def load(self, split, *, data_dir=None, manual_dir=None):
            return [{"number": n, "answer": str(n % 2)} for n in range(self.size)]

        def question(self, example):
            return f"Is {example['number']} odd? Answer 1 or 0."

    task = get_task("parity_test_only", size=3)
    assert [task.question(ex) for ex in task.load("train")][-1] == "Is 2 odd? Answer 1 or 0."
    assert task.accuracy("\\boxed{1}", {"number": 3, "answer": "1"}) == 1.0


# Generic code: everything in r1jax/ except the task registry (r1jax/tasks/), the TFDS builders and
# rewards of the generated tasks, and the stand-in base of the tiny experiments (whose corpus is
# written for arithmetic).
TASK_OWNERS = {"r1jax/data/arithmetic.py",
               "r1jax/data/countdown.py", "r1jax/data/real.py", "r1jax/data/synthetic.py",
               "r1jax/rewards/countdown.py", "r1jax/rewards/__init__.py", "r1jax/data/__init__.py",
               "r1jax/data/base_corpus.py"}


def test_no_task_literal_in_generic_code():
    pattern = re.compile(r"""["'](arithmetic|countdown|gsm8k)["']|\barithmetic_|\bArithmetic""")
    offenders = []
    for path in sorted((ROOT / "r1jax").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in TASK_OWNERS or relative.startswith("r1jax/tasks/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "task literals in generic code:\n" + "\n".join(offenders)
