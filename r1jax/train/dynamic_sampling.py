"""DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476, sec. 3.2) under static shapes: host-side groups.

A group whose rewards are all equal has advantage 0 on every row (grpo, rloo, Dr. GRPO), so it
adds no policy gradient, only a smaller effective batch. DAPO over-samples prompts and keeps the
groups whose rewards differ. Dropping rows from a jitted batch changes its shape, and every shape
downstream (reference forward, train step) compiles again. Here the kept groups wait on the host
in `Groups` (whole groups, each row the sampler's tokens at the sampler's width), and `assemble`
pads a fixed number of them into one `RolloutBatch` whose shape is plain GRPO's: rows are
`prompts_per_step x G` every step, columns are `rollout.prompt_width` of its longest prompt and
`rollout.completion_width` of its longest completion, the rule `rollout` and `trim_to_longest` use. A
step that finds too few groups fills the rest with masked copies (`Groups.masked`): completion mask
0 and invalid rewards (advantage 0), so the shape does not change.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import operator
from typing import Sequence

import numpy as np

from r1jax.batching import pad_left
from r1jax.rollout import RolloutBatch


def informative_groups(total: np.ndarray, valid: np.ndarray, group_size: int) -> np.ndarray:
    """bool [N / G]: the group's valid rewards differ (so at least two are valid).

    With the accuracy reward alone this is DAPO's 0 < accuracy < 1; in general it is "the group's
    advantages are not all 0". NaN (invalid) rewards are left out, as the advantages leave them out.
    """
    total = np.asarray(total, np.float64).reshape(-1, group_size)
    valid = np.asarray(valid, bool).reshape(-1, group_size)
    high = np.where(valid, total, -np.inf).max(axis=1)
    low = np.where(valid, total, np.inf).min(axis=1)
    return high > low


@dataclasses.dataclass(frozen=True)
class Groups:
    """Whole groups of one process's rollout rows on the host, stacked by group (n groups of G rows).

    prompts       n int32 arrays: each group's prompt ids (unpadded)
    completions   int32 [n, G, M]  the sampler's tokens (M = max_new_tokens; `pad_id` after a stop)
    masks         int32 [n, G, M]  1 on completion tokens
    logprobs      f32 [n, G, M] the sampler's log-probs, or None where the batch does not keep them
    total, valid  [n, G]  rewards (NaN / False: could not be judged) as the advantages read them
    truncated     bool [n, G]  cut off at max_new_tokens
    """
    prompts: tuple[np.ndarray, ...]
    completions: np.ndarray
    masks: np.ndarray
    logprobs: np.ndarray | None
    total: np.ndarray
    valid: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_rows(cls, prompt_tokens, prompt_mask, completions, masks, logprobs, total, valid, truncated, *,
                  group_size: int) -> Groups:
        """Rows grouped by prompt, as a rollout returns them (this process's rows, on the host)."""
        by_group = lambda x: None if x is None else np.asarray(x).reshape(-1, group_size, *np.shape(x)[1:])
        first = slice(None, None, group_size)
        prompts = tuple(row[mask.astype(bool)] for row, mask in zip(np.asarray(prompt_tokens)[first],
                                                                   np.asarray(prompt_mask)[first]))
        return cls(prompts, by_group(completions), by_group(masks), by_group(logprobs), by_group(total),
                   by_group(valid), by_group(truncated))

    def take(self, index) -> Groups:
        """The groups at `index` (ints), in that order."""
        index = np.asarray(index, int).reshape(-1)
        pick = lambda x: None if x is None else x[index]
        return Groups(tuple(self.prompts[i] for i in index), pick(self.completions), pick(self.masks),
                      pick(self.logprobs), pick(self.total), pick(self.valid), pick(self.truncated))

    def masked(self, count: int) -> Groups:
        """`count` copies of the first group that no loss or statistic reads: completion mask 0, rewards invalid."""
        filler = self.take([0] * count)
        return dataclasses.replace(filler, masks=np.zeros_like(filler.masks), valid=np.zeros_like(filler.valid),
                                   total=np.full_like(filler.total, np.nan))

    def to_json(self) -> dict:
        """The groups as JSON, bit for bit (arrays as base64 of their bytes), for a checkpoint's host state."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}
        return {"prompts": [p.tolist() for p in self.prompts],
                "arrays": {name: None if x is None else {"dtype": x.dtype.str, "shape": list(x.shape),
                                                         "bytes": base64.b64encode(x.tobytes()).decode("ascii")}
                           for name, x in arrays.items()}}

    @classmethod
    def from_json(cls, saved: dict) -> Groups:
        """`to_json`'s groups back."""
        array = lambda x: None if x is None else np.frombuffer(base64.b64decode(x["bytes"]), np.dtype(x["dtype"])
                                                               ).reshape(x["shape"]).copy()
        return cls(tuple(np.asarray(p, np.int32) for p in saved["prompts"]),
                   *(array(saved["arrays"][f.name]) for f in dataclasses.fields(cls)[1:]))

    def __add__(self, other: Groups) -> Groups:
        join = lambda a, b: None if a is None else np.concatenate([a, b])
        return Groups(self.prompts + other.prompts, *(join(getattr(self, f.name), getattr(other, f.name))
                                                      for f in dataclasses.fields(self)[1:]))


def join_groups(parts: Sequence[Groups]) -> Groups:
    """The groups of `parts` (e.g. every process's, `allgather_objects`) as one `Groups`, in that order."""
    return functools.reduce(operator.add, parts)


def assemble(groups: Groups, *, pad_id: int, prompt_width: int, width: int, rows_per_group: int) -> RolloutBatch:
    """The groups as one host `RolloutBatch` [n G, prompt_width + width], laid out as `training_batch` lays
    out a rollout trimmed by `trim_to_longest`: prompts left-padded to `prompt_width` columns, then the first
    `width` completion columns. `old_logps` are the sampler's where the groups kept them.

    GRPO picks both widths as the rollout and `trim_to_longest` do (`rollout.prompt_width`,
    `rollout.completion_width` of the longest prompt and completion of the groups trained): the shapes
    are the ones plain GRPO would compile.
    """
    group_size = groups.completions.shape[1]
    prompt_tokens, prompt_mask = pad_left(groups.prompts, pad_id, width=prompt_width, repeat=group_size)
    rows = lambda x: x[:, :, :width].reshape(-1, width)
    completions, masks = rows(groups.completions), rows(groups.masks)
    old_logps = None
    if groups.logprobs is not None:
        old_logps = np.concatenate([np.zeros(prompt_mask.shape, np.float32), rows(groups.logprobs)], axis=1)
    return RolloutBatch(np.concatenate([prompt_tokens, completions], axis=1),
                        np.concatenate([prompt_mask, masks], axis=1),
                        np.concatenate([np.zeros_like(prompt_mask), masks], axis=1), old_logps=old_logps,
                        rows_per_group=rows_per_group, completion_columns=width)
