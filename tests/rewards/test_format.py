"""Format rewards: strict, soft and tag-count modes on hand-worked outputs."""
import time

import pytest

from r1jax.rewards import format_reward, get_reward

GOOD = "<think>r</think><answer>a</answer>"

# (completion, strict, soft, tag_count)
CASES = [
    (GOOD, 1.0, 1.0, 1.0),
    ("<think>\nr\n</think>\n<answer>\na\n</answer>\n", 1.0, 1.0, 1.0),
    ("  <think>r</think>  <answer>a</answer>  ", 1.0, 1.0, 1.0),
    ("preamble <think>r</think><answer>a</answer>", 0.0, 1.0, 1.0),
    ("<think>r</think><answer>a</answer> trailing", 0.0, 1.0, 1.0),
    ("<think>r</think> middle <answer>a</answer>", 0.0, 1.0, 1.0),
    ("<think>r</think><answer>a", 0.0, 0.0, 0.75),                     # unclosed answer
    ("<think>r<answer>a</answer>", 0.0, 0.0, 0.75),                    # unclosed think
    ("<think>r</think><think>s</think><answer>a</answer>", 0.0, 0.0, 0.5),  # repeated
    ("<think><think>r</think></think><answer>a</answer>", 0.0, 0.0, 0.5),   # nested
    ("<answer>a</answer><think>r</think>", 0.0, 0.0, 1.0),             # wrong order
    ("<think></think><answer>a</answer>", 0.0, 1.0, 1.0),              # empty reasoning
    ("<think>r</think><answer>  </answer>", 0.0, 0.0, 1.0),            # empty answer
    ("", 0.0, 0.0, 0.0),
    ("just an answer: 42", 0.0, 0.0, 0.0),
    ("<think>推理 \u200b😀\x00</think><answer>ß İ ﬁ</answer>", 1.0, 1.0, 1.0),  # odd unicode
    ("<THINK>r</THINK><ANSWER>a</ANSWER>", 0.0, 0.0, 0.0),              # tags are case-sensitive
]


@pytest.mark.parametrize("completion, strict, soft, tag_count", CASES)
def test_format_modes(completion, strict, soft, tag_count):
    assert format_reward(completion, mode="strict") == strict
    assert format_reward(completion, mode="soft") == soft
    assert format_reward(completion, mode="tag_count") == tag_count


def test_registered_variants_match_modes():
    completion = "intro <think>r</think><answer>a"
    assert get_reward("format")(completion) == 0.0
    assert get_reward("format_soft")(completion) == 0.0
    assert get_reward("format_tag_count")(completion) == 0.75
    assert get_reward("format")(GOOD, answer="ignored", numbers=[1]) == 1.0  # extra fields ignored


def test_reasoning_tag_variant():
    completion = "<reasoning>r</reasoning><answer>a</answer>"
    assert format_reward(completion, think_tag="reasoning") == 1.0
    assert format_reward(completion) == 0.0
    assert get_reward("format_reasoning")(completion) == 1.0
    assert format_reward("<r>x</r><final>y</final>", think_tag="r", answer_tag="final") == 1.0


def test_prefilled_think_tag():
    assert format_reward("r</think><answer>a</answer>", think_prefilled=True) == 1.0
    # The prompt already opened <think>; opening it again repeats the tag.
    assert format_reward(GOOD, think_prefilled=True) == 0.0


def test_megabyte_of_garbage_is_fast_and_zero():
    garbage = "<think>" * 150_000 + "</answer>" * 10_000 + "x" * 100_000
    start = time.perf_counter()
    for mode in ("strict", "soft", "tag_count"):
        assert format_reward(garbage, mode=mode) == 0.0
    assert time.perf_counter() - start < 1.0


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="format mode must be one of"):
        format_reward(GOOD, mode="loose")
    with pytest.raises(TypeError, match="completion must be a str"):
        format_reward(None)


@pytest.mark.parametrize("completion, expected", [
    ("7 * 8 = 56, so \\boxed{56}", 1.0),
    ("\\boxed{56} or \\boxed{54}", 0.0),  # two boxes: not one final answer
    ("\\boxed{}", 0.0),  # empty
    ("\\boxed{56", 0.0),  # unclosed
    ("The answer is 56.", 0.0),
])
def test_boxed_format_by_hand(completion, expected):
    assert get_reward("boxed_format")(completion) == expected


@pytest.mark.parametrize("completion, expected", [
    ("The answer is 56.", 1.0),
    ("7 * 8 = 56. So the answer is 56", 1.0),
    ("the answer is -3/4.", 1.0),
    ("The answer is 56.\n\nHope this helps!", 0.0),  # not the end of the reply
    ("The answer is", 0.0),  # no answer
    ("The answer is N, where N is " + "x" * 60 + ".", 0.0),  # not a short final phrase
    ("56", 0.0),
])
def test_answer_phrase_format_by_hand(completion, expected):
    assert get_reward("answer_phrase_format")(completion) == expected
