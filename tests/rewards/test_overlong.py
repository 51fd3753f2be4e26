"""DAPO's soft overlong punishment, on hand-worked lengths."""
import numpy as np
import pytest

from r1jax.rewards.overlong import soft_overlong_punishment


def test_hand_worked_lengths():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then (6 - |y|) / 4 down to -1 at 10,
    # and -1 beyond the budget.
    lengths = [0, 5, 6, 7, 8, 9, 10, 11, 40]
    want = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(soft_overlong_punishment(lengths, max_length=10, buffer=4), want)


def test_a_scalar_length_gives_a_scalar():
    # DAPO's setting: L_max = 20480, L_cache = 4096; 18000 tokens cost (16384 - 18000) / 4096.
    value = soft_overlong_punishment(18000, max_length=20480, buffer=4096)
    assert value.shape == () and value == pytest.approx(-1616 / 4096)


def test_buffer_zero_is_off_within_the_budget():
    # L_cache = 0 penalises nothing a sampler capped at L_max can draw.
    np.testing.assert_array_equal(soft_overlong_punishment([0, 9, 10], max_length=10, buffer=0), [0, 0, 0])
    assert soft_overlong_punishment(11, max_length=10, buffer=0) == -1


def test_the_whole_budget_as_buffer():
    # L_cache = L_max: every token costs 1 / L_max, the empty completion nothing.
    np.testing.assert_allclose(soft_overlong_punishment([0, 1, 5, 10], max_length=10, buffer=10),
                               [0.0, -0.1, -0.5, -1.0])


@pytest.mark.parametrize("buffer", [-1, 11])
def test_a_buffer_outside_the_budget_is_an_error(buffer):
    with pytest.raises(ValueError, match="L_cache"):
        soft_overlong_punishment(5, max_length=10, buffer=buffer)
