"""The SentencePiece backend: `SentencePieceTokenizer`, and `train_sentencepiece`, which makes one from a corpus
in a second, with the R1 tags as single tokens. For the small models we train from scratch on synthetic tasks.

(This module shares its name with the `sentencepiece` package; every import of that package here is absolute.)
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from r1jax.tokenizers.base import (END_OF_TURN_TOKENS, R1_TAGS, PathLike, _check_text, _existing_file, _pad_or_eos,
                                   _token_id_list)
from r1jax.tokenizers.chat import plain_chat_prompt, render_chat_template
from r1jax.tokenizers.export import _save_hf_files

if TYPE_CHECKING:
    import sentencepiece


class SentencePieceTokenizer:
    """A SentencePiece model. Its chat format is `plain_chat_prompt` unless a jinja2 template is given."""

    def __init__(self, processor: "sentencepiece.SentencePieceProcessor", *, chat_template: str | None = None):
        self.processor = processor
        self.chat_template = chat_template

    @classmethod
    def from_file(cls, path: PathLike, *, chat_template: str | None = None) -> "SentencePieceTokenizer":
        import sentencepiece

        path = _existing_file(path, "SentencePiece model")
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path} is not a SentencePiece model ({error}).") from error
        return cls(processor, chat_template=chat_template)

    def _optional_id(self, token_id: int) -> int | None:
        return token_id if token_id >= 0 else None  # SentencePiece says -1 for "disabled"

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    @property
    def bos_id(self) -> int | None:
        return self._optional_id(self.processor.bos_id())

    @property
    def eos_id(self) -> int | None:
        return self._optional_id(self.processor.eos_id())

    @property
    def pad_id(self) -> int | None:
        return _pad_or_eos(self._optional_id(self.processor.pad_id()), self.eos_id)

    @property
    def stop_ids(self) -> frozenset[int]:
        ids = {self.token_to_id(token) for token in END_OF_TURN_TOKENS} | {self.eos_id}
        return frozenset(ids - {None})

    def token_to_id(self, token: str) -> int | None:
        token_id = self.processor.piece_to_id(token)
        # Unknown pieces map to the unk id; only the unk piece itself truly has it.
        if token_id == self.processor.unk_id() and token != self.processor.id_to_piece(token_id):
            return None
        return token_id

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Text to ids. User-defined pieces (the R1 tags) are matched anywhere in the text; control
        pieces such as "<s>" are not, as SentencePiece never reads them from text."""
        _check_text(text)
        ids = self.processor.encode(text)
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True, but this SentencePiece model has no BOS token (bos_id=-1).")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        ids = _token_id_list(ids, self.vocab_size)
        if skip_special_tokens:
            return self.processor.decode(ids)  # SentencePiece renders control pieces as ""
        # Decode the runs between control pieces, and write each control piece itself.
        parts, run = [], []
        for token_id in ids:
            if self.processor.is_control(token_id):
                parts += [self.processor.decode(run), self.processor.id_to_piece(token_id)]
                run = []
            else:
                run.append(token_id)
        parts.append(self.processor.decode(run))
        return "".join(parts)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            return plain_chat_prompt(messages, add_generation_prompt=add_generation_prompt)
        special = {name: self.processor.id_to_piece(token_id) if token_id is not None else None
                   for name, token_id in (("bos_token", self.bos_id), ("eos_token", self.eos_id))}
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    **special)

    def save_pretrained(self, directory: PathLike, *, model_max_length: int | None = None) -> pathlib.Path:
        """Write `tokenizer.model` and the configuration files beside it (`_save_hf_files`).

        `transformers` builds its tokenizer from `tokenizer.model` (it needs `sentencepiece` and
        `protobuf`) and encodes text as `encode` does, except that it matches control pieces written in
        the text ("<s>", "</s>") as tokens, which SentencePiece never does. A BPE model without
        normalisation (every `train_sentencepiece` BPE model) is declared a `LlamaTokenizer`, which
        transformers 4 (and so vLLM) and 5 both rebuild exactly; any other model is left to the generic
        conversion of transformers 5, which transformers 4 lacks (it refuses to load it). In either
        version, a `qwen2` model's directory always gets `Qwen2Tokenizer`, which is wrong for these.
        """
        from sentencepiece import sentencepiece_model_pb2

        processor = self.processor
        proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
        special = {name: processor.id_to_piece(token_id) for name, token_id in (
            ("bos_token", self.bos_id), ("eos_token", self.eos_id), ("unk_token", processor.unk_id()),
            ("pad_token", self._optional_id(processor.pad_id()))) if token_id is not None}
        normalizer = proto.normalizer_spec
        as_llama = (proto.trainer_spec.model_type == proto.trainer_spec.BPE and normalizer.name == "identity"
                    and not normalizer.remove_extra_whitespaces)
        tokenizer_class = (dict(tokenizer_class="LlamaTokenizer", legacy=False,
                                add_prefix_space=normalizer.add_dummy_prefix) if as_llama else {})
        # BOS first in `tokenizer(text)`, the ids `encode(text, add_bos=True)` gives a plain-text prompt.
        return _save_hf_files(self, directory, {"tokenizer.model": processor.serialized_model_proto()}, special,
                              model_max_length=model_max_length, add_bos_token=self.bos_id is not None,
                              add_eos_token=False, **tokenizer_class)


def train_sentencepiece(
    texts: Iterable[str],
    model_path: PathLike,
    *,
    vocab_size: int,
    user_defined_symbols: Sequence[str] = R1_TAGS,
    model_type: str = "bpe",
    split_digits: bool = True,
    byte_fallback: bool = True,
    seed: int = 0,
    chat_template: str | None = None,
    **trainer_options: Any,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on `texts` in-process, write it to `model_path`, and return it.

    The defaults suit our synthetic tasks:
      * `split_digits`: every digit is its own piece, so a number's tokens line up with its digits,
        which is what a small model needs to learn arithmetic;
      * `byte_fallback`: any character outside the corpus still encodes (as its UTF-8 bytes), so no
        text the model or a user writes ever becomes <unk>; this costs 256 ids of the vocabulary;
      * `user_defined_symbols`: the R1 tags, each one token wherever it appears;
      * identity normalization, whitespace kept as written and no dummy prefix space:
        `decode(encode(text)) == text` for every text, so a reward reads exactly what the model wrote,
        and `decode(encode(a) + encode(b)) == a + b`, so a prompt and its completion can be encoded
        apart and joined;
      * ids pad=0, unk=1, bos=2, eos=3; a single thread and a fixed seed, so the same texts give the
        same model, byte for byte.
    Any other SentencePiece trainer option (e.g. `hard_vocab_limit=False`) is passed through.
    """
    import io

    import sentencepiece

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}.")
    texts = list(texts)
    if not texts:
        raise ValueError("train_sentencepiece got no texts: the corpus is empty.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}; the corpus must be strings.")
    options = dict(
        vocab_size=vocab_size, model_type=model_type, user_defined_symbols=list(user_defined_symbols),
        split_digits=split_digits, byte_fallback=byte_fallback, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        # SentencePiece silently drops longer sentences (its default is 4192 bytes); reasoning traces
        # are long.
        max_sentence_length=1 << 16,
        num_threads=1, minloglevel=2,
    )
    options.update(trainer_options)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **options)
    except RuntimeError as error:
        raise ValueError(f"SentencePiece training failed: {error}") from error
    model_path = pathlib.Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return SentencePieceTokenizer(processor, chat_template=chat_template)
