"""MBPP (Austin et al. 2021): crowd-sourced Python problems, read from a local JSONL file.

`path` (or the evaluation CLI's --manual_dir) is either the original `mbpp.jsonl` (fields
`task_id`, `text`, `code`, `test_list`, `test_setup_code`), split by the paper's task-id
ranges (prompt 1-10, test 11-510, validation 511-600, train 601-974), or a directory of
`<split>.jsonl` files in that form or the sanitized one (`prompt` for `text`, `test_imports`).

The question is the problem's text and its tests, as the paper prompts; the function's name
is the one the tests call. The tests become `check(candidate)` around the asserts, so a
completion is scored as a function problem (`code_function`): a fenced program that defines
the function, or the bare program.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

from r1jax.tasks.base import register_task
from r1jax.tasks.code import FunctionTask, select_split

# the paper's split of the 974 problems, by task id
TASK_ID_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
                  "train": range(601, 975)}
QUESTION = "{text} Your code should pass these tests:\n\n{tests}\n\nGive the program in a ```python code block."
_CALLED = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\()?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(")


def problem(row: dict, source: str = "") -> dict:
    """A function problem (HumanEval's fields) from one MBPP row, original or sanitized."""
    text = row.get("text", row.get("prompt"))
    tests = list(row.get("test_list") or [])
    if text is None or not tests:
        raise ValueError(f"{source}: MBPP row {row.get('task_id', '?')} needs `text` (or `prompt`) and `test_list`")
    called = _CALLED.match(tests[0].strip())
    if called is None:
        raise ValueError(f"{source}: cannot tell which function the test {tests[0]!r} calls")
    setup = "\n".join(filter(None, [row.get("test_setup_code") or "", *(row.get("test_imports") or [])]))
    return {"task_id": f"MBPP/{row['task_id']}", "code_prompt": setup + "\n" if setup else "",
            "entry_point": called.group(1), "canonical_solution": row.get("code", ""),
            "test": "def check(candidate):\n" + "".join(f"    {t.strip()}\n" for t in tests),
            "text": text.strip(), "test_list": tests}


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


@register_task("mbpp")
@dataclasses.dataclass(frozen=True)
class MBPPTask(FunctionTask):
    path: str = ""  # mbpp.jsonl or a directory of <split>.jsonl; default: the load's manual_dir

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del data_dir
        path = self.path or (str(manual_dir) if manual_dir else "")
        if not path or not os.path.exists(path):
            raise ValueError(f"mbpp reads a local copy: give path=<mbpp.jsonl or a directory of <split>.jsonl> "
                             f"(--manual_dir on the command line); got {path!r}")
        name = split.partition("[")[0].strip()
        if os.path.isdir(path):
            file = os.path.join(path, f"{name}.jsonl")
            available = sorted(f[:-len(".jsonl")] for f in os.listdir(path) if f.endswith(".jsonl"))
            if not os.path.exists(file):
                raise ValueError(f"no split {name!r} in {path}; the splits are {available}")
            rows = {name: read_rows(file)}
        else:
            every = read_rows(path)
            rows = {split_name: [r for r in every if int(r["task_id"]) in ids]
                    for split_name, ids in TASK_ID_SPLITS.items()}
        return select_split(split, {key: [problem(r, path) for r in value] for key, value in rows.items()})

    def question(self, example) -> str:
        return QUESTION.replace("{text}", example["text"]).replace("{tests}", "\n".join(example["test_list"]))
