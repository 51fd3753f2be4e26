"""MBPP from a local JSONL: the paper's task-id split, a directory of split files, the sanitized form."""
import json

import pytest

from r1jax.rewards import sandbox_capabilities
from r1jax.tasks import get_task

needs_sandbox = pytest.mark.skipif(not sandbox_capabilities().isolated,
                                   reason="sandboxed runs need root (namespaces and a user switch)")

# rows in the original mbpp.jsonl's form (task 2 is in the "prompt" split, 11 and 12 in "test")
ROWS = [
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(a, b):\r\n  return tuple(set(a) & set(b))", "test_setup_code": "",
     "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"],
     "challenge_test_list": []},
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": "def remove_Occ(s, ch):\r\n    s = s.replace(ch, '', 1)\r\n    i = s.rfind(ch)\r\n"
             "    return s if i < 0 else s[:i] + s[i + 1:]", "test_setup_code": "",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                   'assert remove_Occ("PHP","P") == "H"'], "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to compute a circle's area.",
     "code": "import math\ndef area(r):\n    return math.pi * r * r", "test_setup_code": "import math",
     "test_list": ["assert math.isclose(area(1), 3.14159, rel_tol=0.001)"], "challenge_test_list": []},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_original_file_splits_by_task_id(tmp_path):
    task = get_task("mbpp", path=str(write_jsonl(tmp_path / "mbpp.jsonl", ROWS)))
    test = task.load("test")
    assert [p["task_id"] for p in test] == ["MBPP/11", "MBPP/12"]
    assert [p["entry_point"] for p in test] == ["remove_Occ", "area"]
    assert [p["task_id"] for p in task.load("prompt")] == ["MBPP/2"]
    assert task.load("prompt")[0]["entry_point"] == "similar_elements"
    assert test[1]["code_prompt"] == "import math\n"
    assert test[0]["test"] == ("def check(candidate):\n" + "".join(f"    {t}\n" for t in ROWS[1]["test_list"]))
    assert task.question(test[0]) == (
        "Write a python function to remove first and last occurrence of a given character. Your code should pass "
        'these tests:\n\nassert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n\nGive the program in a ```python code block.')
    # the evaluation CLI's --manual_dir reaches the task as the load's manual_dir
    assert get_task("mbpp").load("test[:1]", manual_dir=tmp_path / "mbpp.jsonl") == test[:1]


def test_a_directory_of_sanitized_split_files(tmp_path):
    sanitized = {"task_id": 11, "prompt": "Remove the first and last occurrence of a character.",
                 "code": ROWS[1]["code"], "test_imports": [], "test_list": ROWS[1]["test_list"]}
    write_jsonl(tmp_path / "test.jsonl", [sanitized])
    task = get_task("mbpp", path=str(tmp_path))
    problem, = task.load("test")
    assert problem["text"] == sanitized["prompt"] and problem["entry_point"] == "remove_Occ"
    with pytest.raises(ValueError, match=r"no split 'train' in .*; the splits are \['test'\]"):
        task.load("train")


def test_missing_data_and_malformed_rows_are_named(tmp_path):
    with pytest.raises(ValueError, match="mbpp reads a local copy.*--manual_dir"):
        get_task("mbpp").load("test")
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(ROWS[1], test_list=["assert True"])])
    with pytest.raises(ValueError, match="cannot tell which function the test 'assert True' calls"):
        get_task("mbpp", path=str(bad)).load("test")


@needs_sandbox
def test_reference_programs_pass_and_a_wrong_one_fails(tmp_path):
    task = get_task("mbpp", path=str(write_jsonl(tmp_path / "mbpp.jsonl", ROWS)))
    for problem in task.load("test") + task.load("prompt"):
        assert task.accuracy(f"```python\n{problem['canonical_solution']}\n```", problem) == 1.0, problem["task_id"]
        assert task.accuracy(problem["canonical_solution"], problem) == 1.0, problem["task_id"]  # unfenced
    remove = task.load("test")[0]
    assert task.accuracy("```python\ndef remove_Occ(s, ch):\n    return s[1:-1]\n```", remove) == 0.0
