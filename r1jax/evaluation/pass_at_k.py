"""Evaluation metrics over k sampled completions per prompt, as reported in DeepSeek-R1.

Pure host functions on per-sample results the caller has already computed (correctness
from the reward functions, extracted answers, token lengths):

    pass_at_1(correct)                 mean correctness over samples, then prompts
    pass_at_k(n, c, k)                 unbiased estimator of P(any of k samples is correct)
    cons_at_k(answers, correct)        accuracy of the majority-vote answer
    majority_votes(answers, correct)   per prompt: is the majority-vote answer correct
    standard_error(per_prompt)         of a mean over prompts, the held-out set's sampling noise
    paired_difference(a, b)            mean per-prompt difference of two models, and its error
    compare(a, b)                      that difference judged against its error
    mean_response_length(lengths)
    evaluation_report(per_task)        all of the above per task, plus an overall row
    report_markdown(report)            that report as a Markdown table

The paper samples with temperature 0.6 and top-p 0.95 (greedy decoding gives repetitive,
checkpoint-sensitive results on long reasoning) and reports pass@1 averaged over k
samples and cons@64.

Errors treat the held-out prompts as the sampled units (drawn from the task's
distribution): the standard error of a mean over prompts is the standard deviation of the
per-prompt values over sqrt(num_prompts), which also carries the noise of the k samples
within each prompt. Two models evaluated on the same prompts are compared through their
per-prompt differences (a paired comparison), whose error is much smaller than either
model's when the prompts' difficulty dominates.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np

EVAL_TEMPERATURE = 0.6
EVAL_TOP_P = 0.95
OVERALL = "overall"
# a difference counts (`compare`) when it exceeds this many standard errors: about 95%
# two-sided for a normal error
SIGNIFICANT_STANDARD_ERRORS = 2.0

Answers = Sequence[Sequence[str | None]]


def pass_at_1(correct) -> float:
    """Mean over prompts of the fraction of correct samples; `correct` is [num_prompts, k]."""
    correct = _as_correct(correct)
    return float(correct.mean(axis=1).mean())


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
    """Unbiased pass@k per prompt: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021, "Codex").

    `num_samples` (n) and `num_correct` (c) broadcast against each other (one entry per
    prompt); the result has their broadcast shape. Evaluated as the product
    1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials.
    """
    n, c = np.broadcast_arrays(_as_counts(num_samples, "num_samples"), _as_counts(num_correct, "num_correct"))
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if (c < 0).any() or (c > n).any():
        raise ValueError("need 0 <= num_correct <= num_samples for every prompt")
    if (n < k).any():
        raise ValueError(f"pass@{k} needs at least k={k} samples per prompt, got {int(n.min())}")
    estimate = np.empty(n.shape, np.float64)
    for index in np.ndindex(n.shape):
        total, right = int(n[index]), int(c[index])
        if total - right < k:  # every k-subset holds a correct sample
            estimate[index] = 1.0
        else:
            estimate[index] = 1.0 - np.prod(1.0 - k / np.arange(total - right + 1, total + 1))
    return estimate


def normalize_answer(answer: str | None) -> str | None:
    """Whitespace-insensitive form of an extracted answer; None when there is no answer."""
    if answer is None:
        return None
    answer = " ".join(answer.split())
    return answer or None


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool],
                  normalize: Callable[[str | None], str | None] = normalize_answer) -> tuple[str | None, bool]:
    """The most frequent non-None normalised answer of one prompt, and its correctness.

    Ties go to the answer seen first. The answer's correctness is that of its first
    sample (samples with equal normalised answers are assumed equally correct). No
    answer at all gives (None, False).
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags for one prompt")
    normalized = [normalize(a) for a in answers]
    counts = Counter(a for a in normalized if a is not None)
    if not counts:
        return None, False
    winner = max(counts, key=counts.get)  # max keeps the first of equal counts: insertion order
    return winner, bool(correct[normalized.index(winner)])


def cons_at_k(answers: Answers, correct, *, k: int | None = None,
              normalize: Callable[[str | None], str | None] = normalize_answer) -> float:
    """Majority-vote accuracy: the fraction of prompts whose most common answer is correct.

    `answers[p][j]` is the answer extracted from sample j of prompt p (None if none was
    found) and `correct[p][j]` that sample's correctness, [num_prompts, samples]. Only
    the first `k` samples of each prompt vote (all of them by default).
    """
    return float(np.mean(majority_votes(answers, correct, k=k, normalize=normalize)))


def majority_votes(answers: Answers, correct, *, k: int | None = None,
                   normalize: Callable[[str | None], str | None] = normalize_answer) -> np.ndarray:
    """Per prompt, whether its majority-vote answer is correct: bool [num_prompts] (see `cons_at_k`)."""
    correct = _as_correct(correct)
    if len(answers) != correct.shape[0]:
        raise ValueError(f"answers has {len(answers)} prompts but correct has {correct.shape[0]}")
    k = correct.shape[1] if k is None else k
    if not 1 <= k <= correct.shape[1]:
        raise ValueError(f"cons@{k} needs 1 <= k <= {correct.shape[1]} samples per prompt")
    return np.array([majority_vote(list(prompt_answers)[:k], prompt_correct[:k], normalize)[1]
                     for prompt_answers, prompt_correct in zip(answers, correct)], bool)


def standard_error(per_prompt) -> float:
    """Standard error of the mean of `per_prompt` values [num_prompts] (NaNs, prompts without a
    value, left out): sample standard deviation / sqrt(n). NaN for fewer than 2 values."""
    values = np.asarray(per_prompt, np.float64)
    if values.ndim != 1:
        raise ValueError(f"per_prompt must be one value per prompt, got shape {values.shape}")
    values = values[~np.isnan(values)]
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / np.sqrt(values.size))


def paired_difference(a, b) -> tuple[float, float]:
    """(mean of a - b, its standard error) for per-prompt values of two models on the same
    prompts [num_prompts] each; prompts where either is NaN are left out."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need per-prompt values of the same prompts, got shapes {a.shape} and {b.shape}")
    difference = a - b
    difference = difference[~np.isnan(difference)]
    if difference.size == 0:
        raise ValueError("no prompt has a value for both models")
    return float(difference.mean()), standard_error(difference)


def compare(a, b, *, errors: float = SIGNIFICANT_STANDARD_ERRORS) -> dict:
    """Is `a` above, below or level with `b` (per-prompt values of the same prompts)?

    {"difference": mean(a - b), "error": its standard error, "verdict": "higher" | "lower" |
    "level"}: "higher" only when the difference exceeds `errors` standard errors.
    """
    difference, error = paired_difference(a, b)
    if np.isnan(error):
        verdict = "level"  # one prompt: no error to judge against
    elif difference > errors * error:
        verdict = "higher"
    elif difference < -errors * error:
        verdict = "lower"
    else:
        verdict = "level"
    return {"difference": difference, "error": error, "verdict": verdict}


def mean_response_length(lengths) -> float:
    """Mean completion length (tokens) over all samples of all prompts."""
    lengths = np.asarray(lengths, np.float64)
    if lengths.size == 0:
        raise ValueError("mean_response_length needs at least one length")
    return float(lengths.mean())


def evaluation_report(per_task: Mapping[str, Mapping[str, object]], *,
                      ks: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Per-task metrics plus a prompt-weighted `"overall"` row.

    `per_task[task]` holds `"correct"` ([num_prompts, samples], required) and optionally
    `"answers"` (per-sample extracted answers, for cons@samples) and `"lengths"`
    ([num_prompts, samples] token counts). Each task gets `num_prompts`,
    `samples_per_prompt`, `pass@k` for each k in `ks` (default: 1 and samples), `cons@k`
    for k = samples, and `response_length`. The overall row averages, weighted by
    number of prompts, the metrics every task has.
    """
    if not per_task:
        raise ValueError("evaluation_report needs at least one task")
    if OVERALL in per_task:
        raise ValueError(f"{OVERALL!r} is reserved for the aggregate row; rename that task")
    report = {}
    for task, results in per_task.items():
        if "correct" not in results:
            raise ValueError(f"task {task!r} has no 'correct' array; got keys {sorted(results)}")
        correct = _as_correct(results["correct"])
        num_prompts, samples = correct.shape
        row = {"num_prompts": num_prompts, "samples_per_prompt": samples}
        for k in sorted(set(ks if ks is not None else (1, samples))):
            if k > samples:
                raise ValueError(f"task {task!r} has {samples} samples per prompt, too few for pass@{k}")
            row[f"pass@{k}"] = float(pass_at_k(samples, correct.sum(axis=1), k).mean())
        if results.get("answers") is not None:
            row[f"cons@{samples}"] = cons_at_k(results["answers"], correct)
        if results.get("lengths") is not None:
            row["response_length"] = mean_response_length(results["lengths"])
        report[task] = row

    rows = list(report.values())
    weights = np.array([row["num_prompts"] for row in rows], np.float64)
    shared = [key for key in rows[0] if key not in ("num_prompts", "samples_per_prompt")
              and all(key in row for row in rows)]
    overall = {"num_prompts": int(weights.sum())}
    if len({row["samples_per_prompt"] for row in rows}) == 1:
        overall["samples_per_prompt"] = rows[0]["samples_per_prompt"]
    overall.update({key: float(np.average([row[key] for row in rows], weights=weights)) for key in shared})
    report[OVERALL] = overall
    return report


def report_markdown(report: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table, one row per task: rates in percent, lengths in tokens."""
    columns = list(dict.fromkeys(key for row in report.values() for key in row))
    headers = {"num_prompts": "prompts", "samples_per_prompt": "samples", "response_length": "response length"}

    def header(key):
        return headers.get(key, f"{key} (%)" if _is_rate(key) else key)

    def cell(key, value):
        if value is None:
            return "–"
        if _is_rate(key):
            return f"{100 * value:.1f}"
        if isinstance(value, (int, np.integer)):
            return str(value)
        return f"{value:.1f}"

    lines = ["| task | " + " | ".join(header(k) for k in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for task, row in report.items():
        lines.append(f"| {task} | " + " | ".join(cell(k, row.get(k)) for k in columns) + " |")
    return "\n".join(lines)


def _is_rate(key: str) -> bool:
    return key.startswith(("pass@", "cons@"))


def _as_counts(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number) or (values != np.round(values)).any():
        raise TypeError(f"{name} must hold whole numbers (sample counts), got {values!r}")
    return values.astype(np.int64)


def _as_correct(correct) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.size == 0:
        raise ValueError(f"correct must be a non-empty [num_prompts, samples] array, got shape {correct.shape}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must hold booleans or 0/1 values; threshold rewards first (reward == 1)")
    return correct.astype(np.float64)
