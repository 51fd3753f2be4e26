"""The `Tokenizer` protocol, the R1 tags, and the input checks both backends share.

The protocol's conventions (what `encode`, `decode`, `pad_id` and `stop_ids` promise) are set out in
the package docstring, `r1jax.tokenizers`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

PathLike = str | os.PathLike

# The tags of the DeepSeek-R1 format. As single tokens, the format reward and the answer extractor
# see exactly what the model chose to emit, and a tag never straddles two pieces.
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Tokens that end an assistant turn in the common chat formats (ChatML, Llama 3, Gemma, DeepSeek).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
                      "<｜end▁of▁sentence｜>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, the sampler and the rewards need from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (a model's embedding table may be padded larger)."""

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None:
        """The pad token, or EOS when the tokenizer has no pad token."""

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a generation: EOS and the end-of-turn tokens in the vocabulary."""

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None:
        """The id of one whole token (e.g. "</answer>"), or None if the vocabulary lacks it."""

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str: ...


def _existing_file(path: PathLike, what: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No {what} at {path}: the path does not exist.")
    if not path.is_file():
        raise ValueError(f"Expected a {what} file at {path}, found a directory.")
    return path


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"encode takes one string, got {type(text).__name__}; encode a batch one text at a time.")


def _token_id_list(ids: Sequence[int] | np.ndarray, vocab_size: int) -> list[int]:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"decode takes one sequence of token ids (1-D), got an array of shape {array.shape}; "
                         "decode a batch row by row.")
    if array.size == 0:
        return []
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"Token ids must be integers, got dtype {array.dtype}.")
    outside = array[(array < 0) | (array >= vocab_size)]
    if outside.size:
        raise ValueError(f"Token id {int(outside[0])} is outside this tokenizer's vocabulary [0, {vocab_size}). "
                         "Ids past the vocabulary come from a padded embedding table: mask them out before sampling.")
    return array.tolist()


def _pad_or_eos(pad_id: int | None, eos_id: int | None) -> int | None:
    return pad_id if pad_id is not None else eos_id
