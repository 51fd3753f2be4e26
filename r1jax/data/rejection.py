"""The rejection-sampled SFT dataset (DeepSeek-R1, stage 3): its filter, its files, its TFDS builder.

"We curate reasoning prompts and generate reasoning trajectories by performing rejection
sampling from the checkpoint [of the reasoning RL stage]. ... For each prompt, we sample
multiple responses and retain only the correct ones ... we have filtered out
chain-of-thought with mixed languages, long paragraphs, and code blocks."

`filter_samples` keeps the correct and clean samples of each prompt and says why the rest
went. The resumable, multi-host job that samples and writes them is the rejection stage
(`r1jax.pipelines.stages.rejection.rejection_sample`); its output folder holds

    output_dir/
      provenance.json              the caller's provenance, the settings, and (once done) counts
      chunks/chunk_00000.json ...  kept records and drop counts of each chunk of prompts
      rejection_sampled/1.0.0/     the dataset: tfds.builder_from_directory(dataset_path(output_dir))

`assemble_dataset` writes the TFDS dataset (array_record, readable without TensorFlow)
from the chunk files, its metadata recording where the data came from, and
`load_sft_dataset` reads it back.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
from collections import Counter
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.filters import (MIN_LANGUAGE_SHARE, NGRAM_SIZE, REPETITION_THRESHOLD, dedup_key,
                                is_language_consistent, is_overlong, is_repetitive)
from r1jax.data.prepared import GeneratedDatasetInfo, check_dataset_files
from r1jax.data.sources import DatasetNotPreparedError, ExampleSource, OutputDirError
from r1jax.files import write_json_atomically
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
# what a run's output folder may hold
RUN_ENTRIES = frozenset({PROVENANCE_FILE, CHUNKS_DIR, DATASET_NAME, _ASSEMBLY_DIR})


class Sample(NamedTuple):
    """One sampled completion: its text, its number of tokens, and whether it drew a stop token."""

    completion: str
    length: int
    stopped: bool


def dataset_path(output_dir) -> pathlib.Path:
    """The folder of the finished TFDS dataset; load it with `tfds.builder_from_directory`."""
    return pathlib.Path(output_dir) / DATASET_NAME / DATASET_VERSION


# ---- filtering ---------------------------------------------------------------------------------

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


# ---- the chunk files of a run ------------------------------------------------------------------

def chunk_path(output_dir: pathlib.Path, chunk_index: int) -> pathlib.Path:
    """The file of chunk `chunk_index` (prompts [i * chunk_size, (i + 1) * chunk_size)) of a run."""
    return output_dir / CHUNKS_DIR / f"chunk_{chunk_index:05d}.json"


def read_chunk(path: pathlib.Path, digest: str) -> dict:
    """A chunk file, refused unless the run whose `run_digest` is `digest` made it."""
    chunk = json.loads(path.read_text())
    if chunk.get("run_sha256") != digest:
        raise OutputDirError(f"{path} was made by a run with other provenance or settings than "
                             f"{path.parent.parent / PROVENANCE_FILE} describes; pass a new output_dir")
    return chunk


def chunk_counts(prompts: int, num_samples: int, kept: int, dropped: Counter) -> dict:
    """The counts a chunk file stores: prompts, samples, kept, and dropped by reason."""
    return {"prompts": prompts, "samples": prompts * num_samples, "kept": kept,
            "dropped": {reason: dropped[reason] for reason in DROP_REASONS}}


def flat_counts(counts: dict) -> Counter:
    """`chunk_counts` as one Counter (dropped ones as "dropped/<reason>"), to add up chunks."""
    flat = Counter({key: value for key, value in counts.items() if key != "dropped"})
    flat.update({f"dropped/{reason}": n for reason, n in counts["dropped"].items()})
    return flat


def run_digest(value) -> str:
    """The SHA-256 of `value` as canonical JSON: what ties chunk files to their run's settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---- the TFDS dataset ---------------------------------------------------------------------------

_FEATURES = {
    "text": tfds.features.Text, "int": lambda: tfds.features.Scalar(np.int64),
    "float": lambda: tfds.features.Scalar(np.float64), "bool": lambda: tfds.features.Scalar(np.bool_),
    "text_list": lambda: tfds.features.Sequence(tfds.features.Text()),
    "int_list": lambda: tfds.features.Sequence(np.int64),
    "float_list": lambda: tfds.features.Sequence(np.float64),
}


def field_kinds(examples: list[dict]) -> dict[str, str]:
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
        return GeneratedDatasetInfo(builder=self, description=self.__doc__,
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
    settings, digest = run["settings"], run_digest(run)
    num_chunks = math.ceil(settings["num_examples"] / settings["chunk_size"])
    missing = [i for i in range(num_chunks) if not chunk_path(output_dir, i).exists()]
    if missing:
        raise FileNotFoundError(f"chunks {missing[:10]} of {output_dir} are not done; run rejection_sample "
                                "on every host first")
    records, totals = [], Counter()
    for chunk_index in range(num_chunks):
        chunk = read_chunk(chunk_path(output_dir, chunk_index), digest)
        records.extend(chunk["records"])
        totals.update(flat_counts(chunk["counts"]))
    counts = chunk_counts(totals["prompts"], settings["num_samples"], totals["kept"],
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
    if path.is_dir() and any(path.iterdir()):
        check_dataset_files(path, f"Delete {path} and call assemble_dataset({str(output_dir)!r}) to write it "
                                  "again from the run's chunk files.")
    else:
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