"""r1jax.evaluation.reflection: the documented rule on hand-picked completions, and the conditioned
accuracies against a hand count."""
import numpy as np
import pytest

from r1jax.evaluation import REFLECTION_MARKERS, reflection_flags, reflection_metrics, reflects


@pytest.mark.parametrize("text,expected", [
    # the paper's own "aha moment" (DeepSeek-R1, Table 3)
    ("Wait, wait. Wait. That's an aha moment I can flag here. Let's reevaluate this step-by-step", True),
    ("3 + 4 = 7, 7 * 2 = 14. Let me check: 7 * 2 = 14. <answer>14</answer>", True),
    ("7 * 2 = 15. Correction: 7 * 2 = 14.", True),
    ("I made a MISTAKE above", True),
    ("double-check the sum", True),
    ("re-check: 12 - 5 = 7", True),
    # whole words only: a marker inside another word is no reflection
    ("The queue awaits its turn; mistakes_made = 0", False),
    ("3 + 4 = 7 <answer>7</answer>", False),
    ("", False),
])
def test_the_rule_finds_whole_markers_in_any_case(text, expected):
    assert reflects(text) is expected
    assert reflection_flags([text]).tolist() == [expected]


def test_a_task_passes_its_own_markers():
    assert not reflects("verifying: 2 + 2 = 4")
    assert reflects("verifying: 2 + 2 = 4", markers=("verifying",))
    with pytest.raises(ValueError, match="non-empty strings"):
        reflects("text", markers=("",))
    assert "wait" in REFLECTION_MARKERS


def test_accuracy_conditioned_on_reflecting_by_hand():
    completions = ["wait, 5", "5", "let me check: 6", "6", "re-check 7", "7"]
    correct = np.array([1.0, 0.0, 0.0, 1.0, 1.0, np.nan])  # the last was not judged
    metrics = reflection_metrics(reflection_flags(completions), correct)
    assert metrics["reflection_rate"] == pytest.approx(3 / 6)
    assert metrics["accuracy_reflecting"] == pytest.approx(2 / 3)  # rows 0, 2, 4
    assert metrics["accuracy_not_reflecting"] == pytest.approx(1 / 2)  # rows 1, 3 (5 not judged)


def test_an_empty_class_leaves_its_accuracy_out_not_zero():
    metrics = reflection_metrics(np.array([False, False]), np.array([1.0, 0.0]))
    assert metrics == {"reflection_rate": 0.0, "accuracy_not_reflecting": 0.5}
    assert "accuracy_not_reflecting" not in reflection_metrics(np.array([True, False]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="no completions"):
        reflection_metrics(np.array([], bool))
    assert set(reflection_metrics(np.array([True]))) == {"reflection_rate"}  # no accuracies without them
    with pytest.raises(ValueError, match="one per completion"):
        reflection_metrics(np.array([True, False]), np.array([1.0]))
