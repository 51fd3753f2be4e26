"""Tokenizers behind one small protocol, and the chat templates that turn messages into a prompt.

Two backends:

* `SentencePieceTokenizer` for the small models we train from scratch on synthetic tasks;
  `train_sentencepiece` makes one from a corpus in a second, with the R1 tags as single tokens.
* `HFTokenizer` for real checkpoints, on the Hugging Face `tokenizers` library: a `tokenizer.json`,
  a Hugging Face directory, or the vocabulary stored inside a GGUF file (`from_gguf`).

`load_tokenizer(path)` picks the right one from what the path is. `save_tokenizer(tokenizer, directory)`
writes either as a Hugging Face directory (its vocabulary file, `tokenizer_config.json` with the chat
template, `generation_config.json` with the stop ids) that `load_tokenizer`, `transformers` and vLLM read.

Conventions both backends keep, because the sampler and the rewards depend on them:

* `encode` adds nothing to the text: no BOS, no EOS, unless `add_bos=True`. A chat template writes
  its own special tokens, and a BOS added on top of it would be a second one.
* `decode` decodes every id it is given; cutting a completion at its stop token is the sampler's job.
  `skip_special_tokens` drops control tokens (BOS, EOS, `<|im_end|>`, ...), never the R1 tags
  `<think>`/`<answer>`, which are ordinary (user-defined) tokens the rewards must see.
* `pad_id` is the tokenizer's pad token, or its EOS when it has none (padding is masked out, so any id
  does; EOS is the one that every causal LM has). It is None only when neither exists.
* `stop_ids` is EOS plus whichever end-of-turn tokens the vocabulary has (`<|im_end|>`, `<|eot_id|>`,
  ...): instruct models end a turn with those rather than with EOS.

Everything here is host-side Python; ids go to the device as arrays built by the caller.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import sentencepiece
    import tokenizers

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


# ---------------------------------------------------------------------------------------------------
# Chat templates


def plain_chat_prompt(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """The chat format of a tokenizer without a template of its own (any SentencePiece model).

    The plain-text format of the R1-Zero paper, one line per message: a system message verbatim (it
    holds the instructions), every other message as "<Role>: <content>", then "Assistant:" when
    a generation prompt is asked for. No space follows that colon: the model writes its own, as it
    did in every "Assistant: ..." line it was trained on.

        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"}]
        -> "Answer briefly.\\nUser: 2+2?\\nAssistant:"
    """
    lines = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f"messages[{index}] must be a dict with a string 'role' and a string 'content'; "
                             f"got {message!r}.")
        lines.append(content if role == "system" else f"{role.capitalize()}: {content}")
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool = True, **variables: Any) -> str:
    """Render a Hugging Face chat template (jinja2) exactly as `transformers` renders it.

    Same sandboxed environment (trim_blocks, lstrip_blocks, loop controls, the `{% generation %}`
    tag), the same helpers (`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII) and
    the same variables: `messages`, `add_generation_prompt`, `tools=None`, `documents=None`, plus
    whatever is passed, usually `bos_token`/`eos_token`. A template that calls `raise_exception`
    raises `jinja2.TemplateError` with its message.
    """
    variables = {"tools": None, "documents": None, **variables}
    return _compile_chat_template(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(template: str):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:
        raise ImportError("Rendering a jinja2 chat template needs jinja2: `pip install jinja2` "
                          "(or `pip install 'r1jax[hf]'`).") from error

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks the assistant's text for transformers'
        # assistant masks; here it renders its body unchanged.
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja2's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols", GenerationTag])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(template)


# ---------------------------------------------------------------------------------------------------
# Shared checks


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


# ---------------------------------------------------------------------------------------------------
# SentencePiece


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


# ---------------------------------------------------------------------------------------------------
# Hugging Face `tokenizers`


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` with its special tokens and chat template.

    Special tokens are given by their text and must be in the vocabulary. Without a chat template,
    `apply_chat_template` uses `plain_chat_prompt` (the R1-Zero format for base models).
    """

    def __init__(self, tokenizer: "tokenizers.Tokenizer", *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None,
                 chat_template: str | None = None, extra_stop_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self._bos_id, self._eos_id, self._pad_id = (self._required_id(token, name) for token, name in (
            (bos_token, "bos_token"), (eos_token, "eos_token"), (pad_token, "pad_token")))
        special_ids = {token_id for token_id, added in tokenizer.get_added_tokens_decoder().items() if added.special}
        end_of_turn = {self.token_to_id(token) for token in END_OF_TURN_TOKENS} & special_ids
        self._stop_ids = frozenset(({self._eos_id} | end_of_turn | set(extra_stop_ids)) - {None})

    def _required_id(self, token: str | None, name: str) -> int | None:
        if token is None:
            return None
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{name}={token!r} is not in the tokenizer's vocabulary.")
        return token_id

    @classmethod
    def from_file(cls, path: PathLike, **kwargs: Any) -> "HFTokenizer":
        """A `tokenizer.json`. It names no BOS/EOS; pass them (`eos_token=...`) or use
        `from_pretrained_dir`, which reads them from `tokenizer_config.json`."""
        import tokenizers

        path = _existing_file(path, "tokenizer.json")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a bare Exception on malformed files
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({error}).") from error
        return cls(tokenizer, **kwargs)

    @classmethod
    def from_pretrained_dir(cls, directory: PathLike) -> "HFTokenizer":
        """A Hugging Face model directory: `tokenizer.json`, with special tokens and chat template from
        `tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja` when present, and
        extra stop ids from the `eos_token_id` list of `generation_config.json`."""
        directory = pathlib.Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"No Hugging Face tokenizer directory at {directory}.")
        if not (directory / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{directory} has no tokenizer.json (only 'fast' tokenizers are supported).")

        config = {**_read_json(directory / "special_tokens_map.json"),
                  **_read_json(directory / "tokenizer_config.json")}

        def token_text(token: Any) -> str | None:  # saved either as text or as an AddedToken dict
            return token.get("content") if isinstance(token, dict) else token

        generation_eos = _read_json(directory / "generation_config.json").get("eos_token_id", [])
        extra_stop_ids = generation_eos if isinstance(generation_eos, list) else [generation_eos]
        return cls.from_file(directory / "tokenizer.json", bos_token=token_text(config.get("bos_token")),
                             eos_token=token_text(config.get("eos_token")),
                             pad_token=token_text(config.get("pad_token")),
                             chat_template=_saved_chat_template(directory), extra_stop_ids=extra_stop_ids)

    @classmethod
    def from_gguf(cls, path: PathLike) -> "HFTokenizer":
        """The tokenizer stored in a GGUF file's metadata, as llama.cpp builds it.

        Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM, Llama 3, Qwen 2,
        the DeepSeek-R1 distills) are supported. The pre-tokenizer follows `tokenizer.ggml.pre`; tokens
        of type CONTROL become special tokens, USER_DEFINED ones ordinary added tokens, both matched
        whole in the text. End-of-turn ids (`eot_token_id`, `eom_token_id`) join `stop_ids`.
        `tokenizer.ggml.add_bos_token` becomes the post-processor, as in the model's own tokenizer.json:
        `encode` never applies it (BOS only when asked; chat templates write their own), but
        `transformers` and vLLM do to a plain prompt once the tokenizer is saved (`save_pretrained`).
        """
        import gguf

        path = _existing_file(path, "GGUF file")
        with open(path, "rb") as file:
            if file.read(4) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic).")
        reader = gguf.GGUFReader(path)

        def field(key: str, default: Any = None) -> Any:
            return reader.fields[key].contents() if key in reader.fields else default

        model_type = field("tokenizer.ggml.model")
        if model_type != "gpt2":
            raise ValueError(
                f"{path} stores a {model_type!r} tokenizer; r1jax reads only byte-level BPE ('gpt2') "
                "vocabularies from GGUF. Load the model's tokenizer.json or tokenizer.model instead.")
        tokens = field("tokenizer.ggml.tokens")
        token_types = field("tokenizer.ggml.token_type") or [gguf.TokenType.NORMAL] * len(tokens)

        def token_or_none(key: str) -> str | None:
            token_id = field(key)
            return tokens[token_id] if token_id is not None else None

        tokenizer = _byte_level_bpe(tokens, token_types, field("tokenizer.ggml.merges", []),
                                    field("tokenizer.ggml.pre", "default"))
        bos_token = token_or_none("tokenizer.ggml.bos_token_id")
        if field("tokenizer.ggml.add_bos_token") and bos_token is not None:
            from tokenizers import processors

            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
                special_tokens=[(bos_token, field("tokenizer.ggml.bos_token_id"))])
        extra_stop_ids = [field(key) for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
                          if field(key) is not None]
        return cls(tokenizer, bos_token=bos_token,
                   eos_token=token_or_none("tokenizer.ggml.eos_token_id"),
                   pad_token=token_or_none("tokenizer.ggml.padding_token_id"),
                   chat_template=field("tokenizer.chat_template"), extra_stop_ids=extra_stop_ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return _pad_or_eos(self._pad_id, self._eos_id)

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Text to ids. Special tokens written in the text (e.g. "<|im_start|>") are matched whole, as
        `transformers` does; the tokenizer's post-processor (which may add BOS) is not applied."""
        _check_text(text)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self._bos_id is None:
                raise ValueError("add_bos=True, but this tokenizer has no BOS token; pass bos_token=... .")
            ids = [self._bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(_token_id_list(ids, self.vocab_size), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            return plain_chat_prompt(messages, add_generation_prompt=add_generation_prompt)
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token, pad_token=self.pad_token)

    def save_pretrained(self, directory: PathLike, *, model_max_length: int | None = None) -> pathlib.Path:
        """Write `tokenizer.json` and the configuration files beside it (`_save_hf_files`)."""
        special = {name: token for name, token in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                                  ("pad_token", self.pad_token)) if token is not None}
        # No add_bos_token: transformers would replace the tokenizer.json's own post-processor with
        # one built from it, and that post-processor (Llama's BOS, or none) is the original behaviour.
        return _save_hf_files(self, directory, {"tokenizer.json": self.tokenizer.to_str(pretty=True).encode()},
                              special, model_max_length=model_max_length)


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map, which lets byte-level BPE pieces be written as text: printable
    Latin-1 bytes stand for themselves, the others for U+0100 onwards in byte order (space is "Ġ")."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {byte: chr(byte) for byte in printable}
    for offset, byte in enumerate(b for b in range(256) if b not in alphabet):
        alphabet[byte] = chr(256 + offset)
    return alphabet


# Pre-tokenizer splits of llama.cpp (src/llama-vocab.cpp), by `tokenizer.ggml.pre`. The GPT-2 split
# is the ByteLevel pre-tokenizer's built-in regex, so it needs no entry.
_GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "jais")
_DIGITS_THEN_GPT2_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell")
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    def split_then_bytes(regex):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    if pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in _LLAMA3_PRE:
        return split_then_bytes(_LLAMA3_SPLIT)
    if pre in _QWEN2_PRE:
        return split_then_bytes(_QWEN2_SPLIT)
    supported = sorted(_GPT2_PRE + _DIGITS_THEN_GPT2_PRE + _LLAMA3_PRE + _QWEN2_PRE)
    raise ValueError(f"Unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {supported}. "
                     "Load the model's tokenizer.json instead.")


def _byte_level_bpe(tokens: Sequence[str], token_types: Sequence[int], merges: Sequence[str],
                    pre: str) -> "tokenizers.Tokenizer":
    """A `tokenizers` byte-level BPE from a GGUF vocabulary (tokens in id order, "left right" merges)."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models

    alphabet = _gpt2_byte_alphabet()
    letters = set(alphabet.values())
    added_types = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    vocab = {}
    for token_id, (token, token_type) in enumerate(zip(tokens, token_types)):
        # Normal pieces are spelled in the byte alphabet; a few converters wrote raw UTF-8, which we
        # respell. Added tokens keep their text: that is what they are matched by and decode to.
        if token_type not in added_types and not set(token) <= letters:
            token = "".join(alphabet[byte] for byte in token.encode("utf-8"))
        vocab[token] = token_id
    # llama3-family vocabularies take a word that is itself a token whole, before any merge.
    model = models.BPE(vocab=vocab, merges=[tuple(merge.split(" ")) for merge in merges], fuse_unk=False,
                       ignore_merges=pre in _LLAMA3_PRE)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token, token_type in zip(tokens, token_types) if token_type == gguf.TokenType.USER_DEFINED])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, token_type in zip(tokens, token_types) if token_type == gguf.TokenType.CONTROL])
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError("The GGUF vocabulary has duplicate tokens or added tokens missing from it; "
                         f"built {tokenizer.get_vocab_size(with_added_tokens=True)} ids from {len(tokens)} tokens.")
    return tokenizer


# ---------------------------------------------------------------------------------------------------


def load_tokenizer(path: PathLike) -> Tokenizer:
    """The tokenizer at `path`, whichever kind it is:

    * `*.model`: a SentencePiece model;
    * `*.gguf`: the vocabulary inside a GGUF file;
    * `*.json`: a `tokenizer.json`; when a `tokenizer_config.json` sits beside it, the whole directory
      is read, so the special tokens and the chat template come along;
    * a directory holding `tokenizer.json`, `tokenizer.model` (with the chat template of its
      `tokenizer_config.json`, if any), or exactly one `.gguf` file.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No tokenizer at {path}: the path does not exist.")
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer.from_pretrained_dir(path)
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer.from_file(path / "tokenizer.model", chat_template=_saved_chat_template(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return HFTokenizer.from_gguf(ggufs[0])
        found = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else "none of them"
        raise ValueError(f"Found no tokenizer in directory {path}: looked for tokenizer.json, tokenizer.model "
                         f"or one .gguf file, and found {found}.")
    suffix = path.suffix.lower()
    if suffix == ".model":
        return SentencePieceTokenizer.from_file(path)
    if suffix == ".gguf":
        return HFTokenizer.from_gguf(path)
    if suffix == ".json":
        if (path.parent / "tokenizer_config.json").is_file() and path.name == "tokenizer.json":
            return HFTokenizer.from_pretrained_dir(path.parent)
        return HFTokenizer.from_file(path)
    raise ValueError(f"Unsupported tokenizer file {path}: expected a SentencePiece .model, a tokenizer.json, "
                     "a .gguf file, or a Hugging Face directory.")


# ---------------------------------------------------------------------------------------------------
# Saving as a Hugging Face directory


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike, *, model_max_length: int | None = None) -> pathlib.Path:
    """Write `tokenizer` into `directory` as files that `load_tokenizer`, `transformers` and vLLM read.

    Refuses (FileExistsError) if any of those files is already there, and then writes none of them.
    """
    if not isinstance(tokenizer, (HFTokenizer, SentencePieceTokenizer)):
        raise TypeError(f"save_tokenizer saves an r1jax HFTokenizer or SentencePieceTokenizer, not a "
                        f"{type(tokenizer).__name__}; a transformers tokenizer has its own save_pretrained.")
    return tokenizer.save_pretrained(directory, model_max_length=model_max_length)


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The token ids of a `generation_config.json`. `eos_token_id` lists every stop id, EOS first:
    transformers and vLLM stop at any of them, so a chat model ends its turn at `<|im_end|>`."""
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    eos += sorted(tokenizer.stop_ids - set(eos))
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos or None, "pad_token_id": tokenizer.pad_id}
    return {key: value for key, value in ids.items() if value is not None}


def _save_hf_files(tokenizer: Tokenizer, directory: PathLike, backend: Mapping[str, bytes],
                   special: Mapping[str, str], *, model_max_length: int | None, **config: Any) -> pathlib.Path:
    """`backend` (the vocabulary file), `tokenizer_config.json`, `special_tokens_map.json` and
    `generation_config.json`, which keeps stop ids that no token name reveals (a GGUF's end-of-turn id)."""
    # PreTrainedTokenizerFast takes tokenizer.json as it is, where a model's own class could rebuild it
    # its own way. transformers 5 still imposes Qwen2Tokenizer on a `qwen2` model: it splits text as
    # Qwen2's vocabularies do, whatever tokenizer.json says. Our decode leaves spaces as they are.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "clean_up_tokenization_spaces": False, **config}
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return _write_new_files(directory, {**backend, "tokenizer_config.json": config,
                                        "special_tokens_map.json": dict(special),
                                        "generation_config.json": generation_config(tokenizer)})


def _write_new_files(directory: PathLike, files: Mapping[str, bytes | dict]) -> pathlib.Path:
    """Write every file (bytes, or a dict as JSON), or none of them when one already exists."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(name for name in files if (directory / name).exists())
    if existing:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}; choose an empty directory.")
    for name, content in files.items():
        if isinstance(content, dict):
            content = (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        (directory / name).write_bytes(content)
    return directory


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _saved_chat_template(directory: pathlib.Path) -> str | None:
    """The chat template of a Hugging Face directory: `chat_template.jinja`, or `tokenizer_config.json`'s."""
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    chat_template = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if isinstance(chat_template, list):  # the older list of named templates
        chat_template = {entry["name"]: entry["template"] for entry in chat_template}.get("default")
    return chat_template
