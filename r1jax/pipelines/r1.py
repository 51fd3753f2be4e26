"""The full DeepSeek-R1 recipe in miniature, and the paper's findings measured on it.

Stages (each a folder of the workdir, skipped when its result is there; `r1_pipeline` is their
table, run by `r1jax.pipelines.stages.runner`):

    base/                 stand-in pretrained base (narrated, language-mixed worked solutions)
    r1_zero/              GRPO from the base, rewards accuracy + format           finding (a)
    r1_zero_language/     the same with the language-consistency reward            finding (d)
    cold_start/           R1-Zero samples -> correct, readable, one-language ones in R1's
                          output format (data.json) -> SFT of the base
    reasoning_rl/         GRPO from the cold start: accuracy + r1_format + lambda * language
    rejection/            rejection sampling of reasoning_rl into a TFDS dataset
    sft/                  SFT of the base on the rejection samples + general-prompt answers
    reward_model/         Bradley-Terry reward model on preference pairs (general prompts)
    all_scenario_rl/      GRPO from sft/ on reasoning prompts (rule rewards) and general
                          prompts (the reward model, judging summary / whole output)
    student/              a smaller model: its own base, RL from it, and distillation (SFT on
                          the rejection samples) at the RL run's compute             finding (e)
    evals/, findings.json, findings.md

The stages share the task's data, the tokenizer and the mesh (`_R1Run`, prepared once every
config section is checked); each takes its own config section and the results of the
stages named in its `inputs`.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from functools import partial
from typing import Callable

from jax.sharding import Mesh

from r1jax.data.preferences import general_prompts, preference_pairs
from r1jax.files import write_json_atomically
from r1jax.pipelines.findings import findings_table, models_table, paper_findings, steps_to_reach
from r1jax.pipelines.settings import (ColdStartSettings, ConfigError, EvalSettings, RejectionSettings, ReplaySettings,
                                     check_count, check_mesh, check_workdir, config_section, grpo_training,
                                     lora_settings, make_workdir, settings_from, training_from)
from r1jax.pipelines.stages import (DistillBudget, Stage, Traces, annotated_pairs, budget_stage, check_model,
                                    check_pretrain, cold_start_pairs, cold_start_stage, corpus_style,
                                    evaluation_stage, given, grpo_stage, judging_stage, pretraining, rejection_stage,
                                    reward_model_stage, run_stages, sft_stage, stand_in_data, with_replay)
from r1jax.rewards import OutputFormat, get_reward
from r1jax.rollout import PromptRenderer
from r1jax.sharding import make_mesh
from r1jax.tasks import Task, task_from_config
from r1jax.tokenizers import R1_TAGS, Tokenizer, load_tokenizer
from r1jax.train.loop import LoopSettings
from r1jax.train.reward_model import RewardModelSettings
from r1jax.train.sft import SFTSettings
from r1jax.train.state import OptimizerSettings

log = logging.getLogger(__name__)

# R1's markers; the summary is written in words the tiny tokenizer learned from the base
# corpus (the default "$\\boxed{N}$" is a string of rare byte pieces a tiny model garbles), with
# the leading space that makes "the" the corpus's own piece: without it the summary after the
# marker starts with a piece the base never saw, and the model garbled it ("hehe answer is 8")
FORMAT = OutputFormat(summary_template=" the answer is {answer} .")
EVAL_SCORES = {"format_reward": "format", "r1_format": "r1_format", "language": "language"}
# evaluated model -> the stage that makes it, in the order of the findings' table
MODELS = {"base": "pretrain", "r1_zero": "r1_zero", "r1_zero_language": "r1_zero_language",
          "cold_start": "cold_start", "reasoning_rl": "reasoning_rl", "sft": "sft",
          "all_scenario_rl": "all_scenario_rl", "student_base": "student_pretrain", "student_rl": "student_rl",
          "student_distill": "student_distill"}


def r1_pipeline(config) -> dict:
    """Run (or resume) every stage; returns and writes the findings."""
    r = _R1Run.prepare(config)  # every section checked, the workdir made, the data and tokenizer there
    st, seed, lam = config.student, config.seed, config.language_weight
    zero_rewards = {r.task.accuracy_reward: 1.0, "format": 1.0}
    reasoning_rewards = {r.task.accuracy_reward: 1.0, "r1_format": 1.0, "language": lam}
    general_train = general_prompts(seed, config.general.prompts, split="train")
    general_pairs = [(r.renderer(q), _r1_layout(chosen))
                     for q, chosen, _ in preference_pairs(seed, config.general.sft_pairs, aspects=("harmlessness",))]
    preferences = [(r.renderer(q), _r1_layout(a), _r1_layout(b))
                   for q, a, b in preference_pairs(seed, config.reward_model.pairs, split="train")]
    annotated = annotated_pairs(r.train, r.cold_start_data.annotated, style=corpus_style(config.pretrain),
                                output_format=FORMAT, **r.sampling)
    rl = partial(grpo_stage, train=r.train, rewards=zero_rewards, **r.rl)
    sft = partial(_sft_stage, replay=r.replay, lora=r.rl["lora"], **r.common)
    cold_start_training, sft_training, distill_training = (
        r.training[where] for where in ("cold_start", "sft", "student.distill"))
    reward_model_loop, reward_model_optimizer, reward_model_settings = r.training["reward_model"]
    stand_in = dict(pretrain=config.pretrain, examples=r.train + r.test, renderer=r.renderer, task=r.task, **r.common)
    recipe = [
        given("pretrain", config.init) if config.init else pretraining(
            "pretrain", "base", model_section=config.model, style=corpus_style(config.pretrain), **stand_in),
        Stage("r1_zero", rl, inputs=("pretrain",)),
        Stage("r1_zero_language", partial(rl, rewards={**zero_rewards, "language": lam}), inputs=("pretrain",)),
        Stage("cold_start_data", partial(cold_start_stage, examples=r.train, settings=r.cold_start_data,
                                         annotated=annotated, **r.cold_start), inputs=("r1_zero",),
              output="cold_start", finished=cold_start_pairs),
        Stage("cold_start", partial(sft, training=cold_start_training, replay_seed=seed + 11),
              inputs=("pretrain", "cold_start_data")),
        Stage("reasoning_rl", partial(rl, rewards=reasoning_rewards), inputs=("cold_start",)),
        Stage("rejection", partial(rejection_stage, **r.rejection), inputs=("reasoning_rl",), finished=None),
        Stage("sft", partial(sft, training=sft_training, extra=general_pairs, replay_seed=seed + 12),
              inputs=("pretrain", "rejection")),
        Stage("reward_model", partial(reward_model_stage, pairs=preferences, loop=reward_model_loop,
                                      optimizer=reward_model_optimizer, settings=reward_model_settings, **r.common),
              inputs=("sft",), finished=None),
        Stage("all_scenario_rl", partial(rl, train=r.train + general_train, rewards=reasoning_rewards),
              inputs=("sft", "reward_model")),
        given("student_pretrain", st.init) if st.init else pretraining(
            "student_pretrain", "student/base", model_section=st.model, style=_student_style(config), **stand_in),
        Stage("student_rl", partial(rl, loop=r.student_rl_loop), inputs=("student_pretrain",), output="student/rl"),
        Stage("distill_budget", partial(budget_stage, tokenizer=r.tokenizer, settings=r.rl["settings"],
                                        batch_size=distill_training[2].batch_size),
              inputs=("student_pretrain", "student_rl", "rejection"), output="student", finished=None),
        Stage("student_distill", partial(_distill_stage, training=distill_training, replay=r.replay,
                                         replay_seed=seed + 13, lora=r.rl["lora"], **r.common),
              inputs=("student_pretrain", "rejection", "distill_budget"), output="student/distill"),
        Stage("evals", partial(evaluation_stage, names=list(MODELS), **r.evaluation), inputs=tuple(MODELS.values()),
              finished=None),
        Stage("judge_scores", partial(judging_stage, names=("sft", "all_scenario_rl"), **r.judging),
              inputs=("reward_model", "sft", "all_scenario_rl"), output="evals", finished=None),
    ]
    run = run_stages(r.workdir, recipe)
    return {"stopped": run.stopped} if run.stopped else _write_findings(config, r, run.results)


@dataclasses.dataclass(frozen=True)
class _R1Run:
    """What the stages of one run share, ready before the first starts: the workdir, the task's data,
    the tokenizer, the mesh, and the keywords each kind of stage takes."""

    workdir: pathlib.Path
    started: float
    task: Task
    tokenizer: Tokenizer
    renderer: PromptRenderer
    mesh: Mesh
    train: list
    test: list
    grpo_loop: LoopSettings  # of every GRPO stage but the student's
    student_rl_loop: LoopSettings
    # the loop, optimizer and batch settings of each other training section, by its name, and the replay
    # share of each SFT section: (LoopSettings, OptimizerSettings, SFTSettings, ReplaySettings) or
    # (LoopSettings, OptimizerSettings, RewardModelSettings)
    training: dict[str, tuple]
    common: dict  # tokenizer, mesh, seed: every training stage
    rl: dict  # grpo_stage's settings but the train prompts and rewards
    sampling: dict  # renderer, task, seed
    cold_start_data: ColdStartSettings  # what the cold-start data samples, and how many annotated pairs it adds
    cold_start: dict  # cold_start_stage's other settings but the prompts and the annotated pairs
    rejection: dict  # rejection_stage's settings, its prompts and sampling from config.rejection
    replay: Callable | None  # the stand-in corpus that SFT sets are mixed with (None: a real base, no replay)
    evaluation: dict  # evaluation_stage's settings
    judging: dict  # judging_stage's settings

    @classmethod
    def prepare(cls, config) -> "_R1Run":
        """Check every section, make the workdir, and prepare the task's data and the tokenizer (the
        stand-in's, trained here, or the one beside `config.init`)."""
        with config_section("task"):
            task = task_from_config({"seed": config.seed, **dict(config.task)})
        for name in (task.accuracy_reward, "format", "r1_format", "language"):
            get_reward(name)
        if not (isinstance(config.language_weight, (int, float)) and 0 <= config.language_weight < float("inf")):
            raise ConfigError(f"config.language_weight={config.language_weight!r}: the language reward's weight "
                              "(lambda) is a finite number >= 0")
        grpo, grpo_loop, grpo_optimizer = grpo_training(config.grpo, where="grpo", template=config.template)
        lora = lora_settings(config)  # of every GRPO and SFT stage (not pretraining, not the reward model)
        eval_settings = settings_from(config.eval, EvalSettings, where="eval", scores=EVAL_SCORES)
        training, cold_start_data = _training_sections(config)
        rejection = settings_from(config.rejection, RejectionSettings, where="rejection")
        with config_section("student"):  # the student's GRPO run: config.grpo's, for its own number of steps
            student_rl_loop = dataclasses.replace(grpo_loop, steps=config.student.rl_steps or grpo_loop.steps)
            grpo_optimizer.check(student_rl_loop.steps)
        check_count(config.reward_workers, "reward_workers")  # 0: score in this process
        mesh_section = check_mesh(config.mesh)
        workdir = make_workdir(check_workdir(config.workdir))
        started = time.perf_counter()
        mesh = make_mesh(mesh_section)
        if config.init:  # a real checkpoint: its own tokenizer, the task's own splits
            tokenizer = load_tokenizer(config.init)  # the one beside the checkpoint
            train = list(task.load("train", data_dir=workdir / "data"))
            test = list(task.load(eval_settings.split, data_dir=workdir / "data"))
        else:
            symbols = tuple(dict.fromkeys(R1_TAGS + (FORMAT.reasoning_open, FORMAT.reasoning_close)))
            train, test, tokenizer = stand_in_data(config, workdir, task, symbols=symbols)
        renderer = PromptRenderer(tokenizer, config.template)
        if config.init and any(training[where][3].replay for where in ("cold_start", "sft", "student.distill")):
            log.warning("config.init is a checkpoint without the stand-in's pretraining corpus: the SFT sets are "
                        "not mixed with replay (cold_start.replay, sft.replay, student.distill.replay are not used)")
        seed, max_new_tokens = config.seed, grpo.max_new_tokens
        common = dict(tokenizer=tokenizer, mesh=mesh, seed=seed)
        return cls(
            workdir=workdir, started=started, task=task, tokenizer=tokenizer, renderer=renderer, mesh=mesh,
            train=train, test=test, grpo_loop=grpo_loop, student_rl_loop=student_rl_loop, training=training,
            common=common, rl=dict(task=task, settings=grpo, loop=grpo_loop, optimizer=grpo_optimizer,
                                   reward_workers=config.reward_workers, lora=lora, **common),
            sampling=dict(renderer=renderer, task=task, seed=seed), cold_start_data=cold_start_data,
            cold_start=dict(renderer=renderer, task=task, seed=seed, mesh=mesh, max_new_tokens=max_new_tokens,
                            output_format=FORMAT),
            rejection=dict(examples=_first(train, rejection.prompts), renderer=renderer, task=task, mesh=mesh,
                           num_samples=rejection.samples_per_prompt, max_new_tokens=max_new_tokens,
                           temperature=rejection.temperature, top_p=rejection.top_p, language="en", seed=seed,
                           provenance={"checkpoint": str(workdir / "reasoning_rl" / "model"),
                                       "step": grpo_loop.steps, "stage": "reasoning_rl"}),
            # the base was pretrained on every problem (stand_in_data)
            replay=None if config.init else partial(
                with_replay, corpus=train + test, style=corpus_style(config.pretrain), renderer=renderer, task=task),
            evaluation=dict(renderer=renderer, examples=_first(test, eval_settings.num_prompts), task=task,
                            settings=eval_settings, max_new_tokens=max_new_tokens, mesh=mesh, seed=seed + 1,
                            per_prompt=True),
            judging=dict(examples=general_prompts(seed + 1, config.eval.num_prompts, split="test"),
                         renderer=renderer, num_samples=config.eval.num_samples,
                         max_new_tokens=grpo.max_new_tokens, temperature=config.eval.temperature,
                         top_p=config.eval.top_p, mesh=mesh, seed=seed + 2))


def _sft_stage(output: pathlib.Path, init: pathlib.Path, data, *, training: tuple, replay: Callable | None,
               replay_seed: int, extra=(), name: str | None = None, **common):
    """SFT of `init` on `data` (pairs, or the rejection stage's `Traces`) and the `extra` pairs, with
    the section's replay share of the result drawn from the stand-in base's corpus (`replay`);
    `training`: the section's (LoopSettings, OptimizerSettings, SFTSettings, ReplaySettings)."""
    loop, optimizer, batches, mixing = training
    pairs = (data.pairs if isinstance(data, Traces) else list(data)) + list(extra)
    if replay is not None:
        pairs = replay(pairs, mixing.replay, replay_seed)
    log.info("%s: %d pairs", name or output.name, len(pairs))
    return sft_stage(output, init, pairs, to_pairs=None, loop=loop, optimizer=optimizer, batches=batches,
                     name=name or output.name, **common)


def _distill_stage(output: pathlib.Path, student: pathlib.Path, traces: Traces, budget: DistillBudget | None, *,
                   training: tuple, **sft):
    """The student's SFT on the teacher's traces for the steps of the distillation `budget` (None:
    no traces, nothing to distill)."""
    if budget is None:
        return None
    loop, *rest = training
    return _sft_stage(output, student, traces, training=(dataclasses.replace(loop, steps=budget.steps), *rest),
                      name="student/distill", **sft)


def _write_findings(config, r: _R1Run, results: dict) -> dict:
    """The paper's findings from the evaluations of a finished run, written to findings.json/.md."""
    evals, budget = results["evals"], results["distill_budget"]
    k, target = config.eval.num_samples, config.findings.target_accuracy
    findings = paper_findings(evals, k=k, target=target, rl_steps=r.grpo_loop.steps,
                              steps_from_base=steps_to_reach(r.workdir / "r1_zero" / "metrics.jsonl", target),
                              steps_from_cold=steps_to_reach(r.workdir / "reasoning_rl" / "metrics.jsonl", target))
    findings["e_distillation_beats_rl_at_equal_compute"].update(
        rl_flops=None if budget is None else budget.rl_flops, distill_steps=None if budget is None else budget.steps,
        distill_flops=budget.steps * budget.flops_per_step if results["student_distill"] else None)
    findings["general_prompts_judge_score"] = results["judge_scores"]
    write_json_atomically(r.workdir / "findings.json", {"findings": findings, "evals": evals,
                                                        "seconds": round(time.perf_counter() - r.started, 1)})
    table = models_table(evals, k=k) + "\n\n" + findings_table(findings)
    (r.workdir / "findings.md").write_text(table + "\n")
    print(table)
    return findings


def _r1_layout(response: str) -> str:
    """A `<think> reasoning </think> summary` response in R1's output format."""
    return response.replace("<think>", FORMAT.reasoning_open, 1).replace("</think>", FORMAT.reasoning_close, 1)


def _first(examples: list, count: int) -> list:
    """The first `count` examples (the splits are in random order), or all of them for 0."""
    return examples[:count] if count else examples


def _student_style(config):
    """The stand-in student base's corpus: the base's, with the student's own `worked_rate`."""
    return dataclasses.replace(corpus_style(config.pretrain), worked_rate=config.student.worked_rate)


def _training_sections(config) -> tuple[dict[str, tuple], ColdStartSettings]:
    """The loop, optimizer and batches of every training section but GRPO's, and the other fields of
    those sections (the cold start's data, returned beside them), checked before the first stage starts."""
    if not config.init:
        check_pretrain(config.pretrain)
        check_model(config.model)
    if not config.student.init:
        check_model(config.student.model, "student.model")
    *cold_start_training, cold_start_data = training_from(config.cold_start, SFTSettings, ReplaySettings,
                                                          ColdStartSettings, where="cold_start")
    training = {
        "cold_start": tuple(cold_start_training),
        "sft": training_from(config.sft, SFTSettings, ReplaySettings, where="sft"),
        "reward_model": training_from(config.reward_model, RewardModelSettings, where="reward_model",
                                      other=("pairs",)),
        # its steps follow from the student RL run's compute, known only then (`budget_stage`): a
        # stand-in 1 here, its schedule checked against the real ones when the optimizer is made
        "student.distill": settings_from(config.student.distill, LoopSettings, OptimizerSettings, SFTSettings,
                                         ReplaySettings, where="student.distill", steps=1),
    }
    with config_section("student"):
        _student_style(config)
    return training, cold_start_data
