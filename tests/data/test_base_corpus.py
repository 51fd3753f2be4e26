"""The stand-in base model's pretraining corpus: worked solutions and quick answers."""
import numpy as np
import pytest

from r1jax import data

from r1jax.data.base_corpus import CorpusStyle, base_corpus, sample_completion, worked_steps
from r1jax.rewards import get_reward


def test_worked_steps_innermost_first():
    steps, reached, value = worked_steps("3 + 4 * (2 - 5)", np.random.default_rng(0), error_rate=0.0)
    assert steps == ["2 - 5 = -3", "4 * -3 = -12", "3 + -12 = -9"]
    assert reached == value == -9


@pytest.mark.parametrize("expression", ["6 - 2", "3 * (4 + 1)", "(5 - 6) * 2 + 1"])
def test_a_careless_step_carries_to_the_answer(expression):
    rng = np.random.default_rng(1)
    for _ in range(50):
        steps, reached, value = worked_steps(expression, rng, error_rate=1.0)
        assert reached != value  # operands are >= 1, so no later step can cancel the error
        # exactly one step is wrong on its own terms; the others are right given what they were shown
        wrong = [s for s in steps if eval(s.split(" = ")[0]) != int(s.split(" = ")[1])]
        assert len(wrong) == 1
        assert 1 <= abs(eval(wrong[0].split(" = ")[0]) - int(wrong[0].split(" = ")[1])) <= 3


def test_completions_mix_in_the_stated_proportions():
    style = CorpusStyle(worked_rate=0.3, error_rate=0.1, tagged_rate=0.5, guess_accuracy=0.2)
    rng = np.random.default_rng(2)
    n = 20_000
    draws = [sample_completion("2 * 3 + 5", rng, style) for _ in range(n)]
    worked = [(text, right) for text, right in draws if " = " in text]
    quick = [(text, right) for text, right in draws if " = " not in text]

    def close(count, total, p):  # within 4 binomial standard deviations
        return abs(count - total * p) <= 4 * np.sqrt(total * p * (1 - p))

    assert close(len(worked), n, 0.3)
    assert close(sum(right for _, right in worked), len(worked), 0.9)
    assert close(sum("<think>" in text for text, _ in worked), len(worked), 0.5)
    assert close(sum(right for _, right in quick), len(quick), 0.2)
    assert all(text == " the answer is 11 ." for text, right in quick if right)
    assert not any("<think>" in text for text, _ in quick)


def test_completions_are_scored_as_the_corpus_says():
    """The rule rewards agree with the corpus about which completions are right and formatted."""
    arithmetic, strict_format = get_reward("arithmetic"), get_reward("format")
    rng = np.random.default_rng(3)
    for _ in range(300):
        text, right = sample_completion("4 - 6 * 2", rng)
        assert arithmetic(text, answer="-8") == float(right)
        assert strict_format(text) == float("<think>" in text)


def test_base_corpus_pairs_prompts_with_fresh_completions():
    examples = [{"expression": "1 + 2", "answer": "3"}] * 200
    pairs = base_corpus(examples, np.random.default_rng(4),
                        prompt=lambda example: data.format_prompt(f"Compute {example['expression']}."))
    assert len({prompt for prompt, _ in pairs}) == 1
    assert "1 + 2" in pairs[0][0] and "<think>" in pairs[0][0]  # the R1-Zero template
    assert len({completion for _, completion in pairs}) > 5


def test_style_rejects_a_rate_outside_0_1():
    with pytest.raises(ValueError, match="worked_rate is a probability"):
        CorpusStyle(worked_rate=1.5)


def test_narration_mixes_languages_word_by_word():
    from r1jax.rewards.language import chain_of_thought, language_consistency

    english = sample_completion("2 + 3", np.random.default_rng(5),
                                CorpusStyle(worked_rate=1.0, error_rate=0.0, tagged_rate=1.0, narrate=True))
    assert english == (" <think> we get 2 + 3 = 5 </think> <answer> 5 </answer>", True)
    style = CorpusStyle(worked_rate=1.0, tagged_rate=1.0, narrate=True, chinese_rate=0.5)
    rng = np.random.default_rng(6)
    shares = [language_consistency(chain_of_thought(sample_completion("2 + 3", rng, style)[0]), "en")
              for _ in range(2000)]
    # "我们" and "得到" are two Han words each: English shares 1, 1/3 (one word each way) and 0
    assert set(np.round(shares, 3)) == {1.0, 0.333, 0.0}
    assert abs(np.mean(np.asarray(shares) == 1.0) - 0.25) < 0.04
    with pytest.raises(ValueError, match="needs narrate=True"):
        CorpusStyle(chinese_rate=0.3)



def test_a_checked_solution_catches_its_careless_step_and_reaches_the_true_value():
    from r1jax.data.base_corpus import _parse, render_steps

    tree = _parse("1 + 2 + 3 - 5")  # steps: 1 + 2 = 3, 3 + 3 = 6, 6 - 5 = 1
    plain, plain_reached, value = render_steps(tree, (1, 2))
    assert plain == ["1 + 2 = 3", "3 + 3 = 8", "8 - 5 = 3"] and plain_reached == 3 != value == 1
    checked, reached, _ = render_steps(tree, (1, 2), checked=True)
    assert checked == ["1 + 2 = 3 , re-check : 1 + 2 = 3", "3 + 3 = 8 , re-check : 3 + 3 = 6 , wait , it is 6",
                       "6 - 5 = 1 , re-check : 6 - 5 = 1"]
    assert reached == value == 1


def test_checked_solutions_come_at_their_rate_and_the_reflection_rule_finds_exactly_them():
    from r1jax.evaluation import reflects

    style = CorpusStyle(worked_rate=0.5, error_rate=0.4, tagged_rate=1.0, check_rate=0.3, guess_accuracy=0.0)
    rng = np.random.default_rng(6)
    n = 6000
    draws = [sample_completion("2 + 3 + 4 + 5", rng, style) for _ in range(n)]
    worked = [(text, right) for text, right in draws if " = " in text]
    checked = [(text, right) for text, right in worked if "re-check" in text]
    assert abs(len(checked) - 0.3 * len(worked)) <= 4 * np.sqrt(len(worked) * 0.3 * 0.7)
    assert all(right for _, right in checked)  # a careless step is always caught
    unchecked_right = np.mean([right for text, right in worked if "re-check" not in text])
    assert abs(unchecked_right - 0.6) < 0.05  # 1 - error_rate
    assert [reflects(text) for text, _ in draws] == ["re-check" in text for text, _ in draws]
    # "wait" marks exactly the checked solutions that had a careless step
    assert abs(np.mean(["wait" in text for text, _ in checked]) - 0.4) < 0.06
    # longer: about twice the worked solution's text
    assert np.mean([len(t) for t, _ in checked]) > 1.8 * np.mean([len(t) for t, _ in worked if "re-check" not in t])


def test_restated_steps_carry_the_rest_of_the_expression_with_each_written_value():
    from r1jax.data.base_corpus import _parse, render_steps

    steps, reached, value = render_steps(_parse("3 + 4 + 4 - 2"), (1, 2), restate=True)
    # the careless 13 is what the rest is restated with, so it carries to the answer
    assert steps == ["3 + 4 = 7 , now 7 + 4 - 2", "7 + 4 = 13 , now 13 - 2", "13 - 2 = 11"]
    assert (reached, value) == (11, 9)
    steps, reached, _ = render_steps(_parse("3 + 4 * (2 - 5)"), None, checked=True, restate=True)
    assert steps == ["2 - 5 = -3 , re-check : 2 - 5 = -3 , now 3 + 4 * -3",
                     "4 * -3 = -12 , re-check : 4 * -3 = -12 , now 3 + -12", "3 + -12 = -9 , re-check : 3 + -12 = -9"]
    # restating draws nothing: the same draws give the same choices with and without it
    plain = [sample_completion("1 + 2 + 3", np.random.default_rng(7), CorpusStyle(worked_rate=0.5))[1] for _ in range(5)]
    restated = [sample_completion("1 + 2 + 3", np.random.default_rng(7), CorpusStyle(worked_rate=0.5, restate=True))[1]
                for _ in range(5)]
    assert plain == restated
