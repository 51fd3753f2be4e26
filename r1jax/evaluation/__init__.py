"""Evaluation as DeepSeek-R1 reports it.

    pass_at_k     pass@1 over k samples, the unbiased pass@k, cons@k, standard errors and the
                  report table: pure host functions on per-sample results (imported here)
    reflection    how often completions re-check or correct a step, by a documented rule, and the
                  accuracy of those that do and do not (imported here)
    evaluate      sampling a checkpoint on tasks and scoring it into that report
                  (`from r1jax.evaluation.evaluate import evaluate_model`; the CLI is
                  `python -m experiments.evaluate`)
"""
from r1jax.evaluation.pass_at_k import (pass_at_1, pass_at_k, normalize_answer, majority_vote, cons_at_k, majority_votes, standard_error, paired_difference, compare, mean_response_length, evaluation_report, report_markdown, EVAL_TEMPERATURE, EVAL_TOP_P, OVERALL, SIGNIFICANT_STANDARD_ERRORS)
from r1jax.evaluation.reflection import REFLECTION_MARKERS, reflects, reflection_flags, reflection_metrics

__all__ = ["pass_at_1", "pass_at_k", "normalize_answer", "majority_vote", "cons_at_k", "majority_votes", "standard_error", "paired_difference", "compare", "mean_response_length", "evaluation_report", "report_markdown", "EVAL_TEMPERATURE", "EVAL_TOP_P", "OVERALL", "SIGNIFICANT_STANDARD_ERRORS", "REFLECTION_MARKERS", "reflects", "reflection_flags", "reflection_metrics"]
