"""Rejection sampling from an RL checkpoint into an SFT dataset (DeepSeek-R1, stage 3).

"We curate reasoning prompts and generate reasoning trajectories by performing rejection
sampling from the checkpoint [of the reasoning RL stage]. ... For each prompt, we sample
multiple responses and retain only the correct ones ... we have filtered out
chain-of-thought with mixed languages, long paragraphs, and code blocks."

`rejection_sample` draws `num_samples` completions per prompt, keeps the correct and clean
ones, and writes them as a TFDS dataset (array_record, readable without TensorFlow) whose
metadata, like the `provenance.json` beside it, records where the data came from:

    output_dir/
      provenance.json              the caller's provenance, the settings, and (once done) counts
      chunks/chunk_00000.json ...  kept records and drop counts of each chunk of prompts
      rejection_sampled/1.0.0/     the dataset: tfds.builder_from_directory(dataset_path(output_dir))

The work is resumable and shardable over hosts: chunk i covers prompts
[i * chunk_size, (i + 1) * chunk_size) and samples with `fold_in(key(seed), i)`, so it does
not matter which host makes it, or whether a killed run made it before. A chunk file
appears only once complete (written to a temporary name, then renamed); a restarted run
skips the chunks that exist. Two ways to use several hosts (all need a shared file system):

- one multi-controller job (`jax.distributed`, as the recipes run): every chunk is sampled
  on the global `mesh`, each process sampling its share of the chunk's prompts; process 0
  writes the chunk and assembles the dataset. Leave process_index/process_count alone.
- independent processes, each with a mesh of its own devices: pass process_index and
  process_count; host p makes chunks p, p + P, ... and host 0 assembles the dataset once
  every chunk file exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import time
from collections import Counter
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.filters import (MIN_LANGUAGE_SHARE, NGRAM_SIZE, REPETITION_THRESHOLD, dedup_key,
                                is_language_consistent, is_overlong, is_repetitive)
from r1jax.data.sources import DatasetNotPreparedError, ExampleSource, to_python
from r1jax.distributed import (allgather_objects, barrier, is_primary, local_rows, primary_first, primary_value,
                               process_share)
from r1jax.evaluation import EVAL_TEMPERATURE, EVAL_TOP_P
from r1jax.files import write_json_atomically
from r1jax.rewards import get_reward
from r1jax.batching import round_up
from r1jax.rewards.language import chain_of_thought

# Why a sample is dropped, in the order the checks run; each sample counts once.
DROP_REASONS = ("overlong", "ungradable", "incorrect", "mixed_language", "repetitive", "duplicate",
                "over_max_per_prompt")
# Fields every record has; an example field must not reuse these names.
RECORD_FIELDS = ("prompt", "completion", "example_index", "sample_index")

PROVENANCE_FILE = "provenance.json"
CHUNKS_DIR = "chunks"
DATASET_NAME = "rejection_sampled"
DATASET_VERSION = "1.0.0"
_ASSEMBLY_DIR = "assembling"  # TFDS prepares here; the finished version folder is then renamed into place
_OWN_ENTRIES = {PROVENANCE_FILE, CHUNKS_DIR, DATASET_NAME, _ASSEMBLY_DIR}
_POLL_SECONDS = 2.0


class Sample(NamedTuple):
    """One sampled completion: its text, its number of tokens, and whether it drew a stop token."""

    completion: str
    length: int
    stopped: bool


# texts (P prompts), rng -> P * num_samples samples, the samples of prompt 0 first
SampleFn = Callable[[list[str], jax.Array], Sequence[tuple[str, int, bool]]]


@dataclasses.dataclass(frozen=True)
class RejectionStats:
    """What happened to the samples of the chunks this host is responsible for.

    kept + sum(dropped.values()) == samples == prompts * num_samples.
    dataset_ready: the finished dataset exists (only host 0 waits for it).
    """

    prompts: int
    samples: int
    kept: int
    dropped: dict[str, int]
    sampled_chunks: int  # made by this call
    skipped_chunks: int  # found done (a resumed run)
    dataset_ready: bool


class OutputDirError(ValueError):
    """The output directory holds something this run must not resume or overwrite (another
    run's samples, files that are not a run); nothing was changed."""


def dataset_path(output_dir) -> pathlib.Path:
    """The folder of the finished TFDS dataset; load it with `tfds.builder_from_directory`."""
    return pathlib.Path(output_dir) / DATASET_NAME / DATASET_VERSION


# ---- sampling and filtering -----------------------------------------------------------------

def rollout_sampler(graphdef, params, renderer, *, num_samples: int, max_prompt_length: int,
                    max_new_tokens: int, temperature: float, top_p: float, mesh,
                    pad_to_prompts: Optional[int] = None) -> SampleFn:
    """A `SampleFn` that draws `num_samples` completions per prompt with `r1jax.rollout.rollout`.

    renderer: the `r1jax.rollout.PromptRenderer` that made the prompt texts (it encodes them).
    pad_to_prompts: repeat the last prompt up to this many prompts (and drop their samples),
      so that a short last chunk reuses the compiled sampler instead of compiling a new shape.
    """
    # imported here: r1jax.rollout reads the templates of r1jax.data, whose package exports this module
    from r1jax.rollout import rollout

    tokenizer = renderer.tokenizer
    stop_ids = np.asarray(sorted(tokenizer.stop_ids), np.int64)

    def sample(texts: list[str], rng) -> list[Sample]:
        # several processes: each samples its share of the prompts, and every one gets all samples
        count = round_up(max(len(texts), pad_to_prompts or 0), jax.process_count())
        padded = list(texts) + [texts[-1]] * (count - len(texts))
        mine = padded[process_share(count)]
        out = rollout(graphdef, params, tokenizer, renderer.encode_all(mine), rng, repeat=num_samples,
                      max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, mesh=mesh)
        # a row that used its whole budget stopped only if its last token is a stop token
        stopped = (out.lengths < max_new_tokens) | np.isin(local_rows(out.samples.tokens)[:, -1], stop_ids)
        own = [Sample(text, int(n), bool(s)) for text, n, s in zip(out.completions, out.lengths, stopped)]
        return [s for part in allgather_objects(own) for s in part][:len(texts) * num_samples]

    return sample


def filter_samples(examples: Sequence[dict], prompts: Sequence[str], samples: Sequence[tuple[str, int, bool]],
                   *, first_index: int, num_samples: int, correct_fn: Callable[..., Optional[float]],
                   max_new_tokens: int, language: Optional[str] = None,
                   min_language_share: float = MIN_LANGUAGE_SHARE, ngram_size: int = NGRAM_SIZE,
                   repetition_threshold: float = REPETITION_THRESHOLD,
                   max_per_prompt: Optional[int] = None) -> tuple[list[dict], Counter]:
    """The records to keep from `num_samples` samples of each prompt, and why the rest went.

    samples[i * num_samples + s] is sample s of prompts[i] (the text sampled from) and
    examples[i] (whose fields `correct_fn(completion, **example)` reads). A sample is
    dropped, for the first reason that applies, if it is overlong (no stop within
    `max_new_tokens`), cannot be judged (None) or is wrong, its chain of thought mixes
    languages, it is repetitive, it duplicates (`dedup_key`) a kept sample of the same
    prompt, or its prompt already has `max_per_prompt` kept samples.
    Records: {"prompt", "completion", "example_index" (first_index + i), "sample_index",
    **example}.
    """
    if len(samples) != len(prompts) * num_samples:
        raise ValueError(f"the sampler returned {len(samples)} samples for {len(prompts)} prompts; "
                         f"it must return num_samples={num_samples} per prompt, grouped by prompt")
    records, dropped = [], Counter()
    for i, (example, prompt) in enumerate(zip(examples, prompts)):
        seen = set()
        for s in range(num_samples):
            completion, length, stopped = _check_sample(samples[i * num_samples + s])
            key = dedup_key(completion)
            reason = None
            if is_overlong(length, max_new_tokens, stopped):
                reason = "overlong"
            else:
                score = correct_fn(completion, **example)
                if score is None:
                    reason = "ungradable"
                elif not score:
                    reason = "incorrect"
                elif not is_language_consistent(chain_of_thought(completion), language,
                                                min_share=min_language_share):
                    reason = "mixed_language"
                elif is_repetitive(completion, ngram_size=ngram_size, threshold=repetition_threshold):
                    reason = "repetitive"
                elif key in seen:
                    reason = "duplicate"
                elif max_per_prompt is not None and len(seen) >= max_per_prompt:
                    reason = "over_max_per_prompt"
            if reason is not None:
                dropped[reason] += 1
                continue
            seen.add(key)
            records.append({"prompt": prompt, "completion": completion,
                            "example_index": first_index + i, "sample_index": s, **example})
    return records, dropped


def _check_sample(sample) -> Sample:
    try:
        completion, length, stopped = sample
    except (TypeError, ValueError):
        raise TypeError(f"a sampler must return (completion, length, stopped) tuples, got {sample!r}") from None
    if not isinstance(completion, str):
        raise TypeError(f"a sampled completion must be a str, got {type(completion).__name__}")
    return Sample(completion, int(length), bool(stopped))


# ---- the resumable, sharded run ---------------------------------------------------------------

def rejection_sample(
    graphdef, params, renderer, examples: Sequence[dict], *,
    output_dir,
    task,
    correct_fn: Optional[Callable[..., Optional[float]]] = None,
    num_samples: int,
    max_new_tokens: int,
    provenance: dict,
    max_prompt_length: int = 512,
    temperature: float = EVAL_TEMPERATURE,
    top_p: float = EVAL_TOP_P,
    language: Optional[str] = None,
    min_language_share: float = MIN_LANGUAGE_SHARE,
    ngram_size: int = NGRAM_SIZE,
    repetition_threshold: float = REPETITION_THRESHOLD,
    max_per_prompt: Optional[int] = None,
    chunk_size: int = 64,
    mesh=None,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    sample_fn: Optional[SampleFn] = None,
    assembly_timeout: float = 24 * 3600.0,
) -> RejectionStats:
    """Sample, filter and write an SFT dataset to `output_dir`; resumable, shardable over hosts.

    graphdef, params, mesh: the policy (`nnx.split` of the RL checkpoint's model) and this
      host's mesh; unused when `sample_fn` is given.
    renderer: the `r1jax.rollout.PromptRenderer` (tokenizer, template, system prompt) of the prompts.
    examples: the prompts' examples of `task` (an `r1jax.tasks.Task`); each is rendered with
      `renderer.texts` and passed to `correct_fn`.
    correct_fn: a reward `fn(completion, **example) -> float | None`; truthy is correct.
      Default: the task's accuracy reward. For partial-credit rewards pass an all-or-nothing
      one (e.g. "code_all_or_nothing").
    provenance: JSON-serialisable facts about the source the run cannot know, e.g.
      {"checkpoint": path, "step": 1200}; stored with the data and compared on resume.
    language ... max_per_prompt: the filters, see `filter_samples`.
    chunk_size: prompts per chunk, the unit of sampling, of resumption and of sharding.
    seed: chunk i samples with `fold_in(jax.random.key(seed), i)`.
    process_index, process_count: this host and the number of hosts.
    sample_fn: replaces the rollout sampler (tests, or another inference engine).
    assembly_timeout: how long host 0 waits for the other hosts' chunks before it gives up.

    Raises ValueError, without touching any file, when `output_dir` holds files that are
    not ours or a run with other provenance or settings.
    """
    examples = [to_python(example) for example in examples]
    _check_arguments(examples, num_samples=num_samples, max_new_tokens=max_new_tokens, chunk_size=chunk_size,
                     process_index=process_index, process_count=process_count,
                     max_per_prompt=max_per_prompt, provenance=provenance)
    # the filters check their own settings: try them once, before any file is written
    is_language_consistent("", language, min_share=min_language_share)
    is_repetitive("", ngram_size=ngram_size, threshold=repetition_threshold)
    if correct_fn is None:
        correct_fn = get_reward(task.accuracy_reward)
    if sample_fn is None:
        if mesh is None or graphdef is None or params is None or renderer is None:
            raise ValueError("rejection_sample needs graphdef, params, renderer and mesh to sample "
                             "(or a sample_fn)")
        sample_fn = rollout_sampler(graphdef, params, renderer, num_samples=num_samples,
                                    max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, mesh=mesh,
                                    pad_to_prompts=chunk_size)
    filters = dict(language=language, min_language_share=float(min_language_share), ngram_size=int(ngram_size),
                   repetition_threshold=float(repetition_threshold),
                   max_per_prompt=None if max_per_prompt is None else int(max_per_prompt))
    # numbers are cast so that 1 and 1.0, or numpy and Python ints, make the same settings
    settings = {
        "task": task.name, "template": renderer.template, "num_examples": len(examples),
        "examples_sha256": _digest(examples), "fields": _field_kinds(examples),
        "correct_fn": f"{getattr(correct_fn, '__module__', '?')}.{getattr(correct_fn, '__qualname__', '?')}",
        "num_samples": int(num_samples), "max_prompt_length": int(max_prompt_length),
        "max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p),
        "seed": int(seed), "chunk_size": int(chunk_size),
        "filters": {**filters, "drop_reasons": list(DROP_REASONS)},
    }
    if renderer.system_prompt is not None:
        settings["system_prompt"] = renderer.system_prompt
    output_dir = pathlib.Path(output_dir)
    if process_count > 1 and jax.process_count() > 1:
        raise ValueError("process_index/process_count split the chunks between independent processes; in a "
                         "multi-controller job (jax.distributed) every process samples every chunk on the global "
                         "mesh: leave them at their defaults")
    run = primary_first(lambda: _claim_output_dir(output_dir, {"provenance": provenance, "settings": settings}))
    digest = _digest(run)

    rng = jax.random.key(seed)
    totals, sampled, skipped = Counter(), 0, 0
    num_chunks = math.ceil(len(examples) / chunk_size)
    for chunk_index in range(process_index, num_chunks, process_count):
        path = _chunk_path(output_dir, chunk_index)
        if primary_value(path.exists()):
            chunk = _read_chunk(path, digest)
            skipped += 1
        else:
            start = chunk_index * chunk_size
            chunk_examples = examples[start:start + chunk_size]
            prompts = renderer.texts(chunk_examples, task)
            samples = sample_fn(prompts, jax.random.fold_in(rng, chunk_index))
            records, dropped = filter_samples(chunk_examples, prompts, samples, first_index=start,
                                              num_samples=num_samples, correct_fn=correct_fn,
                                              max_new_tokens=max_new_tokens, **filters)
            chunk = {"run_sha256": digest, "chunk_index": chunk_index,
                     "counts": _counts(len(chunk_examples), num_samples, len(records), dropped),
                     "records": records}
            if is_primary():  # every process holds the whole chunk
                write_json_atomically(path, chunk)
            barrier(f"rejection chunk {chunk_index}")
            sampled += 1
        totals.update(_flat_counts(chunk["counts"]))

    ready = primary_value(dataset_path(output_dir).exists())
    if process_index == 0 and not ready:
        if is_primary():
            _wait_for_chunks(output_dir, num_chunks, assembly_timeout)
            assemble_dataset(output_dir)
        barrier("rejection dataset")
        ready = True
    return RejectionStats(prompts=totals["prompts"], samples=totals["samples"], kept=totals["kept"],
                          dropped={reason: totals[f"dropped/{reason}"] for reason in DROP_REASONS},
                          sampled_chunks=sampled, skipped_chunks=skipped, dataset_ready=ready)


def _check_arguments(examples, *, num_samples, max_new_tokens, chunk_size, process_index, process_count,
                     max_per_prompt, provenance) -> None:
    if not examples:
        raise ValueError("rejection_sample got no examples")
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens),
                        ("chunk_size", chunk_size), ("process_count", process_count)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ValueError(f"max_per_prompt must be at least 1 (or None for no limit), got {max_per_prompt}")
    if not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict (e.g. {{'checkpoint': path, 'step': n}}), "
                        f"got {type(provenance).__name__}")
    try:
        json.dumps(provenance)
    except (TypeError, ValueError) as error:
        raise TypeError(f"provenance must be JSON-serialisable: {error}") from None


def _claim_output_dir(output_dir: pathlib.Path, run: dict) -> dict:
    """Check that `output_dir` is new, or holds this same run; write provenance.json if new.

    Returns `run` as stored (JSON round trip), the form its digest is taken of.
    """
    run = json.loads(json.dumps(run))
    provenance_file = output_dir / PROVENANCE_FILE
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.exists() else []
    foreign = [name for name in entries
               if name not in _OWN_ENTRIES and not name.startswith(f".{PROVENANCE_FILE}.")]  # our temporaries
    if foreign:
        raise OutputDirError(f"{output_dir} holds files that are not a rejection-sampling run "
                         f"({', '.join(foreign[:5])}); pass an empty or new output_dir")
    if provenance_file.exists():
        stored = json.loads(provenance_file.read_text())
        stored_run = {key: stored.get(key) for key in run}
        if stored_run != run:
            differences = "; ".join(_differences(stored_run, run))
            raise OutputDirError(f"{output_dir} holds a run with other provenance or settings ({differences}). "
                             "Resume it with the same settings, or pass a new output_dir; nothing was changed.")
        return stored_run  # equal, and exactly what the chunks' digest was taken of
    if (output_dir / CHUNKS_DIR).exists() and any((output_dir / CHUNKS_DIR).iterdir()):
        raise OutputDirError(f"{output_dir / CHUNKS_DIR} holds chunks but {provenance_file} is missing, so "
                         "their settings are unknown; pass a new output_dir")
    if (output_dir / DATASET_NAME).exists():
        raise OutputDirError(f"{output_dir / DATASET_NAME} exists but {provenance_file} is missing; "
                         "pass a new output_dir")
    (output_dir / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomically(provenance_file, run)
    return run


def _differences(stored, wanted, prefix="") -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return [item for key in sorted(set(stored) | set(wanted))
                for item in _differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")]
    if stored == wanted:
        return []
    return [f"{prefix.rstrip('.')}: stored {stored!r}, requested {wanted!r}"]


def _chunk_path(output_dir: pathlib.Path, chunk_index: int) -> pathlib.Path:
    return output_dir / CHUNKS_DIR / f"chunk_{chunk_index:05d}.json"


def _read_chunk(path: pathlib.Path, digest: str) -> dict:
    chunk = json.loads(path.read_text())
    if chunk.get("run_sha256") != digest:
        raise OutputDirError(f"{path} was made by a run with other provenance or settings than "
                         f"{path.parent.parent / PROVENANCE_FILE} describes; pass a new output_dir")
    return chunk


def _counts(prompts: int, num_samples: int, kept: int, dropped: Counter) -> dict:
    return {"prompts": prompts, "samples": prompts * num_samples, "kept": kept,
            "dropped": {reason: dropped[reason] for reason in DROP_REASONS}}


def _flat_counts(counts: dict) -> Counter:
    flat = Counter({key: value for key, value in counts.items() if key != "dropped"})
    flat.update({f"dropped/{reason}": n for reason, n in counts["dropped"].items()})
    return flat


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _wait_for_chunks(output_dir: pathlib.Path, num_chunks: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [i for i in range(num_chunks) if not _chunk_path(output_dir, i).exists()]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"chunks {missing[:10]}{' ...' if len(missing) > 10 else ''} of {output_dir} are not done "
                f"after {timeout:.0f}s; they belong to other hosts (chunk i to host i % process_count). "
                "Run those hosts, then call assemble_dataset(output_dir) or rerun host 0.")
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


# ---- the TFDS dataset ---------------------------------------------------------------------------

_FEATURES = {
    "text": tfds.features.Text, "int": lambda: tfds.features.Scalar(np.int64),
    "float": lambda: tfds.features.Scalar(np.float64), "bool": lambda: tfds.features.Scalar(np.bool_),
    "text_list": lambda: tfds.features.Sequence(tfds.features.Text()),
    "int_list": lambda: tfds.features.Sequence(np.int64),
    "float_list": lambda: tfds.features.Sequence(np.float64),
}


def _field_kinds(examples: list[dict]) -> dict[str, str]:
    """The storage kind ("text", "int", "int_list", ...) of each example field, from the first example."""
    first = examples[0]
    if not isinstance(first, dict):
        raise TypeError(f"examples must be dicts of fields, got {type(first).__name__}")
    clashes = [name for name in RECORD_FIELDS if name in first]
    if clashes:
        raise ValueError(f"example fields {clashes} clash with the record fields {list(RECORD_FIELDS)}; "
                         "rename them in the examples")
    for index, example in enumerate(examples):
        if set(example) != set(first):
            raise ValueError(f"example {index} has fields {sorted(example)}, example 0 has {sorted(first)}; "
                             "all examples must have the same fields")
    return {name: _kind(name, value) for name, value in first.items()}


def _kind(name: str, value) -> str:
    scalar = {bool: "bool", int: "int", float: "float", str: "text"}
    if type(value) in scalar:
        return scalar[type(value)]
    if isinstance(value, list) and value and all(type(item) is type(value[0]) for item in value):
        if type(value[0]) in (str, int, float):
            return f"{scalar[type(value[0])]}_list"
    raise TypeError(f"example field {name!r} holds {value!r}; supported are str, int, float, bool and "
                    "non-empty lists of one of str, int, float")


class RejectionSampled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Rejection-sampled SFT data: prompt, completion and the example's fields; the provenance
    (source, sampling settings, filters, counts) is in `info.metadata`."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Rejection-sampled (prompt, completion) records."}

    def __init__(self, *, records: list[dict], fields: dict[str, str], metadata: dict, **kwargs):
        self._records_to_write = records
        self._example_field_kinds = fields
        self._run_metadata = metadata
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"prompt": tfds.features.Text(), "completion": tfds.features.Text(),
                    "example_index": tfds.features.Scalar(np.int64),
                    "sample_index": tfds.features.Scalar(np.int64)}
        features.update({name: _FEATURES[kind]() for name, kind in self._example_field_kinds.items()})
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=tfds.features.FeaturesDict(features),
                                     metadata=tfds.core.MetadataDict(self._run_metadata),
                                     disable_shuffling=True)  # records stay in prompt order

    def _split_generators(self, dl_manager):
        del dl_manager
        # TFDS cannot write an empty split: a run that kept nothing has no splits
        return {"train": self._generate_examples()} if self._records_to_write else {}

    def _generate_examples(self):
        yield from enumerate(self._records_to_write)


def assemble_dataset(output_dir) -> pathlib.Path:
    """Write the TFDS dataset from all chunk files of `output_dir`; returns its folder.

    Done by host 0 at the end of `rejection_sample`; call it yourself when host 0 gave up
    waiting for the other hosts. A finished dataset is left as it is.
    """
    output_dir = pathlib.Path(output_dir)
    provenance_file = output_dir / PROVENANCE_FILE
    if not provenance_file.exists():
        raise FileNotFoundError(f"{provenance_file} is missing: {output_dir} is not a rejection-sampling run")
    final = dataset_path(output_dir)
    if final.exists():
        return final
    run = json.loads(provenance_file.read_text())
    run = {"provenance": run["provenance"], "settings": run["settings"]}
    settings, digest = run["settings"], _digest(run)
    num_chunks = math.ceil(settings["num_examples"] / settings["chunk_size"])
    missing = [i for i in range(num_chunks) if not _chunk_path(output_dir, i).exists()]
    if missing:
        raise FileNotFoundError(f"chunks {missing[:10]} of {output_dir} are not done; run rejection_sample "
                                "on every host first")
    records, totals = [], Counter()
    for chunk_index in range(num_chunks):
        chunk = _read_chunk(_chunk_path(output_dir, chunk_index), digest)
        records.extend(chunk["records"])
        totals.update(_flat_counts(chunk["counts"]))
    counts = _counts(totals["prompts"], settings["num_samples"], totals["kept"],
                     Counter({reason: totals[f"dropped/{reason}"] for reason in DROP_REASONS}))
    finished = {**run, "counts": counts}

    assembly = output_dir / _ASSEMBLY_DIR
    if assembly.exists():
        shutil.rmtree(assembly)  # our own leftover from an assembly that was killed
    builder = RejectionSampled(records=records, fields=settings["fields"], metadata=finished,
                               data_dir=assembly, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    write_json_atomically(provenance_file, finished)
    final.parent.mkdir(exist_ok=True)
    os.replace(builder.data_dir, final)  # the commit point: the dataset appears whole or not at all
    shutil.rmtree(assembly)
    return final


def load_sft_dataset(output_dir) -> Sequence[dict]:
    """The records of a finished rejection-sampling run, as plain Python dicts.

    Each has "prompt", "completion", "example_index", "sample_index" and the example's
    fields. Random access, read from the array_record files (no TensorFlow). Pass
    `to_sft_pairs` as `SFT(to_pairs=...)` to train on them.
    """
    path = dataset_path(output_dir)
    if not (path / "dataset_info.json").exists():
        raise DatasetNotPreparedError(f"{output_dir} holds no finished rejection-sampled dataset (no {path}); "
                                      "run rejection_sample on every host, or assemble_dataset(output_dir)")
    builder = tfds.builder_from_directory(path)
    if "train" not in builder.info.splits:
        return []  # the run kept no sample
    return ExampleSource(builder.as_data_source("train"))


def to_sft_pairs(records: Sequence[dict], np_rng: Optional[np.random.Generator] = None) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of records; the signature of `SFT`'s `to_pairs`."""
    del np_rng  # the completions are fixed data, nothing to draw
    return [(record["prompt"], record["completion"]) for record in records]
