"""Evaluate a checkpoint on reasoning tasks as DeepSeek-R1 reports it.

    report = evaluate_model("runs/r1/model", ["countdown:test", "gsm8k:test"], data_dir="/data/tfds",
                            num_samples=8, max_new_tokens=512, problems_file="runs/r1/eval/problems.jsonl")
    write_report(report, "runs/r1/eval")      # report.json and report.md

Each prompt gets `num_samples` completions sampled at the paper's temperature 0.6 and
top-p 0.95; every completion is scored by its task's rule-based accuracy reward. The
report has, per task and for all tasks together (weighted by prompts): pass@1 averaged
over the k samples, cons@k (majority vote over the extracted answers), the unbiased
pass@k for every power of two k <= num_samples (or the `ks` asked for), and the mean response
length in tokens. Greedy decoding is temperature 0 with one sample per prompt. `problems_file`
also gets one JSON line per problem (`problem_rows`): its completions, their verdicts and its
own pass@k, for inspection.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.evaluation.pass_at_k import (EVAL_TEMPERATURE, EVAL_TOP_P, evaluation_report, majority_votes,
                              mean_response_length, pass_at_k, report_markdown, standard_error)
from r1jax.evaluation.reflection import reflection_flags, reflection_metrics
from r1jax.models import from_pretrained
from r1jax.rollout import PromptRenderer, check_template, rollout
from r1jax.distributed import allgather_objects, is_primary, process_share
from r1jax.sharding import make_mesh, num_batch_shards
from r1jax.tokenizers import Tokenizer, load_tokenizer
from r1jax.tasks import Task, parse_task_specs

log = logging.getLogger(__name__)
PathLike = str | os.PathLike

PROBLEMS_FILE = "problems.jsonl"  # per-problem results, beside the report
REPORT_FILES = ("report.json", "report.md", PROBLEMS_FILE)


class TaskSamples(NamedTuple):
    """Per-sample results of one task, [num_prompts, num_samples] each."""

    correct: np.ndarray  # bool
    answers: list[list[str | None]]  # the extracted final answers, for the majority vote
    lengths: np.ndarray  # completion tokens
    # name -> per prompt, the values of `scores` functions that judged its samples (None: not judged)
    scores: dict[str, list[list[float]]] = {}
    completions: list[list[str]] = []  # the decoded completions, for per-problem results


def sample_task(graphdef: nnx.GraphDef, params: nnx.State, renderer: PromptRenderer, examples: Sequence[dict], *,
                task: Task, num_samples: int, max_prompt_length: int, max_new_tokens: int,
                temperature: float, top_p: float, rng, mesh: Mesh, batch_prompts: int = 64,
                correct_fn: Callable[..., float | None] | None = None,
                scores: Mapping[str, Callable[..., float | None]] | None = None) -> TaskSamples:
    """Sample and score `num_samples` completions of every example, `batch_prompts` prompts at a time.

    renderer: the prompt template (and tokenizer) of the policy. correct_fn: the accuracy
      reward (default: the task's); a sample it cannot judge (None) counts as wrong.
      scores: further rewards to average, by name.
    """
    correct_fn = correct_fn or (lambda completion, **example: task.accuracy(completion, example))
    tokenizer = renderer.tokenizer
    scores = dict(scores or {})
    # rows must split evenly over the processes and the data-parallel devices: fill a short chunk with repeats
    shards = num_batch_shards(mesh)
    prompts_multiple = int(np.lcm(shards // np.gcd(shards, num_samples), jax.process_count()))
    parts = []
    for start in range(0, len(examples), batch_prompts):
        chunk = list(examples[start:start + batch_prompts])
        padded = chunk + chunk[:1] * (-len(chunk) % prompts_multiple)
        share = process_share(len(padded))  # this process samples and scores its part of the chunk
        mine = padded[share]
        out = rollout(graphdef, params, tokenizer, renderer.encode_all(renderer.texts(mine, task)),
                      jax.random.fold_in(rng, start), repeat=num_samples,
                      max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, mesh=mesh)
        kept = max(0, min(len(chunk) - share.start, len(mine)))  # the fillers are not scored
        parts.append(_score(mine[:kept], out.completions, out.lengths, num_samples, task, correct_fn, scores))
    # every process's results, in example order
    gathered = allgather_objects(parts)
    scored = [by_process[c] for c in range(len(parts)) for by_process in gathered]
    return TaskSamples(np.asarray([c for p in scored for c in p.correct], bool).reshape(-1, num_samples),
                       [a for p in scored for a in p.answers],
                       np.asarray([n for p in scored for n in p.lengths]).reshape(-1, num_samples),
                       {name: [v for p in scored for v in p.scores[name]] for name in scores},
                       [c for p in scored for c in p.completions])


def _score(examples: Sequence[dict], completions: Sequence[str], lengths: np.ndarray, num_samples: int,
           task: Task, correct_fn, scores: Mapping[str, Callable]) -> TaskSamples:
    """The `TaskSamples` of `examples`, whose `num_samples` completions each come first in `completions`."""
    correct, answers, kept_lengths, kept_completions = [], [], [], []
    scored: dict[str, list[list[float]]] = {name: [] for name in scores}
    for i, example in enumerate(examples):
        own = list(completions[i * num_samples:(i + 1) * num_samples])
        kept_completions.append(own)
        correct.append([bool(correct_fn(c, **example)) for c in own])
        answers.append([task.answer(c) for c in own])
        kept_lengths.append(lengths[i * num_samples:(i + 1) * num_samples])
        for name, score_fn in scores.items():
            scored[name].append([v for v in (score_fn(c, **example) for c in own) if v is not None])
    return TaskSamples(np.asarray(correct, bool).reshape(-1, num_samples), answers,
                       np.asarray(kept_lengths).reshape(-1, num_samples), scored, kept_completions)


def evaluate_policy(graphdef: nnx.GraphDef, params: nnx.State, renderer: PromptRenderer,
                    examples: Sequence[dict], *, task: Task, rng, num_samples: int, max_prompt_length: int,
                    max_new_tokens: int, temperature: float = EVAL_TEMPERATURE, top_p: float = EVAL_TOP_P,
                    mesh: Mesh, correct_fn: Callable[..., float | None] | None = None,
                    scores: Mapping[str, Callable[..., float | None]] | None = None,
                    batch_prompts: int = 64, per_prompt: bool = False, problems: bool = False) -> dict:
    """pass@1 averaged over `num_samples` samples per prompt, cons@k, length, the reflection rate and the
    accuracy of samples that reflect and that do not (`r1jax.evaluation.reflection`), and the mean of each of
    `scores` (e.g. {"format_reward": get_reward("format")}) over the samples it judges; each with
    its standard error over prompts (`<key>_se`, `r1jax.evaluation.standard_error`).

    per_prompt: also return the per-prompt values, `{"per_prompt": {key: [num_prompts]}}` (NaN
    where a score judged none of a prompt's samples), for paired comparisons of two models
    on the same prompts (`r1jax.evaluation.compare`). problems: also return `{"problems": [...]}`, one row
    per example with its completions and their verdicts (`problem_rows`), for inspection.

    Rewards are scored inline (no worker pool): evaluation is rare and its completions are
    short, and keeping it synchronous makes its numbers independent of timeouts.
    """
    samples = sample_task(graphdef, params, renderer, examples, task=task, num_samples=num_samples,
                          max_prompt_length=max_prompt_length,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, rng=rng,
                          mesh=mesh, batch_prompts=batch_prompts, correct_fn=correct_fn, scores=scores)
    cons = f"cons_at_{num_samples}"
    values = {"pass_at_1": samples.correct.mean(axis=1),
              cons: majority_votes(samples.answers, samples.correct).astype(np.float64)}
    result = {"pass_at_1": float(values["pass_at_1"].mean()), cons: float(values[cons].mean()),
              "response_length": mean_response_length(samples.lengths)}
    # how often the samples re-check a step, and the accuracy of those that do and do not (`reflection`)
    flags = np.asarray([reflection_flags(prompt) for prompt in samples.completions], bool)
    values["reflection_rate"] = flags.mean(axis=1)
    result.update(reflection_metrics(flags, samples.correct))
    for name, judged in samples.scores.items():
        every = [v for prompt in judged for v in prompt]
        result[name] = float(np.mean(every)) if every else float("nan")
        values[name] = np.array([np.mean(prompt) if prompt else np.nan for prompt in judged])
    result.update({f"{key}_se": standard_error(per) for key, per in values.items()})
    if per_prompt:
        result["per_prompt"] = {key: [float(v) for v in per] for key, per in values.items()}
    if problems:
        result["problems"] = problem_rows(task.name, examples, samples, [1])
    return result


def pass_at_k_values(num_samples: int) -> list[int]:
    """The k of the reported pass@k: the powers of two up to `num_samples`."""
    return [2 ** i for i in range(int(np.log2(num_samples)) + 1)]


def build_report(samples: Mapping[str, TaskSamples], ks: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """`evaluation_report` of per-sample results by task label, with pass@k for `ks` (default: the powers of
    two up to the number of samples)."""
    num_samples = {s.correct.shape[1] for s in samples.values()}
    if len(num_samples) != 1:
        raise ValueError(f"every task needs the same number of samples per prompt, got {sorted(num_samples)}")
    per_task = {label: {"correct": s.correct, "answers": s.answers, "lengths": s.lengths}
                for label, s in samples.items()}
    return evaluation_report(per_task, ks=ks or pass_at_k_values(num_samples.pop()))


def problem_rows(label: str, examples: Sequence[dict], samples: TaskSamples,
                 ks: Sequence[int] | None = None) -> list[dict]:
    """One row per problem of a task: its label, index and id, its completions with their verdicts and
    lengths, and its own pass@k (`ks`, default: the powers of two up to the number of samples)."""
    num_samples = samples.correct.shape[1]
    ks = [k for k in (ks or pass_at_k_values(num_samples)) if k <= num_samples]
    rows = []
    for index, example in enumerate(examples):
        correct = samples.correct[index]
        row = {"task": label, "index": index, "id": example.get("task_id", example.get("id")),
               "num_samples": num_samples, "num_correct": int(correct.sum())}
        row.update({f"pass@{k}": float(pass_at_k(num_samples, int(correct.sum()), k)) for k in ks})
        row["samples"] = [{"completion": completion, "correct": bool(right), "length": int(length)}
                          for completion, right, length in zip(samples.completions[index], correct,
                                                               samples.lengths[index])]
        rows.append(row)
    return rows


def evaluate_model(model: PathLike, tasks: str | Sequence[str], *, tokenizer: Tokenizer | PathLike | None = None,
                   data_dir: PathLike | None = None, manual_dir: PathLike | None = None, num_samples: int = 8,
                   max_new_tokens: int | None = None, max_prompt_length: int = 512,
                   temperature: float = EVAL_TEMPERATURE, top_p: float = EVAL_TOP_P, template: str = "r1_zero",
                   system_prompt: str | None = None, max_prompts: int | None = None, seed: int = 0,
                   mesh: Mesh | None = None, batch_prompts: int = 64, ks: Sequence[int] | None = None,
                   problems_file: PathLike | None = None) -> dict[str, dict[str, float]]:
    """The evaluation report of the model at `model` (an HF directory or a .gguf file) on `tasks`.

    tasks: "<task>[/<config>]:<split>" entries naming registered tasks (`r1jax.tasks.parse_task_specs`);
        a str is split at commas. Their data comes from the tasks alone (`Task.load`).
    max_new_tokens: the completion budget; None: each task's own (`Task.eval_defaults`).
    tokenizer: a tokenizer, a path for `load_tokenizer`, or None for the one beside the
        model (tokenizer.json / tokenizer.model in its directory, or the GGUF's own).
    data_dir: the TFDS data folder (None: TFDS's default); manual_dir: a local MATH copy.
    template, system_prompt: a text template (r1_zero, plain), a named chat template (r1_chat,
        plain_chat), or "chat" (the tokenizer's own, with `system_prompt` if given).
    max_prompts: evaluate only the first `max_prompts` examples of each split.
    temperature: 0 decodes greedily (then one sample per prompt is enough).
    ks: the k of the reported pass@k (default: the powers of two up to num_samples).
    problems_file: also write one JSON line per problem there (`problem_rows`).
    Returns `evaluation_report`'s dict: one row per task label ("gsm8k:test") and "overall".
    """
    specs = parse_task_specs(tasks)
    check_template(template, system_prompt)
    if ks is not None and not all(1 <= k <= num_samples for k in ks):
        raise ValueError(f"pass@k needs 1 <= k <= num_samples={num_samples} samples per prompt, got ks={list(ks)}")
    if num_samples < 1 or (max_new_tokens is not None and max_new_tokens < 1) or batch_prompts < 1 or (
            max_prompts is not None and max_prompts < 1):
        raise ValueError(f"need num_samples, max_new_tokens, batch_prompts and max_prompts >= 1, got "
                         f"{num_samples}, {max_new_tokens}, {batch_prompts}, {max_prompts}")
    if not pathlib.Path(model).exists():
        raise FileNotFoundError(f"no model at {model}: pass a Hugging Face model directory or a .gguf file")
    tokenizer = _tokenizer(model, tokenizer)
    datasets = {}
    for spec in specs:  # every split is read before the first sample: a missing one fails early
        examples = spec.task.load(spec.split, data_dir=data_dir, manual_dir=manual_dir)
        datasets[spec] = examples[:max_prompts] if max_prompts else examples[:]
    mesh = make_mesh({"data": -1}) if mesh is None else mesh
    loaded = from_pretrained(model, mesh=mesh)
    if tokenizer.vocab_size > loaded.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{loaded.config.vocab_size}: they do not belong together; pass the model's tokenizer")
    graphdef, params = nnx.split(loaded, nnx.Param)
    renderer = PromptRenderer(tokenizer, template, system_prompt)
    rng = jax.random.key(seed)
    samples = {}
    for index, (spec, examples) in enumerate(datasets.items()):
        log.info("%s: %d prompts x %d samples", spec.label, len(examples), num_samples)
        samples[spec.label] = sample_task(
            graphdef, params, renderer, examples, task=spec.task, num_samples=num_samples,
            max_prompt_length=max_prompt_length, temperature=temperature,
            max_new_tokens=max_new_tokens or spec.task.eval_defaults.max_new_tokens,
            top_p=top_p, rng=jax.random.fold_in(rng, index), mesh=mesh, batch_prompts=batch_prompts)
    if problems_file is not None and is_primary():  # every process holds every sample
        rows = [row for spec, examples in datasets.items()
                for row in problem_rows(spec.label, examples, samples[spec.label], ks)]
        write_jsonl(rows, problems_file)
    return build_report(samples, ks)


def _tokenizer(model: PathLike, tokenizer: Tokenizer | PathLike | None) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    try:
        return load_tokenizer(model)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"found no tokenizer with the model ({error}); pass its path with tokenizer=... "
                         "(--tokenizer)") from error


def check_out_dir(out_dir: PathLike, *, overwrite: bool = False, files: Sequence[str] = REPORT_FILES) -> None:
    """Refuse, before any work, to overwrite an earlier report (its `files`) unless asked to."""
    existing = [name for name in files if (pathlib.Path(out_dir) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {', '.join(existing)}; choose another output "
                              "directory or pass overwrite=True (--overwrite)")


def write_report(report: Mapping[str, Mapping[str, float]], out_dir: PathLike, *,
                 settings: Mapping | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write report.json ({"settings", "results"}) and report.md (a table) into `out_dir`."""
    check_out_dir(out_dir, overwrite=overwrite, files=("report.json", "report.md"))
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"settings": dict(settings or {}), "results": report}
    (out_dir / "report.json").write_text(json.dumps(document, indent=2, default=_plain) + "\n")
    (out_dir / "report.md").write_text(report_markdown(report) + "\n")
    return out_dir


def write_jsonl(rows: Sequence[Mapping], path: PathLike) -> pathlib.Path:
    """`rows` as JSON lines at `path` (its directory made if needed)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, default=_plain) + "\n" for row in rows))
    return path


def _plain(value):
    """numpy scalars (e.g. prompt counts) as Python numbers for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
