"""The two kinds of example a prompt can be, which decide how it is rewarded.

A reasoning example (`kind == "reasoning"`, or no `kind` at all: every rule-checked task) is
scored by its task's rule-based rewards; a general example (`kind == "general"`, its prompt in
`question`) by a model judge (R1's all-scenario RL stage). Generic code asks `is_general`.
"""
from __future__ import annotations

GENERAL = "general"
REASONING = "reasoning"


def is_general(example) -> bool:
    """Whether an example is a general prompt (`kind == 'general'`, its prompt in `question`).

    `kind == 'reasoning'` and examples without a `kind` (every rule-checked task:
    arithmetic, countdown, gsm8k, math, ...) are reasoning examples.
    """
    kind = example.get("kind")
    if kind not in (None, GENERAL, REASONING):
        raise ValueError(f"an example's kind must be 'general' or 'reasoning' (or absent: reasoning), "
                         f"got {kind!r}")
    return kind == GENERAL
