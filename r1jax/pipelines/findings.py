"""The DeepSeek-R1 paper's findings, judged on the R1 miniature's evaluations against their errors.

`paper_findings(evals, ...)` takes one evaluation per model (`r1jax.evaluation.evaluate.evaluate_policy`
with `per_prompt=True`, all on the same held-out prompts) and states each finding the way
the paper does; a difference between two models counts only when it exceeds
`SIGNIFICANT_STANDARD_ERRORS` standard errors of the paired per-prompt difference
(`r1jax.evaluation.compare`). `models_table` and `findings_table` write them as Markdown.

    (a) RL raises pass@1 over the base                     R1-Zero vs base (and the student's)
    (b) cons@k >= pass@1 for every model                   not significantly below
    (c) from the cold start, RL reaches a target training accuracy in fewer steps
    (d) the language reward raises language consistency    at a (small) accuracy cost
    (e) distillation beats RL on the small student at equal compute
    (f) R1 is at least as accurate as R1-Zero and more readable (R1's format, language consistency)
"""
from __future__ import annotations

import json
import pathlib
from typing import Mapping

import numpy as np

from r1jax.evaluation import SIGNIFICANT_STANDARD_ERRORS, compare


def paper_findings(evals: Mapping[str, Mapping], *, k: int, target: float, rl_steps: int,
                   steps_from_base: int | None, steps_from_cold: int | None) -> dict:
    """Each finding: the comparisons it rests on (difference, error, verdict) and `holds`.

    `evals[model]` needs `per_prompt` values of `pass_at_1`, `cons_at_<k>`, `language` and `r1_format`;
    the models are the pipeline's (`base`, `r1_zero`, `r1_zero_language`, `all_scenario_rl`,
    `student_base`, `student_rl`, optionally `student_distill`). `steps_from_*`: the RL step
    at which the training accuracy reached `target` from the base and from the cold start
    (None: never, within `rl_steps`).
    """
    cons = f"cons_at_{k}"

    def versus(a: str, b: str, key: str = "pass_at_1") -> dict:
        return {"a": a, "b": b, "key": key, **compare(evals[a]["per_prompt"][key], evals[b]["per_prompt"][key])}

    findings = {}
    a = {"r1_zero_vs_base": versus("r1_zero", "base"), "student_rl_vs_student_base": versus("student_rl", "student_base")}
    findings["a_rl_raises_pass_at_1"] = {**a, "holds": a["r1_zero_vs_base"]["verdict"] == "higher"}
    b = {name: {"a": name, "b": name, "key": f"{cons} vs pass_at_1",
                **compare(e["per_prompt"][cons], e["per_prompt"]["pass_at_1"])} for name, e in evals.items()}
    findings["b_cons_at_k_at_least_pass_at_1"] = {
        **b, "holds": all(v["verdict"] != "lower" for v in b.values())}
    findings["c_rl_steps_to_target_accuracy"] = {
        "target": target, "from_base": steps_from_base, "from_cold_start": steps_from_cold, "rl_steps": rl_steps,
        "holds": steps_from_cold is not None and (steps_from_base is None or steps_from_cold < steps_from_base)}
    d = {"language": versus("r1_zero_language", "r1_zero", "language"),
         "accuracy": versus("r1_zero_language", "r1_zero")}
    findings["d_language_reward_raises_consistency"] = {**d, "holds": d["language"]["verdict"] == "higher"}
    e = {"distill_vs_rl": versus("student_distill", "student_rl")} if "student_distill" in evals else {}
    findings["e_distillation_beats_rl_at_equal_compute"] = {
        **e, "holds": bool(e) and e["distill_vs_rl"]["verdict"] == "higher"}
    f = {"accuracy": versus("all_scenario_rl", "r1_zero"), "language": versus("all_scenario_rl", "r1_zero", "language"),
         "format": versus("all_scenario_rl", "r1_zero", "r1_format")}
    findings["f_r1_as_accurate_and_more_readable"] = {
        **f, "holds": f["accuracy"]["verdict"] != "lower" and f["language"]["verdict"] == "higher"
        and f["format"]["verdict"] == "higher"}
    return findings


def models_table(evals: Mapping[str, Mapping], *, k: int) -> str:
    """Markdown: per model pass@1 and cons@k with their standard errors, format, R1 format,
    language consistency and length."""
    lines = [f"| model | pass@1 | cons@{k} | format | r1 format | language | length |",
             "|---|---|---|---|---|---|---|"]
    for name, e in evals.items():
        cells = [_with_error(e, "pass_at_1"), _with_error(e, f"cons_at_{k}"),
                 *(f"{e.get(key, float('nan')):.2f}" for key in ("format_reward", "r1_format", "language")),
                 f"{e['response_length']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings_table(findings: Mapping[str, Mapping]) -> str:
    """Markdown: each finding, its verdict and the comparisons behind it (difference ± error)."""
    lines = [f"| finding | holds? | measured (difference ± standard error; counts beyond "
             f"{SIGNIFICANT_STANDARD_ERRORS:g} errors) |", "|---|---|---|"]
    for name, finding in findings.items():
        if "holds" not in finding:
            continue
        parts = [_comparison(v) for v in finding.values() if isinstance(v, Mapping) and "verdict" in v]
        if name.startswith("c_"):
            parts = [f"RL steps until the training accuracy (3-step mean) reaches {finding['target']}: from the "
                     f"base {finding['from_base'] or 'never'}, from the cold start "
                     f"{finding['from_cold_start'] or 'never'} (of {finding['rl_steps']})"]
        lines.append(f"| {name} | {'**yes**' if finding['holds'] else 'no'} | {'; '.join(parts)} |")
    return "\n".join(lines)


def _with_error(e: Mapping, key: str) -> str:
    error = e.get(f"{key}_se", float("nan"))
    return f"{e[key]:.3f}" + ("" if np.isnan(error) else f" ± {error:.3f}")


def _comparison(v: Mapping) -> str:
    label = v["a"] if v["a"] == v["b"] else f"{v['a']} - {v['b']}"
    return f"{label} {v['key']}: {v['difference']:+.3f} ± {v['error']:.3f} ({v['verdict']})"


def steps_to_reach(metrics_file: pathlib.Path, target: float, window: int = 3) -> int | None:
    """First step at which the `window`-step running mean of training accuracy reaches `target`."""
    accuracy = [json.loads(line)["accuracy"] for line in metrics_file.read_text().splitlines()]
    for end in range(window, len(accuracy) + 1):
        if np.mean(accuracy[end - window:end]) >= target:
            return end
    return None
