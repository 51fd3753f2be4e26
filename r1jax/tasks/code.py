"""What the code tasks share: function problems in HumanEval's form, and split slicing.

An example of a function problem holds `code_prompt` (HumanEval's `prompt`: imports, the
signature and the docstring; `prompt` is the pipeline's name for the rendered prompt text),
`entry_point` (the function's name), `test` (a module defining `check(candidate)`) and
`canonical_solution` (a reference body). The accuracy reward is `code_function` (every assert
of `check(entry_point)` passes, sandboxed; `r1jax.rewards.code_reward`); a completion is the
function's body continuing the prompt, or a whole fenced program that defines the function.

Prompt styles, chosen by a task's `config` ("humaneval/complete:test" on the command line):
  instruct  (default) the prompt in a ```python block with a request for the whole function:
            for chat templates and the R1 text template, whose answers are fenced programs;
  complete  the prompt itself, for a base model to continue with the body under the `plain`
            template; the completion is cut at the first top-level line (Codex's stop
            sequences), as the HumanEval paper samples.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from r1jax.rewards.code_reward import extract_program
from r1jax.tasks.base import EvalDefaults, Task

INSTRUCT, COMPLETE = "instruct", "complete"
STYLES = (INSTRUCT, COMPLETE)
INSTRUCTION = ("Complete the following Python function. Give the whole function, with its imports, "
               "in a ```python code block.\n\n```python\n{prompt}```")
# Chen et al. (2021), section 2.3: a completion ends where the model starts a new top-level statement
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclasses.dataclass(frozen=True)
class FunctionTask(Task):
    """A task of function problems; subclasses load them."""

    accuracy_reward = "code_function"
    eval_defaults = EvalDefaults(max_new_tokens=1024)

    config: str = INSTRUCT  # the prompt style: instruct or complete (module doc)
    # the instruct style's request, "{prompt}" standing for the problem's prompt (its wording is a tuning knob)
    instruction: str = INSTRUCTION

    def __post_init__(self):
        if self.config not in STYLES:
            raise ValueError(f"{self.name}: no prompt style {self.config!r}; use one of {', '.join(STYLES)}")
        if self.instruction.count("{prompt}") != 1:
            raise ValueError(f"{self.name}: instruction={self.instruction[:60]!r}... must hold {{prompt}} once, "
                             "where the problem's signature and docstring go")

    def question(self, example) -> str:
        if self.config == COMPLETE:
            return example["code_prompt"]
        return self.instruction.replace("{prompt}", example["code_prompt"])

    def accuracy(self, completion: str, example) -> float | None:
        return super().accuracy(self.completion(completion), example)

    def completion(self, completion: str) -> str:
        """The completion as scored: a `complete`-style one cut at the first stop sequence."""
        if self.config != COMPLETE or extract_program(completion) is not None:
            return completion
        cuts = [i for i in (completion.find(stop) for stop in STOP_SEQUENCES) if i >= 0]
        return completion[:min(cuts)] if cuts else completion

    def answer(self, completion: str) -> str | None:
        """The program, whitespace-normalised by the vote: cons@k is the majority of identical programs."""
        program = extract_program(completion)
        program = self.completion(completion) if program is None else program
        return program.strip() or None


_SLICE = re.compile(r"^(?P<name>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def select_split(split: str, splits: Mapping[str, Sequence[dict]]) -> list[dict]:
    """The examples of `split` from `splits` by name, with TFDS's slicing: "test", "test[:20]",
    "train[10:]", "train[:10%]"."""
    match = _SLICE.match(split.replace(" ", ""))
    if match is None:
        raise ValueError(f"cannot read the split {split!r}; write e.g. test, test[:20] or train[:10%]")
    name = match["name"]
    if name not in splits:
        raise ValueError(f"no split {name!r}; the splits are {sorted(splits)}")
    examples = list(splits[name])

    def bound(text):
        if text is None:
            return None
        if text.endswith("%"):
            return round(len(examples) * int(text[:-1]) / 100)
        return int(text)

    return examples[bound(match["start"]):bound(match["stop"])]
