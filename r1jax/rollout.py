"""The host side of sampling, shared by GRPO, evaluation, rejection sampling, cold start and the judge.

One prompt renderer, one padding helper, one rollout:

    renderer = PromptRenderer(tokenizer, template="chat", system_prompt=None)   # or "r1_zero", "plain", ...
    texts = renderer.texts(examples, task)          # the prompt strings (kept with the samples)
    out = rollout(graphdef, params, tokenizer, renderer.encode_all(texts), rng, repeat=8, ...)
    out.completions                                  # decoded text of every row, grouped by prompt

Templates (`r1jax.data.prompts`): a text template ("r1_zero", "plain") wraps the question
into the string a base model continues, and the tokenizer's BOS goes first, as in
pretraining. A chat template ("chat": the tokenizer's own, with `system_prompt` as the
system turn if given; "r1_chat" / "plain_chat": named system prompts) renders messages
with the tokenizer's jinja template, and the ids are exactly the rendered text's: what
`transformers`' `apply_chat_template(..., tokenize=True)` gives, no BOS added on top.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh

from r1jax.batching import pad_left, padded_width
from r1jax.data.prompts import CHAT_TEMPLATES, TEXT_TEMPLATES, chat_messages, format_prompt
from r1jax.distributed import allgather_objects, local_rows
from r1jax.sampling import SampleOutput, generate
from r1jax.sharding import batch_sharding, make_global_batch
from r1jax.tasks import question_of
from r1jax.tokenizers import Tokenizer

CHAT = "chat"  # the template name of the tokenizer's own chat template
# `trim_to_longest` keeps at least this many completion columns: below it a new compile costs more than it saves
MIN_TRIMMED_WIDTH = 64


def template_names() -> list[str]:
    return sorted(TEXT_TEMPLATES) + sorted(CHAT_TEMPLATES) + [CHAT]


def check_template(template: str, system_prompt: str | None = None) -> None:
    """Refuse an unknown template name, or a system prompt given to a text template."""
    if template not in TEXT_TEMPLATES and template not in CHAT_TEMPLATES and template != CHAT:
        raise ValueError(f"unknown template {template!r}; choose one of {template_names()}")
    if system_prompt is not None and template != CHAT:
        raise ValueError(f"system_prompt is used by the 'chat' template only, not by {template!r}; "
                         "set template='chat' or drop system_prompt")


class PromptRenderer:
    """Questions to prompt text and prompt ids, one way for every stage.

    template: a text template, a named chat template, or "chat" (module doc).
    system_prompt: the system turn of "chat"; None leaves it to the tokenizer's template
        (which may add a default one, as SmolLM2's and Qwen2.5's do).
    """

    def __init__(self, tokenizer: Tokenizer | None, template: str = "r1_zero", system_prompt: str | None = None):
        check_template(template, system_prompt)
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.is_chat = template not in TEXT_TEMPLATES
        if self.is_chat and tokenizer is None:
            raise ValueError(f"the chat template {template!r} is rendered by a tokenizer; pass one")

    def messages(self, question: str) -> list[dict[str, str]]:
        if self.template != CHAT:
            return chat_messages(question, self.template)
        turns = [{"role": "user", "content": question.strip()}]
        return turns if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}, *turns]

    def __call__(self, question: str) -> str:
        """The prompt text of one question."""
        if not self.is_chat:
            return format_prompt(question, self.template)
        return self.tokenizer.apply_chat_template(self.messages(question), add_generation_prompt=True)

    def texts(self, examples: Sequence[dict], task) -> list[str]:
        """Prompt texts of task examples; general prompts (`kind == "general"`) keep their own question."""
        return [self(question_of(example, task)) for example in examples]

    def encode(self, text: str) -> list[int]:
        """The ids of a prompt text: BOS first for a text template, the rendered ids alone for a chat one."""
        # a tokenizer without a jinja template renders chats as plain text (`plain_chat_prompt`): BOS first
        templated = self.is_chat and getattr(self.tokenizer, "chat_template", None) is not None
        add_bos = not templated and self.tokenizer.bos_id is not None
        return self.tokenizer.encode(text, add_bos=add_bos)

    def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]


class Rollout(NamedTuple):
    samples: SampleOutput  # global device arrays, rows grouped by prompt
    completions: list[str]  # decoded text of this process's rows
    lengths: np.ndarray  # [rows of this process] completion lengths, on the host


def rollout(graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]],
            rng, *, repeat: int, max_prompt_length: int, max_new_tokens: int, temperature: float, top_p: float,
            mesh: Mesh, top_k: int = 0) -> Rollout:
    """Sample `repeat` completions of each prompt (token ids, e.g. `PromptRenderer.encode_all`) and decode them.

    Prompts are left-padded to `prompt_width` of the longest (at most 25% padding, a few
    compiled shapes per doubling of the prompt length). With several processes, `prompts` are
    this process's: the samples are one global batch of every process's rows (in process
    order), sampled on `mesh`, and each process decodes only its own rows. `params` must live
    on `mesh` (see `r1jax.sharding.reshard`).
    """
    longest, shortest = _global_extent([len(p) for p in prompts])
    if longest > max_prompt_length:
        raise ValueError(f"a prompt has {longest} tokens, more than max_prompt_length={max_prompt_length}; "
                         "raise max_prompt_length or shorten the prompts")
    if shortest == 0:
        raise ValueError("a prompt has no tokens (and the tokenizer no BOS to start it): give every prompt text")
    # every process pads to the same width: one global batch
    tokens, mask = pad_left(prompts, tokenizer.pad_id, width=prompt_width(longest, max_prompt_length), repeat=repeat)
    tokens, mask = make_global_batch((tokens, mask), mesh)
    samples = generate(graphdef, params, tokens, mask, rng, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, top_k=top_k,
                       stop_ids=tuple(sorted(tokenizer.stop_ids)), pad_id=tokenizer.pad_id, mesh=mesh,
                       rows_per_prompt=repeat)
    # the one device-to-host copy of a rollout, of this process's rows: the reward functions read text
    host_tokens, lengths = local_rows(samples.tokens), local_rows(samples.lengths)
    completions = [tokenizer.decode(row[:n]) for row, n in zip(host_tokens, lengths)]
    return Rollout(samples, completions, np.asarray(lengths))


def prompt_width(longest: int, max_prompt_length: int) -> int:
    """The prompt columns of a rollout (and of a dynamic-sampling batch) whose longest prompt has
    `longest` tokens: `padded_width` of it (at most 25% padding, a few shapes per doubling), at most
    `max_prompt_length`."""
    return min(padded_width(longest), max_prompt_length)


def completion_width(longest: int, columns: int) -> int:
    """The completion columns a training batch keeps when its longest completion has `longest` tokens
    and the sampler returned `columns`: the one rule of plain GRPO (`trim_to_longest`) and of dynamic
    sampling (`r1jax.train.dynamic_sampling.assemble`), so both compile the same few shapes.

    `padded_width` of the longest at two widths per doubling (at most 50% padding: each width
    compiles the update and the reference forward once, which costs more than it saves on short
    rows), at least `MIN_TRIMMED_WIDTH`, never more than `columns`.
    """
    return min(max(padded_width(max(longest, 1), per_doubling=2), MIN_TRIMMED_WIDTH), columns)


def trim_to_longest(out: Rollout) -> SampleOutput:
    """`out.samples` cut to the completion columns that its longest row (over every process) needs.

    The sampler returns `max_new_tokens` columns whatever the rows drew; with a stop token most
    of them can be padding, and an update over them would pay for columns no row uses. The width
    is `completion_width` of the longest completion.
    """
    longest = max(allgather_objects(int(out.lengths.max(initial=0))))
    columns = out.samples.tokens.shape[1]
    width = completion_width(longest, columns)
    if width == columns:
        return out.samples
    cut = lambda x: x[:, :width]
    return out.samples._replace(tokens=cut(out.samples.tokens), logprobs=cut(out.samples.logprobs),
                                mask=cut(out.samples.mask))


def _global_extent(lengths: Sequence[int]) -> tuple[int, int]:
    """(longest, shortest) prompt over every process's prompts."""
    extents = allgather_objects((max(lengths), min(lengths)))
    return max(e[0] for e in extents), min(e[1] for e in extents)


@struct.dataclass
class RolloutBatch:
    """A rollout as the GRPO objective reads it: each row one prompt + one of its completions.

    Every per-token array is [B, T] and aligned with `tokens`: `logps[:, t]` is the log-prob of
    `tokens[:, t]` given `tokens[:, :t]` (column 0 has none: 0 in `completion_mask`).

    tokens          int [B, T]  prompt (left-padded) + completion
    attention_mask  [B, T]      1 on real tokens, 0 on padding
    completion_mask [B, T]      1 on the completion tokens whose log-prob enters the loss
    advantages      f32 [B]     one per row (`r1jax.losses.group_advantages`); None until scored
    old_logps       f32 [B, T]  log-probs under the sampling policy; None: the current policy's
                                (one update per rollout, mu = 1)
    ref_logps       f32 [B, T]  log-probs under the reference policy; None where beta == 0
    rows_per_group  G when every G consecutive rows share their prompt (the rollout's group):
                    the train step keeps groups whole in each microbatch and the objective runs
                    each prompt once; 1 when the rows are not grouped. Static (not an array).
    completion_columns  the completions lie in the last this many columns (`completion_mask` is 0
                    before them): the LM head and the loss run there only. None: every column.
                    Static: each width compiles the step once (`trim_to_longest` keeps them few).
    """
    tokens: jax.Array
    attention_mask: jax.Array
    completion_mask: jax.Array
    advantages: jax.Array | None = None
    old_logps: jax.Array | None = None
    ref_logps: jax.Array | None = None
    rows_per_group: int = struct.field(pytree_node=False, default=1)
    completion_columns: int | None = struct.field(pytree_node=False, default=None)


def training_batch(samples: SampleOutput, mesh: Mesh, *, old_logps: bool = False,
                   rows_per_group: int = 1) -> RolloutBatch:
    """The samples as a `RolloutBatch` (no advantages yet), batch-sharded on `mesh` (the training
    mesh, when the samples come from a sampler mesh of their own).

    old_logps: also the sampler's log-probs of the completion tokens as `old_logps`. They are the
        policy's own (the training forward's, to float32 rounding: a tested invariant) when the
        samples were drawn at temperature 1 without top-k/top-p; otherwise they are those of the
        filtered distribution, not the policy's.
    """
    tokens = jnp.concatenate([samples.prompt_tokens, samples.tokens], axis=1)
    attention_mask = jnp.concatenate([samples.prompt_mask, samples.mask], axis=1)
    completion_mask = jnp.concatenate([jnp.zeros_like(samples.prompt_mask), samples.mask], axis=1)
    sampled_logps = None
    if old_logps:
        prompt_columns = jnp.zeros(samples.prompt_mask.shape, jnp.float32)
        sampled_logps = jnp.concatenate([prompt_columns, samples.logprobs], axis=1)
    batch = RolloutBatch(tokens, attention_mask, completion_mask, old_logps=sampled_logps,
                         rows_per_group=rows_per_group, completion_columns=samples.tokens.shape[1])
    return jax.device_put(batch, batch_sharding(mesh))
