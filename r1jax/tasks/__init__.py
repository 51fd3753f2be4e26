"""Tasks by name: one file per dataset (see `base`). Importing this package registers them all.

    from r1jax.tasks import get_task
    task = get_task("gsm8k")
"""
from r1jax.data.kinds import is_general
from r1jax.tasks.base import (EvalDefaults, Task, TaskSpec, get_task, list_tasks, parse_task_specs, register_task,
                              task_from_config)
from r1jax.tasks import arithmetic, countdown, general, gsm8k, math  # noqa: F401, E402  (registers them)
from r1jax.tasks import humaneval, mbpp, python_functions  # noqa: F401, E402  (the code tasks)
from r1jax.tasks.general import GeneralTask


def question_of(example, task: Task) -> str:
    """The question of a reasoning example of `task`, or of a general prompt (`kind == "general"`)."""
    return GeneralTask().question(example) if is_general(example) else task.question(example)


__all__ = ["EvalDefaults", "GeneralTask", "Task", "TaskSpec", "get_task", "list_tasks", "parse_task_specs",
           "question_of", "register_task", "task_from_config"]
