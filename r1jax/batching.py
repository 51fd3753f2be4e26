"""Host-side batching: ragged token lists to the fixed-shape arrays that compiled programs take.

    width = padded_width(50)                            # 56: a few widths per doubling, so few compiles
    tokens, mask = pad_left(prompts, pad_id, width=width, repeat=8)
    rows = round_up(len(examples), num_shards)          # fill a batch up to a multiple

Numpy only, no device: the rollout (`r1jax.rollout`), SFT and reward-model batches and the
multi-host helpers (`r1jax.distributed`) shape their rows here, and the jitted sampler
(`r1jax.sampling`) takes what comes out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_width(length: int, *, minimum_multiple: int = 8, per_doubling: int = 4) -> int:
    """The width to pad `length` tokens to: at most `per_doubling` widths between two powers of two.

    The multiple grows with the length (8 up to 63 tokens, then 16, 32, ...), so that padding adds
    at most 1 / per_doubling (25%) of the length while a run compiles a bounded number of shapes
    (about `per_doubling` per doubling of the longest prompt): SmolLM2's 50-token chat prompts
    pad to 56, not to 64.
    """
    if length < 1:
        raise ValueError(f"length={length}: pad at least one token")
    multiple = max(minimum_multiple, (1 << (length.bit_length() - 1)) // per_doubling)
    return round_up(length, multiple)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, *, multiple: int = 1, width: int | None = None,
             repeat: int = 1, dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """`dtype` tokens and int32 0/1 mask [len(rows) * repeat, W], each row `repeat` times in a row, padded on the left.

    W is `width`, or the longest row rounded up to `multiple` (so a run compiles for a
    few widths only). Left padding puts every row's last token in the same column, where
    decoding continues.
    """
    longest = max((len(row) for row in rows), default=0)
    width = round_up(max(longest, 1), multiple) if width is None else width
    if longest > width:
        raise ValueError(f"a row has {longest} tokens, more than the width {width}")
    tokens = np.full((len(rows) * repeat, width), pad_id, dtype)
    mask = np.zeros(tokens.shape, np.int32)
    for i, row in enumerate(rows):
        if len(row):
            tokens[i * repeat:(i + 1) * repeat, width - len(row):] = row
            mask[i * repeat:(i + 1) * repeat, width - len(row):] = 1
    return tokens, mask
