"""The evaluation stages: held-out scores of checkpoints, and a judge's scores of their samples.

Both cache each model's result as JSON in their output folder (`cached`): a rerun reads it
instead of sampling again.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax.distributed import barrier, is_primary
from r1jax.evaluation.evaluate import evaluate_policy
from r1jax.files import write_json_atomically
from r1jax.models import from_pretrained
from r1jax.pipelines.settings import EvalSettings
from r1jax.pipelines.stages.export import split
from r1jax.rewards import get_reward
from r1jax.rollout import PromptRenderer, rollout
from r1jax.sharding import reshard
from r1jax.tasks import Task


def cached(path: pathlib.Path, compute: Callable[[], dict], *, needs: Sequence[str] = ()) -> dict:
    """`compute()`'s result, stored as JSON at `path` the first time (evaluations are slow).

    A stored result without every key in `needs` (written by an older version) is computed
    again and replaced: it is derived data, and the checkpoint it came from is still there.
    """
    if path.exists():
        stored = json.loads(path.read_text())
        if all(key in stored for key in needs):
            return stored
    value = compute()  # every process computes it (a collective); process 0 writes it
    if is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, value, indent=2)
    barrier(f"cached {path}")
    return value


def evaluate_model(graphdef, params, renderer: PromptRenderer, examples: Sequence[dict], *, task: Task,
                   settings: EvalSettings, max_new_tokens: int, mesh: Mesh, seed: int, per_prompt: bool = False,
                   sampler_mesh: Mesh | None = None) -> dict:
    """Held-out pass@1 over `settings.num_samples` samples, cons@k, length and the mean of each of
    `settings.scores` (result key -> registered reward name), with standard errors (and the
    per-prompt values, for paired comparisons: `r1jax.evaluation.evaluate.evaluate_policy`).

    `sampler_mesh`: sample there, the parameters resharded onto it (None: `mesh`).
    """
    if sampler_mesh is not None and sampler_mesh is not mesh:
        params, mesh = reshard(params, sampler_mesh), sampler_mesh
    return evaluate_policy(
        graphdef, params, renderer, examples, task=task,
        scores={key: get_reward(name) for key, name in dict(settings.scores).items()},
        rng=jax.random.key(seed), num_samples=settings.num_samples, max_prompt_length=settings.max_prompt_length,
        max_new_tokens=settings.max_new_tokens or max_new_tokens, temperature=settings.temperature,
        top_p=settings.top_p, mesh=mesh, per_prompt=per_prompt, problems=settings.keep_problems)


def evaluation_stage(output: pathlib.Path, *model_dirs: pathlib.Path, names: Sequence[str],
                     model_overrides: Mapping | None = None, **settings) -> dict[str, dict]:
    """`evaluate_model` of each checkpoint in `model_dirs`, by name; cached as `output/<name>.json`.

    A None in `model_dirs` is a model the run did not make: left out. `settings`: the keywords
    of `evaluate_model` (renderer, examples, task, settings, ...).
    """
    if len(names) != len(model_dirs):
        raise ValueError(f"{len(model_dirs)} models to evaluate but {len(names)} names ({list(names)})")
    mesh = settings["mesh"]
    renderer, examples = settings.pop("renderer"), settings.pop("examples")
    needs = (("per_prompt",) if settings.get("per_prompt") else ()) + (
        ("problems",) if settings["settings"].keep_problems else ())

    def evaluate(model_dir):
        graphdef, params = split(from_pretrained(model_dir, mesh=mesh, **dict(model_overrides or {})))
        return evaluate_model(graphdef, params, renderer, examples, **settings)

    return {name: cached(output / f"{name}.json", lambda model_dir=model_dir: evaluate(model_dir), needs=needs)
            for name, model_dir in zip(names, model_dirs) if model_dir is not None}


def judge_score(model_dir: pathlib.Path, judge, examples: Sequence[dict], renderer: PromptRenderer, *,
                num_samples: int, max_new_tokens: int, temperature: float, top_p: float, mesh: Mesh,
                seed: int) -> float:
    """Mean judge reward of a policy's `num_samples` samples per prompt on held-out general prompts."""
    graphdef, params = split(from_pretrained(model_dir, mesh=mesh))
    texts = [renderer(ex["question"]) for ex in examples]
    k = num_samples
    out = rollout(graphdef, params, renderer.tokenizer, renderer.encode_all(texts), jax.random.key(seed),
                  repeat=k, max_prompt_length=256, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, mesh=mesh)
    grouped = [ex for ex in examples for _ in range(k)]
    return float(np.mean(judge([texts[i // k] for i in range(len(grouped))], out.completions, grouped)))


def judging_stage(output: pathlib.Path, judge, *model_dirs: pathlib.Path, names: Sequence[str],
                  **settings) -> dict[str, float]:
    """`judge_score` of each checkpoint in `model_dirs`, by name; cached as `output/<name>_general.json`.

    `settings`: the keywords of `judge_score` (examples, renderer, num_samples, ...).
    """
    return {name: cached(output / f"{name}_general.json", lambda model_dir=model_dir: {
        "judge_score": judge_score(model_dir, judge, **settings)})["judge_score"]
        for name, model_dir in zip(names, model_dirs)}
