"""Distillation (DeepSeek-R1, section 2.4): SFT of a small student on a teacher's reasoning traces.

    workdir/data/            the task's data, when generated locally
    workdir/traces/          rejection sampling of the teacher on the task's training prompts: the kept
                             (correct, clean) traces as a TFDS dataset with provenance (stages.rejection)
    workdir/sft/             SFT of the student on the traces; sft/model is the student with its tokenizer
    workdir/evals/           held-out evaluations of the student before and after
    workdir/summary.json

The config (see `experiments/distill_qwen2_5_1_5b.py`):
  init, tokenizer, model   the student checkpoint, its tokenizer ("" = beside it), ModelConfig overrides
                           (`settings.MODEL_OVERRIDES`: dtypes and how it computes, not its sizes)
  teacher                  init (checkpoint), tokenizer, and the sampling of the traces: num_samples,
                           max_new_tokens, temperature, top_p, max_prompts (0 = all), keep
                           ("correct": rejection sampling; "all": every sample, for smoke runs on
                           random checkpoints, whose samples are never correct)
  task, data_dir           the task whose training prompts are distilled
  template, system_prompt  the prompt format of teacher, student and evaluation
  sft                      LoopSettings (steps, save_every, num_microbatches, ...), OptimizerSettings
                           (learning_rate, warmup_steps, schedule, weight_decay) and SFTSettings
                           (batch_size, max_length, packing, ...)
  eval                     EvalSettings
  lora                     optional LoRAConfig (rank, alpha, targets): adapters on the student; rank 0 or
                           no section: the whole student trains

Each stage is skipped when its result is there; a killed run resumes with the same command.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from functools import partial

from r1jax.files import write_json_atomically
from r1jax.metrics import summary_table
from r1jax.pipelines.settings import (ConfigError, EvalSettings, check_mesh, check_model_overrides, check_workdir,
                                     config_section, lora_settings, make_workdir, settings_from, training_from)
from r1jax.pipelines.stages import Stage, evaluation_stage, given, rejection_stage, run_stages, sft_stage
from r1jax.rollout import PromptRenderer, check_template
from r1jax.sharding import make_mesh
from r1jax.tasks import task_from_config
from r1jax.tokenizers import load_tokenizer
from r1jax.train.sft import SFTSettings

log = logging.getLogger(__name__)
KEEP = ("correct", "all")


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    init: str
    tokenizer: str = ""  # "": the one beside the teacher checkpoint
    num_samples: int = 4
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    max_prompts: int = 0  # 0: every training prompt
    max_prompt_length: int = 512
    keep: str = "correct"

    def __post_init__(self):
        if not self.init or not pathlib.Path(self.init).exists():
            raise ValueError(f"init={self.init!r}: name the teacher checkpoint, an existing HF directory or .gguf "
                             "file (--config.teacher.init=PATH)")
        if self.keep not in KEEP:
            raise ValueError(f"keep={self.keep!r}; choose one of {KEEP}")
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.max_prompt_length < 1 or self.max_prompts < 0:
            raise ValueError(f"need num_samples, max_new_tokens, max_prompt_length >= 1 and max_prompts >= 0; "
                             f"got {self}")


def distill(config) -> dict:
    """Run (or resume) the recipe; returns and writes the summary."""
    workdir = check_workdir(config.workdir)
    init = pathlib.Path(config.init) if config.init else None
    if init is None or not init.exists():
        raise ConfigError(f"config.init={config.init!r}: name the student checkpoint (--config.init=PATH)")
    teacher_section = dict(config.teacher)
    if not teacher_section.get("init") and config.get("runlocal"):  # a smoke run: the student is its own teacher
        teacher_section["init"] = str(init)
    teacher = settings_from(teacher_section, TeacherSettings, where="teacher")
    loop, optimizer, batches = training_from(config.sft, SFTSettings, where="sft")
    eval_settings = settings_from(config.eval, EvalSettings, where="eval")
    lora = lora_settings(config)  # the student's adapters (rank 0: the whole student trains)
    with config_section("task"):
        task = task_from_config(config.task)
    with config_section("template"):
        check_template(config.template, config.system_prompt)
    mesh_section = check_mesh(config.mesh)
    model_overrides = check_model_overrides(config.model)
    make_workdir(workdir)  # before the task's data is prepared in it
    started = time.perf_counter()
    data_dir = pathlib.Path(config.data_dir) if config.data_dir else workdir / "data"
    mesh = make_mesh(mesh_section)
    student_tokenizer = load_tokenizer(config.tokenizer or init)
    teacher_renderer = PromptRenderer(load_tokenizer(teacher.tokenizer or teacher.init), config.template,
                                      config.system_prompt)
    student_renderer = PromptRenderer(student_tokenizer, config.template, config.system_prompt)
    train = list(task.load("train", data_dir=data_dir))
    train = train[:teacher.max_prompts] if teacher.max_prompts else train
    test = list(task.load(eval_settings.split, data_dir=data_dir))
    eval_examples = test[:eval_settings.num_prompts] if eval_settings.num_prompts else test

    keep_all = {} if teacher.keep == "correct" else dict(  # every sample counts as finished and correct
        keep_unfinished=True, correct_fn=_accept, repetition_threshold=0.999)  # only duplicates are dropped
    evaluation = partial(evaluation_stage, model_overrides=model_overrides, renderer=student_renderer,
                         examples=eval_examples, task=task, settings=eval_settings,
                         max_new_tokens=teacher.max_new_tokens, mesh=mesh, seed=config.seed + 1)
    recipe = [
        given("teacher", teacher.init), given("student", init),
        # the teacher samples under the same dtype policy as the student trains (remat does not apply)
        Stage("traces", partial(
            rejection_stage, renderer=teacher_renderer, examples=train, mesh=mesh, model_overrides=model_overrides,
            task=task, num_samples=teacher.num_samples, max_new_tokens=teacher.max_new_tokens,
            max_prompt_length=teacher.max_prompt_length, temperature=teacher.temperature, top_p=teacher.top_p,
            seed=config.seed, provenance={"teacher": str(teacher.init), "keep": teacher.keep}, **keep_all),
            inputs=("teacher",), finished=None),
        Stage("base_eval", partial(evaluation, names=("student_base",)), inputs=("student",), output="evals",
              finished=None),
        Stage("sft", partial(
            _sft_stage, task=task, renderer=student_renderer, tokenizer=student_tokenizer, loop=loop,
            optimizer=optimizer, batches=batches, mesh=mesh, seed=config.seed, name="distill",
            model_overrides=model_overrides, lora=lora),
            inputs=("student", "traces")),
        Stage("final_eval", partial(evaluation, names=("student_distilled",)), inputs=("sft",), output="evals",
              finished=None),
    ]
    run = run_stages(workdir, recipe)
    if run.stopped:
        return {"stopped": run.stopped}
    stats, base_eval = run.results["traces"].stats, run.results["base_eval"]["student_base"]
    log.info("traces: %s (%.0fs)", stats, time.perf_counter() - started)
    summary = {"init": str(init), "teacher": str(teacher.init), "task": task.name, "traces_kept": stats.kept,
               "traces_sampled": stats.samples, **{f"base_{k}": v for k, v in base_eval.items()}}
    if run.results["sft"] is None:
        log.warning("no teacher trace passed the filters (%s): nothing to distill", stats.dropped)
        summary["distilled"] = False
    else:
        final_eval = run.results["final_eval"]["student_distilled"]
        summary.update({"distilled": True, "model": str(run.results["sft"]),
                        **{f"final_{k}": v for k, v in final_eval.items()}})
        print(summary_table([{"model": "student", **base_eval}, {"model": "distilled", **final_eval}]))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomically(workdir / "summary.json", summary, indent=2)
    return summary


def _sft_stage(output: pathlib.Path, student: pathlib.Path, traces, *, task, renderer: PromptRenderer, **settings):
    """SFT of the `student` checkpoint on the teacher's `traces`, their prompts in the student's own
    template (`renderer`); None without traces (nothing to distill)."""
    pairs = [(renderer.texts([record], task)[0], record["completion"]) for record in traces.records]
    if not pairs:
        return None
    return sft_stage(output, student, pairs, to_pairs=None, **settings)


def _accept(completion, **_) -> float:
    return 1.0
