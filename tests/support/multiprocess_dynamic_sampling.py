"""GRPO with dynamic sampling through the training loop, on one process or several: metrics and parameters to files.

Run by tests/train/test_dynamic_sampling.py through tests/support/launch.py:

    python -m tests.support.multiprocess_dynamic_sampling --out dir \
        --coordinator_address localhost:12345 --num_processes 2 --process_id 0   # and with --process_id 1

The test runs it as 1 process x 2 devices and as 2 processes x 1 device (the same mesh) and compares
what they wrote. The fakes here (a word-per-token tokenizer, rewards set per example) are shared with that test.
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

VOCAB = 32
# in the global order the data comes, 4 prompts a round (P = 2 groups a step, oversample 2, 2 rounds at most);
# process 0 samples the first 2 of each round, process 1 the last 2. By hand, one process would:
#   step 1: keep positions 0, 2, 3 (process 0 one, process 1 two): train 0, 2; carry 3
#   step 2: keep 4, 5, 6 of 4..7 (room for 3: 7 is dropped): train 3 (carried), 4; carry 5, 6
#   step 3: keep none of 8..11: train 5, 6 (carried), one round
#   step 4: none of 12..15, then 18 of 16..19: train 18 and a masked copy (process 1's whole share)
FLAGS = [1, 0, 1, 1,   1, 1, 1, 1,   0, 0, 0, 0,   0, 0, 0, 0,   0, 0, 1, 0]
# (rounds, kept, carried, dropped, masked, from last step) of each step, as worked out above
EXPECTED = [(1, 3, 1, 0, 0, 0), (1, 4, 2, 1, 0, 1), (1, 0, 0, 0, 0, 2), (2, 1, 0, 0, 1, 0)]
# num_iterations 2: the carried groups keep the sampler's log-probs, which move between processes too
SECTION = dict(steps=4, learning_rate=1e-2, num_generations=2, prompts_per_step=2, max_new_tokens=8, beta=0.04,
               num_iterations=2, dynamic_sampling=True, oversample=2.0, dynamic_sampling_rounds=2, save_every=100)


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
    """Train `SECTION`'s steps through `run_training`; process 0 writes metrics.jsonl (in `out/run`) and the
    final parameters (`out/params.npz`)."""
    import optax
    from flax import nnx

    from r1jax import distributed
    from r1jax.pipelines.settings import grpo_training
    from r1jax.sharding import make_mesh
    from r1jax.train.grpo import GRPO
    from r1jax.train.loop import run_training
    from r1jax.train.state import train_state_from_model
    from tests.support.tiny import fixed_model, tiny_config

    settings, loop, optimizer = grpo_training(SECTION, where="grpo")
    grpo = GRPO(settings, tokenizer=FakeTokenizer(), rewards=FakeRewards(), task="arithmetic",
                mesh=make_mesh({"data": -1}))
    data = examples(FLAGS, words=[2 * i + 1 for i in range(len(FLAGS))])
    iterator = grpo.prompt_iterator(data, seed=0)
    for position, index in enumerate(iterator.epoch_order(0)):  # FLAGS are in the order the data comes
        data[index]["mixed"] = bool(FLAGS[position])
    new_model = lambda: fixed_model(tiny_config(vocab_size=VOCAB, num_layers=1))
    grpo.set_reference(train_state_from_model(new_model(), optax.identity(), grpo.mesh))
    result = run_training(loop, workdir=out / "run", model=new_model(), optimizer=optimizer.optimizer(loop.steps),
                          loss_fn=grpo.objective(), data=iterator, make_batches=grpo.make_batches, mesh=grpo.mesh,
                          progress=False)
    params = {"/".join(map(str, path)): np.asarray(v)
              for path, v in nnx.to_flat_state(distributed.host_copy(result.state.params))}
    if distributed.is_primary():
        np.savez(out / "params.npz", **params)


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
