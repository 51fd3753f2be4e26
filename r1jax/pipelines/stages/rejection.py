"""The rejection-sampling stage: sample an RL checkpoint, keep the correct and clean samples, write a
TFDS SFT dataset (DeepSeek-R1, stage 3; the dataset and its filter: `r1jax.data.rejection`).

`rejection_sample` draws `num_samples` completions per prompt, keeps the correct and clean
ones (`filter_samples`), and writes them as a TFDS dataset whose metadata, like the
`provenance.json` beside it, records where the data came from (the layout of `output_dir`:
`r1jax.data.rejection`).

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
import json
import math
import pathlib
import time
from collections import Counter
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from r1jax.batching import round_up
from r1jax.data.filters import (MIN_LANGUAGE_SHARE, NGRAM_SIZE, REPETITION_THRESHOLD, is_language_consistent,
                                is_repetitive)
from r1jax.data.rejection import (CHUNKS_DIR, DATASET_NAME, DROP_REASONS, PROVENANCE_FILE, RUN_ENTRIES, OutputDirError,
                                  Sample, assemble_dataset, chunk_counts, chunk_path, dataset_path, field_kinds,
                                  filter_samples, flat_counts, load_sft_dataset, read_chunk, run_digest,
                                  to_sft_pairs)
from r1jax.data.sources import to_python
from r1jax.distributed import (allgather_objects, barrier, is_primary, local_rows, primary_first, primary_value,
                               process_share)
from r1jax.evaluation import EVAL_TEMPERATURE, EVAL_TOP_P
from r1jax.files import write_json_atomically
from r1jax.models import from_pretrained
from r1jax.pipelines.stages.export import split
from r1jax.rewards import get_reward
from r1jax.rollout import rollout

_POLL_SECONDS = 2.0

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


# ---- sampling ---------------------------------------------------------------------------------

def rollout_sampler(graphdef, params, renderer, *, num_samples: int, max_prompt_length: int,
                    max_new_tokens: int, temperature: float, top_p: float, mesh,
                    pad_to_prompts: Optional[int] = None) -> SampleFn:
    """A `SampleFn` that draws `num_samples` completions per prompt with `r1jax.rollout.rollout`.

    renderer: the `r1jax.rollout.PromptRenderer` that made the prompt texts (it encodes them).
    pad_to_prompts: repeat the last prompt up to this many prompts (and drop their samples),
      so that a short last chunk reuses the compiled sampler instead of compiling a new shape.
    """
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
        "examples_sha256": run_digest(examples), "fields": field_kinds(examples),
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
    digest = run_digest(run)

    rng = jax.random.key(seed)
    totals, sampled, skipped = Counter(), 0, 0
    num_chunks = math.ceil(len(examples) / chunk_size)
    for chunk_index in range(process_index, num_chunks, process_count):
        path = chunk_path(output_dir, chunk_index)
        if primary_value(path.exists()):
            chunk = read_chunk(path, digest)
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
                     "counts": chunk_counts(len(chunk_examples), num_samples, len(records), dropped),
                     "records": records}
            if is_primary():  # every process holds the whole chunk
                write_json_atomically(path, chunk)
            barrier(f"rejection chunk {chunk_index}")
            sampled += 1
        totals.update(flat_counts(chunk["counts"]))

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
               if name not in RUN_ENTRIES and not name.startswith(f".{PROVENANCE_FILE}.")]  # our temporaries
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


def _wait_for_chunks(output_dir: pathlib.Path, num_chunks: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [i for i in range(num_chunks) if not chunk_path(output_dir, i).exists()]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"chunks {missing[:10]}{' ...' if len(missing) > 10 else ''} of {output_dir} are not done "
                f"after {timeout:.0f}s; they belong to other hosts (chunk i to host i % process_count). "
                "Run those hosts, then call assemble_dataset(output_dir) or rerun host 0.")
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))



class Traces(NamedTuple):
    """The result of the rejection stage: what happened to the samples, the kept records
    (`r1jax.data.rejection.load_sft_dataset`) and their (prompt, completion) pairs."""

    stats: RejectionStats
    records: Sequence[dict]
    pairs: list[tuple[str, str]]


def rejection_stage(output: pathlib.Path, checkpoint: pathlib.Path, *, renderer, examples: Sequence[dict], mesh,
                    task, provenance: dict, num_samples: int, max_new_tokens: int, max_prompt_length: int = 512,
                    temperature: float = EVAL_TEMPERATURE, top_p: float = EVAL_TOP_P, seed: int = 0,
                    language: Optional[str] = None, correct_fn: Optional[Callable[..., Optional[float]]] = None,
                    repetition_threshold: float = REPETITION_THRESHOLD, model_overrides: Mapping | None = None,
                    keep_unfinished: bool = False) -> Traces:
    """`rejection_sample` of the model at `checkpoint` on `examples` into `output` (resumed chunk by
    chunk; a finished dataset is read back). The keywords are `rejection_sample`'s, but for:

    model_overrides: `from_pretrained`'s overrides (dtypes) for the checkpoint sampled.
    keep_unfinished: every sample counts as finished, also one cut off at `max_new_tokens`
      (smoke runs on random checkpoints, which never draw a stop token).
    """
    graphdef, params = split(from_pretrained(checkpoint, mesh=mesh, **dict(model_overrides or {})))
    sampling = dict(num_samples=num_samples, max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p)
    sample_fn = None
    if keep_unfinished:
        sample = rollout_sampler(graphdef, params, renderer, mesh=mesh, **sampling)
        sample_fn = lambda texts, rng: [s._replace(stopped=True) for s in sample(texts, rng)]
    stats = rejection_sample(graphdef, params, renderer, examples, output_dir=output, mesh=mesh, task=task,
                             provenance=provenance, seed=seed, language=language, correct_fn=correct_fn,
                             repetition_threshold=repetition_threshold, sample_fn=sample_fn, **sampling)
    records = load_sft_dataset(output)
    return Traces(stats, records, to_sft_pairs(records))
