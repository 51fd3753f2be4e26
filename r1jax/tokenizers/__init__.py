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

`load_tokenizer` and `save_tokenizer` live here, as they dispatch over both backends; the rest lives in
one module per job: `base` (the protocol, the R1 tags, shared checks), `chat` (chat templates),
`sentencepiece` and `hf` (the backends), `export` (the Hugging Face files beside a vocabulary).
"""

from __future__ import annotations

import pathlib

from r1jax.tokenizers.base import END_OF_TURN_TOKENS, R1_TAGS, PathLike, Tokenizer
from r1jax.tokenizers.chat import plain_chat_prompt, render_chat_template
from r1jax.tokenizers.export import generation_config
from r1jax.tokenizers.hf import HFTokenizer, _saved_chat_template
from r1jax.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece


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


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike, *, model_max_length: int | None = None) -> pathlib.Path:
    """Write `tokenizer` into `directory` as files that `load_tokenizer`, `transformers` and vLLM read.

    Refuses (FileExistsError) if any of those files is already there, and then writes none of them.
    """
    if not isinstance(tokenizer, (HFTokenizer, SentencePieceTokenizer)):
        raise TypeError(f"save_tokenizer saves an r1jax HFTokenizer or SentencePieceTokenizer, not a "
                        f"{type(tokenizer).__name__}; a transformers tokenizer has its own save_pretrained.")
    return tokenizer.save_pretrained(directory, model_max_length=model_max_length)


__all__ = ["END_OF_TURN_TOKENS", "HFTokenizer", "PathLike", "R1_TAGS", "SentencePieceTokenizer", "Tokenizer",
           "generation_config", "load_tokenizer", "plain_chat_prompt", "render_chat_template", "save_tokenizer",
           "train_sentencepiece"]
