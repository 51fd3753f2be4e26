"""A tiny synthetic preference task on general (non-reasoning) prompts, for reward models.

R1's last RL stage scores general prompts with reward models, and judges two things
on different parts of a response (DeepSeek-R1, section 2.3.4):

* helpfulness on the summary only (the text after the reasoning), so the judge does
  not push the reasoning around: here a helpful summary does what was asked; an
  unhelpful one refuses needlessly or answers another request;
* harmlessness on the whole response, reasoning included: here a response is harmful
  when it contains one of `HARMFUL_PHRASES`, wherever it is.

So helpfulness pairs hold summaries only and harmlessness pairs whole responses
(`<think> reasoning </think> summary`), and one reward model trained on both serves
both views. Prompts are requests such as "Greet Ann." or "Name a colour for Ben.";
a fixed fifth of them (by a hash of the text, not by the seed) is held out, so the
`test` split's prompts never occur in `train`. A small transformer learns the task
on a CPU in well under a minute.
"""
from __future__ import annotations

import zlib

import numpy as np

from r1jax.data.kinds import GENERAL

NAMES = ("Ann", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lea",
         "Max", "Nia", "Omar", "Pia")

# request -> (prompt, reasoning sentences, helpful summaries), each with a {name} slot
REQUESTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "greet": ("Greet {name}.",
              ("{name} wants a greeting.", "I should say hello to {name}."),
              ("Hello, {name}!", "Good morning, {name}!", "Hi {name}, nice to see you!")),
    "thank": ("Thank {name}.",
              ("{name} should be thanked.", "I am asked to thank {name}."),
              ("Thank you, {name}!", "Many thanks, {name}.", "{name}, thanks a lot!")),
    "praise": ("Say something kind about {name}.",
               ("I need a kind word about {name}.", "Something nice about {name}."),
               ("{name} is very kind.", "{name} is brave and clever.", "{name} is a good friend.")),
    "colour": ("Name a colour for {name}.",
               ("{name} asks for a colour.", "I should pick a colour for {name}."),
               ("{name}, try blue.", "Red suits {name}.", "{name} might like green.")),
    "animal": ("Name an animal for {name}.",
               ("{name} asks for an animal.", "I should pick an animal for {name}."),
               ("{name}, think of a cat.", "A horse, {name}.", "{name} might like a dog.")),
}
REFUSALS = ("Sorry, I cannot help with that.", "I will not do that.", "I am unable to answer.")
HARMFUL_PHRASES = ("You are stupid.", "I hate you.", "Shut up.", "Nobody likes you.")
ASPECTS = ("helpfulness", "harmlessness")
SPLITS = ("train", "test")
_HELD_OUT_EVERY = 5  # one prompt in five is held out


def split_of(prompt: str) -> str:
    """'test' for the fixed held-out fifth of the prompts, 'train' for the rest."""
    return "test" if zlib.crc32(prompt.encode()) % _HELD_OUT_EVERY == 0 else "train"


def _requests(split: str) -> list[tuple[str, str]]:
    """The (request, name) pairs whose prompt is in `split`, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [(request, name) for request in REQUESTS for name in NAMES
            if split_of(REQUESTS[request][0].format(name=name)) == split]


def response(reasoning: str, summary: str) -> str:
    """A whole response in the R1 layout: reasoning in think tags, then the summary."""
    return f"<think> {reasoning} </think> {summary}"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _helpfulness_pair(rng, request: str, name: str) -> tuple[str, str]:
    summaries = REQUESTS[request][2]
    chosen = _pick(rng, summaries).format(name=name)
    if rng.random() < 0.5:
        rejected = _pick(rng, REFUSALS)
    else:  # answers another request for the same person
        other = _pick(rng, [r for r in REQUESTS if r != request])
        rejected = _pick(rng, REQUESTS[other][2]).format(name=name)
    return chosen, rejected


def _harmlessness_pair(rng, request: str, name: str) -> tuple[str, str]:
    _, reasonings, summaries = REQUESTS[request]
    reasoning = _pick(rng, reasonings).format(name=name)
    summary = _pick(rng, summaries).format(name=name)
    harmful = _pick(rng, HARMFUL_PHRASES)
    if rng.random() < 0.5:
        rejected = response(f"{reasoning} {harmful}", summary)
    else:
        rejected = response(reasoning, f"{summary} {harmful}")
    return response(reasoning, summary), rejected


def preference_pairs(rng: np.random.Generator | int, n: int, *, split: str = "train",
                     aspects: tuple[str, ...] = ASPECTS) -> list[tuple[str, str, str]]:
    """`n` (prompt, chosen, rejected) triples of `split`, each of a random aspect in `aspects`.

    Helpfulness pairs compare two summaries, harmlessness pairs two whole responses
    (module doc). `rng` is a numpy Generator or a seed: the same seed gives the same pairs.
    """
    unknown = set(aspects) - set(ASPECTS)
    if unknown or not aspects:
        raise ValueError(f"aspects must be a non-empty subset of {ASPECTS}, got {aspects!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(rng)
    requests = _requests(split)
    pairs = []
    for _ in range(n):
        request, name = _pick(rng, requests)
        aspect = _pick(rng, aspects)
        make_pair = _helpfulness_pair if aspect == "helpfulness" else _harmlessness_pair
        chosen, rejected = make_pair(rng, request, name)
        pairs.append((REQUESTS[request][0].format(name=name), chosen, rejected))
    return pairs


def general_prompts(rng: np.random.Generator | int, n: int, *, split: str = "train") -> list[dict]:
    """`n` general-prompt examples of `split` for RL: {'kind': 'general', 'question', 'request', 'name'}.

    `kind == 'general'` tells GRPO to score them with its model-based reward (a judge)
    instead of the rule-based rewards.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(rng)
    requests = _requests(split)
    examples = []
    for _ in range(n):
        request, name = _pick(rng, requests)
        examples.append({"kind": GENERAL, "question": REQUESTS[request][0].format(name=name),
                         "request": request, "name": name})
    return examples
