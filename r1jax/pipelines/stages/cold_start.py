"""The cold-start data stage (DeepSeek-R1, stage 1): readable R1-Zero outputs in R1's output format.

    output/data.json   {"pairs": [[prompt, completion], ...], "stats": {...}}

R1-Zero is sampled on the training prompts; the correct, readable, one-language samples,
rewritten in R1's format (`r1jax.data.cold_start.build_cold_start`), are the SFT set of
the cold start, with worked solutions written out in full (`annotated_pairs`, as the paper
also uses human-written long chains of thought).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax.data.base_corpus import CorpusStyle
from r1jax.data.cold_start import build_cold_start, to_r1_format
from r1jax.files import write_json_atomically
from r1jax.models import from_pretrained
from r1jax.pipelines.settings import ColdStartSettings
from r1jax.pipelines.stages.export import split
from r1jax.pipelines.stages.pretrain import corpus_pairs
from r1jax.pipelines.stages.rejection import rollout_sampler
from r1jax.rewards import OutputFormat, get_reward
from r1jax.rollout import PromptRenderer
from r1jax.tasks import Task

log = logging.getLogger(__name__)

DATA_FILE = "data.json"
_PROMPTS_PER_BATCH = 32


def cold_start_pairs(output: pathlib.Path) -> list[tuple[str, str]] | None:
    """The cold-start SFT pairs in `output/data.json` (None: not made yet); refuses an empty set."""
    path = output / DATA_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    log.info("cold start data: %s", data["stats"])
    if not data["pairs"]:
        raise RuntimeError(f"no R1-Zero sample passed the cold-start filters ({data['stats']}) and "
                           "cold_start.annotated is 0: train R1-Zero longer or add annotated samples")
    return [tuple(pair) for pair in data["pairs"]]


def annotated_pairs(examples: Sequence[dict], count: int, *, seed: int, style: CorpusStyle,
                    renderer: PromptRenderer, task: Task, output_format: OutputFormat) -> list[tuple[str, str]]:
    """`count` correct worked solutions of random `examples` in R1's format, narrated in English
    (written by the stand-in's corpus generator, so for its task only)."""
    rng = np.random.default_rng(seed)
    style = dataclasses.replace(style, worked_rate=1.0, error_rate=0.0, tagged_rate=1.0, chinese_rate=0.0)
    chosen = [examples[i] for i in rng.integers(len(examples), size=count)]
    return [(prompt, to_r1_format(completion, output_format))
            for prompt, completion in corpus_pairs(chosen, rng, style, renderer, task)]


def cold_start_stage(output: pathlib.Path, r1_zero: pathlib.Path, *, examples: Sequence[dict],
                     settings: ColdStartSettings, renderer: PromptRenderer, task: Task, max_new_tokens: int,
                     mesh: Mesh, seed: int, output_format: OutputFormat, annotated: Sequence[tuple[str, str]] = (),
                     language: str = "en") -> list[tuple[str, str]]:
    """Sample the R1-Zero checkpoint `r1_zero` on the first `settings.prompts` `examples` (0: all),
    `settings.samples_per_prompt` times each; keep the correct, readable samples in `language`,
    rewritten in `output_format`; add the `annotated` pairs (`settings.annotated` of them); write
    them to `output/data.json` and return them."""
    s = settings
    graphdef, params = split(from_pretrained(r1_zero, mesh=mesh))
    sample = rollout_sampler(graphdef, params, renderer, num_samples=s.samples_per_prompt, max_prompt_length=256,
                             max_new_tokens=max_new_tokens, temperature=s.temperature, top_p=s.top_p, mesh=mesh)
    sampled = examples[:s.prompts] if s.prompts else examples
    texts = renderer.texts(sampled, task)
    records = []
    for start in range(0, len(sampled), _PROMPTS_PER_BATCH):
        chunk = sampled[start:start + _PROMPTS_PER_BATCH]
        out = sample(texts[start:start + _PROMPTS_PER_BATCH], jax.random.key(seed + start))
        for i, (completion, _, _) in enumerate(out):
            example = chunk[i // s.samples_per_prompt]
            records.append({"prompt": texts[start + i // s.samples_per_prompt], "completion": completion,
                            **example})
    pairs, stats = build_cold_start(records, correct_fn=get_reward(task.accuracy_reward), language=language,
                                    output_format=output_format)
    pairs += list(annotated)
    stats["annotated"] = s.annotated
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output / DATA_FILE, {"pairs": pairs, "stats": stats}, indent=2)
    return cold_start_pairs(output)
