"""Evaluation as DeepSeek-R1 reports it.

    pass_at_k     pass@1 over k samples, the unbiased pass@k, cons@k, standard errors and the
                  report table: pure host functions on per-sample results (imported here)
    evaluate      sampling a checkpoint on tasks and scoring it into that report
                  (`from r1jax.evaluation.evaluate import evaluate_model`; the CLI is
                  `python -m experiments.evaluate`)
"""
from r1jax.evaluation.pass_at_k import (pass_at_1, pass_at_k, normalize_answer, majority_vote, cons_at_k, majority_votes, standard_error, paired_difference, compare, mean_response_length, evaluation_report, report_markdown, EVAL_TEMPERATURE, EVAL_TOP_P, OVERALL, SIGNIFICANT_STANDARD_ERRORS)

__all__ = ["pass_at_1", "pass_at_k", "normalize_answer", "majority_vote", "cons_at_k", "majority_votes", "standard_error", "paired_difference", "compare", "mean_response_length", "evaluation_report", "report_markdown", "EVAL_TEMPERATURE", "EVAL_TOP_P", "OVERALL", "SIGNIFICANT_STANDARD_ERRORS"]
