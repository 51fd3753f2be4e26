"""Prompt templates: the R1-Zero text template and the system prompts of chat templates.

Two kinds of template, each selectable by name:

* text templates (`format_prompt`) wrap a question into the single string a
  base model continues, e.g. the paper's R1-Zero template;
* chat templates (`chat_messages`) return a `messages` list for instruct
  models. We only produce messages: the tokenizer applies its own chat format.

A task's question (`r1jax.tasks`) goes into the `{prompt}` slot; `r1jax.rollout.PromptRenderer`
renders either kind, and the tokenizer's own chat template with any system prompt.
"""
from __future__ import annotations

from typing import Any, Mapping

# DeepSeek-R1 paper (arXiv:2501.12948), Table 1, word for word; "prompt" is
# replaced with the question during training.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and "
    "the Assistant solves it. The assistant first thinks about the reasoning "
    "process in the mind and then provides the user with the answer. The "
    "reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

# The same format instruction as a system prompt, for instruct models.
R1_SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process "
    "in the mind and then provide the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>."
)

TEXT_TEMPLATES: dict[str, str] = {
    "r1_zero": R1_ZERO_TEMPLATE,
    "plain": "{prompt}",
}

# name -> system prompt (None: the conversation has only the user turn).
CHAT_TEMPLATES: dict[str, str | None] = {
    "r1_chat": R1_SYSTEM_PROMPT,
    "plain_chat": None,
}


def _lookup(table: Mapping[str, Any], name: str, kind: str):
    if name not in table:
        raise ValueError(
            f"Unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}.")
    return table[name]


def format_prompt(question: str, template: str = "r1_zero") -> str:
    """The text a base model continues: `question` inside a named text template.

    The R1-Zero template already ends the question with ". Assistant:", so one
    trailing period of the question is dropped to avoid "..".
    """
    text = _lookup(TEXT_TEMPLATES, template, "text template")
    question = question.strip()
    if "{prompt}." in text and question.endswith("."):
        question = question[:-1]
    return text.replace("{prompt}", question)


def chat_messages(question: str, template: str = "r1_chat") -> list[dict[str, str]]:
    """A `messages` list (role/content dicts) for a tokenizer's chat template."""
    system_prompt = _lookup(CHAT_TEMPLATES, template, "chat template")
    messages = [{"role": "user", "content": question.strip()}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages
