"""The full DeepSeek-R1 recipe in miniature, and the paper's findings measured on it.

Stages (each a folder of the workdir, skipped when its result is there; see `stages`):

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
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
import types

import jax
import numpy as np

from r1jax.data import PromptIterator
from r1jax.data.cold_start import build_cold_start, to_r1_format
from r1jax.data.preferences import general_prompts, preference_pairs
from r1jax.data.rejection import load_sft_dataset, rejection_sample, rollout_sampler
from r1jax.files import write_json_atomically
from r1jax.models import from_pretrained
from r1jax.models.reward_model import RewardModel
from r1jax.pipelines import stages, stand_in
from r1jax.pipelines.findings import findings_table, models_table, paper_findings
from r1jax.pipelines.settings import (ConfigError, EvalSettings, TrainSettings, config_section, make_workdir,
                                     settings_from, training_settings)
from r1jax.rewards import OutputFormat, get_reward
from r1jax.rollout import PromptRenderer, rollout
from r1jax.sharding import make_mesh
from r1jax.tasks import task_from_config
from r1jax.tokenizers import R1_TAGS, load_tokenizer
from r1jax.train.grpo import GRPOSettings
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.reward_model import RewardModelJudge, RewardModelSettings, RewardModelTraining
from r1jax.train.state import make_optimizer

log = logging.getLogger(__name__)

# R1's markers; the summary is written in words the tiny tokenizer learned from the base
# corpus (the default "$\\boxed{N}$" is a string of rare byte pieces a tiny model garbles), with
# the leading space that makes "the" the corpus's own piece: without it the summary after the
# marker starts with a piece the base never saw, and the model garbled it ("hehe answer is 8")
FORMAT = OutputFormat(summary_template=" the answer is {answer} .")
EVAL_SCORES = {"format_reward": "format", "r1_format": "r1_format", "language": "language"}


def _r1_layout(response: str) -> str:
    """A `<think> reasoning </think> summary` response in R1's output format."""
    return response.replace("<think>", FORMAT.reasoning_open, 1).replace("</think>", FORMAT.reasoning_close, 1)


def _rl_flops(metrics_file: pathlib.Path, *, rows_per_step: int, prompt_tokens: float, flops_per_token: int,
              with_reference: bool) -> float:
    """FLOPs of a GRPO run from its logged response lengths: sampling (1 forward), the
    reference (1 forward) and the update (forward + backward = 3 forwards) per token."""
    forwards = 1 + (1 if with_reference else 0) + 3
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    tokens = sum(rows_per_step * (prompt_tokens + row["response_length"]) for row in rows)
    return float(forwards * flops_per_token * tokens)


def _steps_to_reach(metrics_file: pathlib.Path, target: float, window: int = 3) -> int | None:
    """First step at which the `window`-step running mean of training accuracy reaches `target`."""
    accuracy = [json.loads(line)["accuracy"] for line in metrics_file.read_text().splitlines()]
    for end in range(window, len(accuracy) + 1):
        if np.mean(accuracy[end - window:end]) >= target:
            return end
    return None


def _annotated_pairs(examples, count: int, config, renderer, task) -> list[tuple[str, str]]:
    """`count` correct worked solutions of random `examples` in R1's format, narrated in English
    (written by the stand-in's corpus generator, so for its task only)."""
    rng = np.random.default_rng(config.seed)
    style = dataclasses.replace(stand_in.corpus_style(config.pretrain), worked_rate=1.0, error_rate=0.0,
                                tagged_rate=1.0, chinese_rate=0.0)
    chosen = [examples[i] for i in rng.integers(len(examples), size=count)]
    return [(prompt, to_r1_format(completion, FORMAT))
            for prompt, completion in stand_in.corpus_pairs(chosen, rng, style, renderer, task)]


def _first(examples: list, count: int) -> list:
    """The first `count` examples (the splits are in random order), or all of them for 0."""
    return examples[:count] if count else examples


def _student_style(config):
    """The stand-in student base's corpus: the base's, with the student's own `worked_rate`."""
    return dataclasses.replace(stand_in.corpus_style(config.pretrain), worked_rate=config.student.worked_rate)


def _check_training_sections(config) -> None:
    """The optimisation of every stage that does not train with `config.rl`, checked before the first
    stage starts (SFT and the reward model train on a cosine schedule)."""
    if not config.init:
        stand_in.check_pretrain(config.pretrain)
    for where in ("cold_start", "sft", "reward_model"):
        training_settings(config[where], where=where)
    with config_section("student"):
        _student_style(config)
    for where in ("cold_start", "rejection"):
        count = config[where].prompts
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"config.{where}.prompts={count!r}: the number of training prompts to sample, "
                              "an integer >= 0 (0: all of them)")
    for where, field in (("cold_start", "replay"), ("sft", "replay"), ("student", "distill_replay")):
        share = config[where][field]
        if not 0 <= share < 1:
            raise ConfigError(f"config.{where}.{field}={share}: the share of base-corpus pairs in the SFT set "
                              "must be in [0, 1)")
    # the distillation's steps follow from the student RL run's compute: known only then
    st = config.student
    if not 0 < st.distill_learning_rate < float("inf") or st.distill_warmup_steps < 0 or st.distill_batch_size < 1:
        raise ConfigError(f"config.student: need a finite positive distill_learning_rate, distill_warmup_steps >= 0 "
                          f"and distill_batch_size >= 1; got {st.distill_learning_rate}, {st.distill_warmup_steps}, "
                          f"{st.distill_batch_size}")


def r1_pipeline(config) -> dict:
    """Run (or resume) every stage; returns and writes the findings."""
    lam = config.language_weight
    with config_section("task"):
        task = task_from_config({"seed": config.seed, **dict(config.task)})
    accuracy = task.accuracy_reward
    for name in (accuracy, "format", "r1_format", "language"):
        get_reward(name)
    rl_settings, rl_train = settings_from(config.rl, GRPOSettings, TrainSettings, where="rl", template=config.template)
    eval_settings = settings_from(config.eval, EvalSettings, where="eval", scores=EVAL_SCORES)
    _check_training_sections(config)
    with config_section("student"):  # the student's GRPO run: config.rl's, for its own number of steps
        student_rl_train = dataclasses.replace(rl_train, steps=config.student.rl_steps or rl_train.steps)
    workdir = make_workdir(config.workdir)
    started = time.perf_counter()
    mesh = make_mesh(dict(config.mesh))
    if config.init:  # a real checkpoint: its own tokenizer, the task's own splits
        tokenizer = load_tokenizer(config.init)  # the one beside the checkpoint
        base_dir = pathlib.Path(config.init)
        train = list(task.load("train", data_dir=workdir / "data"))
        test = list(task.load(eval_settings.split, data_dir=workdir / "data"))
    else:
        symbols = tuple(dict.fromkeys(R1_TAGS + (FORMAT.reasoning_open, FORMAT.reasoning_close)))
        prepared = stand_in.prepare_base(config, workdir, mesh, task, symbols=symbols)
        if prepared is None:
            return {"stopped": "pretrain"}
        train, test, tokenizer, base_dir = prepared
    renderer = PromptRenderer(tokenizer, config.template)
    if config.init and (config.cold_start.replay or config.sft.replay or config.student.distill_replay):
        log.warning("config.init is a checkpoint without the stand-in's pretraining corpus: the SFT sets are not "
                    "mixed with replay (cold_start.replay, sft.replay, student.distill_replay are not used)")

    def with_replay(pairs: list, share: float, seed: int) -> list:
        """`pairs` plus pairs of the stand-in base's pretraining corpus (all its problems, drawn
        afresh), `share` of the result: SFT keeps what the base knew, as the paper mixes
        non-reasoning data into its SFT sets."""
        count = round(len(pairs) * share / (1 - share)) if pairs and not config.init else 0
        if not count:
            return pairs
        rng = np.random.default_rng(seed)
        corpus = train + test  # what the base was pretrained on (stand_in.prepare_base)
        chosen = [corpus[i] for i in rng.integers(len(corpus), size=count)]
        return pairs + stand_in.corpus_pairs(chosen, rng, stand_in.corpus_style(config.pretrain), renderer, task)
    eval_examples = test[:eval_settings.num_prompts] if eval_settings.num_prompts else test
    max_new_tokens = rl_settings.max_new_tokens

    def evaluate(name: str, model_dir: pathlib.Path) -> dict:
        return stages.cached(workdir / "evals" / f"{name}.json", lambda: stages.evaluate_stage(
            *stages.split(from_pretrained(model_dir, mesh=mesh)), renderer, eval_examples, task=task,
            settings=eval_settings, max_new_tokens=max_new_tokens, mesh=mesh, seed=config.seed + 1,
            per_prompt=True), needs=("per_prompt",))

    def rl(name: str, init: pathlib.Path, rewards: dict, examples=train, model_reward=None, train_settings=rl_train):
        log.info("stage %s (%.0fs)", name, time.perf_counter() - started)
        return stages.grpo_stage(workdir / name, init=init, train=examples, tokenizer=tokenizer, task=task,
                                 rewards=rewards, settings=rl_settings, train_settings=train_settings, mesh=mesh,
                                 seed=config.seed, reward_workers=config.reward_workers, model_reward=model_reward)

    def sample_fn(model_dir: pathlib.Path, samples: int, temperature: float, top_p: float):
        graphdef, params = stages.split(from_pretrained(model_dir, mesh=mesh))
        return rollout_sampler(graphdef, params, renderer, num_samples=samples, max_prompt_length=256,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, mesh=mesh)

    def sft(name: str, init, pairs, steps: int, section) -> pathlib.Path | None:
        log.info("stage %s (%.0fs), %d pairs", name, time.perf_counter() - started, len(pairs))
        # a small filtered set may hold fewer pairs than a batch: then every step sees all of them
        batch_size = min(section.batch_size, len(pairs))
        model = stages.sft_stage(workdir / name, init=init, examples=pairs, to_pairs=None, tokenizer=tokenizer,
                                 steps=steps, batch_size=batch_size, learning_rate=section.learning_rate,
                                 warmup_steps=section.warmup_steps, mesh=mesh, seed=config.seed, name=name)
        return None if model is None else workdir / name / "model"

    # -- R1-Zero, with and without the language reward ------------------------------------------
    r1_zero_dir = rl("r1_zero", base_dir, {accuracy: 1.0, "format": 1.0})
    if r1_zero_dir is None:
        return {"stopped": "r1_zero"}
    r1_zero_language_dir = rl("r1_zero_language", base_dir, {accuracy: 1.0, "format": 1.0, "language": lam})
    if r1_zero_language_dir is None:
        return {"stopped": "r1_zero_language"}

    # -- cold start: readable R1-Zero outputs in R1's format, then SFT of the base ----------------
    c = config.cold_start
    cold_start_data = workdir / "cold_start" / "data.json"
    if not cold_start_data.exists():
        sample = sample_fn(r1_zero_dir, c.samples_per_prompt, c.temperature, c.top_p)
        sampled = _first(train, c.prompts)
        texts = renderer.texts(sampled, task)
        records = []
        for start in range(0, len(sampled), 32):
            chunk = sampled[start:start + 32]
            out = sample(texts[start:start + 32], jax.random.key(config.seed + start))
            for i, (completion, _, _) in enumerate(out):
                example = chunk[i // c.samples_per_prompt]
                records.append({"prompt": texts[start + i // c.samples_per_prompt], "completion": completion,
                                **example})
        pairs, stats = build_cold_start(records, correct_fn=get_reward(accuracy), language="en",
                                        output_format=FORMAT)
        # the paper's cold start also has human-written long CoT: here, worked solutions written
        # by the corpus generator in one language (`annotated` of them; 0 keeps R1-Zero data only)
        pairs += _annotated_pairs(train, c.annotated, config, renderer, task) if c.annotated else []
        stats["annotated"] = c.annotated
        cold_start_data.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(cold_start_data, {"pairs": pairs, "stats": stats}, indent=2)
    cold = json.loads(cold_start_data.read_text())
    log.info("cold start data: %s", cold["stats"])
    if not cold["pairs"]:
        raise RuntimeError(f"no R1-Zero sample passed the cold-start filters ({cold['stats']}) and "
                           "cold_start.annotated is 0: train R1-Zero longer or add annotated samples")
    cold_start_dir = sft("cold_start", base_dir,
                         with_replay([tuple(p) for p in cold["pairs"]], c.replay, config.seed + 11), c.steps, c)
    if cold_start_dir is None:
        return {"stopped": "cold_start"}

    # -- reasoning RL with the language reward ----------------------------------------------------
    reasoning_rewards = {accuracy: 1.0, "r1_format": 1.0, "language": lam}
    reasoning_dir = rl("reasoning_rl", cold_start_dir, reasoning_rewards)
    if reasoning_dir is None:
        return {"stopped": "reasoning_rl"}

    # -- rejection sampling, then SFT on reasoning + general data ---------------------------------
    r = config.rejection
    rejection_dir = workdir / "rejection"
    rejection_sample(
        *stages.split(from_pretrained(reasoning_dir, mesh=mesh)), renderer, _first(train, r.prompts),
        output_dir=rejection_dir, task=task,
        num_samples=r.samples_per_prompt, max_new_tokens=max_new_tokens, temperature=r.temperature,
        top_p=r.top_p, language="en", mesh=mesh, seed=config.seed,
        provenance={"checkpoint": str(reasoning_dir), "step": rl_train.steps, "stage": "reasoning_rl"})
    reasoning_pairs = [(rec["prompt"], rec["completion"]) for rec in load_sft_dataset(rejection_dir)]
    general_train = general_prompts(config.seed, config.general.prompts, split="train")
    general_pairs = [(renderer(q), _r1_layout(chosen))
                     for q, chosen, _ in preference_pairs(config.seed, config.general.sft_pairs,
                                                          aspects=("harmlessness",))]
    s = config.sft
    sft_dir = sft("sft", base_dir, with_replay(reasoning_pairs + general_pairs, s.replay, config.seed + 12),
                  s.steps, s)
    if sft_dir is None:
        return {"stopped": "sft"}

    # -- the reward model of general prompts ------------------------------------------------------
    m = config.reward_model
    log.info("stage reward_model (%.0fs)", time.perf_counter() - started)
    rm_pairs = [(renderer(q), _r1_layout(a), _r1_layout(b))
                for q, a, b in preference_pairs(config.seed, m.pairs, split="train")]
    # a finished run restores its last checkpoint and returns at once: nothing to export
    rm_stage = RewardModelTraining(RewardModelSettings(), tokenizer=tokenizer, mesh=mesh)
    rm_result = run_training(
        LoopSettings(steps=m.steps, save_every=m.steps, seed=config.seed, plot_keys=("loss", "accuracy")),
        workdir=workdir / "reward_model", model=RewardModel.from_transformer(from_pretrained(sft_dir, mesh=mesh)),
        optimizer=make_optimizer(m.learning_rate, m.warmup_steps, m.steps, weight_decay=0.01),
        loss_fn=rm_stage.objective(), data=PromptIterator(rm_pairs, batch_size=m.batch_size, seed=config.seed),
        make_batches=rm_stage.make_batches, mesh=mesh, name="reward_model")
    if not rm_result.completed:
        return {"stopped": "reward_model"}
    judge = RewardModelJudge(rm_result.state.graphdef, rm_result.state.params, tokenizer, mesh)

    # -- RL for all scenarios ---------------------------------------------------------------------
    final_dir = rl("all_scenario_rl", sft_dir, reasoning_rewards, examples=train + general_train,
                   model_reward=judge)
    if final_dir is None:
        return {"stopped": "all_scenario_rl"}

    # -- distillation vs RL on a smaller student, at equal compute ---------------------------------
    st = config.student
    if st.init:  # a real student checkpoint
        student_base = pathlib.Path(st.init)
    else:
        # the student's own pretraining corpus: `worked_rate` sets how often its base shows the
        # worked reasoning that RL could amplify (the paper's explanation of its Table 6)
        student_base = stand_in.pretrain_stage(
            workdir / "student" / "base", model_section=st.model, pretrain=config.pretrain,
            style=_student_style(config), examples=train + test, tokenizer=tokenizer,
            renderer=renderer, task=task, mesh=mesh, seed=config.seed, name="student_pretrain")
        if student_base is None:
            return {"stopped": "student_pretrain"}
    student_config = from_pretrained(student_base).config
    student_rl = rl("student/rl", student_base, {accuracy: 1.0, "format": 1.0}, train_settings=student_rl_train)
    if student_rl is None:
        return {"stopped": "student_rl"}
    rl_flops = distill_steps = sft_flops_per_step = student_distill = None
    if reasoning_pairs:
        prompt_tokens = float(np.mean([len(tokenizer.encode(p)) for p, _ in reasoning_pairs]))
        completion_tokens = float(np.mean([len(tokenizer.encode(c)) + 1 for _, c in reasoning_pairs]))
        student_flops = student_config.flops_per_token()
        rl_flops = _rl_flops(workdir / "student" / "rl" / "metrics.jsonl",
                             rows_per_step=rl_settings.prompts_per_step * rl_settings.num_generations,
                             prompt_tokens=prompt_tokens, flops_per_token=student_flops,
                             with_reference=rl_settings.beta != 0)
        distill_batch = min(st.distill_batch_size, len(reasoning_pairs))  # as `sft` will use
        sft_flops_per_step = 3 * student_flops * distill_batch * (prompt_tokens + completion_tokens)
        distill_steps = max(1, round(rl_flops / sft_flops_per_step))
        student_distill = sft("student/distill", student_base,
                              with_replay(reasoning_pairs, st.distill_replay, config.seed + 13), distill_steps,
                              types.SimpleNamespace(batch_size=st.distill_batch_size,
                                                    warmup_steps=st.distill_warmup_steps,
                                                    learning_rate=st.distill_learning_rate))
        if student_distill is None:
            return {"stopped": "student_distill"}
    else:
        log.warning("rejection sampling kept no teacher traces: no distillation to compare")

    # -- evaluations and findings ---------------------------------------------------------------
    models = {"base": base_dir, "r1_zero": r1_zero_dir, "r1_zero_language": r1_zero_language_dir,
              "cold_start": cold_start_dir, "reasoning_rl": reasoning_dir, "sft": sft_dir,
              "all_scenario_rl": final_dir, "student_base": student_base, "student_rl": student_rl}
    if student_distill is not None:
        models["student_distill"] = student_distill
    evals = {name: evaluate(name, path) for name, path in models.items()}
    general_test = general_prompts(config.seed + 1, config.eval.num_prompts, split="test")
    general_scores = {name: stages.cached(workdir / "evals" / f"{name}_general.json", lambda path=path: {
        "judge_score": _judge_score(path, judge, general_test, renderer, config, mesh)})["judge_score"]
        for name, path in (("sft", sft_dir), ("all_scenario_rl", final_dir))}
    k = config.eval.num_samples
    target = config.findings.target_accuracy
    steps_from_base = _steps_to_reach(workdir / "r1_zero" / "metrics.jsonl", target)
    steps_from_cold = _steps_to_reach(workdir / "reasoning_rl" / "metrics.jsonl", target)
    findings = paper_findings(evals, k=k, target=target, rl_steps=rl_train.steps, steps_from_base=steps_from_base,
                              steps_from_cold=steps_from_cold)
    findings["e_distillation_beats_rl_at_equal_compute"].update(
        rl_flops=rl_flops, distill_steps=distill_steps,
        distill_flops=distill_steps * sft_flops_per_step if student_distill else None)
    findings["general_prompts_judge_score"] = general_scores
    write_json_atomically(workdir / "findings.json", {"findings": findings, "evals": evals,
                                                  "seconds": round(time.perf_counter() - started, 1)})
    table = models_table(evals, k=k) + "\n\n" + findings_table(findings)
    (workdir / "findings.md").write_text(table + "\n")
    print(table)
    return findings


def _judge_score(model_dir, judge, examples, renderer, config, mesh) -> float:
    """Mean judge reward of a policy's samples on held-out general prompts."""
    graphdef, params = stages.split(from_pretrained(model_dir, mesh=mesh))
    texts = [renderer(ex["question"]) for ex in examples]
    k = config.eval.num_samples
    out = rollout(graphdef, params, renderer.tokenizer, renderer.encode_all(texts), jax.random.key(config.seed + 2),
                  repeat=k, max_prompt_length=256, max_new_tokens=config.rl.max_new_tokens,
                  temperature=config.eval.temperature, top_p=config.eval.top_p, mesh=mesh)
    grouped = [ex for ex in examples for _ in range(k)]
    return float(np.mean(judge([texts[i // k] for i in range(len(grouped))], out.completions, grouped)))
