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
import functools
import pathlib
from typing import Callable, Sequence

import numpy as np
from flax import nnx

from r1jax.data.base_corpus import CorpusStyle, base_corpus
from r1jax.distributed import primary_first
from r1jax.models import ModelConfig, Transformer
from r1jax.pipelines.settings import config_section, training_from
from r1jax.pipelines.stages.runner import Stage, finished_model
from r1jax.pipelines.stages.sft import sft_stage
from r1jax.rollout import PromptRenderer
from r1jax.tasks import Task
from r1jax.tokenizers import R1_TAGS, SentencePieceTokenizer, Tokenizer, train_sentencepiece
from r1jax.train.loop import LoopSettings
from r1jax.train.sft import SFTSettings
from r1jax.train.state import OptimizerSettings


def corpus_style(pretrain) -> CorpusStyle:
    """The `CorpusStyle` named by a config's pretrain section (fields it lacks keep their defaults)."""
    fields = {f.name for f in dataclasses.fields(CorpusStyle)}
    return CorpusStyle(**{f: pretrain[f] for f in fields if f in pretrain})


def check_pretrain(pretrain) -> tuple[LoopSettings, OptimizerSettings, SFTSettings]:
    """The pretrain section's training (loop, optimizer and batches), its corpus checked with them:
    a `ConfigError` before anything is written."""
    loop, optimizer, batches, _ = training_from(pretrain, SFTSettings, CorpusStyle, where="pretrain")
    return loop, optimizer, batches


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
    return _model_config(model, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)


def check_model(model, where: str = "model") -> None:
    """Refuse a model section no model can be built from (a width of 0, heads that do not divide it)
    before anything is written: the tokenizer that sizes the vocabulary is trained later."""
    with config_section(where):
        _model_config(model, vocab_size=1, bos_id=None, eos_id=None)


def _model_config(model, vocab_size: int, bos_id, eos_id) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size, num_layers=model.num_layers, num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads, tie_embeddings=True, max_position_embeddings=512,
        bos_token_id=bos_id, eos_token_id=eos_id)


def corpus_pairs(examples, rng, style: CorpusStyle, renderer: PromptRenderer, task: Task):
    """Pretraining (prompt, completion) pairs of `examples`, prompts rendered as RL will render them."""
    return base_corpus(examples, rng, style, prompt=lambda example: renderer(task.question(example)))


def stand_in_data(config, workdir: pathlib.Path, task: Task, *, symbols=None):
    """The task's data and the tokenizer of a tiny recipe's stand-in base: (train, test, tokenizer).

    The base is pretrained on every problem of the task (`pretrain_stage` on train + test),
    as a real base model's pretraining covers arithmetic; RL then trains on `train` and is
    scored on `test`, problems it never saw during RL (held out from RL, as benchmarks are).
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
    return train, test, tokenizer


def pretrain_stage(output: pathlib.Path, *, model: ModelConfig, pretrain, style: CorpusStyle,
                   examples: Sequence[dict], tokenizer: Tokenizer, renderer: PromptRenderer, task: Task, mesh,
                   seed: int, name: str = "pretrain"):
    """Pretrain a freshly initialised `model` on the corpus of `examples` (`pretrain`: the config's
    section, its training read by `check_pretrain`); its export dir, or `STOPPED`."""
    loop, optimizer, batches = check_pretrain(pretrain)
    return sft_stage(
        output, Transformer(model, rngs=nnx.Rngs(seed)), examples,
        to_pairs=lambda chunk, rng: corpus_pairs(chunk, rng, style, renderer, task), tokenizer=tokenizer,
        loop=loop, optimizer=optimizer, batches=batches, mesh=mesh, seed=seed, name=name)


def pretraining(name: str, output: str, *, model_section, tokenizer: Tokenizer, **settings) -> Stage:
    """The `Stage` that pretrains a model of `model_section`'s shape (`pretrain_stage`'s `settings`);
    a finished export of another shape in `output` is refused, not reused."""
    model = model_config(model_section, tokenizer)
    return Stage(name, functools.partial(pretrain_stage, model=model, tokenizer=tokenizer, name=name, **settings),
                 output=output, finished=functools.partial(finished_model, wanted=model))


def with_replay(pairs: list, share: float, seed: int, *, corpus: Sequence[dict], style: CorpusStyle,
                renderer: PromptRenderer, task: Task) -> list:
    """`pairs` plus pairs of the stand-in base's pretraining corpus (problems of `corpus`, drawn
    afresh), `share` of the result: SFT keeps what the base knew, as the paper mixes
    non-reasoning data into its SFT sets."""
    count = round(len(pairs) * share / (1 - share)) if pairs else 0
    if not count:
        return pairs
    rng = np.random.default_rng(seed)
    chosen = [corpus[i] for i in rng.integers(len(corpus), size=count)]
    return pairs + corpus_pairs(chosen, rng, style, renderer, task)
