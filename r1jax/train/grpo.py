"""GRPO (DeepSeekMath / R1-Zero): the per-step rollout that feeds the shared training loop.

One GRPO step, as in the paper:
  1. take a batch of prompts and sample `num_generations` completions of each from the
     current (= old) policy;
  2. score every completion on the host with the rule-based rewards (in worker
     processes, overlapped with the device computing reference log-probs);
  3. advantages = (r - group mean) / (group std + eps), per prompt's group (or another
     `advantage_estimator`: RLOO, REINFORCE++);
  4. `num_iterations` (mu) passes over the rollout, each split into `num_minibatches`
     optimizer updates of the clipped GRPO loss with beta * KL(k3) to the reference.

R1's all-scenario RL stage mixes reasoning prompts, scored by the rules, with general
prompts (examples with `kind == "general"`, see `r1jax.data.kinds.is_general`),
scored by a model-based judge: `GRPO(..., model_reward=judge)` with any
`judge(prompts, completions, examples) -> float [N]` (NaN: cannot judge), e.g. a
`r1jax.train.reward_model.RewardModelJudge`. Each row gets either its rule-based or its
judged reward, and advantages are computed as before: a group holds one prompt's
completions, so the two scales never mix inside a group.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax.batching import round_up
from r1jax.data import PromptIterator
from r1jax.data.kinds import is_general
from r1jax.losses import (ADVANTAGE_ESTIMATORS, ADVANTAGE_SCALES, IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES,
                          group_advantages, reinforce_pp_advantages, rloo_advantages, sequence_kl)
from r1jax.evaluation.reflection import reflection_flags, reflection_metrics
from r1jax.rewards import RewardEvaluator, RewardResult
from r1jax.rewards.overlong import OVERLONG_REWARD, soft_overlong_punishment
from r1jax.distributed import allgather_objects, local_rows
from r1jax.sharding import batch_sharding, make_global_batch, reshard
from r1jax.tasks import get_task
from r1jax.tokenizers import Tokenizer
from r1jax.train.dynamic_sampling import Groups, assemble, informative_groups, join_groups
from r1jax.train.objectives import grpo_objective
from r1jax.rollout import (PromptRenderer, RolloutBatch, check_template, completion_width, prompt_width, rollout,
                           training_batch, trim_to_longest)
from r1jax.train.state import TrainState, reference_params
from r1jax.train.step import make_logprobs_fn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """One GRPO stage, in the symbols of the paper's objective (R1 eq. 1-3, DeepSeekMath eq. 3):

        J(theta) = E[q ~ P(Q), {o_i}_1..G ~ pi_old(O|q)] 1/G sum_i ( min(rho_i A_i,
                   clip(rho_i, 1 - eps, 1 + eps) A_i) - beta D_KL(pi_theta || pi_ref) ),
        rho_i = pi_theta(o_i|q) / pi_old(o_i|q),   A_i = (r_i - mean(r_1..G)) / std(r_1..G).
    """
    prompts_per_step: int = 16  # questions q per rollout (the batch of P(Q))
    num_generations: int = 8  # G: outputs o_i sampled per question, one group
    max_prompt_length: int = 256  # tokens of q; a longer prompt is an error
    max_new_tokens: int = 64  # most tokens |o_i| of an output
    temperature: float = 1.0  # pi_old's sampling; 1 with top_p 1 samples the policy itself
    top_p: float = 1.0
    beta: float = 0.04  # beta: weight of D_KL(pi_theta || pi_ref), the k3 estimator (0: no reference)
    epsilon_low: float = 0.2  # eps: the ratio is clipped below at 1 - eps
    epsilon_high: float | None = None  # above at 1 + eps_high (DAPO's clip-higher); None: eps
    # how token terms are averaged: grpo (1/G sum_i 1/|o_i| sum_t), bnpo, dr_grpo, dapo; or cispo (MiniMax-M1:
    # sg(clip(rho, 1 - eps, 1 + eps_high)) A log pi per token, every token contributing, averaged as dapo)
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"  # rho per token (GRPO) or per sequence (GSPO)
    # A_i: grpo (the z-score above), rloo (r_i - mean of the other G - 1), reinforce_pp (REINFORCE++:
    # r_i - beta KL_i normalised over the batch; beta then weighs the KL in the reward, not in the loss)
    advantage_estimator: str = "grpo"
    advantage_scale: str = "group"  # grpo's divisor: the group's std (paper), the batch's, or none (Dr. GRPO)
    overlong_buffer: int = 0  # DAPO's L_cache: R_length falls from 0 to -1 over the last this many tokens; 0: off
    mask_truncated: bool = False  # DAPO's overlong filtering: completions cut at max_new_tokens leave the loss
    # DAPO's dynamic sampling: train on prompts_per_step groups whose rewards differ (`GRPO` doc), sampling
    # ceil(oversample x prompts_per_step) prompts a round and up to dynamic_sampling_rounds rounds a step
    dynamic_sampling: bool = False
    oversample: float = 1.0  # prompts sampled per prompt trained (>= 1), with dynamic_sampling
    dynamic_sampling_rounds: int = 3  # rollouts a step may take before it trains on what it has, the rest masked
    num_iterations: int = 1  # mu: optimizer passes over each rollout (pi_old fixed during them)
    num_minibatches: int = 1  # updates per pass: the rollout's rows split into this many
    template: str = "r1_zero"  # a text template, a named chat template, or "chat" (r1jax.rollout)
    system_prompt: str | None = None  # the system turn of template "chat"

    def __post_init__(self):
        check_template(self.template, self.system_prompt)
        for name, known in (("loss_type", LOSS_TYPES), ("importance_sampling_level", IMPORTANCE_SAMPLING_LEVELS),
                            ("advantage_scale", ADVANTAGE_SCALES), ("advantage_estimator", ADVANTAGE_ESTIMATORS)):
            if getattr(self, name) not in known:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {known}")
        if self.advantage_estimator != "grpo" and self.advantage_scale != "group":
            raise ValueError(f"advantage_scale={self.advantage_scale!r} scales the grpo estimator only; "
                             f"advantage_estimator={self.advantage_estimator!r} has its own (leave it 'group')")
        if not 0 <= self.overlong_buffer <= self.max_new_tokens:
            raise ValueError(f"overlong_buffer={self.overlong_buffer}: DAPO's L_cache lies in [0, max_new_tokens="
                             f"{self.max_new_tokens}] (0: no overlong penalty)")
        if self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations}: GRPO compares completions within a group, "
                             "so every advantage would be 0; use 2 or more")
        counts = {name: getattr(self, name) for name in ("prompts_per_step", "max_prompt_length", "max_new_tokens",
                                                         "num_iterations", "num_minibatches")}
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name}={value}: use 1 or more")
        if (self.prompts_per_step * self.num_generations) % self.num_minibatches:
            raise ValueError(f"num_minibatches={self.num_minibatches} does not divide the rollout's "
                             f"prompts_per_step x num_generations = {self.prompts_per_step * self.num_generations} "
                             "rows; choose a divisor")
        if not self.oversample >= 1 or self.dynamic_sampling_rounds < 1:
            raise ValueError(f"need oversample >= 1 and dynamic_sampling_rounds >= 1; got oversample={self.oversample}, "
                             f"dynamic_sampling_rounds={self.dynamic_sampling_rounds}")
        if self.oversample != 1 and not self.dynamic_sampling:
            raise ValueError(f"oversample={self.oversample} samples prompts for dynamic sampling: set "
                             "dynamic_sampling=True (or leave oversample 1)")
        if self.dynamic_sampling and self.advantage_estimator == "reinforce_pp":
            raise ValueError("dynamic_sampling keeps the groups whose rewards differ, the ones whose grpo or rloo "
                             "advantages are not 0; reinforce_pp's advantages hold a KL term and are normalised "
                             "over the batch: use advantage_estimator='grpo' or 'rloo'")
        if self.beta < 0 or self.epsilon_low < 0 or not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError(f"need beta >= 0, epsilon_low >= 0, 0 < top_p <= 1 and temperature >= 0; got "
                             f"beta={self.beta}, epsilon_low={self.epsilon_low}, top_p={self.top_p}, "
                             f"temperature={self.temperature}")


# judge(prompts, completions, examples) -> float [N], NaN where it cannot judge
Judge = Callable[[Sequence[str], Sequence[str], Sequence[Mapping]], np.ndarray]
MODEL_REWARD = "model"  # the judge's name in the reward metrics (`reward/model`)


class GRPO:
    """The GRPO stage: `objective()` for the train step and `make_batches` for the loop.

    task: the `r1jax.tasks.Task` (or its name) of the prompts: their question text, and the
        reward logged as `accuracy`.
    model_reward: optional judge of the general prompts (module doc); without one, a
        batch with general prompts is an error. With several processes it is called on
        every process at every step (with this process's rows, possibly none), since a
        model judge is a computation on the global mesh.
    sampler_mesh: where the rollout runs (e.g. tensor-parallel decoding while training is
        FSDP); None: the training `mesh`. The weights move between the two in device
        memory (a reshard), never through the host.

    With several processes, `make_batches` gets this process's prompts (whole groups stay
    on their host): sampling runs on the global mesh, each process decodes and scores its
    own rows in its own reward workers, and then the per-row rewards (a few floats a row)
    are gathered, so that advantages and metrics are exactly those of one process.

    Dynamic sampling (DAPO sec. 3.2, `dynamic_sampling=True`), under static shapes:
      - a round samples `prompts_per_round` = ceil(oversample x prompts_per_step) prompts: the
        first round the examples the loop hands (make the data with `prompt_iterator`), a further
        one the next batch of that iterator, with the step's rng folded with the round;
      - a group is kept when its valid rewards differ (`informative_groups`: its advantages are
        not all 0); a step trains on exactly `prompts_per_step` groups: last step's surplus first,
        then this step's kept groups in rollout order; a step that lacks some samples another
        round, up to `dynamic_sampling_rounds`, then fills the rest with masked copies of a group
        (no loss, no statistic) and logs a warning: the batch never changes shape;
      - the batch is laid out as plain GRPO's, its widths `prompt_width` and `completion_width` of its
        longest prompt and completion, the rule of the rollout and `trim_to_longest`, so it compiles no
        shape that plain GRPO could not (`dynamic_sampling.assemble`);
      - surplus kept groups wait for the next step, at most one step's share (the rest is dropped),
        so a carried group is one step old. Its ratio's old log-probs are the sampler's where the
        batch keeps them (num_iterations or num_minibatches > 1, temperature 1, top_p 1); otherwise
        (mu = 1, or another temperature) it is trained as if the current policy had sampled it;
      - the carry is saved with each checkpoint, in the data's state (`prompt_iterator`): a resumed
        run continues as the uninterrupted one, bit for bit;
      - several processes: the choice is global, the one a single process would make: the same
        groups in the same order (last step's carry, then the kept groups in global rollout order,
        process 0's rows first). Each process sends the kept groups it sampled that the step or the
        next can use (host arrays, `allgather_objects`), so every process holds the same pool and
        carry; each then trains an equal, contiguous share of the step's groups, whole groups, which
        may be another process's rows. A run on two processes equals one on one process (tested:
        filtered, carried, dropped and masked groups), to float rounding.
    Logged: `dynamic/rounds`, `dynamic/groups_sampled`, `dynamic/groups_kept` (informative, of those
    sampled this step), `dynamic/groups_from_last_step`, `dynamic/groups_carried` (to the next),
    `dynamic/groups_dropped` and `dynamic/groups_masked`, of every process's groups; the reward
    metrics are those of every row sampled, as plain GRPO's.
    """

    def __init__(self, settings: GRPOSettings, *, tokenizer: Tokenizer, rewards: RewardEvaluator,
                 task, mesh: Mesh, model_reward: Judge | None = None, sampler_mesh: Mesh | None = None):
        self.settings = settings
        self.tokenizer = tokenizer
        self.renderer = PromptRenderer(tokenizer, settings.template, settings.system_prompt)
        self.rewards = rewards
        self.task = get_task(task)
        self.mesh = mesh
        self.sampler_mesh = mesh if sampler_mesh is None else sampler_mesh
        self.model_reward = model_reward
        self._ref_params = None
        self._logprobs_fn = None
        self._sequence_kl = jax.jit(sequence_kl, out_shardings=batch_sharding(mesh))
        self._data: PromptIterator | None = None  # where dynamic sampling draws further rounds' prompts
        self._carry: Groups | None = None  # dynamic sampling's surplus groups, trained first next step

    def objective(self):
        s = self.settings
        return grpo_objective(beta=self._loss_beta(), epsilon_low=s.epsilon_low, epsilon_high=s.epsilon_high,
                              loss_type=s.loss_type, max_completion_length=s.max_new_tokens,
                              importance_sampling_level=s.importance_sampling_level)

    def _loss_beta(self) -> float:
        """beta of the loss's KL term: REINFORCE++ folds the KL into the reward instead."""
        return 0.0 if self.settings.advantage_estimator == "reinforce_pp" else self.settings.beta

    def _rows_per_group(self) -> int:
        """G: a group's completions share its prompt, which the forward passes then run once;
        1 when a minibatch would cut a group."""
        s = self.settings
        return s.num_generations if s.prompts_per_step % s.num_minibatches == 0 else 1

    def set_reference(self, state: TrainState):
        """Freeze the policy in `state` (the initial one) as the KL reference: a copy of it, or for a LoRA
        policy its base with the adapters zeroed, sharing the base's arrays (`reference_params`)."""
        self._logprobs_fn = make_logprobs_fn(state, self.mesh, rows_per_group=self._rows_per_group())
        if self.settings.beta != 0:
            self._ref_params = reference_params(state.params)

    def _forward_logprobs(self, params, batch: RolloutBatch):
        """Per-token log-probs [B, T] of `batch` under `params` (the reference or the sampling policy)."""
        return self._logprobs_fn(params, batch.tokens, batch.attention_mask,
                                 completion_columns=batch.completion_columns)

    def make_batches(self, state: TrainState, examples: Sequence[dict], rng):
        s = self.settings
        if self._logprobs_fn is None:
            raise RuntimeError("call set_reference(initial_state) before the first GRPO step")
        if s.dynamic_sampling:
            return self._dynamic_batches(state, examples, rng)
        texts = self._prompt_texts(examples)
        started = time.perf_counter()
        out = self._rollout(state, texts, rng)
        sampled = time.perf_counter()  # the rollout returns decoded text: sampling has finished
        grouped_examples = [ex for ex in examples for _ in range(s.num_generations)]
        rewards_result = self._start_rewards(texts, out.completions, grouped_examples)  # host work starts now...
        # later updates of this rollout see a moved policy: keep the sampling one's log-probs,
        # the sampler's own when they are the policy's (temperature 1, no top-p), else a forward
        keep_old = s.num_iterations > 1 or s.num_minibatches > 1
        # REINFORCE++ puts beta KL(pi_old || pi_ref) of each completion into its reward
        kl_in_reward = s.advantage_estimator == "reinforce_pp" and s.beta != 0
        need_old = keep_old or kl_in_reward
        sampler_is_policy = s.temperature == 1 and s.top_p == 1
        truncated = self._truncated(out)
        # the update runs on the columns the longest completion needs, not on max_new_tokens
        batch = training_batch(trim_to_longest(out), self.mesh, old_logps=need_old and sampler_is_policy,
                               rows_per_group=self._rows_per_group())
        # ...while the device computes the log-probs the loss compares against
        ref_logps = None
        if s.beta != 0:
            ref_logps = self._forward_logprobs(self._ref_params, batch)
        if need_old and not sampler_is_policy:
            batch = batch.replace(old_logps=self._forward_logprobs(state.params, batch))
        kl = np.zeros(len(out.lengths), np.float32)
        if kl_in_reward:
            kl = local_rows(self._sequence_kl(batch.old_logps, ref_logps, batch.completion_mask))
        batch = batch.replace(ref_logps=ref_logps if self._loss_beta() != 0 else None,
                              old_logps=batch.old_logps if keep_old else None)
        result = rewards_result()
        every = _gather_rows(result, out.lengths, truncated, kl, reflection_flags(out.completions))
        if s.overlong_buffer:
            every = _add_overlong_punishment(every, max_length=s.max_new_tokens, buffer=s.overlong_buffer)
        # advantages from the rewards of every process's rows (N floats): exact for every
        # estimator and scale, "batch" included; each process keeps its own rows, whole groups
        advantages = np.asarray(self._advantages(every))
        batch = batch.replace(advantages=make_global_batch(advantages[every.mine], self.mesh))
        if s.mask_truncated:
            # DAPO's overlong filtering: a cut-off completion keeps its reward in its group's
            # statistics (it is what the policy drew) but none of its tokens enters the loss
            kept = make_global_batch((~truncated).astype(np.int32), self.mesh)
            batch = batch.replace(completion_mask=batch.completion_mask * kept[:, None])
        batches = [batch_slice for _ in range(s.num_iterations)
                   for batch_slice in _minibatches(batch, s.num_minibatches)]
        # waiting here costs nothing (the update needs the log-probs next) and times the phase
        jax.block_until_ready(batch)
        timings = {"time/sampling": sampled - started, "time/scoring": time.perf_counter() - sampled}
        return batches, {**self._metrics(every), **timings}

    def _rollout(self, state: TrainState, texts: list[str], rng):
        s = self.settings
        params = state.params if self.sampler_mesh is self.mesh else reshard(state.params, self.sampler_mesh)
        return rollout(state.graphdef, params, self.tokenizer, self.renderer.encode_all(texts), rng,
                       repeat=s.num_generations,
                       max_prompt_length=s.max_prompt_length, max_new_tokens=s.max_new_tokens,
                       temperature=s.temperature, top_p=s.top_p, mesh=self.sampler_mesh)

    @property
    def prompts_per_round(self) -> int:
        """Prompts one rollout samples, over every process: `prompts_per_step`, or with dynamic sampling
        ceil(oversample x prompts_per_step) rounded up to a multiple of the process count."""
        s = self.settings
        if not s.dynamic_sampling:
            return s.prompts_per_step
        return round_up(math.ceil(round(s.oversample * s.prompts_per_step, 6)), jax.process_count())

    def prompt_iterator(self, source: Sequence[dict], *, seed: int) -> PromptIterator:
        """The stage's data: batches of `prompts_per_round` prompts of `source`. With dynamic sampling,
        a step's further rounds draw their prompts from it too, so its position (saved with each
        checkpoint) counts every prompt sampled, and its state holds the groups carried to the next
        step (sampled, not yet trained): a resumed run continues as the uninterrupted one."""
        if not self.settings.dynamic_sampling:
            return PromptIterator(source, batch_size=self.prompts_per_round, seed=seed)
        self._data = _PromptsAndCarry(source, batch_size=self.prompts_per_round, seed=seed, stage=self)
        return self._data

    def _restore_carry(self, saved: dict | None) -> None:
        """The carried groups of a checkpoint (`Groups.to_json`; None: none), checked against the settings."""
        self._carry = None if saved is None else Groups.from_json(saved)
        if self._carry is None:
            return
        s, (_, group_size, width) = self.settings, self._carry.completions.shape
        if (group_size, width) != (s.num_generations, s.max_new_tokens):
            raise ValueError(f"the checkpoint carries groups of num_generations={group_size} and max_new_tokens="
                             f"{width} to its next step; resume with those grpo settings (this run has "
                             f"{s.num_generations} and {s.max_new_tokens})")

    def _dynamic_batches(self, state: TrainState, examples: Sequence[dict], rng):
        """DAPO's dynamic sampling (class doc): the step's batches from rounds of rollouts, whole
        informative groups chosen as one process would choose them, the same shapes as plain GRPO's."""
        s = self.settings
        step_groups = s.prompts_per_step  # the groups a step trains, over every process
        if step_groups % jax.process_count():
            raise ValueError(f"dynamic sampling trains prompts_per_step={s.prompts_per_step} groups, an equal share "
                             f"on each of the {jax.process_count()} processes: use a multiple of the process count")
        share = step_groups // jax.process_count()  # the groups this process trains on
        keep_old = s.num_iterations > 1 or s.num_minibatches > 1
        sampler_is_policy = s.temperature == 1 and s.top_p == 1
        timings = {"time/sampling": 0.0, "time/scoring": 0.0}
        # the pool is global, the same on every process: last step's surplus first, then the kept groups
        # in global rollout order (process 0's rows, then process 1's, ...), as one process would hold them
        pool, self._carry = self._carry, None
        carried_in = 0 if pool is None else len(pool)
        rounds: list[_EveryRow] = []
        kept = 0
        while True:
            if rounds:
                examples = self._more_prompts()
            round_rng = jax.random.fold_in(rng, len(rounds)) if rounds else rng  # round 1 samples as plain GRPO
            groups, every = self._sample_round(state, examples, round_rng, timings,
                                               keep_logprobs=keep_old and sampler_is_policy)
            rounds.append(every)
            informative = informative_groups(every.total, every.valid, s.num_generations)  # every process's groups
            kept += int(informative.sum())
            # only what this step and the next can train moves between processes: each sends its own of them
            room = 2 * step_groups - (0 if pool is None else len(pool))
            chosen = np.flatnonzero(informative)[:room]
            first = every.mine.start // s.num_generations  # this process's first group in the round
            own = chosen[(chosen >= first) & (chosen < first + len(groups))] - first
            arrived = join_groups(allgather_objects(groups.take(own)))
            pool = arrived if pool is None else pool + arrived
            # every process decides alike, from the same pool: a rollout is one computation on the global mesh
            if len(pool) >= step_groups or len(rounds) == s.dynamic_sampling_rounds:
                break
        train = pool.take(np.arange(min(step_groups, len(pool))))
        # the surplus waits one step at most (the next step takes it first); beyond one step's share it is dropped
        carry = pool.take(np.arange(len(train), min(len(pool), len(train) + step_groups)))
        self._carry = carry if len(carry) else None
        dropped = carried_in + kept - len(train) - len(carry)
        masked = step_groups - len(train)
        if masked:  # too few after the last round: masked copies keep the shape
            filler = train if len(train) else allgather_objects(groups.take([0]))[0]  # the round's first group
            train = train + filler.masked(masked)
        index = jax.process_index()
        mine = train.take(np.arange(index * share, (index + 1) * share))  # an equal, contiguous share of whole groups
        # the widths plain GRPO's rollout and `trim_to_longest` would choose for these rows
        prompt_columns = prompt_width(max(len(p) for p in train.prompts), s.max_prompt_length)
        width = completion_width(int(train.masks.sum(axis=2).max()), train.completions.shape[2])
        batch = make_global_batch(assemble(mine, pad_id=self.tokenizer.pad_id, prompt_width=prompt_columns,
                                           width=width, rows_per_group=self._rows_per_group()), self.mesh)
        ref_logps = None
        if s.beta != 0:
            ref_logps = self._forward_logprobs(self._ref_params, batch)
        if keep_old and not sampler_is_policy:
            batch = batch.replace(old_logps=self._forward_logprobs(state.params, batch))
        batch = batch.replace(ref_logps=ref_logps if self._loss_beta() != 0 else None,
                              old_logps=batch.old_logps if keep_old else None)
        # advantages per group of the trained rows: those computed per round for a group scale, and a
        # "batch" scale over the batch trained (masked groups are invalid: in no statistic)
        rows = share * s.num_generations
        trained = _EveryRow(total=train.total.reshape(-1), valid=train.valid.reshape(-1), per_function={},
                            lengths=None, truncated=None, kl=None, counts={},
                            mine=slice(index * rows, (index + 1) * rows))
        advantages = np.asarray(self._advantages(trained))
        batch = batch.replace(advantages=make_global_batch(advantages[trained.mine], self.mesh))
        if s.mask_truncated:
            kept_rows = make_global_batch((~mine.truncated.reshape(-1)).astype(np.int32), self.mesh)
            batch = batch.replace(completion_mask=batch.completion_mask * kept_rows[:, None])
        batches = [batch_slice for _ in range(s.num_iterations)
                   for batch_slice in _minibatches(batch, s.num_minibatches)]
        jax.block_until_ready(batch)
        sampled = sum(len(every.total) for every in rounds) // s.num_generations
        dynamic = {"dynamic/rounds": len(rounds), "dynamic/groups_sampled": sampled, "dynamic/groups_kept": kept,
                   "dynamic/groups_carried": len(carry), "dynamic/groups_dropped": dropped,
                   "dynamic/groups_masked": masked, "dynamic/groups_from_last_step": carried_in}
        if masked:
            log.warning("dynamic sampling: %d of %d groups still missing after %d rounds; they are masked this step",
                        masked, s.prompts_per_step, len(rounds))
        # the reward metrics are those of every row sampled, as plain GRPO's: what the policy drew
        return batches, {**self._metrics(_join_rows(rounds)), **dynamic, **timings}

    def _more_prompts(self) -> list[dict]:
        if self._data is None:
            raise RuntimeError("dynamic sampling needs another round of prompts but GRPO has no data to draw them "
                               "from: make the stage's data with GRPO.prompt_iterator(...) (or set "
                               "dynamic_sampling_rounds=1)")
        return next(self._data)

    def _sample_round(self, state: TrainState, examples: Sequence[dict], rng, timings: dict[str, float], *,
                      keep_logprobs: bool) -> tuple[Groups, _EveryRow]:
        """One rollout of `examples`, scored: this process's groups on the host, and every process's rewards."""
        s = self.settings
        texts = self._prompt_texts(examples)
        started = time.perf_counter()
        out = self._rollout(state, texts, rng)
        sampled = time.perf_counter()
        grouped_examples = [ex for ex in examples for _ in range(s.num_generations)]
        result = self._start_rewards(texts, out.completions, grouped_examples)()
        truncated = self._truncated(out)
        every = _gather_rows(result, out.lengths, truncated, np.zeros(len(out.lengths), np.float32),
                             reflection_flags(out.completions))
        if s.overlong_buffer:
            every = _add_overlong_punishment(every, max_length=s.max_new_tokens, buffer=s.overlong_buffer)
        samples = out.samples
        groups = Groups.from_rows(local_rows(samples.prompt_tokens), local_rows(samples.prompt_mask),
                                  local_rows(samples.tokens), local_rows(samples.mask),
                                  local_rows(samples.logprobs) if keep_logprobs else None,
                                  every.total[every.mine], every.valid[every.mine], truncated,
                                  group_size=s.num_generations)
        timings["time/sampling"] += sampled - started
        timings["time/scoring"] += time.perf_counter() - sampled
        return groups, every

    def _truncated(self, out) -> np.ndarray:
        """bool [rows of this process]: the completion drew max_new_tokens tokens, the last not a stop
        token, so it was cut off (DAPO's truncated samples)."""
        full = out.lengths >= self.settings.max_new_tokens
        if not full.any():  # no row reached the budget: skip the copy of the tokens
            return full
        last = local_rows(out.samples.tokens)[:, -1]
        return full & ~np.isin(last, sorted(self.tokenizer.stop_ids))

    def _advantages(self, every: _EveryRow):
        """A [all rows] by the settings' `advantage_estimator` (`r1jax.losses`)."""
        s = self.settings
        rewards = np.nan_to_num(every.total)  # invalid rows are NaN: `valid` leaves them out
        if s.advantage_estimator == "rloo":
            return rloo_advantages(rewards, s.num_generations, valid=every.valid)
        if s.advantage_estimator == "reinforce_pp":
            return reinforce_pp_advantages(rewards, sequence_kl=every.kl, beta=s.beta, valid=every.valid)
        return group_advantages(rewards, s.num_generations, scale=s.advantage_scale, valid=every.valid)

    def _metrics(self, every: _EveryRow) -> dict[str, float]:
        """The step's reward metrics over the rows of every process."""
        metrics = {"reward": float(np.nanmean(every.total)) if every.valid.any() else 0.0,
                   "response_length": float(every.lengths.mean()),
                   "truncated_fraction": float(every.truncated.mean()),
                   "valid_fraction": float(every.valid.mean())}
        if self.settings.advantage_estimator == "reinforce_pp" and self.settings.beta != 0:
            metrics["kl"] = float(every.kl.mean())  # k1 KL(pi_old || pi_ref) per completion, in its reward
        for name, values in every.per_function.items():
            metrics[f"reward/{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        accuracy = every.per_function.get(self.task.accuracy_reward)
        if accuracy is not None:
            metrics["accuracy"] = metrics[f"reward/{self.task.accuracy_reward}"]
        # R1's "aha moment": how often completions re-check a step, and whether those that do are right
        metrics.update(reflection_metrics(every.reflects, accuracy))
        metrics.update(every.counts)  # the evaluator's "rewards/<name>_timeouts" and "_failures", summed
        return metrics

    def _prompt_texts(self, examples: Sequence[dict]) -> list[str]:
        if self.model_reward is None and any(is_general(ex) for ex in examples):
            raise ValueError("the batch has general prompts (kind == 'general') but GRPO has no judge for "
                             "them: pass model_reward=RewardModelJudge(...) (r1jax.train.reward_model)")
        return self.renderer.texts(examples, self.task)

    def _start_rewards(self, texts: list[str], completions: list[str],
                       grouped_examples: list[dict]) -> Callable[[], RewardResult]:
        """Start the rule-based rewards in the background; the returned function waits for the result.

        With a judge, only reasoning rows go to the rule-based rewards, and the returned
        function first has the judge score the general ones: its device work then queues
        behind the log-probs dispatched in between, while the rule rewards run.
        """
        if self.model_reward is None:
            return self.rewards.submit(completions, grouped_examples).result
        group = self.settings.num_generations
        general = np.array([is_general(ex) for ex in grouped_examples], bool)
        rule_rows, model_rows = np.flatnonzero(~general), np.flatnonzero(general)
        pending = self.rewards.submit([completions[i] for i in rule_rows],
                                      [grouped_examples[i] for i in rule_rows]) if rule_rows.size else None

        def result() -> RewardResult:
            scores = self._judge([texts[i // group] for i in model_rows], [completions[i] for i in model_rows],
                                 [grouped_examples[i] for i in model_rows])
            return merge_rewards(pending.result() if pending is not None else None, rule_rows, scores,
                                 model_rows, rule_names=self.rewards.names)

        return result

    def _judge(self, prompts, completions, examples) -> np.ndarray:
        if not completions and jax.process_count() == 1:  # with several processes, every one calls the judge
            return np.zeros(0, np.float32)
        scores = np.asarray(self.model_reward(prompts, completions, examples), np.float32)
        if scores.shape != (len(completions),):
            raise ValueError(f"model_reward returned shape {scores.shape} for {len(completions)} completions; "
                             "a judge returns one float per completion")
        return scores


class _PromptsAndCarry(PromptIterator):
    """Dynamic sampling's data: the prompts, and in `state()` (saved with each checkpoint by the loop) also the
    groups its stage carries to the next step. The carry is global (the same on every process), so the one
    host state that process 0 writes holds all of it."""

    def __init__(self, source: Sequence[dict], *, batch_size: int, seed: int, stage: GRPO):
        super().__init__(source, batch_size=batch_size, seed=seed)
        self._stage = stage

    def state(self) -> dict:
        carry = self._stage._carry
        return {**super().state(), "carry": None if carry is None else carry.to_json()}

    def restore(self, state: dict) -> None:
        state = dict(state)
        carry = state.pop("carry", None)  # absent: saved without dynamic sampling, nothing carried
        super().restore(state)
        self._stage._restore_carry(carry)


def merge_rewards(rule: RewardResult | None, rule_rows: np.ndarray, model_scores: np.ndarray,
                  model_rows: np.ndarray, *, rule_names: Sequence[str]) -> RewardResult:
    """One `RewardResult` for the whole batch from the rule-scored rows and the judged rows.

    A judged row's total is the judge's score (NaN: not valid); its rule rewards are NaN.
    A rule-scored row keeps the evaluator's values and its `model` reward is NaN.
    `rule` is None when no row was rule-scored.
    """
    size = len(rule_rows) + len(model_rows)
    total = np.full(size, np.nan, np.float32)
    valid = np.zeros(size, bool)
    total[model_rows] = model_scores
    valid[model_rows] = np.isfinite(model_scores)
    per_function = {name: np.full(size, np.nan, np.float32) for name in rule_names}
    per_function[MODEL_REWARD] = total.copy()
    metrics, failures = {}, []
    if rule is not None:
        total[rule_rows], valid[rule_rows] = rule.total, rule.valid
        for name, values in rule.per_function.items():
            per_function[name][rule_rows] = values
        metrics = dict(rule.metrics)
        failures = [dataclasses.replace(f, row=int(rule_rows[f.row])) for f in rule.failures]
    return RewardResult(per_function, total, valid, metrics, failures)


class _EveryRow(NamedTuple):
    total: np.ndarray  # [all rows] of every process, in process (= global row) order
    valid: np.ndarray
    per_function: dict[str, np.ndarray]
    lengths: np.ndarray  # completion tokens
    truncated: np.ndarray  # bool: cut off at max_new_tokens
    kl: np.ndarray  # k1 KL(pi_old || pi_ref) of each completion where REINFORCE++ needs it, else 0
    counts: dict[str, float]  # failure and timeout counts, summed over processes
    mine: slice  # this process's rows
    reflects: np.ndarray | None = None  # bool: the completion re-checks a step (`r1jax.evaluation.reflection`)


def _gather_rows(result: RewardResult, lengths: np.ndarray, truncated: np.ndarray, kl: np.ndarray,
                 reflects: np.ndarray) -> _EveryRow:
    """The per-row rewards, lengths, truncations, KLs and reflection flags of every process, on every process."""
    counts = {k: v for k, v in result.metrics.items() if k.endswith(("failures", "timeouts"))}
    parts = allgather_objects((result.total, result.valid, result.per_function, lengths, truncated, kl, counts,
                               reflects))
    start = sum(len(part[0]) for part in parts[:jax.process_index()])
    column = lambda i: np.concatenate([p[i] for p in parts])
    return _EveryRow(total=column(0), valid=column(1),
                     per_function={name: np.concatenate([p[2][name] for p in parts]) for name in result.per_function},
                     lengths=column(3), truncated=column(4), kl=column(5),
                     counts={k: float(sum(p[6][k] for p in parts)) for k in counts},
                     mine=slice(start, start + len(result.total)), reflects=column(7))


def _join_rows(rounds: Sequence[_EveryRow]) -> _EveryRow:
    """The rows of several rollouts as one (for the metrics; `mine` is left out)."""
    if len(rounds) == 1:
        return rounds[0]
    column = lambda name: np.concatenate([getattr(every, name) for every in rounds])
    return _EveryRow(total=column("total"), valid=column("valid"),
                     per_function={name: np.concatenate([every.per_function[name] for every in rounds])
                                   for name in rounds[0].per_function},
                     lengths=column("lengths"), truncated=column("truncated"), kl=column("kl"),
                     counts={k: sum(every.counts[k] for every in rounds) for k in rounds[0].counts}, mine=slice(0),
                     reflects=column("reflects"))


def _add_overlong_punishment(every: _EveryRow, *, max_length: int, buffer: int) -> _EveryRow:
    """DAPO's soft overlong punishment (`r1jax.rewards.overlong`) added to every row's total, with weight 1,
    and logged as the reward `overlong`. An invalid row's total stays NaN."""
    penalty = soft_overlong_punishment(every.lengths, max_length=max_length, buffer=buffer).astype(np.float32)
    return every._replace(total=every.total + penalty,
                          per_function={**every.per_function, OVERLONG_REWARD: penalty})


def _minibatches(batch: RolloutBatch, num_minibatches: int) -> list[RolloutBatch]:
    """Contiguous row blocks; each keeps whole prompt groups when the block is a multiple of G."""
    rows = batch.tokens.shape[0]
    if rows % num_minibatches:
        raise ValueError(f"{rows} rollout rows do not split into num_minibatches={num_minibatches}")
    size = rows // num_minibatches
    if num_minibatches == 1:
        return [batch]
    return [jax.tree.map(lambda x: x[i * size:(i + 1) * size], batch) for i in range(num_minibatches)]
