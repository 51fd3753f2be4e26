"""DAPO's soft overlong punishment: a length penalty over the last tokens of the budget.

DAPO (Yu et al. 2025, arXiv:2503.14476, sec. 3.4, "Soft Overlong Punishment"), with L_max the generation budget and L_cache
the buffer before it, for a completion of |y| tokens:

    R_length(y) = 0                                if |y| <= L_max - L_cache
                  ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                  -1                               if L_max < |y|

added to the rule-based reward. It falls linearly from 0 to -1 over the buffer, so a
completion that runs into the budget is punished, gently at first, instead of only
earning whatever reward its cut-off text happens to get.

Lengths are in TOKENS, which a registered reward (`fn(completion_text, **example)`)
does not see; the GRPO stage adds this term itself to every row's total, judged rows
included, with `grpo.overlong_buffer` = L_cache and `max_new_tokens` = L_max, and logs it
as `reward/overlong` (`r1jax.train.grpo`).
"""
from __future__ import annotations

import numpy as np

OVERLONG_REWARD = "overlong"  # its name in the reward metrics (`reward/overlong`)


def soft_overlong_punishment(lengths, *, max_length: int, buffer: int) -> np.ndarray:
    """R_length of each length (above): float64 of the shape of `lengths`, in [-1, 0].

    lengths: completion lengths in tokens (an int or an array of them).
    max_length: L_max, the budget (a GRPO rollout's `max_new_tokens`).
    buffer: L_cache, 0 <= buffer <= max_length; 0 penalises only lengths above L_max.
    """
    if not 0 <= buffer <= max_length:
        raise ValueError(f"the overlong buffer L_cache={buffer} must lie in [0, L_max={max_length}]")
    lengths = np.asarray(lengths, np.float64)
    start = max_length - buffer  # the last length that costs nothing
    inside = (start - lengths) / max(buffer, 1)
    return np.where(lengths <= start, 0.0, np.where(lengths <= max_length, inside, -1.0))
