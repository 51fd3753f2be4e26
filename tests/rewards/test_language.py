"""Language consistency: script-based word counts on mixed text.

Each expectation is worked by hand: Latin, Cyrillic, Tamil, ... runs are one word each,
Han and kana characters one word each; math and code hide no other-language prose.
"""
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
    ("我们 `print` 计算", "zh", 1.0),        # an identifier in inline code is no English word
    ("我们写 ```python\nprint(total)\n``` 计算", "zh", 1.0),
    ("我们 $x^2 + \\frac{a}{b}$ 计算", "zh", 1.0),
    ("the angle θ is $\\pi/2$", "en", 1.0),     # a lone Greek letter is a symbol
    ("Εμείς προσθέτουμε", "el", 1.0),          # Greek words are words
    ("We add Εμείς", "en", 2 / 3),
    ("हिन्दी में", "hindi", 1.0),                  # vowel signs belong to their word
    ("ﾃｽﾄ", "ja", 1.0),                         # half-width katakana
]

# Math and code are no hiding place: 3 Latin words (We, add, now) and 4 Han characters
# whatever wraps the Chinese, so 3/7 English where the old code said 1.0.
HIDDEN_CHINESE = [
    "We add $我们计算$ now",
    "We add $$我们计算$$ now",
    "We add \\(我们计算\\) now",
    "We add \\[我们计算\\] now",
    "We add\n```\n我们计算\n```\nnow",
    "We add\n```python\n# 我们计算\n```\nnow",
    "We add `我们计算` now",
    "We add ＄我们计算＄ now",           # full-width dollars are dollars
    "We add $我们\n计算$ now",            # malformed: inline math does not span lines
]


@pytest.mark.parametrize("text", HIDDEN_CHINESE)
def test_math_and_code_hide_no_other_language(text):
    assert language_consistency(text, "en") == pytest.approx(3 / 7)
    assert language_consistency(text, "zh") == pytest.approx(4 / 7)


def test_a_chain_of_thought_all_in_wrapped_chinese_is_not_english():
    assert language_consistency("$首先我们计算和$", "en") == 0.0          # old: None
    assert language_consistency("$首先我们计算和$", "zh") == 1.0
    # prose in \\text{} is prose: 4 Han and 4 Latin words
    assert language_consistency("我们 $\\text{we add the numbers}$ 计算", "zh") == pytest.approx(0.5)
    assert language_consistency("我们 $\\text {we add}$ 计算", "zh") == pytest.approx(4 / 6)


# (two words of the script, its language): each word is one run of letters and marks
SCRIPTS = [("நாம் கூட்டுகிறோம்", "ta"),    # Tamil
           ("আমরা যোগ", "bn"),           # Bengali
           ("આપણે ઉમેરીએ", "gu"),        # Gujarati
           ("ჩვენ ვამატებთ", "ka"),      # Georgian
           ("ᚁᚂ ᚃᚄ", None)]              # Ogham: no supported language, still a script


@pytest.mark.parametrize("words, language", SCRIPTS)
def test_every_script_counts(words, language):
    assert language_consistency(f"We add {words}", "en") == pytest.approx(2 / 4)  # old: 1.0
    assert language_consistency(f"{words} $x$ 我", "zh") == pytest.approx(1 / 3)
    if language is not None:
        assert language_consistency(f"{words}", language) == 1.0
        assert language_consistency(f"We add {words} $x$", language) == pytest.approx(2 / 4)
        assert dominant_language(f"{words} and") == language


def test_full_width_latin_is_latin():
    assert language_consistency("Ｗｅ ａｄｄ ｔｈｅ ｎｕｍｂｅｒｓ", "en") == 1.0  # old: None
    assert language_consistency("Ｗｅ ａｄｄ 我们", "en") == pytest.approx(2 / 4)  # old: 0.0
    assert dominant_language("Ｗｈａｔ ｉｓ 1+1") == "en"


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
    assert dominant_language("ᚁᚂ ᚃᚄ") is None                 # Ogham: no language to name


def test_a_chain_of_thought_without_words_scores_one():
    """Nothing in it is another language: 1.0 (old: None, which drops the row from GRPO)."""
    language = get_reward("language")
    assert language("<think>$2 + 3 = 5$</think><answer>5</answer>", language="zh") == 1.0
    assert language("<think>\\[x^2\\] ```print(5)```</think>5", language="en") == 1.0
    assert language("<think></think><answer>5</answer>", language="en") == 1.0
    assert language("<think>$首先我们计算和$</think><answer>5</answer>", language="en") == 0.0


def test_hostile_text_is_linear():
    start = time.perf_counter()
    assert language_consistency("\\(" * 500_000, "en") is None
    assert language_consistency("$" * 1_000_001 + "a", "en") == 1.0
    assert language_consistency("字" * 1_000_000, "zh") == 1.0
    assert time.perf_counter() - start < 5.0
