"""R1-Zero: GRPO with rule-based rewards straight from a checkpoint, evaluated before and after.

    workdir/data/          the task's data, when it is generated locally
    workdir/grpo/          the GRPO run (checkpoints, metrics.jsonl, metrics.png); grpo/model is the
                           trained policy with its tokenizer files (loads in transformers and vLLM)
    workdir/evals/         held-out evaluations of the starting and the final model (JSON)
    workdir/summary.json  base_* and final_* (the evaluations: pass@1, cons@k, length, reflection rate,
                           ...), train_<curve>_first / _last (the GRPO log's first and last steps)

The config (see `experiments/grpo_smollm2.py`):
  init           the starting checkpoint: an HF directory or a .gguf file
  tokenizer      its tokenizer ("" = the one beside `init`)
  model          `ModelConfig` overrides: the dtype policy (dtype, param_dtype) and how it computes
                 (remat, attention, attention_block, head_chunk_size); its sizes are the checkpoint's
  task           {"name": <registered task>, **its options}; data_dir ("" = workdir/data)
  grpo           `GRPOSettings` fields (template, system_prompt, loss options ...), the loop's
                 (`LoopSettings`: steps, save_every, num_microbatches, ...) and the optimizer's
                 (`OptimizerSettings`: learning_rate, warmup_steps, schedule, weight_decay)
  rewards        {registered reward: weight}, 0 meaning not used (`settings.reward_weights`); reward_workers
  eval           `EvalSettings` of the held-out evaluation
  benchmarks     optional: further evaluations before and after, each on a task of its own,
                 {name: {"task": {"name": <registered task>, **options}, **EvalSettings fields}} (e.g.
                 HumanEval beside a generated code task); summary keys base_<name>_pass_at_1, ...
  lora           optional `LoRAConfig` (rank, alpha, targets): a LoRA policy on the frozen `init`; rank 0 or
                 no section: full fine-tuning
  mesh           the training mesh ({"data": -1}, {"fsdp": -1}, ...: `r1jax.sharding.make_mesh`)
  sampler_mesh   optional: the mesh of rollouts and evaluations (e.g. {"tensor": 2, "data": -1});
                 weights are resharded onto it in device memory

Each stage is skipped when its result is there, so a run killed at any point resumes
with the same command (see `r1jax.pipelines.stages.runner`).

`r1_zero_tiny` first pretrains a stand-in base (`r1jax.pipelines.stages.pretrain`), then runs
the same recipe from it.
"""
from __future__ import annotations

import logging
import pathlib
import time
from functools import partial
from typing import Mapping

import ml_collections

from r1jax.distributed import is_primary, primary_value
from r1jax.files import write_json_atomically
from r1jax.metrics import METRICS_FILE, curve_ends, read_metrics, summary_table
from r1jax.pipelines.settings import (ConfigError, EvalSettings, check_count, check_mesh, check_model_overrides,
                                     check_rewards, check_workdir, config_section, grpo_training, lora_settings,
                                     make_workdir, settings_from)
from r1jax.pipelines.stages import (Stage, check_model, check_pretrain, corpus_style, evaluate_model,
                                    evaluation_stage, given, grpo_stage, pretraining, run_stages, stand_in_data)
from r1jax.rollout import PromptRenderer
from r1jax.sharding import make_mesh
from r1jax.tasks import task_from_config
from r1jax.tokenizers import load_tokenizer

log = logging.getLogger(__name__)


class RunSettings:
    """Everything `r1_zero` reads from a config, checked before any file is written (a `ConfigError`)."""

    def __init__(self, config, *, init_exists: bool = True):
        self.workdir = check_workdir(config.workdir)
        self.init = pathlib.Path(config.init) if config.init else None
        if self.init is None or (init_exists and not self.init.exists()):
            raise ConfigError(f"config.init={config.init!r}: name the starting checkpoint, an existing Hugging Face "
                              "model directory or .gguf file (--config.init=PATH)")
        self.tokenizer_path = pathlib.Path(config.tokenizer) if config.tokenizer else self.init
        self.model_overrides = check_model_overrides(config.model)
        with config_section("task"):
            self.task = task_from_config(config.task)
        self.data_dir = pathlib.Path(config.data_dir) if config.data_dir else self.workdir / "data"
        self.grpo, self.loop, self.optimizer = grpo_training(config.grpo, where="grpo")
        self.rewards = check_rewards(config.rewards)
        self.eval = settings_from(config.eval, EvalSettings, where="eval")
        self.benchmarks = benchmark_settings(config.get("benchmarks") or {})
        self.lora = lora_settings(config)
        self.seed, self.mesh = config.seed, check_mesh(config.mesh)
        self.reward_workers = check_count(config.reward_workers, "reward_workers")  # 0: score in this process
        # {}: sample on the training mesh
        self.sampler_mesh = check_mesh(config.get("sampler_mesh") or {}, "sampler_mesh")


def benchmark_settings(sections) -> dict[str, tuple]:
    """name -> (task, `EvalSettings`) of each section of `config.benchmarks` (module doc)."""
    benchmarks = {}
    for name, section in dict(sections).items():
        where = f"benchmarks.{name}"
        section = dict(section or {})
        task = section.get("task")
        if not isinstance(task, (Mapping, ml_collections.ConfigDict)) or "name" not in task:
            raise ConfigError(f"config.{where}.task: name the benchmark's task, e.g. "
                              f"--config.{where}.task.name=humaneval")
        with config_section(f"{where}.task"):
            task = task_from_config(dict(section.pop("task")))
        benchmarks[name] = (task, settings_from(section, EvalSettings, where=where))
    return benchmarks


def r1_zero(config, *, started: float | None = None) -> dict:
    """Run (or resume) the recipe; returns and writes the summary (`seconds` counts from `started`, a
    `time.perf_counter()` reading of a caller that did work first, or from now)."""
    run = RunSettings(config)
    started = time.perf_counter() if started is None else started
    tokenizer = load_tokenizer(run.tokenizer_path)
    make_workdir(run.workdir)
    mesh = make_mesh(run.mesh)
    sampler_mesh = make_mesh(run.sampler_mesh) if run.sampler_mesh else mesh
    train = list(run.task.load("train", data_dir=run.data_dir))
    test = list(run.task.load(run.eval.split, data_dir=run.data_dir))
    eval_examples = test[:run.eval.num_prompts] if run.eval.num_prompts else test
    renderer = PromptRenderer(tokenizer, run.grpo.template, run.grpo.system_prompt)
    evaluate = partial(evaluate_model, renderer=renderer, examples=eval_examples, task=run.task, settings=run.eval,
                       max_new_tokens=run.grpo.max_new_tokens, mesh=mesh, seed=run.seed + 1, sampler_mesh=sampler_mesh)
    evaluation = partial(evaluation_stage, model_overrides=run.model_overrides, **evaluate.keywords)
    benchmarks = {}  # name -> its evaluation stage's settings, its data read before any stage runs
    for name, (task, settings) in run.benchmarks.items():
        examples = list(task.load(settings.split, data_dir=run.data_dir))
        benchmarks[name] = partial(evaluation, examples=examples[:settings.num_prompts or None], task=task,
                                   settings=settings)
    recipe = [
        given("init", run.init),
        Stage("base_eval", partial(evaluation, names=("base",)), inputs=("init",), output="evals", finished=None),
        *(Stage(f"base_{name}", partial(stage, names=(f"base_{name}",)), inputs=("init",), output="evals",
                finished=None) for name, stage in benchmarks.items()),
        Stage("grpo", partial(
            grpo_stage, train=train, tokenizer=tokenizer, task=run.task, rewards=run.rewards, settings=run.grpo,
            loop=run.loop, optimizer=run.optimizer, mesh=mesh, seed=run.seed, reward_workers=run.reward_workers,
            model_overrides=run.model_overrides, sampler_mesh=sampler_mesh, lora=run.lora,
            evaluate=(lambda state, step: evaluate(state.graphdef, state.params)) if run.loop.eval_every else None),
            inputs=("init",)),
        Stage("final_eval", partial(evaluation, names=("grpo",)), inputs=("grpo",), output="evals", finished=None),
        *(Stage(f"final_{name}", partial(stage, names=(f"grpo_{name}",)), inputs=("grpo",), output="evals",
                finished=None) for name, stage in benchmarks.items()),
    ]
    results = run_stages(run.workdir, recipe)
    if results.stopped:
        return {"stopped": results.stopped}
    base_eval, final_eval = results.results["base_eval"]["base"], results.results["final_eval"]["grpo"]
    k = run.eval.num_samples
    summary = {"init": str(run.init), "task": run.task.name, "model": str(results.results["grpo"])}
    # the figures; completions kept for inspection (`keep_problems`) stay in the evaluations' own files
    figures = lambda result: {key: value for key, value in result.items() if key != "problems"}
    for name, result in (("base", base_eval), ("final", final_eval)):
        summary.update({f"{name}_{key}": value for key, value in figures(result).items()})
    for name in benchmarks:
        for when, model in (("base", "base"), ("final", "grpo")):
            result = results.results[f"{when}_{name}"][f"{model}_{name}"]
            summary.update({f"{when}_{name}_{key}": value for key, value in figures(result).items()})
    # where the training curves started and ended (the paper's Figure 3: length and accuracy over RL);
    # only process 0 writes the log
    curves = primary_value(curve_ends(read_metrics(run.workdir / "grpo" / METRICS_FILE), CURVES,
                                      window=CURVE_WINDOW) if is_primary() else None)
    summary.update({f"train_{key}": value for key, value in curves.items()})
    summary.update({"eval_prompts": len(eval_examples), "eval_samples_per_prompt": k,
                    "seconds": round(time.perf_counter() - started, 1)})
    if is_primary():
        write_json_atomically(run.workdir / "summary.json", summary, indent=2)
        print(summary_table([{"model": name, **figures(result)}
                             for name, result in (("base", base_eval), ("R1-Zero", final_eval))]))
    return summary


CURVES = ("accuracy", "response_length", "reflection_rate")  # summary.json's train_<key>_first / _last
CURVE_WINDOW = 5  # GRPO steps averaged at each end


def generic_config(config, base_dir: pathlib.Path, tokenizer_path: pathlib.Path) -> ml_collections.ConfigDict:
    """The generic recipe config (`r1_zero`) of a tiny experiment whose base is `base_dir`."""
    workdir = pathlib.Path(config.workdir)
    return ml_collections.ConfigDict({
        "workdir": str(workdir), "seed": config.seed, "mesh": dict(config.mesh),
        "sampler_mesh": dict(config.sampler_mesh), "init": str(base_dir),
        "tokenizer": str(tokenizer_path), "model": {}, "task": {"seed": config.seed, **dict(config.task)},
        "data_dir": str(workdir / "data"), "grpo": {**dict(config.grpo), "template": config.template},
        "rewards": dict(config.rewards), "reward_workers": config.reward_workers, "eval": dict(config.eval),
        "lora": dict(config.get("lora") or {})})


def r1_zero_tiny(config) -> dict:
    """R1-Zero in miniature: pretrain the stand-in base, then the generic R1-Zero recipe from it."""
    started = time.perf_counter()
    workdir = check_workdir(config.workdir)
    generic = generic_config(config, workdir / "base" / "model", workdir / "tokenizer.model")
    run = RunSettings(generic, init_exists=False)  # every RL setting is checked before pretraining starts
    check_pretrain(config.pretrain)
    check_model(config.model)
    make_workdir(workdir)
    train, test, tokenizer = stand_in_data(config, workdir, run.task)
    pretrain = pretraining("pretrain", "base", model_section=config.model, pretrain=config.pretrain,
                           style=corpus_style(config.pretrain), examples=train + test, tokenizer=tokenizer,
                           renderer=PromptRenderer(tokenizer, config.template), task=run.task,
                           mesh=make_mesh(run.mesh), seed=config.seed)
    stopped = run_stages(workdir, [pretrain]).stopped
    return {"stopped": stopped} if stopped else r1_zero(generic, started=started)
