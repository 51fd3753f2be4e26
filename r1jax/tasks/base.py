"""What a task is, and the registry that finds one by name.

A task is everything the generic code needs to know about one dataset: how to load a
split, the question text of an example, which registered reward decides whether a
completion is correct (and how its final answer is read, for the majority vote), and
how the task is evaluated by default. GRPO, evaluation, cold start, rejection sampling
and the recipes take a `Task` and never name a dataset; adding one is one file in this
package that subclasses `Task` and decorates it with `@register_task("name")`.

    task = get_task("arithmetic", num_operations=1, max_value=9)
    train = task.load("train", data_dir="runs/data")
    task.question(train[0])             # "Compute the value of 3 * 7. ..."
    task.accuracy(completion, train[0])  # 1.0, 0.0, or None (cannot be judged)
    parse_task_specs("gsm8k:test,arithmetic/ops1_max6_n78:test[:100]")  # the evaluation CLI's --tasks
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Sequence

from r1jax.rewards import extract_final_answer, get_reward

Example = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class EvalDefaults:
    """How a task is evaluated unless told otherwise (the paper: k samples at T=0.6, top-p 0.95); the
    evaluation CLI takes its completion budget from here."""

    num_samples: int = 8
    max_new_tokens: int = 512
    temperature: float = 0.6
    top_p: float = 0.95
    split: str = "test"


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with a rule-checkable answer. Subclasses add their options as fields.

    Class attributes a task file sets:
      accuracy_reward: the registered reward (`r1jax.rewards`) that scores correctness.
      eval_defaults: `EvalDefaults` of the task.
    """

    name: ClassVar[str] = ""
    accuracy_reward: ClassVar[str] = "accuracy"
    eval_defaults: ClassVar[EvalDefaults] = EvalDefaults()

    def load(self, split: str, *, data_dir=None, manual_dir=None) -> Sequence[dict]:
        """The examples of `split` (TFDS slicing allowed: "train[:100]"), as dicts of plain values."""
        raise NotImplementedError

    def question(self, example: Example) -> str:
        """The question text of one example, put into the prompt template."""
        raise NotImplementedError

    def accuracy(self, completion: str, example: Example) -> float | None:
        """1.0 for a correct completion, 0.0 for a wrong one, None if it cannot be judged."""
        return get_reward(self.accuracy_reward)(completion, **example)

    def answer(self, completion: str) -> str | None:
        """The final answer a completion gives (the key of cons@k's majority vote)."""
        return extract_final_answer(completion)


_TASKS: dict[str, type[Task]] = {}


def check_positive(task: Task, *fields: str) -> None:
    """Each of a task's size `fields` is a whole number >= 1 (a dataset of 0 problems, or problems whose
    numbers are all 0, cannot be generated)."""
    for name in fields:
        value = getattr(task, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: use a whole number >= 1")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a `Task` subclass under `name` (its `name` attribute is set)."""

    def decorator(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) decorates a Task subclass, got {cls!r}")
        if name in _TASKS and _TASKS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"task name {name!r} is already registered to {_TASKS[name].__qualname__}")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str | Task, **options) -> Task:
    """The registered task `name` with `options` (its fields); a `Task` is returned as it is."""
    if isinstance(name, Task):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Task instance; set them on the instance")
        return name
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}. "
                         "Add one with @register_task in a file of r1jax/tasks/.")
    cls = _TASKS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options are "
                         f"{sorted(known) or 'none'}")
    return cls(**options)


def task_from_config(section: Mapping[str, Any]) -> Task:
    """The task a config section describes: {"name": ..., **options}."""
    options = dict(section)
    if "name" not in options:
        raise ValueError(f"the task section {options} has no 'name'; registered tasks: {', '.join(list_tasks())}")
    return get_task(options.pop("name"), **options)


class TaskSpec(NamedTuple):
    """A registered task and a split of it, as an entry "<task>[/<config>]:<split>" names them."""

    task: Task
    split: str  # TFDS slicing allowed: "test[:100]"
    label: str  # the entry, e.g. "arithmetic/ops1_max6_n78:test": its row in a report


def parse_task_specs(entries: str | Sequence[str]) -> list[TaskSpec]:
    """"arithmetic:test,gsm8k:test[:50]" (or a list of such entries) -> the tasks and their splits.

    A task with a `config` option may name one after a slash: "arithmetic/ops1_max6_n78:test"
    is `get_task("arithmetic", config="ops1_max6_n78")`, which reads the dataset a recipe
    generated under that name in the data dir.
    """
    entries = entries.split(",") if isinstance(entries, str) else list(entries)
    specs = []
    for entry in (e.strip() for e in entries):
        name_and_config, _, split = entry.partition(":")
        name, _, config = name_and_config.partition("/")
        if name not in _TASKS:
            raise ValueError(f"unknown task {name!r} in {entry!r}; known tasks: {', '.join(list_tasks())}")
        if config and "config" not in {f.name for f in dataclasses.fields(_TASKS[name])}:
            raise ValueError(f"task {name!r} takes no builder config, got {entry!r}")
        if not split:
            raise ValueError(f"task {entry!r} names no split; write <task>:<split>, e.g. {name}:test")
        task = get_task(name, config=config) if config else get_task(name)
        specs.append(TaskSpec(task, split, f"{name}{'/' + config if config else ''}:{split}"))
    if not specs:
        raise ValueError("no task to evaluate; pass e.g. gsm8k:test")
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a task is listed twice in {labels}")
    return specs
