"""A few GRPO train steps of a tiny model on a given mesh; the final parameters go to an .npz.

Run as a module by tests/test_sharding.py through tests/support/launch.py, in fresh processes whose
fake device count (XLA_FLAGS) is set before JAX starts, joined with `r1jax.distributed`:

    python -m tests.support.multiprocess_train --mesh data=2,fsdp=2,tensor=2 --out p.npz
    python -m tests.support.multiprocess_train --mesh fsdp=2,tensor=2 --out p.npz --from-model \
        --coordinator_address localhost:12345 --num_processes 2 --process_id 0   # and with --process_id 1

The test also imports `run` to compute the one-device reference in its own process.
Every process feeds only its own rows of the global batch (`make_global_batch`).
"""
from __future__ import annotations

import argparse

from tests.support.tiny import fixed_model, tiny_config

GLOBAL_BATCH, LENGTH, PROMPT = 16, 12, 5
NUM_STEPS, NUM_MICROBATCHES = 2, 2


def rollout(vocab_size: int):
    """A fixed GRPO batch (numpy): left-padded prompts, completions, rewards in groups of 4."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, vocab_size, (GLOBAL_BATCH, LENGTH)).astype(np.int32)
    attention_mask = np.ones((GLOBAL_BATCH, LENGTH), np.int32)
    pad = rng.integers(0, 3, GLOBAL_BATCH)
    for row, n in enumerate(pad):
        attention_mask[row, :n] = 0
        tokens[row, :n] = 0
    completion_mask = np.zeros((GLOBAL_BATCH, LENGTH), np.int32)
    completion_mask[:, PROMPT:] = 1
    completion_mask[::3, -2:] = 0  # some completions end early
    attention_mask[::3, -2:] = 0
    rewards = rng.integers(0, 2, GLOBAL_BATCH).astype(np.float32)
    return {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "rewards": rewards}


def run(mesh, from_model: bool = False) -> dict:
    """Train NUM_STEPS GRPO steps on `mesh`; the final parameters as {path: numpy array}.

    Also `shard_shape/<path>`: the shape of each parameter's shard on the first device.
    from_model: start from a model built on one device and moved onto the mesh
    (`train_state_from_model`) instead of creating the state sharded (`create_train_state`).
    """
    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from r1jax.losses import group_advantages
    from r1jax.sharding import make_global_batch
    from r1jax.train import (RolloutBatch, copy_params, create_train_state, grpo_objective, make_logprobs_fn,
                             make_optimizer, make_train_step, train_state_from_model)

    config = tiny_config()
    # eps=1e-3: Adam stays ~linear in small gradients instead of blowing their rounding up
    tx = make_optimizer(1e-3, warmup_steps=1, total_steps=4, weight_decay=0.1, eps=1e-3)
    if from_model:
        model = nnx.jit(lambda: fixed_model(config))()  # on one device, as from_pretrained gives it
        state = train_state_from_model(model, tx, mesh)
    else:
        state = create_train_state(lambda: fixed_model(config), tx, mesh)
    ref_params = copy_params(state.params)

    data = rollout(config.vocab_size)
    data["advantages"] = np.asarray(group_advantages(data.pop("rewards"), 4))
    rows = GLOBAL_BATCH // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    batch = RolloutBatch(**make_global_batch({k: v[mine] for k, v in data.items()}, mesh))

    logprobs_fn = make_logprobs_fn(state, mesh, num_microbatches=NUM_MICROBATCHES)
    batch = batch.replace(ref_logps=logprobs_fn(ref_params, batch.tokens, batch.attention_mask),
                          old_logps=logprobs_fn(state.params, batch.tokens, batch.attention_mask))
    train_step = make_train_step(grpo_objective(beta=0.04, loss_type="dapo", epsilon_high=0.28),
                                 state, mesh, num_microbatches=NUM_MICROBATCHES)
    for step in range(NUM_STEPS):  # mu = NUM_STEPS updates on one rollout
        state, _ = train_step(state, batch, jax.random.key(step))

    flat = {}
    for path, variable in nnx.to_flat_state(state.params):
        value = variable.get_value()
        flat["shard_shape/" + "/".join(map(str, path))] = np.array(value.addressable_shards[0].data.shape)
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        flat["/".join(map(str, path))] = np.asarray(value)
    return flat


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mesh", required=True, help="e.g. data=2,fsdp=2,tensor=2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--from-model", action="store_true")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    from r1jax.distributed import initialize

    initialize(args.coordinator_address, args.num_processes, args.process_id, detect=False)
    import jax
    import numpy as np

    from r1jax.sharding import make_mesh

    mesh = make_mesh({name: int(size) for name, size in
                      (item.split("=") for item in args.mesh.split(","))})
    params = run(mesh, from_model=args.from_model)
    if jax.process_index() == 0:
        np.savez(args.out, **params)


if __name__ == "__main__":
    main()
