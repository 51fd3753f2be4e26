"""Chat templates: the plain R1-Zero format, and Hugging Face jinja2 templates rendered as `transformers` does."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


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
