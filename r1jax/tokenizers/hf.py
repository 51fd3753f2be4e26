"""The Hugging Face backend: `HFTokenizer` on the `tokenizers` library, read from a `tokenizer.json`, a
Hugging Face directory, or the vocabulary stored inside a GGUF file, rebuilt as a byte-level BPE the way
llama.cpp builds it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from r1jax.tokenizers.base import END_OF_TURN_TOKENS, PathLike, _check_text, _existing_file, _pad_or_eos, _token_id_list
from r1jax.tokenizers.chat import plain_chat_prompt, render_chat_template
from r1jax.tokenizers.export import _save_hf_files

if TYPE_CHECKING:
    import tokenizers


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
