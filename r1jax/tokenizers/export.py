"""Writing a tokenizer's Hugging Face files beside its vocabulary: `tokenizer_config.json` (with the chat
template), `special_tokens_map.json` and `generation_config.json` (with the stop ids), which `load_tokenizer`,
`transformers` and vLLM read. Each backend's `save_pretrained` adds its own vocabulary file;
`save_tokenizer`, in the package's `__init__`, calls the right one.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from r1jax.tokenizers.base import PathLike, Tokenizer


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
