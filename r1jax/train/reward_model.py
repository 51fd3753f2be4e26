"""Reward-model training on preference pairs, scoring texts with it, and the GRPO judge.

    stage = RewardModelTraining(RewardModelSettings(), tokenizer=tokenizer, mesh=mesh)
    result = run_training(loop_settings, workdir=..., model=RewardModel.from_transformer(sft_model),
                          optimizer=..., loss_fn=stage.objective(), make_batches=stage.make_batches,
                          data=PromptIterator(pairs, batch_size=32, seed=0), mesh=mesh)
    judge = RewardModelJudge(result.state.graphdef, result.state.params, tokenizer, mesh)
    grpo = GRPO(settings, ..., model_reward=judge)     # R1's all-scenario RL stage

A `PreferenceBatch` (the host rows from `encode_preferences`) holds both sides of each
pair, each side a left-padded `prompt + response + EOS` row.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh

from r1jax.data.kinds import is_general
from r1jax.distributed import allgather_objects, common_shape, local_rows
from r1jax.losses import bradley_terry_loss
from r1jax.sharding import activate, constrain, make_global_batch, num_batch_shards
from r1jax.tokenizers import Tokenizer
from r1jax.batching import pad_left, round_up

THINK_END = "</think>"
SPECIAL_TOKEN = "|special_token|"  # R1 cold-start layout: |special_token|<reasoning>|special_token|<summary>


def summary_of(completion: str) -> str:
    """The summary of a response: the text after its reasoning, stripped.

    That is the text after the first `</think>`, else after the second `|special_token|`
    marker; a response with neither has no separate reasoning and is all summary.
    """
    if THINK_END in completion:
        return completion.split(THINK_END, 1)[1].strip()
    parts = completion.split(SPECIAL_TOKEN, 2)
    if len(parts) == 3:
        return parts[2].strip()
    return completion.strip()


def encode_responses(tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                     max_length: int | None = None, pad_to_multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 rows `prompt + response + EOS` and their mask [N, T], T a multiple of `pad_to_multiple`.

    The reward model reads its score at the EOS, the same token in training and in use.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per "
                         "response (repeat a prompt for each of its responses)")
    rows = [tokenizer.encode(prompt, add_bos=tokenizer.bos_id is not None)
            + tokenizer.encode(text) + [tokenizer.eos_id] for prompt, text in zip(prompts, responses)]
    longest = max((len(row) for row in rows), default=1)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a prompt + response has {longest} tokens, more than max_length={max_length}; "
                         "raise max_length or filter long examples")
    return pad_left(rows, tokenizer.pad_id, multiple=pad_to_multiple)


@struct.dataclass
class PreferenceBatch:
    """Preference pairs for the Bradley-Terry loss.

    chosen_tokens, chosen_attention_mask       int [N, T]
    rejected_tokens, rejected_attention_mask   int [N, T]
    completion_mask                            int [N, 2]  [0, 1] for a pair that counts
    margin                                     f32 [N]     optional (`bradley_terry_loss`)

    The train step counts `completion_mask[:, 1:]` to normalise losses, so marking each
    pair once makes its `tokens_per_microbatch` the pairs per microbatch, and every pair
    weighs the same however the batch is cut into microbatches.
    """
    chosen_tokens: jax.Array
    chosen_attention_mask: jax.Array
    rejected_tokens: jax.Array
    rejected_attention_mask: jax.Array
    completion_mask: jax.Array
    margin: jax.Array | None = None
    rows_per_group: ClassVar[int] = 1  # pairs are independent


def encode_preferences(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str, str]], *,
                       max_length: int | None = None, pad_to_multiple: int = 32) -> dict[str, np.ndarray]:
    """The host rows of a `PreferenceBatch` from (prompt, chosen, rejected) triples; both sides share one width."""
    if not pairs:
        raise ValueError("encode_preferences got no pairs")
    for i, pair in enumerate(pairs):
        if len(pair) != 3 or not all(isinstance(text, str) for text in pair):
            raise ValueError(f"pairs[{i}] must be a (prompt, chosen, rejected) triple of strings, got {pair!r}")
    prompts, chosen, rejected = zip(*pairs)
    tokens, mask = encode_responses(tokenizer, prompts * 2, chosen + rejected, max_length=max_length,
                                    pad_to_multiple=pad_to_multiple)
    n = len(pairs)
    return {"chosen_tokens": tokens[:n], "chosen_attention_mask": mask[:n],
            "rejected_tokens": tokens[n:], "rejected_attention_mask": mask[n:],
            "completion_mask": np.tile(np.array([[0, 1]], np.int32), (n, 1))}


def reward_model_objective():
    """The Bradley-Terry loss of a `RewardModel` on a preference batch, a mean over all its pairs.

    Both sides of every pair go through the model in one call. Metrics: `accuracy`
    (share of pairs ranked right) and `margin` (mean r_chosen - r_rejected).
    """

    def loss_fn(model, batch: PreferenceBatch, rng, *, tokens_per_microbatch):
        del rng  # deterministic
        num_pairs = batch.chosen_tokens.shape[0]
        tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
        attention_mask = jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask])
        rewards = model(tokens, attention_mask=attention_mask)
        counted = batch.completion_mask[:, 1]
        mean_loss, metrics = bradley_terry_loss(rewards[:num_pairs], rewards[num_pairs:],
                                                margin=batch.margin, mask=counted)
        # the step averages microbatches: sum over this one's pairs / (pairs per microbatch)
        # gives the mean over every pair of the batch, as in `sft_objective`
        pairs_here = counted.astype(jnp.float32).sum()
        per_microbatch = jnp.where(tokens_per_microbatch > 0, tokens_per_microbatch, 1.0)
        return mean_loss * pairs_here / per_microbatch, metrics

    return loss_fn


@dataclasses.dataclass(frozen=True)
class RewardModelSettings:
    batch_size: int = 32  # preference pairs per optimizer step
    max_length: int = 256  # prompt + response tokens; longer pairs are an error, not truncated
    pad_to_multiple: int = 32  # each new batch width compiles the step again: max_length gives one width

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 2 or self.pad_to_multiple < 1:
            raise ValueError(f"need batch_size >= 1, max_length >= 2 and pad_to_multiple >= 1, got {self}")


class RewardModelTraining:
    """The reward-model stage: `objective()` for the train step and `make_batches` for the loop.

    The data iterator yields lists of (prompt, chosen, rejected) triples; format the
    prompts as the policy will see them in RL, since the judge scores those.
    """

    def __init__(self, settings: RewardModelSettings, *, tokenizer: Tokenizer, mesh: Mesh):
        self.settings = settings
        self.tokenizer = tokenizer
        self.mesh = mesh

    def objective(self):
        return reward_model_objective()

    def make_batches(self, state, pairs: Sequence[tuple[str, str, str]], rng):
        del state, rng
        batch = encode_preferences(self.tokenizer, pairs, max_length=self.settings.max_length,
                                   pad_to_multiple=self.settings.pad_to_multiple)
        # several processes: every host's rows get one width (left padding)
        batch = common_shape(batch, pad_values={"chosen_tokens": self.tokenizer.pad_id,
                                                "rejected_tokens": self.tokenizer.pad_id})
        return [PreferenceBatch(**make_global_batch(batch, self.mesh))], {"pairs": float(len(pairs) * jax.process_count())}


@functools.partial(jax.jit, static_argnums=0, static_argnames="mesh")
def _score_rows(graphdef, params, tokens, attention_mask, *, mesh):
    # the mesh is static so that the compiled program is cached per mesh (as in sampling)
    with activate(mesh):
        # each row's score stays with its row: each host reads back its own (`distributed.local_rows`)
        return constrain(nnx.merge(graphdef, params)(tokens, attention_mask=attention_mask), ("batch",))


def score_texts(graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer, prompts: Sequence[str],
                completions: Sequence[str], *, mesh: Mesh, batch_size: int = 32,
                pad_to_multiple: int = 32) -> np.ndarray:
    """float32 [N]: the reward model's score of each `prompt + completion`, `batch_size` rows a call.

    graphdef, params: `nnx.split` of a `RewardModel`. Calls always hold `batch_size`
    rows (the last is padded) of a width rounded up to a multiple of `pad_to_multiple`,
    so scoring compiles for a few shapes only. `batch_size` must split over the mesh's data axes.
    """
    if batch_size < 1 or batch_size % num_batch_shards(mesh) or batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the mesh's "
                         f"{num_batch_shards(mesh)} data-parallel shards and of the {jax.process_count()} processes")
    if len(prompts):
        tokens, mask = encode_responses(tokenizer, prompts, completions, pad_to_multiple=pad_to_multiple)
    else:
        tokens = mask = np.zeros((0, 0), np.int32)
    # several processes score their own rows in the same calls: every call has the same shape on each
    shapes = allgather_objects(tokens.shape)
    rows, width = max(r for r, _ in shapes), max(w for _, w in shapes)
    if rows == 0:
        return np.zeros(0, np.float32)
    local_batch = batch_size // jax.process_count()
    padded_rows = round_up(rows, local_batch)
    # padding rows are all mask 0: scored (finitely) and dropped; columns are added on the left
    pad = ((0, padded_rows - tokens.shape[0]), (width - tokens.shape[1], 0))
    tokens, mask = np.pad(tokens, pad, constant_values=tokenizer.pad_id), np.pad(mask, pad)
    scores = [local_rows(_score_rows(graphdef, params, *make_global_batch(
        (tokens[i:i + local_batch], mask[i:i + local_batch]), mesh), mesh=mesh))
        for i in range(0, padded_rows, local_batch)]
    return np.concatenate(scores)[:len(prompts)].astype(np.float32)


class RewardModelJudge:
    """The model-based reward of R1's general prompts, for `GRPO(..., model_reward=judge)`.

    reward = weight * helpfulness + harmlessness_weight * harmlessness, where

    * helpfulness is the reward model's score of the summary only (`summary_of`),
      so that it judges what the user reads and leaves the reasoning alone
      (`helpfulness_on="output"` scores the whole response instead);
    * harmlessness is a reward model's score of the whole response, reasoning
      included: this model's (`harmlessness="same"`), a separate one's
      (`harmlessness=(graphdef, params)`, same tokenizer), or none (`None`).

    Calling it returns NaN for rows whose example is not a general prompt
    (`is_general`): those get rule-based rewards.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer, mesh: Mesh, *,
                 helpfulness_on: str = "summary", weight: float = 1.0,
                 harmlessness: str | tuple[nnx.GraphDef, nnx.State] | None = "same",
                 harmlessness_weight: float = 1.0, batch_size: int = 32):
        if helpfulness_on not in ("summary", "output"):
            raise ValueError(f"helpfulness_on must be 'summary' or 'output', got {helpfulness_on!r}")
        if not (harmlessness is None or harmlessness == "same"
                or (isinstance(harmlessness, tuple) and len(harmlessness) == 2)):
            raise ValueError("harmlessness must be 'same', None, or a (graphdef, params) pair of a reward "
                             f"model, got {type(harmlessness).__name__}")
        self.helpfulness_model = (graphdef, params)
        self.harmlessness_model = self.helpfulness_model if isinstance(harmlessness, str) else harmlessness
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.helpfulness_on = helpfulness_on
        self.weight = float(weight)
        self.harmlessness_weight = float(harmlessness_weight)
        self.batch_size = batch_size

    def _score(self, model, prompts, texts) -> np.ndarray:
        return score_texts(*model, self.tokenizer, prompts, texts, mesh=self.mesh, batch_size=self.batch_size)

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, np.ndarray]:
        """The parts of the reward, float32 [N] each: `helpfulness` and (unless disabled) `harmlessness`."""
        prompts, completions = list(prompts), list(completions)
        viewed = [summary_of(c) for c in completions] if self.helpfulness_on == "summary" else completions
        if self.harmlessness_model is None:
            return {"helpfulness": self._score(self.helpfulness_model, prompts, viewed)}
        if self.harmlessness_model is self.helpfulness_model:  # one model: one pass over both views
            both = self._score(self.helpfulness_model, prompts * 2, viewed + completions)
            return {"helpfulness": both[:len(prompts)], "harmlessness": both[len(prompts):]}
        return {"helpfulness": self._score(self.helpfulness_model, prompts, viewed),
                "harmlessness": self._score(self.harmlessness_model, prompts, completions)}

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 examples: Sequence[Mapping]) -> np.ndarray:
        if not len(prompts) == len(completions) == len(examples):
            raise ValueError(f"the judge needs one prompt and one example per completion, got "
                             f"{len(prompts)} prompts, {len(completions)} completions, {len(examples)} examples")
        general = np.array([is_general(example) for example in examples], bool)
        rewards = np.full(len(completions), np.nan, np.float32)
        rows = np.flatnonzero(general)
        # scored even when this process has no general rows: with several, every one takes part
        parts = self.scores([prompts[i] for i in rows], [completions[i] for i in rows])
        rewards[rows] = self.weight * parts["helpfulness"] + self.harmlessness_weight * parts.get("harmlessness", 0.0)
        return rewards
