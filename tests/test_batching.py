"""Host-side padding (r1jax.batching), by hand."""
import numpy as np
import pytest

from r1jax.batching import pad_left, padded_width, round_up


def test_round_up():
    assert [round_up(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 4, 4, 8, 8]


def test_padded_width_adds_at_most_a_quarter():
    # multiples of 8 below 64 tokens, then 16 up to 127, 32 up to 255
    assert [padded_width(n) for n in (1, 8, 9, 50, 63, 64, 65, 100, 128, 129)] == [
        8, 8, 16, 56, 64, 64, 80, 112, 128, 160]
    for length in range(32, 2000):
        assert length <= padded_width(length) <= 1.25 * length
    with pytest.raises(ValueError, match="at least one token"):
        padded_width(0)


def test_pad_left_puts_every_last_token_in_the_last_column():
    tokens, mask = pad_left([[5, 6, 7], [8], []], pad_id=0, multiple=4)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert tokens.dtype == np.int32 and mask.dtype == np.int32


def test_pad_left_repeats_rows_in_groups_and_takes_a_width():
    tokens, mask = pad_left([[1, 2], [3]], pad_id=9, width=3, repeat=2, dtype=np.int64)
    np.testing.assert_array_equal(tokens, [[9, 1, 2], [9, 1, 2], [9, 9, 3], [9, 9, 3]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]])
    assert tokens.dtype == np.int64
    with pytest.raises(ValueError, match="a row has 3 tokens, more than the width 2"):
        pad_left([[1, 2, 3]], pad_id=0, width=2)
