"""Language consistency: script-based word counts on mixed text."""
import time

import pytest

from r1jax.rewards import (chain_of_thought, dominant_language, get_reward,
                           language_consistency)

# (text, language, share of words in that language)
CASES = [
    ("We compute the sum", "en", 1.0),
    ("我们计算", "zh", 1.0),
    ("我们计算", "en", 0.0),
    ("我们 compute 和", "zh", 3 / 4),          # each Han character is a word
    ("我们 compute 和", "en", 1 / 4),
    ("Let $x^2$ be \\frac 我们", "zh", 2 / 4),  # math and LaTeX commands are not words
    ("Let \\(a + b\\) and \\[c\\] 好", "en", 2 / 3),
    ("```python\nprint('hi')\n```\n计算", "zh", 1.0),  # code blocks are not words
    ("café naïve 计算", "fr", 2 / 4),
    ("Привет мир hello", "ru", 2 / 3),
    ("これは ペン です", "ja", 1.0),
    ("これは ペン です", "zh", 0.0),
    ("안녕하세요 세계 hi", "ko", 2 / 3),
    ("We compute 😀\u200b\x00 sum", "english", 1.0),   # odd unicode is not a word
    ("我们计算", "Chinese", 1.0),
]


@pytest.mark.parametrize("text, language, expected", CASES)
def test_language_consistency(text, language, expected):
    assert language_consistency(text, language) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "123 + 456 = 579", "😀 ... !!!", "$x+y$"])
def test_no_words_is_none(text):
    assert language_consistency(text, "en") is None


def test_unsupported_language_is_explained():
    with pytest.raises(ValueError, match="unsupported language 'klingon'"):
        language_consistency("text", "klingon")


def test_chain_of_thought():
    assert chain_of_thought("<think>abc</think><answer>x</answer>") == "abc"
    assert chain_of_thought("abc</think><answer>x</answer>") == "abc"   # prefilled <think>
    assert chain_of_thought("<think>abc, still thinking") == "abc, still thinking"
    assert chain_of_thought("no tags") == "no tags"
    # R1's output format: the reasoning block, not the summary
    assert chain_of_thought("|special_token| 我们 add |special_token| The answer is 5.") == "我们 add"


def test_registered_reward_scores_the_chain_of_thought():
    language = get_reward("language")
    completion = "<think>我们计算 the sum</think><answer>The answer is five</answer>"
    assert language(completion, language="zh") == pytest.approx(4 / 6)
    assert language(completion, question="计算一下这个和") == pytest.approx(4 / 6)  # zh from question
    assert language(completion, question="Add these") == pytest.approx(2 / 6)
    assert language(completion) == pytest.approx(2 / 6)                         # English default


def test_dominant_language():
    assert dominant_language("计算 what is 1+1 请") == "zh"
    assert dominant_language("これは何ですか") == "ja"
    assert dominant_language("What is 计算?") == "en"
    assert dominant_language("12345") is None


def test_hostile_text_is_linear():
    start = time.perf_counter()
    assert language_consistency("\\(" * 500_000, "en") is None
    assert language_consistency("$" * 1_000_001 + "a", "en") == 1.0
    assert language_consistency("字" * 1_000_000, "zh") == 1.0
    assert time.perf_counter() - start < 5.0
