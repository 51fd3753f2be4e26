"""Multi-stage recipes that chain data, tokenizer, models and training loops in a workdir.

Each stage writes its result into its own subdirectory and is skipped when that result
is already there, so a recipe killed at any point resumes with the same command:

    workdir/data/          TFDS dataset of the task (generated locally)
    workdir/tokenizer.model
    workdir/base/          stand-in pretraining run; base/model is its HF export
    workdir/grpo/          R1-Zero GRPO run (checkpoints, metrics.jsonl, metrics.png)
    workdir/summary.json
"""
from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import numpy as np
import optax
from flax import nnx

from r1jax.checkpoint import IncompatibleCheckpointError
from r1jax.data import PromptIterator, format_prompt, load_task
from r1jax.data.arithmetic import ArithmeticConfig
from r1jax.data.base_corpus import CorpusStyle, base_corpus
from r1jax.metrics import summary_table
from r1jax.models import ModelConfig, Transformer, from_pretrained, save_pretrained
from r1jax.rewards import RewardEvaluator, get_reward
from r1jax.sharding import make_mesh
from r1jax.tokenizers import SentencePieceTokenizer, train_sentencepiece
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.rollout import evaluate_policy
from r1jax.train.sft import SFT, SFTSettings
from r1jax.train.state import make_optimizer, train_state_from_model

log = logging.getLogger(__name__)


def _arithmetic(config, workdir: pathlib.Path):
    task = config.task
    if task.name != "arithmetic":
        raise ValueError(f"r1_zero_tiny's base corpus is written for task 'arithmetic', got {task.name!r}")
    task_config = ArithmeticConfig(
        name=f"ops{task.num_operations}_max{task.max_value}_n{task.train_size}", seed=config.seed,
        train_size=task.train_size, test_size=task.test_size, num_operations=task.num_operations,
        max_value=task.max_value)
    data_dir = workdir / "data"
    return (load_task("arithmetic", "train", data_dir=data_dir, config=task_config),
            load_task("arithmetic", "test", data_dir=data_dir, config=task_config))


def _evaluate(model_graphdef, params, tokenizer, examples, config, mesh, seed: int):
    ev = config.eval
    return evaluate_policy(
        model_graphdef, params, tokenizer, examples, task=config.task.name, template=config.template,
        correct_fn=get_reward("arithmetic"), scores={"format_reward": get_reward("format")},
        rng=jax.random.key(seed), num_samples=ev.num_samples, max_prompt_length=256,
        max_new_tokens=config.grpo.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p, mesh=mesh)


def _check_same_model(saved: ModelConfig, wanted: ModelConfig, where: pathlib.Path):
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
    differ = [f"{f}: {getattr(saved, f)} vs {getattr(wanted, f)}" for f in fields
              if getattr(saved, f) != getattr(wanted, f)]
    if differ:
        raise IncompatibleCheckpointError(
            f"{where} holds a model that does not match this config ({', '.join(differ)}; saved vs "
            f"config). Use a new --config.workdir, or delete {where.parent.parent} to start over; "
            "nothing was changed.")


def r1_zero(config) -> dict:
    """The R1-Zero recipe of `experiments/r1_zero_tiny.py`; returns (and writes) the summary."""
    for name in config.rewards:
        get_reward(name)  # an unknown reward or template name fails here, before anything is written
    format_prompt("", config.template)
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mesh = make_mesh(dict(config.mesh))
    train, test = _arithmetic(config, workdir)
    eval_examples = [test[i] for i in range(min(config.eval.num_prompts, len(test)))]
    p = config.pretrain
    # The stand-in base is pretrained on every problem of the task, as a real base model's
    # pretraining covers arithmetic; RL then trains on `train` and is scored on `test`,
    # problems it never saw during RL (held out from RL, as benchmarks are).
    corpus_examples = [train[i] for i in range(len(train))] + [test[i] for i in range(len(test))]

    style = CorpusStyle(worked_rate=p.worked_rate, error_rate=p.error_rate, tagged_rate=p.tagged_rate,
                        guess_accuracy=p.guess_accuracy)

    def to_pairs(examples, rng):
        return base_corpus(examples, rng, style, template=config.template)

    # -- tokenizer ------------------------------------------------------------------------
    tokenizer_path = workdir / "tokenizer.model"
    if tokenizer_path.exists():
        tokenizer = SentencePieceTokenizer.from_file(tokenizer_path)
    else:
        # a few noisy solutions of every training problem: the whole vocabulary of the task
        rng = np.random.default_rng(config.seed)
        repeats = -(-config.tokenizer.corpus_size // len(corpus_examples))
        corpus = [p + c for p, c in to_pairs(corpus_examples * repeats, rng)][:config.tokenizer.corpus_size]
        tokenizer = train_sentencepiece(corpus, tokenizer_path, vocab_size=config.tokenizer.vocab_size)
    log.info("tokenizer: %d pieces (%.0fs)", tokenizer.vocab_size, time.perf_counter() - started)

    # -- stand-in pretraining of the base model -------------------------------------------------
    base_dir = workdir / "base" / "model"
    m = config.model
    model_config = ModelConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
        tie_embeddings=True, max_position_embeddings=512, bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id)
    if (base_dir / "config.json").exists():
        _check_same_model(ModelConfig.from_hf(json.loads((base_dir / "config.json").read_text())),
                          model_config, base_dir)
    else:
        model = Transformer(model_config, rngs=nnx.Rngs(config.seed))
        sft = SFT(SFTSettings(max_length=256), tokenizer=tokenizer, mesh=mesh, to_pairs=to_pairs)
        result = run_training(
            LoopSettings(steps=p.steps, save_every=max(p.steps // 3, 1), seed=config.seed,
                         plot_keys=("loss", "accuracy")),
            workdir=workdir / "base", model=model,
            optimizer=make_optimizer(p.learning_rate, p.warmup_steps, p.steps, weight_decay=0.01),
            loss_fn=sft.objective(), data=PromptIterator(corpus_examples, batch_size=p.batch_size, seed=config.seed),
            make_batches=sft.make_batches, mesh=mesh, name="pretrain")
        if not result.completed:
            return {"stopped": "pretrain"}
        save_pretrained(result.state.model(), base_dir)
    base = from_pretrained(base_dir)
    log.info("base model ready (%.0fs)", time.perf_counter() - started)

    # -- R1-Zero GRPO ---------------------------------------------------------------------------
    g = config.grpo
    graphdef, base_params = nnx.split(base, nnx.Param)
    base_eval = _evaluate(graphdef, base_params, tokenizer, eval_examples, config, mesh, config.seed + 1)
    log.info("base: %s", base_eval)
    settings = GRPOSettings(
        num_generations=g.num_generations, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
        top_p=g.top_p, beta=g.beta, epsilon_low=g.epsilon_low, loss_type=g.loss_type,
        num_iterations=g.num_iterations, num_minibatches=g.num_minibatches, template=config.template)
    with RewardEvaluator(dict(config.rewards), num_workers=config.reward_workers) as rewards:
        grpo = GRPO(settings, tokenizer=tokenizer, rewards=rewards, task=config.task.name, mesh=mesh,
                    accuracy_reward="arithmetic")
        optimizer = make_optimizer(g.learning_rate, g.warmup_steps, g.steps, schedule="constant")
        grpo.set_reference(train_state_from_model(from_pretrained(base_dir), optax.identity(), mesh))

        def evaluate(state, step):
            return _evaluate(state.graphdef, state.params, tokenizer, eval_examples, config, mesh,
                             config.seed + 1)

        result = run_training(
            LoopSettings(steps=g.steps, save_every=g.save_every, eval_every=g.eval_every, seed=config.seed),
            workdir=workdir / "grpo", model=base, optimizer=optimizer, loss_fn=grpo.objective(),
            data=PromptIterator(train, batch_size=g.prompts_per_step, seed=config.seed),
            make_batches=grpo.make_batches, mesh=mesh, evaluate=evaluate, name="grpo")
    if not result.completed:
        return {"stopped": "grpo"}
    final_eval = result.eval_metrics or evaluate(result.state, g.steps)
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
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_table([
        {"model": "base", "pass@1": summary["base_pass_at_1"], f"cons@{k}": summary[f"base_cons_at_{k}"],
         "format": summary["base_format_reward"], "length": summary["base_response_length"]},
        {"model": "R1-Zero", "pass@1": summary["final_pass_at_1"], f"cons@{k}": summary[f"final_cons_at_{k}"],
         "format": summary["final_format_reward"], "length": summary["final_response_length"]}]))
    return summary
