"""Supervised fine-tuning on (prompt, completion) pairs, on the shared step machinery.

Serves the stand-in pretraining of our tiny base models, R1's cold start, the SFT after
rejection sampling and distillation: only the data differs. The loss counts the
completion tokens (and the EOS that ends them), never the prompt.

    formatter = PairFormatter(task, template="r1_zero")  # task: an r1jax.tasks.Task or its name
    pairs = [formatter.from_solution(ex, reasoning, answer) for ...]     # cold start
    pairs = [formatter(ex, completion) for ...]                         # rejection-sampled / teacher
    settings = SFTSettings(batch_size=64, max_length=512, packing=True)
    sft = SFT(settings, tokenizer=tokenizer, mesh=mesh)
    steps = steps_for_epochs(len(pairs), batch_size=settings.batch_size, epochs=2)
    run_training(LoopSettings(steps=steps), ..., loss_fn=sft.objective(),
                 data=PromptIterator(pairs, batch_size=settings.batch_size, seed=0, num_epochs=2),
                 make_batches=sft.make_batches, evaluate=lambda state, step: sft.evaluate(state, held_out))

Rows are either padded (one pair per row, padded on the left) or packed (several pairs
side by side in rows of `max_length` tokens, told apart by `segment_ids`, so that
attention never crosses pairs and each pair's logits are those it would get alone).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.losses import token_logprobs
from r1jax.rollout import PromptRenderer
from r1jax.batching import pad_left, round_up
from r1jax.tasks import get_task
from r1jax.distributed import allgather_objects, common_shape, process_share
from r1jax.sharding import activate, make_global_batch, num_batch_shards
from r1jax.tokenizers import Tokenizer
from r1jax.train.objectives import SFTBatch, next_token_targets, sft_forward, sft_objective

Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    """The batches of one SFT run: a config's SFT section (with its `LoopSettings` and `OptimizerSettings`)."""

    batch_size: int = 32  # pairs per optimizer step (`PromptIterator`)
    max_length: int = 256  # prompt + completion tokens; longer pairs are an error, not truncated
    packing: bool = False  # pack pairs into rows of max_length tokens instead of one padded row each
    eval_batch_size: int = 64  # pairs per forward pass in `SFT.evaluate`

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 2 or self.eval_batch_size < 1:
            raise ValueError(f"need batch_size >= 1, max_length >= 2 and eval_batch_size >= 1, got {self}")


# ---- pairs from examples -----------------------------------------------------------------

def r1_completion(reasoning: str, answer: str) -> str:
    """A completion in the R1 output format that the format and accuracy rewards read."""
    return f"<think> {reasoning.strip()} </think> <answer> {answer.strip()} </answer>"


class PairFormatter:
    """Turns task examples into SFT (prompt, completion) pairs, the same way for every stage.

    `formatter(example, completion)` keeps a model-written completion as it is (rejection
    sampling, distillation); `formatter.from_solution(example, reasoning, answer)` writes
    one in the R1 format (cold-start data). Prompts are rendered by `r1jax.rollout.PromptRenderer`.
    """

    def __init__(self, task, template: str = "r1_zero", tokenizer: Tokenizer | None = None,
                 system_prompt: str | None = None):
        self.task = get_task(task)
        self.renderer = PromptRenderer(tokenizer, template, system_prompt)

    def prompt(self, example: Mapping) -> str:
        return self.renderer.texts([example], self.task)[0]

    def __call__(self, example: Mapping, completion: str) -> Pair:
        return self.prompt(example), completion

    def from_solution(self, example: Mapping, reasoning: str, answer: str) -> Pair:
        prompt = self.prompt(example)
        # a prompt ending in "Assistant:" is continued after a space, as in every text the model
        # saw; a chat template's generation prompt already ends where the answer starts
        separator = " " if prompt.endswith(":") else ""
        return prompt, separator + r1_completion(reasoning, answer)


def steps_for_epochs(num_examples: int, batch_size: int, epochs: int, *, drop_remainder: bool = True) -> int:
    """Optimizer steps that walk `epochs` times over the data, as `PromptIterator` batches it."""
    if num_examples < 1 or batch_size < 1 or epochs < 1:
        raise ValueError(f"need num_examples, batch_size and epochs >= 1, got {num_examples}, {batch_size}, {epochs}")
    full, rest = divmod(num_examples, batch_size)
    per_epoch = full + (rest > 0 and not drop_remainder)
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_examples} examples, so drop_remainder=True "
                         "leaves no batch; lower batch_size or set drop_remainder=False")
    return epochs * per_epoch


# ---- pairs to token rows -----------------------------------------------------------------

def _encode_pair(tokenizer: Tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], int]:
    """(prompt + completion + EOS ids, number of completion ids incl. EOS)."""
    prompt_ids = tokenizer.encode(prompt)
    # a chat template may write the BOS itself; a second one would be out of distribution
    if tokenizer.bos_id is not None and prompt_ids[:1] != [tokenizer.bos_id]:
        prompt_ids = [tokenizer.bos_id, *prompt_ids]
    if not prompt_ids:
        raise ValueError("an SFT prompt is empty and the tokenizer has no BOS: the first completion token "
                         "would have nothing to be predicted from; give every pair a prompt")
    completion_ids = tokenizer.encode(completion) + [tokenizer.eos_id]
    if len(prompt_ids) + len(completion_ids) > max_length:
        raise ValueError(f"an SFT example has {len(prompt_ids) + len(completion_ids)} tokens, more than "
                         f"max_length={max_length}; raise max_length or filter long examples")
    return prompt_ids + completion_ids, len(completion_ids)


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[Pair], *, max_length: int,
                 pad_to_multiple: int = 32, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Left-padded rows `prompt + completion + EOS` in the layout of `r1jax.train.objectives`.

    The width is rounded up to `pad_to_multiple` (fewer shapes to compile) and the row
    count to `row_multiple` with empty rows, which count nowhere.
    """
    encoded = [_encode_pair(tokenizer, prompt, completion, max_length) for prompt, completion in pairs]
    empty_rows = [[]] * (round_up(len(encoded), row_multiple) - len(encoded))
    tokens, attention_mask = pad_left([ids for ids, _ in encoded] + empty_rows, tokenizer.pad_id,
                                      multiple=pad_to_multiple)
    width = tokens.shape[1]
    completion_mask = np.zeros_like(attention_mask)
    for i, (_, num_completion) in enumerate(encoded):
        completion_mask[i, width - num_completion:] = 1
    return {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pack_pairs(tokenizer: Tokenizer, pairs: Sequence[Pair], *, max_length: int,
               row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Pairs packed first-fit into rows of `max_length` tokens, plus `segment_ids`.

    Segment s of a row (ids 1, 2, ...) holds one pair; 0 marks the padding at the row's
    end. Empty rows round the row count up to `row_multiple`.
    """
    encoded = [_encode_pair(tokenizer, prompt, completion, max_length) for prompt, completion in pairs]
    rows: list[list[tuple[list[int], int]]] = []
    free: list[int] = []
    for ids, num_completion in encoded:
        row = next((r for r, room in enumerate(free) if room >= len(ids)), None)
        if row is None:
            rows.append([])
            free.append(max_length)
            row = len(rows) - 1
        rows[row].append((ids, num_completion))
        free[row] -= len(ids)
    shape = (round_up(len(rows), row_multiple), max_length)
    tokens = np.full(shape, tokenizer.pad_id, np.int32)
    attention_mask, completion_mask, segment_ids = (np.zeros(shape, np.int32) for _ in range(3))
    for r, row in enumerate(rows):
        start = 0
        for segment, (ids, num_completion) in enumerate(row, start=1):
            end = start + len(ids)
            tokens[r, start:end] = ids
            attention_mask[r, start:end] = 1
            completion_mask[r, end - num_completion:end] = 1
            segment_ids[r, start:end] = segment
            start = end
    return {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "segment_ids": segment_ids}


# ---- the stage -----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 1))
def _token_stats(graphdef: nnx.GraphDef, mesh: Mesh, params: nnx.State, batch: SFTBatch) -> dict[str, jax.Array]:
    """Summed negative log-likelihood, correct argmax predictions and count of the counted tokens."""
    with activate(mesh):
        logits = sft_forward(nnx.merge(graphdef, params), batch)
        targets, target_mask = next_token_targets(batch)
        weights = target_mask.astype(jnp.float32)
        nll = -token_logprobs(logits, jnp.where(target_mask, targets, 0))
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return {"nll": (nll * weights).sum(), "correct": (correct * weights).sum(), "tokens": weights.sum()}


class SFT:
    """The SFT stage: `objective()` for the train step, `make_batches` for the loop, `evaluate`.

    The data iterator yields lists of (prompt, completion) pairs, or of examples that
    `to_pairs(examples, np_rng)` turns into pairs; the latter draws completions afresh at
    every step (e.g. sampled noisy solutions) from a generator seeded by the step's key,
    so a resumed run sees the same completions.
    """

    def __init__(self, settings: SFTSettings, *, tokenizer: Tokenizer, mesh: Mesh,
                 to_pairs: Callable[[Sequence, np.random.Generator], list[Pair]] | None = None,
                 num_microbatches: int = 1):
        self.settings = settings
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.to_pairs = to_pairs
        # the row count is rounded up (with empty rows) to a multiple of this x the data-parallel
        # devices: the loop's num_microbatches, so that every batch splits evenly
        self.row_multiple = num_microbatches

    def objective(self):
        return sft_objective()

    def encode(self, pairs: Sequence[Pair]) -> dict[str, np.ndarray]:
        """Host rows of `pairs` (this process's), padded or packed as the settings say.

        Every process's rows get the same shape (empty rows at the bottom, padding columns
        on the left), a row count whose total over processes splits into
        `num_microbatches` x the data-parallel devices: one global batch, even when packing
        fills a different number of rows on each host.
        """
        s = self.settings
        if s.packing:
            batch = pack_pairs(self.tokenizer, pairs, max_length=s.max_length)
        else:
            batch = encode_pairs(self.tokenizer, pairs, max_length=s.max_length)
        parts = self.row_multiple * num_batch_shards(self.mesh)
        batch = common_shape(batch, pad_values={"tokens": self.tokenizer.pad_id},
                             row_multiple=parts // np.gcd(parts, jax.process_count()))
        if not len(batch["tokens"]):
            raise ValueError("got no SFT pairs to encode")
        return batch

    def make_batches(self, state, pairs: Sequence, rng):
        del state
        if self.to_pairs is not None:
            pairs = self._draw_pairs(pairs, rng)
        batch = self.encode(pairs)
        totals = np.sum(allgather_objects((batch["completion_mask"].sum(), batch["attention_mask"].sum(),
                                           batch["attention_mask"].size)), axis=0)
        metrics = {"completion_tokens": float(totals[0]), "padding_fraction": float(1 - totals[1] / totals[2])}
        return [SFTBatch(**make_global_batch(batch, self.mesh))], metrics

    def _draw_pairs(self, examples: Sequence, rng) -> list[Pair]:
        """`to_pairs` of each example with a generator of its own, seeded by the step's key and the
        example's place in the global batch: the same pairs on any number of hosts, and on resume."""
        seed = np.asarray(jax.random.key_data(rng)).ravel().tolist()
        offset = getattr(examples, "offset", 0)
        return [pair for i, example in enumerate(examples)
                for pair in self.to_pairs([example], np.random.default_rng([*seed, offset + i]))]

    def evaluate(self, state, pairs: Sequence[Pair]) -> dict[str, float]:
        """Mean token cross-entropy and argmax accuracy of the completion tokens of `pairs`.

        A forward pass only, `eval_batch_size` pairs at a time; every token weighs the
        same. As run_training's callback: `evaluate=lambda state, step: sft.evaluate(state, pairs)`.
        """
        if not pairs:
            raise ValueError("SFT.evaluate got no pairs; pass the held-out (prompt, completion) pairs")
        size = self.settings.eval_batch_size
        totals = None
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            batch = SFTBatch(**make_global_batch(self.encode(chunk[process_share(len(chunk))]), self.mesh))  # our share
            stats = _token_stats(state.graphdef, self.mesh, state.params, batch)
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        totals = jax.device_get(totals)  # the one device-to-host copy
        count = max(float(totals["tokens"]), 1.0)
        return {"eval_loss": float(totals["nll"]) / count, "eval_accuracy": float(totals["correct"]) / count}
