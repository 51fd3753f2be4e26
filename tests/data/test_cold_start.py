"""The shared sample filters and the cold-start data in R1's output format, on hand-worked texts."""
import pytest

from r1jax.data.cold_start import COLD_START_DROP_REASONS, build_cold_start, to_r1_format
from r1jax.data.filters import (dedup_key, is_language_consistent, is_overlong, is_readable, is_repetitive,
                                repeated_ngram_share, split_think_answer)
from r1jax.rewards.countdown import arithmetic_reward, countdown_reward
from r1jax.rewards.math import math_accuracy
from r1jax.rewards.r1_format import OutputFormat, extract_summary_answer, r1_format_reward, split_r1_output
from r1jax.rewards.registry import get_reward

MARK = "|special_token|"


# ---- filters -------------------------------------------------------------------------------------

def test_overlong_means_the_budget_ran_out_without_a_stop():
    assert is_overlong(8, 8, stopped=False)
    assert not is_overlong(8, 8, stopped=True)  # stopped on its last allowed token
    assert not is_overlong(5, 8, stopped=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        is_overlong(1, 0, stopped=False)


def test_repetition_is_the_share_of_repeated_ngrams():
    # 3-grams of "a b c a b c": abc bca cab abc -> 3 distinct of 4 -> 1/4 repeat an earlier one
    assert repeated_ngram_share("a b c a b c", 3) == pytest.approx(0.25)
    assert repeated_ngram_share("A B C a b c", 3) == pytest.approx(0.25)  # case does not matter
    assert repeated_ngram_share("a b", 3) == 0.0  # shorter than one 3-gram
    # "add one" x 6: 10 3-grams, 2 distinct -> 0.8
    assert repeated_ngram_share("add one " * 6, 3) == pytest.approx(0.8)
    assert is_repetitive("add one " * 6)
    assert not is_repetitive("first add three and four, then double the sum to get fourteen")
    assert not is_repetitive("a b c a b c", threshold=0.25)  # more than the threshold, not equal
    assert is_repetitive("a b c a b c", threshold=0.2)
    with pytest.raises(ValueError, match="threshold"):
        is_repetitive("a b c", threshold=1.0)


def test_language_consistency_against_a_target_or_the_dominant_language():
    # 3 Han words and 1 Latin word: 3/4 Chinese
    assert not is_language_consistent("我们 compute 和", "zh")
    assert is_language_consistent("我们 compute 和", "zh", min_share=0.75)
    assert not is_language_consistent("我们 compute 和", "en", min_share=0.3)  # 1/4 English
    assert is_language_consistent("我们 compute 和", "en", min_share=0.25)
    # no target: judged against its own dominant language (English, 11 of 12 words)
    assert is_language_consistent("we add three and four to get seven so the answer 是")
    # six Han words against five Latin ones: no language has 90%
    assert not is_language_consistent("首先 我们 compute three plus four 等于 seven")
    assert is_language_consistent("3 + 4 = 7, $x^2$")  # no words at all: nothing to mix
    with pytest.raises(ValueError, match="min_share"):
        is_language_consistent("text", "en", min_share=0.0)


def test_split_think_answer_wants_exactly_the_r1_zero_layout():
    assert split_think_answer(" <think>r</think>\n<answer>a</answer> ") == ("r", "a")
    assert split_think_answer("<think></think><answer></answer>") == ("", "")  # empty, but in layout
    assert split_think_answer("so <think>r</think><answer>a</answer>") is None  # text outside
    assert split_think_answer("<think>r</think> and <answer>a</answer>") is None
    assert split_think_answer("<answer>a</answer><think>r</think>") is None  # out of order
    assert split_think_answer("<think>r<think></think><answer>a</answer>") is None  # a tag twice
    assert split_think_answer("<think>r</think>") is None
    assert split_think_answer("<reasoning>r</reasoning><answer>a</answer>", think_tag="reasoning") == ("r", "a")


def test_is_readable_names_the_first_criterion_that_fails():
    good = "<think>three plus four is seven</think> <answer>7</answer>"
    assert is_readable(good) and is_readable(good).reason is None
    cases = {
        "three plus four is seven <answer>7</answer>": "malformed",
        "<think>  </think> <answer>7</answer>": "empty_reasoning",
        "<think>three plus four is seven</think> <answer> </answer>": "empty_summary",
        "<think>首先 我们 compute three plus four 等于 seven</think> <answer>7</answer>": "mixed_language",
        "<think>" + "add one " * 6 + "</think> <answer>7</answer>": "repetitive",
    }
    for completion, reason in cases.items():
        check = is_readable(completion)
        assert not check and check.reason == reason, completion
    # a target language makes an all-English chain of thought unreadable for Chinese readers
    assert is_readable(good, language="zh").reason == "mixed_language"


def test_dedup_key_ignores_whitespace_and_case():
    assert dedup_key("  The Answer\n is\t 7 ") == "the answer is 7"
    assert dedup_key("The answer is 7") == dedup_key("the   ANSWER is 7")
    assert dedup_key("the answer is 7") != dedup_key("the answer is 8")


# ---- R1's output format --------------------------------------------------------------------------

def test_to_r1_format_writes_reasoning_between_markers_and_a_summary():
    converted = to_r1_format("<think> 3 + 4 = 7 </think> <answer> 7 </answer>")
    assert converted == f"{MARK}3 + 4 = 7{MARK}The answer is $\\boxed{{7}}$."
    # a boxed answer is unwrapped before it is boxed again
    converted = to_r1_format("<think>half</think><answer>$\\boxed{\\frac{1}{2}}$</answer>")
    assert converted == f"{MARK}half{MARK}The answer is $\\boxed{{\\frac{{1}}{{2}}}}$."
    custom = OutputFormat("<|reasoning|>", "<|summary|>", "So the answer is {answer}.")
    assert to_r1_format("<think>r</think><answer>7</answer>", custom) == "<|reasoning|>r<|summary|>So the answer is 7."


def test_to_r1_format_refuses_what_it_cannot_convert_faithfully():
    assert to_r1_format("no tags, the answer is 7") is None
    assert to_r1_format("<think></think><answer>7</answer>") is None  # no reasoning
    assert to_r1_format("<think>r</think><answer> </answer>") is None  # no answer
    assert to_r1_format(f"<think>r {MARK} s</think><answer>7</answer>") is None  # marker inside
    # an unbalanced brace would break the \boxed{} the answer is written into
    assert to_r1_format("<think>r</think><answer>{</answer>") is None


def test_split_r1_output_and_its_reward():
    text = f"  {MARK} think it over {MARK} The answer is 7. "
    assert split_r1_output(text) == ("think it over", "The answer is 7.")
    assert r1_format_reward(text) == 1.0
    not_r1 = [
        f"{MARK}reasoning without its closing marker",
        f"{MARK}r{MARK}",  # no summary
        f"{MARK} {MARK}summary",  # no reasoning
        f"preamble {MARK}r{MARK}s",
        f"{MARK}r{MARK}s{MARK}",  # a third marker
        "<think>r</think> <answer>7</answer>",  # R1-Zero's format is not R1's
    ]
    for text in not_r1:
        assert split_r1_output(text) is None and r1_format_reward(text) == 0.0, text
    distinct = OutputFormat("<r>", "</r>")
    assert split_r1_output("<r>a</r>b", distinct) == ("a", "b")
    assert r1_format_reward("<r>a</r>b", output_format=distinct) == 1.0
    assert r1_format_reward("<r>a</r><r>b", output_format=distinct) == 0.0


def test_r1_format_is_registered_and_accuracy_rewards_read_the_summary():
    assert get_reward("r1_format") is r1_format_reward
    assert get_reward("r1_format")(f"{MARK}r{MARK}s", answer="7") == 1.0  # ignores example fields
    # a wrong \boxed{} in the reasoning comes before the summary's and does not win
    converted = to_r1_format("<think>first guess \\boxed{5}, no: 3 + 4 = 7</think> <answer>7</answer>")
    assert extract_summary_answer(converted) == "7"
    assert math_accuracy(converted, "7") == 1.0 and math_accuracy(converted, "5") == 0.0
    assert arithmetic_reward(converted, "7") == 1.0
    assert extract_summary_answer("<think>r</think> <answer>7</answer>") is None
    # countdown reads <answer> tags or a bare last line, so it needs a summary in tags
    tagged = OutputFormat(summary_template="<answer>{answer}</answer>")
    converted = to_r1_format("<think>try it</think> <answer>(1 + 2) * 3</answer>", tagged)
    assert countdown_reward(converted, numbers=[1, 2, 3], target=9) == 1.0
    assert r1_format_reward(converted, output_format=tagged) == 1.0


def test_output_format_rejects_unusable_settings():
    with pytest.raises(ValueError, match="answer"):
        OutputFormat(summary_template="no slot")
    with pytest.raises(ValueError, match="markers"):
        OutputFormat(reasoning_open=" ")
    with pytest.raises(ValueError, match="markers"):
        OutputFormat(summary_template=MARK + "{answer}")


# ---- build_cold_start ----------------------------------------------------------------------------

def _record(prompt, think, answer, gold):
    return {"prompt": prompt, "completion": f"<think>{think}</think> <answer>{answer}</answer>", "answer": gold}


def test_build_cold_start_keeps_exactly_the_correct_clean_unique_samples():
    records = [
        _record("p1", "three plus four is seven", "7", "7"),  # kept
        _record("p1", "three plus four is eight", "8", "7"),  # incorrect
        _record("p1", "  Three plus  four is SEVEN ", "7", "7"),  # duplicate of the first
        _record("p2", "首先 我们 compute three plus four 等于 seven", "7", "7"),  # mixed_language
        _record("p2", "add one " * 6, "7", "7"),  # repetitive
        {"prompt": "p2", "completion": "the answer is 7", "answer": "7"},  # malformed (correct, no tags)
        _record("p2", "some reasoning", "7", "not a number"),  # ungradable
        _record("p2", f"seven {MARK} here", "7", "7"),  # unconvertible: the marker inside
        _record("p2", "four plus three gives seven", "7", "7"),  # kept
        _record("p3", "three plus four is seven", "7", "7"),  # kept: same text, other prompt
    ]
    pairs, stats = build_cold_start(records, correct_fn=arithmetic_reward)
    assert pairs == [
        ("p1", f"{MARK}three plus four is seven{MARK}The answer is $\\boxed{{7}}$."),
        ("p2", f"{MARK}four plus three gives seven{MARK}The answer is $\\boxed{{7}}$."),
        ("p3", f"{MARK}three plus four is seven{MARK}The answer is $\\boxed{{7}}$."),
    ]
    expected_dropped = dict.fromkeys(COLD_START_DROP_REASONS, 0)
    expected_dropped.update(incorrect=1, duplicate=1, mixed_language=1, repetitive=1, malformed=1,
                            ungradable=1, unconvertible=1)
    assert stats == {"records": 10, "kept": 3, "dropped": expected_dropped}
    assert all(r1_format_reward(completion) == 1.0 for _, completion in pairs)


def test_build_cold_start_with_a_target_language_and_a_custom_format():
    records = [_record("p", "三 加 四 等于 七", "7", "7"), _record("p", "three plus four is seven", "7", "7")]
    fmt = OutputFormat("<|r|>", "<|/r|>", "答案是 \\boxed{{answer}}")
    pairs, stats = build_cold_start(records, correct_fn=arithmetic_reward, language="zh", output_format=fmt)
    assert pairs == [("p", "<|r|>三 加 四 等于 七<|/r|>答案是 \\boxed{7}")]
    assert stats["dropped"]["mixed_language"] == 1
    # a summary the answer extraction cannot read back is refused, not written
    unreadable = OutputFormat(summary_template="答案是 {answer}")
    assert to_r1_format(records[0]["completion"], unreadable) is None


def test_build_cold_start_rejects_records_without_prompt_or_completion():
    with pytest.raises(ValueError, match="record 1 .*'prompt' and 'completion'"):
        build_cold_start([_record("p", "r", "7", "7"), {"completion": "x", "answer": "7"}],
                         correct_fn=arithmetic_reward)
