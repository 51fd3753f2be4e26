"""The R1-Zero recipe of `experiments/r1_zero_tiny.py`: RL straight on a base model.

    workdir/data/          TFDS dataset of the task (generated locally)
    workdir/tokenizer.model
    workdir/base/          stand-in pretraining run; base/model is its HF export
    workdir/grpo/          R1-Zero GRPO run (checkpoints, metrics.jsonl, metrics.png); grpo/model
    workdir/evals/         held-out evaluations of base and final model (JSON)
    workdir/summary.json

Each stage is skipped when its result is there, so a run killed at any point resumes
with the same command (see `r1jax.pipelines.stages`).
"""
from __future__ import annotations

import logging
import pathlib
import time

import numpy as np
from flax import nnx

from r1jax.data import format_prompt
from r1jax.data.base_corpus import base_corpus
from r1jax.files import write_json_atomically
from r1jax.metrics import summary_table
from r1jax.models import Transformer, from_pretrained
from r1jax.pipelines import stages
from r1jax.rewards import get_reward
from r1jax.sharding import make_mesh

log = logging.getLogger(__name__)


def prepare_base(config, workdir: pathlib.Path, mesh, *, symbols=None):
    """Task data, tokenizer and the pretrained stand-in base of a tiny recipe.

    Returns (train, test, tokenizer, base export dir), or None if SIGTERM stopped pretraining.
    The base is pretrained on every problem of the task, as a real base model's pretraining
    covers arithmetic; RL then trains on `train` and is scored on `test`, problems it never
    saw during RL (held out from RL, as benchmarks are).
    """
    train, test = stages.arithmetic_splits(config.task, seed=config.seed, data_dir=workdir / "data")
    corpus_examples = train + test
    style = stages.corpus_style(config.pretrain)

    def to_pairs(examples, rng):
        return base_corpus(examples, rng, style, template=config.template)

    def tokenizer_corpus():
        # a few sampled completions of every problem: the whole vocabulary of the task
        rng = np.random.default_rng(config.seed)
        repeats = -(-config.tokenizer.corpus_size // len(corpus_examples))
        pairs = to_pairs(corpus_examples * repeats, rng)[:config.tokenizer.corpus_size]
        return [prompt + completion for prompt, completion in pairs]

    extra = {} if symbols is None else {"symbols": symbols}
    tokenizer = stages.tokenizer_stage(workdir / "tokenizer.model", tokenizer_corpus,
                                       vocab_size=config.tokenizer.vocab_size, **extra)
    model_config = stages.model_config(config.model, tokenizer)
    base_dir = workdir / "base" / "model"
    if not stages.exported(base_dir, model_config):
        p = config.pretrain
        model = stages.sft_stage(
            workdir / "base", init=Transformer(model_config, rngs=nnx.Rngs(config.seed)),
            examples=corpus_examples, to_pairs=to_pairs, tokenizer=tokenizer, steps=p.steps,
            batch_size=p.batch_size, learning_rate=p.learning_rate, warmup_steps=p.warmup_steps,
            mesh=mesh, seed=config.seed, name="pretrain")
        if model is None:
            return None
    return train, test, tokenizer, base_dir


def r1_zero(config) -> dict:
    """Run (or resume) the recipe; returns and writes the summary."""
    for name in config.rewards:
        get_reward(name)  # an unknown reward or template name fails here, before anything is written
    format_prompt("", config.template)
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mesh = make_mesh(dict(config.mesh))
    prepared = prepare_base(config, workdir, mesh)
    if prepared is None:
        return {"stopped": "pretrain"}
    train, test, tokenizer, base_dir = prepared
    log.info("base model ready (%.0fs)", time.perf_counter() - started)
    eval_examples = test[:config.eval.num_prompts]

    def evaluate_params(graphdef, params):
        return stages.evaluate_stage(graphdef, params, tokenizer, eval_examples, template=config.template,
                                     eval_config=config.eval, max_new_tokens=config.grpo.max_new_tokens,
                                     mesh=mesh, seed=config.seed + 1)

    def evaluate(name, model_dir):
        return stages.cached(workdir / "evals" / f"{name}.json",
                             lambda: evaluate_params(*stages.split(from_pretrained(model_dir))))

    base_eval = evaluate("base", base_dir)
    log.info("base: %s", base_eval)
    final_dir = stages.grpo_stage(
        workdir / "grpo", init=base_dir, train=train, tokenizer=tokenizer, rewards=config.rewards,
        grpo=config.grpo, template=config.template, mesh=mesh, seed=config.seed,
        reward_workers=config.reward_workers,
        evaluate=(lambda state, step: evaluate_params(state.graphdef, state.params)) if config.grpo.eval_every
        else None)
    if final_dir is None:
        return {"stopped": "grpo"}
    final_eval = evaluate("grpo", final_dir)
    k = config.eval.num_samples
    summary = {
        "base_pass_at_1": base_eval["pass_at_1"], "final_pass_at_1": final_eval["pass_at_1"],
        f"base_cons_at_{k}": base_eval[f"cons_at_{k}"], f"final_cons_at_{k}": final_eval[f"cons_at_{k}"],
        "base_format_reward": base_eval["format_reward"], "final_format_reward": final_eval["format_reward"],
        "base_response_length": base_eval["response_length"],
        "final_response_length": final_eval["response_length"],
        "eval_prompts": len(eval_examples), "eval_samples_per_prompt": k,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomically(workdir / "summary.json", summary, indent=2)
    print(summary_table([
        {"model": "base", "pass@1": summary["base_pass_at_1"], f"cons@{k}": summary[f"base_cons_at_{k}"],
         "format": summary["base_format_reward"], "length": summary["base_response_length"]},
        {"model": "R1-Zero", "pass@1": summary["final_pass_at_1"], f"cons@{k}": summary[f"final_cons_at_{k}"],
         "format": summary["final_format_reward"], "length": summary["final_response_length"]}]))
    return summary
