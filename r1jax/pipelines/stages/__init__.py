"""The stages the recipes chain, each a function `stage(output, *inputs, **settings)` that makes one
place of the workdir, and the one runner that skips, resumes and stops them (`runner`).

    runner        Stage, run_stages, STOPPED: a recipe is an ordered table of stages
    export        finished model exports (all at once or not at all)
    pretrain      the tiny experiments' stand-in base: data, tokenizer, pretraining, replay
    grpo          RL from a checkpoint
    sft           supervised training on pairs
    cold_start    R1-Zero samples -> readable, correct R1-format SFT data
    rejection     sampling a checkpoint into a filtered TFDS dataset (resumable, multi-host)
    reward_model  a Bradley-Terry reward model, the judge of general prompts
    distillation  the SFT steps of a student at the compute of its RL run
    evaluation    held-out evaluations and judge scores, cached per model
"""
from r1jax.pipelines.stages.cold_start import annotated_pairs, cold_start_pairs, cold_start_stage
from r1jax.pipelines.stages.distillation import DistillBudget, budget_stage, rl_flops
from r1jax.pipelines.stages.evaluation import (cached, evaluate_model, evaluation_stage, judge_score,
                                               judging_stage)
from r1jax.pipelines.stages.export import export_model, exported, split
from r1jax.pipelines.stages.grpo import grpo_stage
from r1jax.pipelines.stages.pretrain import (check_model, check_pretrain, corpus_pairs, corpus_style, model_config,
                                             pretrain_stage, pretraining, stand_in_data, tokenizer_stage,
                                             with_replay)
from r1jax.pipelines.stages.rejection import (RejectionStats, Traces, rejection_sample, rejection_stage,
                                              rollout_sampler)
from r1jax.pipelines.stages.reward_model import reward_model_stage
from r1jax.pipelines.stages.runner import STOPPED, Run, Stage, finished_model, given, run_stages
from r1jax.pipelines.stages.sft import sft_stage

__all__ = [
    "STOPPED", "Run", "Stage", "finished_model", "given", "run_stages",
    "export_model", "exported", "split",
    "check_model", "check_pretrain", "corpus_pairs", "corpus_style", "model_config", "pretrain_stage", "pretraining",
    "stand_in_data", "tokenizer_stage", "with_replay",
    "grpo_stage", "sft_stage",
    "annotated_pairs", "cold_start_pairs", "cold_start_stage",
    "RejectionStats", "Traces", "rejection_sample", "rejection_stage", "rollout_sampler",
    "reward_model_stage",
    "DistillBudget", "budget_stage", "rl_flops",
    "cached", "evaluate_model", "evaluation_stage", "judge_score", "judging_stage",
]
