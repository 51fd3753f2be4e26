"""Cosine length reward, repetition penalty and the registry."""
import math

import pytest

from r1jax.rewards import cosine_scaled_reward, get_reward, list_rewards, register_reward, repetition_penalty


@pytest.mark.parametrize("length, correct, expected", [
    (0, True, 1.0), (100, True, 0.5), (50, True, 0.75), (25, True, 0.5 + 0.25 * (1 + math.cos(math.pi / 4))),
    (0, False, -1.0), (100, False, -0.5), (50, False, -0.75), (10_000, True, 0.5), (-5, False, -1.0),
])
def test_cosine_scaled_reward(length, correct, expected):
    assert cosine_scaled_reward(length, correct, max_length=100) == pytest.approx(expected)


def test_cosine_length_reward_follows_accuracy():
    cosine = get_reward("cosine_length")
    assert cosine(r"\boxed{4}", answer="4", max_length=18) == pytest.approx(0.75)  # 9 chars = half
    assert cosine(r"\boxed{5}", answer="4", max_length=18) == pytest.approx(-0.75)
    assert cosine(r"\boxed{5}", answer="") is None
    with pytest.raises(ValueError, match="max_length must be positive"):
        cosine_scaled_reward(1, True, max_length=0)


@pytest.mark.parametrize("text, ngram_size, expected", [
    ("a b c a b c", 3, -0.25),          # 4 trigrams, 3 distinct
    ("A b C a B c", 3, -0.25),          # case-insensitive
    ("a a a a a", 1, -0.8),             # 5 unigrams, 1 distinct
    ("one two three four", 3, 0.0),
    ("a b", 3, 0.0),                    # shorter than one n-gram
    ("", 3, 0.0),
])
def test_repetition_penalty(text, ngram_size, expected):
    assert repetition_penalty(text, ngram_size=ngram_size) == pytest.approx(expected)


def test_repetition_penalty_arguments():
    assert repetition_penalty("x y x y x y", ngram_size=2, max_penalty=-0.5) == pytest.approx(-0.5 * (1 - 2 / 5))
    with pytest.raises(ValueError, match="max_penalty must be <= 0"):
        repetition_penalty("a", max_penalty=1.0)
    assert get_reward("repetition_penalty")("a b c a b c", answer="x") == pytest.approx(-0.25)


def test_registry():
    assert {"accuracy", "format", "format_soft", "format_tag_count", "format_reasoning", "countdown",
            "arithmetic", "language", "code", "code_all_or_nothing", "cosine_length",
            "repetition_penalty"} <= set(list_rewards())
    with pytest.raises(ValueError, match="unknown reward 'acuracy'; known rewards: .*accuracy"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(lambda completion, **_: 0.0)
    accuracy = get_reward("accuracy")
    assert register_reward("accuracy")(accuracy) is accuracy  # re-registering the same is fine
