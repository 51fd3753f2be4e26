"""The building blocks the recipes chain: each stage leaves its result in a workdir folder.

A stage whose result is already there is skipped (a finished model export has its
`config.json`; exports are renamed into place, so a kill never leaves a half-written
one), and a stage that was killed resumes from its latest checkpoint through
`run_training`. A result that does not match the config is refused with an error that
says what differs, and nothing is touched.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil
from typing import Callable, Mapping, Sequence

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from r1jax.checkpoint import IncompatibleCheckpointError
from r1jax.data import PromptIterator, load_task
from r1jax.data.arithmetic import ArithmeticConfig
from r1jax.data.base_corpus import CorpusStyle
from r1jax.evaluate import evaluate_policy
from r1jax.files import write_json_atomically
from r1jax.models import ModelConfig, Transformer, from_pretrained, save_pretrained
from r1jax.rewards import RewardEvaluator, get_reward
from r1jax.tokenizers import R1_TAGS, SentencePieceTokenizer, Tokenizer, train_sentencepiece
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.sft import SFT, SFTSettings
from r1jax.train.state import make_optimizer, train_state_from_model

log = logging.getLogger(__name__)

_ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                        "num_kv_heads")


def arithmetic_splits(task, *, seed: int, data_dir: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(train, test) examples of the local arithmetic TFDS task described by `task`."""
    if task.name != "arithmetic":
        raise ValueError(f"the tiny recipes' base corpus is written for task 'arithmetic', got {task.name!r}")
    task_config = ArithmeticConfig(
        name=f"ops{task.num_operations}_max{task.max_value}_n{task.train_size}", seed=seed,
        train_size=task.train_size, test_size=task.test_size, num_operations=task.num_operations,
        max_value=task.max_value)
    train = load_task("arithmetic", "train", data_dir=data_dir, config=task_config)
    test = load_task("arithmetic", "test", data_dir=data_dir, config=task_config)
    return [train[i] for i in range(len(train))], [test[i] for i in range(len(test))]


def corpus_style(pretrain) -> CorpusStyle:
    """The `CorpusStyle` named by a config's pretrain section (fields it lacks keep their defaults)."""
    fields = ("worked_rate", "error_rate", "tagged_rate", "guess_accuracy", "narrate", "chinese_rate")
    return CorpusStyle(**{f: pretrain[f] for f in fields if f in pretrain})


def tokenizer_stage(path: pathlib.Path, texts: Callable[[], list[str]], *, vocab_size: int,
                    symbols: Sequence[str] = R1_TAGS) -> SentencePieceTokenizer:
    """The SentencePiece model at `path`, trained on `texts()` first if it is not there."""
    if path.exists():
        return SentencePieceTokenizer.from_file(path)
    return train_sentencepiece(texts(), path, vocab_size=vocab_size, user_defined_symbols=tuple(symbols))


def model_config(model, tokenizer: Tokenizer) -> ModelConfig:
    """A tiny Llama-style config from a config's model section, sized to the tokenizer."""
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size, num_layers=model.num_layers, num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads, tie_embeddings=True, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)


def exported(directory: pathlib.Path, wanted: ModelConfig | None = None) -> bool:
    """Whether a finished export is in `directory`; refuses one of another architecture."""
    config_file = directory / "config.json"
    if not config_file.exists():
        return False
    if wanted is not None:
        saved = ModelConfig.from_hf(json.loads(config_file.read_text()))
        differ = [f"{f}: {getattr(saved, f)} vs {getattr(wanted, f)}" for f in _ARCHITECTURE_FIELDS
                  if getattr(saved, f) != getattr(wanted, f)]
        if differ:
            raise IncompatibleCheckpointError(
                f"{directory} holds a model that does not match this config ({', '.join(differ)}; saved "
                "vs config). Use a new --config.workdir, or delete that workdir to start over; nothing "
                "was changed.")
    return True


def export_model(model: Transformer, directory: pathlib.Path):
    """Save `model` as a Hugging Face checkpoint in `directory`, all at once or not at all."""
    partial = directory.with_name(directory.name + ".partial")
    if partial.exists():  # our own leftover of a run killed while exporting
        shutil.rmtree(partial)
    save_pretrained(model, partial)
    partial.rename(directory)


def sft_stage(workdir: pathlib.Path, *, init: Transformer | pathlib.Path, examples: Sequence,
              to_pairs: Callable | None, tokenizer: Tokenizer, steps: int, batch_size: int,
              learning_rate: float, warmup_steps: int, mesh: Mesh, seed: int, name: str,
              max_length: int = 256, evaluate=None) -> Transformer | None:
    """Supervised training of `init` on `examples` (pairs, or examples `to_pairs` turns into pairs).

    Exports the result to `workdir/model` and returns it; returns None when SIGTERM stopped
    the run (a checkpoint holds its progress) and the export when it already exists.
    """
    out = workdir / "model"
    if exported(out):
        return from_pretrained(out)
    model = from_pretrained(init) if isinstance(init, pathlib.Path) else init
    sft = SFT(SFTSettings(max_length=max_length), tokenizer=tokenizer, mesh=mesh, to_pairs=to_pairs)
    result = run_training(
        LoopSettings(steps=steps, save_every=max(steps // 3, 1), seed=seed, plot_keys=("loss", "accuracy")),
        workdir=workdir, model=model,
        optimizer=make_optimizer(learning_rate, warmup_steps, steps, weight_decay=0.01),
        loss_fn=sft.objective(), data=PromptIterator(examples, batch_size=batch_size, seed=seed),
        make_batches=sft.make_batches, mesh=mesh, evaluate=evaluate, name=name)
    if not result.completed:
        return None
    export_model(result.state.model(), out)
    return from_pretrained(out)


def evaluate_stage(graphdef, params, tokenizer: Tokenizer, examples: Sequence[dict], *, template: str,
                   eval_config, max_new_tokens: int, mesh: Mesh, seed: int,
                   scores: Mapping[str, str] = (("format_reward", "format"),)) -> dict[str, float]:
    """Held-out pass@1 over `eval_config.num_samples` samples, cons@k, length and mean `scores`
    (result key -> registered reward name)."""
    return evaluate_policy(
        graphdef, params, tokenizer, examples, task="arithmetic", template=template,
        correct_fn=get_reward("arithmetic"), scores={key: get_reward(name) for key, name in dict(scores).items()},
        rng=jax.random.key(seed), num_samples=eval_config.num_samples, max_prompt_length=256,
        max_new_tokens=max_new_tokens, temperature=eval_config.temperature, top_p=eval_config.top_p,
        mesh=mesh)


def grpo_stage(workdir: pathlib.Path, *, init: pathlib.Path, train: Sequence[dict], tokenizer: Tokenizer,
               rewards: Mapping[str, float], grpo, template: str, mesh: Mesh, seed: int,
               reward_workers: int, evaluate: Callable | None = None, model_reward=None) -> pathlib.Path | None:
    """GRPO from the export in `init` on the `train` prompts, with the KL reference = `init`.

    Exports the result to `workdir/model` and returns that path; None when SIGTERM stopped
    the run. `grpo` is a config section with the GRPOSettings fields plus steps,
    prompts_per_step, learning_rate, warmup_steps, save_every, eval_every. `model_reward`
    is an optional judge for prompts the rule rewards do not cover (see `r1jax.train.grpo`).
    """
    out = workdir / "model"
    if exported(out):
        return out
    for name in rewards:
        get_reward(name)
    settings = GRPOSettings(
        num_generations=grpo.num_generations, max_new_tokens=grpo.max_new_tokens,
        temperature=grpo.temperature, top_p=grpo.top_p, beta=grpo.beta, epsilon_low=grpo.epsilon_low,
        loss_type=grpo.loss_type, num_iterations=grpo.num_iterations, num_minibatches=grpo.num_minibatches,
        template=template)
    extra = {} if model_reward is None else {"model_reward": model_reward}
    with RewardEvaluator(dict(rewards), num_workers=reward_workers) as evaluator:
        stage = GRPO(settings, tokenizer=tokenizer, rewards=evaluator, task="arithmetic", mesh=mesh,
                     accuracy_reward="arithmetic", **extra)
        stage.set_reference(train_state_from_model(from_pretrained(init), optax.identity(), mesh))
        result = run_training(
            LoopSettings(steps=grpo.steps, save_every=grpo.save_every, eval_every=grpo.eval_every, seed=seed),
            workdir=workdir, model=from_pretrained(init),
            optimizer=make_optimizer(grpo.learning_rate, grpo.warmup_steps, grpo.steps, schedule="constant"),
            loss_fn=stage.objective(), data=PromptIterator(train, batch_size=grpo.prompts_per_step, seed=seed),
            make_batches=stage.make_batches, mesh=mesh, evaluate=evaluate, name=workdir.name)
    if not result.completed:
        return None
    export_model(result.state.model(), out)
    return out


def cached(path: pathlib.Path, compute: Callable[[], dict]) -> dict:
    """`compute()`'s result, stored as JSON at `path` the first time (evaluations are slow)."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, value, indent=2)
    return value


def split(model: Transformer):
    """(graphdef, params) of a model, the form the sampler and evaluation take."""
    return nnx.split(model, nnx.Param)
