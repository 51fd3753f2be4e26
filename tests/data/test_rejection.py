"""Rejection sampling into a TFDS SFT dataset: exact filtering with scripted samplers,
resume after SIGKILL, two hosts, a real tiny model end to end, and bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from r1jax.data.rejection import (DROP_REASONS, OutputDirError, assemble_dataset, dataset_path, load_sft_dataset,
                                  to_sft_pairs)
from r1jax.data.sources import DatasetNotPreparedError
from r1jax.pipelines.stages.rejection import rejection_sample, rollout_sampler
from r1jax.rewards.countdown import arithmetic_reward
from r1jax.rollout import PromptRenderer, rollout
from r1jax.tasks import get_task
from tests.support import ROOT

PROVENANCE = {"checkpoint": "/checkpoints/grpo", "step": 120}
MAX_NEW_TOKENS = 8


def arithmetic_examples(count):
    return [{"expression": f"{n} + 1", "answer": str(n + 1)} for n in range(count)]


def prompt_of(n):
    return f"Compute the value of {n} + 1. Give the exact integer result as the final answer."


def operand(prompt):
    return int(prompt.split("value of ")[1].split(" ")[0])


def run(output_dir, sample_fn, examples, *, num_samples, **overrides):
    settings = dict(output_dir=output_dir, task=get_task("arithmetic"), correct_fn=arithmetic_reward,
                    num_samples=num_samples, max_new_tokens=MAX_NEW_TOKENS, provenance=PROVENANCE, chunk_size=3,
                    sample_fn=sample_fn)
    settings.update(overrides)
    renderer = settings.pop("renderer", PromptRenderer(None, "plain"))
    return rejection_sample(None, None, renderer, examples, **settings)


def snapshot(directory):
    """Every file under `directory` with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


# ---- (a) a scripted sampler: the dataset holds exactly the expected records ----------------------

def good(n):
    return f"<think>{n} plus one</think> <answer>{n + 1}</answer>"


def stops_on_last_token(n):
    return f"<think>one more than {n}</think> <answer>{n + 1}</answer>"


def scripted_sampler(texts, rng):
    """Seven samples per prompt, one per outcome; the same whatever the rng."""
    del rng
    samples = []
    for text in texts:
        n = operand(text)
        samples += [
            (good(n), 5, True),  # kept
            (f"<think>{n} plus two</think> <answer>{n + 2}</answer>", 5, True),  # incorrect
            (good(n), MAX_NEW_TOKENS, False),  # overlong: cut off at the budget
            (stops_on_last_token(n), MAX_NEW_TOKENS, True),  # kept: stopped on its last token
            (f"<think>首先 我们 compute {n} plus one 等于</think> <answer>{n + 1}</answer>", 6, True),  # mixed
            ("<think>" + "plus one " * 6 + f"</think> <answer>{n + 1}</answer>", 7, True),  # repetitive
            (f"<think>{n}  PLUS one</think>   <answer>{n + 1}</answer>", 5, True),  # duplicate of the first
        ]
    return samples


def scripted_examples():
    # the last gold answer is not a number: arithmetic_reward cannot judge its samples
    return arithmetic_examples(3) + [{"expression": "3 + 1", "answer": "n/a"}]


def record(n, sample_index, completion):
    return {"prompt": prompt_of(n), "completion": completion, "example_index": n, "sample_index": sample_index,
            "expression": f"{n} + 1", "answer": str(n + 1)}


def test_scripted_samples_keep_exactly_the_correct_clean_ones(tmp_path):
    stats = run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7)

    expected = [rec for n in range(3) for rec in (record(n, 0, good(n)), record(n, 3, stops_on_last_token(n)))]
    assert list(load_sft_dataset(tmp_path)) == expected
    # per normal prompt: 2 kept, one each of incorrect/overlong/mixed/repetitive/duplicate;
    # the ungradable prompt: one overlong, six ungradable
    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped.update(overlong=4, incorrect=3, mixed_language=3, repetitive=3, duplicate=3, ungradable=6)
    assert (stats.prompts, stats.samples, stats.kept, stats.dropped) == (4, 28, 6, dropped)
    assert (stats.sampled_chunks, stats.skipped_chunks, stats.dataset_ready) == (2, 0, True)

    # the provenance is in the TFDS metadata and in provenance.json, counts included
    builder = tfds.builder_from_directory(dataset_path(tmp_path))
    metadata = dict(builder.info.metadata)
    assert metadata == json.loads((tmp_path / "provenance.json").read_text())
    assert metadata["provenance"] == PROVENANCE
    assert metadata["counts"] == {"prompts": 4, "samples": 28, "kept": 6, "dropped": dropped}
    settings = metadata["settings"]
    assert (settings["num_samples"], settings["max_new_tokens"], settings["temperature"]) == (7, 8, 0.6)
    assert settings["filters"]["max_per_prompt"] is None
    assert settings["correct_fn"] == "r1jax.rewards.countdown.arithmetic_reward"
    assert builder.info.splits["train"].num_examples == 6
    assert to_sft_pairs(expected[:1]) == [(prompt_of(0), good(0))]

    # a finished run asked again with the same settings only reports it
    before = snapshot(tmp_path)
    again = run(tmp_path, scripted_sampler, scripted_examples(), num_samples=np.int64(7), temperature=0.6)
    assert (again.kept, again.dropped, again.sampled_chunks, again.skipped_chunks) == (6, dropped, 0, 2)
    assert snapshot(tmp_path) == before


def test_max_per_prompt_caps_the_kept_samples(tmp_path):
    stats = run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7, max_per_prompt=1)
    assert [r["sample_index"] for r in load_sft_dataset(tmp_path)] == [0, 0, 0]
    assert stats.kept == 3 and stats.dropped["over_max_per_prompt"] == 3


def test_a_run_that_keeps_nothing_writes_a_dataset_without_splits(tmp_path):
    def always_wrong(texts, rng):
        return [(f"<answer>{operand(text)}</answer>", 3, True) for text in texts for _ in range(2)]

    stats = run(tmp_path, always_wrong, arithmetic_examples(2), num_samples=2)
    assert stats.kept == 0 and stats.dropped["incorrect"] == 4
    assert load_sft_dataset(tmp_path) == []
    metadata = tfds.builder_from_directory(dataset_path(tmp_path)).info.metadata
    assert metadata["counts"]["kept"] == 0 and metadata["provenance"] == PROVENANCE


# ---- (b) resume after SIGKILL, (c) two hosts -------------------------------------------------------

RANDOM_SAMPLES = 4
RANDOM_EXAMPLES = 10  # 5 chunks of 2


def random_sampler(texts, rng):
    """Samples drawn from the chunk's key: a resumed or other host's chunk must use the same key."""
    generator = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    samples = []
    for text in texts:
        n = operand(text)
        for _ in range(RANDOM_SAMPLES):
            answer = n + 1 if generator.integers(3) else n + 2
            # few distinct texts per prompt, so duplicates happen
            samples.append((f"<think>{n} plus one, try {generator.integers(2)}</think> <answer>{answer}</answer>",
                            5, True))
    return samples


def run_random(output_dir, *, kill_on_call=None, calls=None, **overrides):
    """The random-sampler run; SIGKILLs its own process when the sampler is called the
    `kill_on_call`-th time (before that chunk is written)."""
    calls = [] if calls is None else calls

    def sample_fn(texts, rng):
        calls.append(len(texts))
        if len(calls) == kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return random_sampler(texts, rng)

    return run(output_dir, sample_fn, arithmetic_examples(RANDOM_EXAMPLES), num_samples=RANDOM_SAMPLES,
               chunk_size=2, seed=7, **overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    stats = run_random(output_dir)
    records = list(load_sft_dataset(output_dir))
    assert stats.samples == RANDOM_EXAMPLES * RANDOM_SAMPLES and 0 < stats.kept < stats.samples
    assert stats.dropped["duplicate"] > 0 and stats.dropped["incorrect"] > 0
    return stats, records


def test_killed_run_resumes_to_the_uninterrupted_dataset(tmp_path, uninterrupted):
    code = f"import sys; import {__name__} as t; t.run_random(sys.argv[1], kill_on_call=3)"
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    chunks = sorted(p.name for p in (tmp_path / "chunks").glob("chunk_*.json"))
    assert chunks == ["chunk_00000.json", "chunk_00001.json"]
    assert not dataset_path(tmp_path).exists()

    calls = []
    stats = run_random(tmp_path, calls=calls)
    assert calls == [2, 2, 2]  # only chunks 2, 3 and 4 are sampled again
    assert (stats.sampled_chunks, stats.skipped_chunks) == (3, 2)
    expected_stats, expected_records = uninterrupted
    records = list(load_sft_dataset(tmp_path))
    assert records == expected_records
    assert stats.kept == expected_stats.kept and stats.dropped == expected_stats.dropped
    keys = [(r["example_index"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys))  # no sample twice


def test_two_hosts_make_the_one_host_dataset(tmp_path, uninterrupted):
    # host 0 first: it makes chunks 0, 2, 4, then gives up waiting for host 1's
    with pytest.raises(TimeoutError, match=r"chunks \[1, 3\].*assemble_dataset"):
        run_random(tmp_path, process_index=0, process_count=2, assembly_timeout=0)
    with pytest.raises(FileNotFoundError, match="not done"):
        assemble_dataset(tmp_path)
    host_1 = run_random(tmp_path, process_index=1, process_count=2)
    assert (host_1.sampled_chunks, host_1.dataset_ready) == (2, False)
    host_0 = run_random(tmp_path, process_index=0, process_count=2)  # finds all chunks, assembles
    assert (host_0.sampled_chunks, host_0.skipped_chunks, host_0.dataset_ready) == (0, 3, True)

    expected_stats, expected_records = uninterrupted
    assert list(load_sft_dataset(tmp_path)) == expected_records
    assert host_0.kept + host_1.kept == expected_stats.kept
    assert host_0.samples + host_1.samples == expected_stats.samples


# ---- (d) a real tiny model and tokenizer through the rollout sampler -----------------------------

@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, tiny_config):
    from r1jax.models import Transformer
    from r1jax.sharding import make_mesh
    from r1jax.tokenizers import train_sentencepiece

    rng = np.random.default_rng(0)
    corpus = []
    for _ in range(300):
        a, b = (int(x) for x in rng.integers(0, 100, 2))
        corpus.append(f"{prompt_of(a).replace(f'{a} + 1', f'{a} + {b}')}<think>{a} + {b} = {a + b}</think> "
                      f"<answer>{a + b}</answer>")
    tokenizer = train_sentencepiece(corpus, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=320)
    config = tiny_config(vocab_size=tokenizer.vocab_size, num_layers=1, num_heads=2, num_kv_heads=1)
    # random numpy weights on the abstract model: XLA would take seconds to compile the initialisers
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), nnx.Param)
    params = jax.tree.map(lambda x: jnp.asarray(np.ones(x.shape) if x.ndim < 2 else rng.normal(0, 0.1, x.shape),
                                                x.dtype), shapes)
    # a constant direction in every embedding that the head reads as EOS: some samples stop early
    params["embed"].set_value(params["embed"].get_value().at[:, 0].set(3.0))
    params["lm_head"].set_value(params["lm_head"].get_value().at[0, tokenizer.eos_id].set(0.8))
    return graphdef, params, tokenizer, make_mesh({"data": 1}, devices=jax.devices()[:1])


def test_real_model_end_to_end(tmp_path, tiny_policy):
    graphdef, params, tokenizer, mesh = tiny_policy
    sampling = dict(max_new_tokens=6, max_prompt_length=128, temperature=1.0, top_p=1.0, mesh=mesh)
    settings = dict(task=get_task("arithmetic"), correct_fn=arithmetic_reward, num_samples=2, chunk_size=2,
                    seed=3, provenance=PROVENANCE, **sampling)
    examples = arithmetic_examples(3)  # chunk 1 has one prompt, padded to the compiled shape
    renderer = PromptRenderer(tokenizer, "plain")
    stats = rejection_sample(graphdef, params, renderer, examples, output_dir=tmp_path / "a", **settings)
    assert stats.prompts == 3 and stats.samples == 6
    assert stats.kept + sum(stats.dropped.values()) == 6
    records = load_sft_dataset(tmp_path / "a")
    assert len(records) == stats.kept
    assert tfds.builder_from_directory(dataset_path(tmp_path / "a")).info.metadata["provenance"] == PROVENANCE

    # sampling depends only on the seed and the chunk: a second run writes the same chunks
    rejection_sample(graphdef, params, renderer, examples, output_dir=tmp_path / "b", **settings)
    for name in ("chunk_00000.json", "chunk_00001.json"):
        assert (tmp_path / "a" / "chunks" / name).read_bytes() == (tmp_path / "b" / "chunks" / name).read_bytes()

    # the sampler's (length, stopped) against the token arrays of the same rollout
    texts = [prompt_of(n) for n in range(4)]
    samples = rollout_sampler(graphdef, params, renderer, num_samples=2, pad_to_prompts=4, **sampling)(
        texts[:3], jax.random.key(1))
    reference = rollout(graphdef, params, tokenizer, renderer.encode_all(texts[:3] + texts[2:3]), jax.random.key(1),
                        repeat=2, **sampling)
    tokens = np.asarray(reference.samples.tokens)
    assert len(samples) == 6
    for row, (completion, length, stopped) in enumerate(samples):
        assert completion == reference.completions[row] and length == reference.lengths[row]
        assert stopped == any(token in tokenizer.stop_ids for token in tokens[row, :length])
    assert {stopped for _, _, stopped in samples} == {True, False}, "the EOS bias should stop some rows"


# ---- (e) bad input ------------------------------------------------------------------------------

def test_other_provenance_or_settings_are_refused_and_nothing_changes(tmp_path):
    run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7)
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError, match=r"provenance.step: stored 120, requested 121.*nothing was changed"):
        run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7,
            provenance={**PROVENANCE, "step": 121})
    with pytest.raises(OutputDirError, match="settings.temperature: stored 0.6, requested 1.0"):
        run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7, temperature=1.0)
    with pytest.raises(OutputDirError, match="settings.examples_sha256"):
        run(tmp_path, scripted_sampler, arithmetic_examples(4), num_samples=7)
    assert snapshot(tmp_path) == before


def test_unfinished_runs_are_refused_too(tmp_path):
    with pytest.raises(TimeoutError):
        run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7, process_count=2,
            assembly_timeout=0)
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError, match="settings.chunk_size"):
        run(tmp_path, scripted_sampler, scripted_examples(), num_samples=7, process_count=2, chunk_size=2)
    with pytest.raises(DatasetNotPreparedError, match="no finished"):
        load_sft_dataset(tmp_path)
    assert snapshot(tmp_path) == before


def test_directories_that_are_not_ours_are_left_alone(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="notes.txt.*empty or new output_dir"):
        run(foreign, scripted_sampler, scripted_examples(), num_samples=7)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    orphan = tmp_path / "orphan"
    (orphan / "chunks").mkdir(parents=True)
    (orphan / "chunks" / "chunk_00000.json").write_text("{}")
    with pytest.raises(OutputDirError, match="provenance.json is missing"):
        run(orphan, scripted_sampler, scripted_examples(), num_samples=7)
    assert [p.name for p in orphan.rglob("*")] == ["chunks", "chunk_00000.json"]


def test_bad_arguments_give_clear_errors(tmp_path):
    def one_sample(texts, rng):
        return [("<answer>1</answer>", 2, True)]

    cases = [
        (dict(sample_fn=one_sample), ValueError, "returned 1 samples for 3 prompts"),
        (dict(examples=[{"prompt": "p", "answer": "1"}]), ValueError, "clash"),
        (dict(examples=[{"answer": "1"}, {"answer": "2", "extra": 1}]), ValueError, "same fields"),
        (dict(process_index=2, process_count=2), ValueError, "process_index"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(provenance={"checkpoint": pathlib.Path("/x")}), TypeError, "JSON"),
        (dict(sample_fn=None), ValueError, "graphdef, params, renderer and mesh"),
        (dict(language="klingon"), ValueError, "unsupported language"),
        (dict(repetition_threshold=1.5), ValueError, "threshold"),
    ]
    for index, (overrides, error, message) in enumerate(cases):
        settings = dict(sample_fn=scripted_sampler, examples=scripted_examples())
        settings.update(overrides)
        with pytest.raises(error, match=message):
            run(tmp_path / str(index), settings.pop("sample_fn"), settings.pop("examples"), num_samples=7,
                **settings)
        if overrides.get("sample_fn") is not one_sample:  # the arguments are refused before any file is written
            assert not (tmp_path / str(index)).exists(), overrides
