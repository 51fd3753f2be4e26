"""The stand-in base of the tiny experiments: a small model pretrained here, since no real one fits a CPU test.

    workdir/data/            the task's TFDS dataset (generated locally)
    workdir/tokenizer.model  a SentencePiece tokenizer trained on the task's corpus
    workdir/base/            the pretraining run; base/model is its export (with the tokenizer)

The corpus (`r1jax.data.base_corpus`) answers arithmetic problems, worked out or guessed,
so this stage is written for a task whose examples have an "expression"; the generic
recipes then start from `base/model` as they would from any checkpoint (`config.init`).
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np
from flax import nnx

from r1jax.data.base_corpus import CorpusStyle, base_corpus
from r1jax.distributed import primary_first
from r1jax.models import ModelConfig, Transformer
from r1jax.pipelines import stages
from r1jax.pipelines.r1_zero import RunSettings, r1_zero
from r1jax.pipelines.settings import config_section, make_workdir, training_settings
from r1jax.rollout import PromptRenderer
from r1jax.sharding import make_mesh
from r1jax.tasks import Task
from r1jax.tokenizers import R1_TAGS, SentencePieceTokenizer, Tokenizer, train_sentencepiece


def corpus_style(pretrain) -> CorpusStyle:
    """The `CorpusStyle` named by a config's pretrain section (fields it lacks keep their defaults)."""
    fields = {f.name for f in dataclasses.fields(CorpusStyle)}
    return CorpusStyle(**{f: pretrain[f] for f in fields if f in pretrain})


def check_pretrain(pretrain) -> None:
    """The pretrain section (optimisation, batch and corpus), checked before anything is written."""
    training_settings(pretrain, where="pretrain")  # `pretrain_stage` trains on sft_stage's cosine schedule
    with config_section("pretrain"):
        corpus_style(pretrain)


def tokenizer_stage(path: pathlib.Path, texts: Callable[[], list[str]], *, vocab_size: int,
                    symbols: Sequence[str] = R1_TAGS) -> SentencePieceTokenizer:
    """The SentencePiece model at `path`, trained on `texts()` first if it is not there (by process 0)."""
    def train_or_read():
        if path.exists():
            return SentencePieceTokenizer.from_file(path)
        return train_sentencepiece(texts(), path, vocab_size=vocab_size, user_defined_symbols=tuple(symbols))

    return primary_first(train_or_read, name=f"tokenizer {path}")


def model_config(model, tokenizer: Tokenizer) -> ModelConfig:
    """A tiny Llama-style config from a config's model section, sized to the tokenizer."""
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size, num_layers=model.num_layers, num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads, tie_embeddings=True, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)


def corpus_pairs(examples, rng, style: CorpusStyle, renderer: PromptRenderer, task: Task):
    """Pretraining (prompt, completion) pairs of `examples`, prompts rendered as RL will render them."""
    return base_corpus(examples, rng, style, prompt=lambda example: renderer(task.question(example)))


def pretrain_stage(workdir: pathlib.Path, *, model_section, pretrain, style: CorpusStyle, examples: Sequence[dict],
                   tokenizer: Tokenizer, renderer: PromptRenderer, task: Task, mesh, seed: int,
                   name: str = "pretrain") -> pathlib.Path | None:
    """Pretrain a model of `model_section`'s shape on the corpus of `examples`; its export dir, or None
    when SIGTERM stopped it."""
    config = model_config(model_section, tokenizer)
    out = workdir / "model"
    if stages.exported(out, config):
        return out
    model = stages.sft_stage(
        workdir, init=Transformer(config, rngs=nnx.Rngs(seed)), examples=examples,
        to_pairs=lambda chunk, rng: corpus_pairs(chunk, rng, style, renderer, task), tokenizer=tokenizer,
        steps=pretrain.steps, batch_size=pretrain.batch_size, learning_rate=pretrain.learning_rate,
        warmup_steps=pretrain.warmup_steps, mesh=mesh, seed=seed, name=name)
    return None if model is None else out


def prepare_base(config, workdir: pathlib.Path, mesh, task: Task, *, symbols=None):
    """Task data, tokenizer and the pretrained stand-in base of a tiny recipe.

    Returns (train, test, tokenizer, base export dir), or None if SIGTERM stopped pretraining.
    The base is pretrained on every problem of the task, as a real base model's pretraining
    covers arithmetic; RL then trains on `train` and is scored on `test`, problems it never
    saw during RL (held out from RL, as benchmarks are).
    """
    data_dir = workdir / "data"
    train, test = list(task.load("train", data_dir=data_dir)), list(task.load("test", data_dir=data_dir))
    corpus_examples = train + test
    style = corpus_style(config.pretrain)
    text_renderer = PromptRenderer(None, config.template)

    def tokenizer_corpus():
        # a few sampled completions of every problem: the whole vocabulary of the task
        rng = np.random.default_rng(config.seed)
        repeats = -(-config.tokenizer.corpus_size // len(corpus_examples))
        pairs = corpus_pairs(corpus_examples * repeats, rng, style, text_renderer, task)
        return [prompt + completion for prompt, completion in pairs[:config.tokenizer.corpus_size]]

    extra = {} if symbols is None else {"symbols": symbols}
    with config_section("tokenizer"):  # e.g. a vocab_size larger than the corpus has pieces for
        tokenizer = tokenizer_stage(workdir / "tokenizer.model", tokenizer_corpus,
                                    vocab_size=config.tokenizer.vocab_size, **extra)
    base_dir = pretrain_stage(workdir / "base", model_section=config.model, pretrain=config.pretrain, style=style,
                              examples=corpus_examples, tokenizer=tokenizer,
                              renderer=PromptRenderer(tokenizer, config.template), task=task, mesh=mesh,
                              seed=config.seed)
    if base_dir is None:
        return None
    return train, test, tokenizer, base_dir


def generic_config(config, base_dir: pathlib.Path, tokenizer_path: pathlib.Path) -> ml_collections.ConfigDict:
    """The generic recipe config (`r1jax.pipelines.r1_zero`) of a tiny experiment whose base is `base_dir`."""
    workdir = pathlib.Path(config.workdir)
    return ml_collections.ConfigDict({
        "workdir": str(workdir), "seed": config.seed, "mesh": dict(config.mesh),
        "sampler_mesh": dict(config.sampler_mesh), "init": str(base_dir),
        "tokenizer": str(tokenizer_path), "model": {}, "task": {"seed": config.seed, **dict(config.task)},
        "data_dir": str(workdir / "data"), "grpo": {**dict(config.grpo), "template": config.template},
        "rewards": dict(config.rewards), "reward_workers": config.reward_workers, "eval": dict(config.eval)})


def r1_zero_tiny(config) -> dict:
    """R1-Zero in miniature: pretrain the stand-in base, then the generic R1-Zero recipe from it."""
    started = time.perf_counter()
    workdir = pathlib.Path(config.workdir)
    generic = generic_config(config, workdir / "base" / "model", workdir / "tokenizer.model")
    run = RunSettings(generic, init_exists=False)  # every RL setting is checked before pretraining starts
    check_pretrain(config.pretrain)
    make_workdir(workdir)
    if prepare_base(config, workdir, make_mesh(run.mesh), run.task) is None:
        return {"stopped": "pretrain"}
    return r1_zero(generic, started=started)
