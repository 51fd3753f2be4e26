"""Two GRPO steps with dynamic sampling on several processes; what each process trained goes to a JSON file.

Run by tests/train/test_dynamic_sampling.py through tests/support/launch.py:

    python -m tests.support.multiprocess_dynamic_sampling --out dir \
        --coordinator_address localhost:12345 --num_processes 2 --process_id 0   # and with --process_id 1

The fakes here (a word-per-token tokenizer, rewards set per example) are shared with that test.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

VOCAB = 32
# in the order the data comes (4 prompts a round, process 0 the first 2 of each, process 1 the last 2)
FLAGS = [1, 1, 0, 0,   0, 0, 0, 1,   0, 0, 0, 0,   0, 0, 0, 0]
SECTION = dict(steps=2, learning_rate=1e-2, num_generations=2, prompts_per_step=2, max_new_tokens=8, beta=0.0,
               dynamic_sampling=True, oversample=2.0, dynamic_sampling_rounds=2)


class FakeTokenizer:
    """Just what GRPO's renderer, rollout and decoding read: a word is one token."""

    bos_id, eos_id, pad_id, vocab_size, chat_template = 1, 2, 0, VOCAB, None
    stop_ids = frozenset({2})

    def encode(self, text, add_bos=False):
        return ([1] if add_bos else []) + [3 + len(word) % 20 for word in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


class FakeRewards:
    """A `mixed` example's group gets rewards 0, 1, 0, 1, ... (they differ); any other group all 1s.
    `distinct`: every row its own reward (every group informative)."""

    names = ("arithmetic",)

    def __init__(self, distinct=False):
        self.distinct = distinct

    def submit(self, completions, examples):
        from r1jax.rewards import RewardResult

        rows = np.arange(len(completions))
        if self.distinct:
            total = rows.astype(np.float32) ** 1.5
        else:
            total = np.array([row % 2 if ex["mixed"] else 1 for row, ex in zip(rows, examples)], np.float32)
        result = RewardResult({"arithmetic": total}, total, np.ones(len(total), bool), {}, [])
        return type("Pending", (), {"result": lambda self: result})()


def examples(flags, words=None) -> list[dict]:
    """Arithmetic examples; example i's expression has `words[i]` words (odd; default 3): its prompt length."""
    words = words or [3] * len(flags)
    return [{"expression": " ".join(["1"] + ["+ 1"] * ((n - 1) // 2)), "answer": "1", "mixed": bool(flag), "id": i}
            for i, (flag, n) in enumerate(zip(flags, words))]


def run(out: pathlib.Path) -> None:
    import jax
    import optax

    from r1jax.distributed import local_rows
    from r1jax.pipelines.settings import grpo_training
    from r1jax.sharding import make_mesh
    from r1jax.train.grpo import GRPO
    from r1jax.train.state import train_state_from_model
    from tests.support.tiny import fixed_model, tiny_config

    settings, _, _ = grpo_training(SECTION, where="grpo")
    grpo = GRPO(settings, tokenizer=FakeTokenizer(), rewards=FakeRewards(), task="arithmetic",
                mesh=make_mesh({"data": -1}))
    data = examples(FLAGS, words=[2 * i + 1 for i in range(len(FLAGS))])  # a prompt's length names its example
    iterator = grpo.prompt_iterator(data, seed=0)
    order = iterator.epoch_order(0)
    for position, index in enumerate(order):
        data[index]["mixed"] = bool(FLAGS[position])
    length = [len(grpo.renderer.encode(grpo.renderer.texts([data[index]], grpo.task)[0])) for index in order]
    state = train_state_from_model(fixed_model(tiny_config(vocab_size=VOCAB, num_layers=1)), optax.identity(),
                                   grpo.mesh)
    grpo.set_reference(state)
    steps = []
    for step in range(2):
        (batch,), metrics = grpo.make_batches(state, next(iterator), jax.random.key(step))
        prompt_columns = batch.tokens.shape[1] - batch.completion_columns
        attention, completion = local_rows(batch.attention_mask), local_rows(batch.completion_mask)
        advantages = local_rows(batch.advantages)
        steps.append({"rows": int(batch.tokens.shape[0]), "local_rows": len(attention),
                      "prompt_lengths": attention[::2, :prompt_columns].sum(axis=1).tolist(),
                      "masked": [bool(completion[i:i + 2].sum() == 0) for i in range(0, len(completion), 2)],
                      "all_advantages_nonzero": bool((advantages != 0).all()),
                      "dynamic": {k: v for k, v in metrics.items() if k.startswith("dynamic/")}})
    (out / f"process_{jax.process_index()}.json").write_text(json.dumps({"length": length, "steps": steps}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    from r1jax.distributed import initialize

    initialize(args.coordinator_address, args.num_processes, args.process_id, detect=False)
    run(pathlib.Path(args.out))


if __name__ == "__main__":
    main()
