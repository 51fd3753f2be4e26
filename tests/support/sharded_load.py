"""Loads HF checkpoints onto a mesh of fake CPU devices, for tests/models/test_sharded_loading.py.

Run through tests/support/launch.py, in fresh processes whose fake device count (XLA_FLAGS) is
set before JAX starts, joined with `r1jax.distributed`:

    # every parameter of each checkpoint, loaded sharded, in float32 and bfloat16, to OUT/<name>.npz
    python -m tests.support.sharded_load parity OUT CHECKPOINT [CHECKPOINT ...] --mesh data=2,fsdp=2,tensor=2

    # the host memory each process of two (4 devices each, mesh fsdp=8) gains while loading, to OUT<i>.json;
    # --path sharded: from_pretrained(..., mesh=); --path whole: from_pretrained, then shard_model
    python -m tests.support.sharded_load memory OUT.json CHECKPOINT --path sharded --mesh fsdp=8 \
        --coordinator_address localhost:12345 --num_processes 2 --process_id 0   # and with --process_id 1
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import threading
import time

DTYPES = ("float32", "bfloat16")


def parity(mesh, out: pathlib.Path, checkpoints: list[str]) -> None:
    """Each parameter's value, mesh spec and first shard's shape; asserts the shardings on the way.

    Also builds a train state from each model: its parameters must stay where they were loaded.
    """
    import numpy as np
    from flax import nnx

    from r1jax.models import from_pretrained
    from r1jax.sharding import tree_shardings
    from r1jax.train import make_optimizer, train_state_from_model

    for checkpoint in checkpoints:
        arrays = {}
        for dtype in DTYPES:
            model = from_pretrained(checkpoint, mesh=mesh, param_dtype=dtype)
            expected = dict(nnx.to_flat_state(tree_shardings(nnx.state(model), mesh)))
            for path, variable in nnx.to_flat_state(nnx.state(model)):
                value, name = variable.get_value(), "/".join(map(str, path))
                assert value.sharding == expected[path].get_value(), (name, value.sharding)
                arrays[f"{dtype}/value/{name}"] = np.asarray(value).astype(np.float32)
                arrays[f"{dtype}/spec/{name}"] = np.array(str(value.sharding.spec))
                arrays[f"{dtype}/shard_shape/{name}"] = np.array(value.addressable_shards[0].data.shape)
            params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
            state = train_state_from_model(model, make_optimizer(1e-3), mesh)
            for path, variable in nnx.to_flat_state(state.params):
                assert variable.get_value().sharding == params[path].get_value().sharding, path
        np.savez(out / f"{pathlib.Path(checkpoint).name}.npz", **arrays)


class PeakAnonymousMemory:
    """The highest anonymous (not file-backed) resident memory seen, sampled by a thread.

    Linux keeps a high-water mark only of the whole RSS (VmHWM), which also counts the
    pages of memory-mapped checkpoint files that a read touched (page cache, dropped when
    the file is closed or under pressure); the anonymous part is what loading allocates.
    """

    def __init__(self):
        self.peak = self.now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        resident, shared = map(int, pathlib.Path("/proc/self/statm").read_text().split()[1:3])
        return (resident - shared) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.0005)

    def __enter__(self):
        sys.setswitchinterval(1e-4)  # let the sampler in between the loader's steps
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def high_water_mark() -> int:
    """VmHWM: the peak resident memory of this process so far, in bytes."""
    line = next(line for line in pathlib.Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def memory(mesh, out: pathlib.Path, checkpoint: str, path: str) -> None:
    """Load on `mesh` by `path`; write the memory this process gained (MB) and what it holds."""
    import jax
    import numpy as np
    from flax import nnx

    from r1jax.models import from_pretrained
    from r1jax.sharding import shard_model

    mb = 1 / 2**20
    hwm, anon = high_water_mark(), PeakAnonymousMemory.now()
    with PeakAnonymousMemory() as sampler:
        if path == "sharded":
            model = from_pretrained(checkpoint, mesh=mesh)
        else:
            model = shard_model(from_pretrained(checkpoint), mesh)
        values = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model))]
        jax.block_until_ready(values)
    result = {"hwm_increase_mb": (high_water_mark() - hwm) * mb, "anon_peak_increase_mb": (sampler.peak - anon) * mb,
              "model_mb": sum(v.nbytes for v in values) * mb,
              "local_shards_mb": sum(s.data.nbytes for v in values for s in v.addressable_shards) * mb}
    if path == "sharded":  # after measuring: each local shard is the same slice of the whole model
        whole = from_pretrained(checkpoint)
        for value, (_, variable) in zip(values, nnx.to_flat_state(nnx.state(whole))):
            full = np.asarray(variable.get_value())
            for shard in value.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
    out.with_name(f"{out.stem}{jax.process_index()}{out.suffix}").write_text(json.dumps(result))  # one per process


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["parity", "memory"])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--mesh", required=True, help="e.g. data=2,fsdp=2,tensor=2")
    parser.add_argument("--path", choices=["sharded", "whole"], default="sharded")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    from r1jax.distributed import initialize

    initialize(args.coordinator_address, args.num_processes, args.process_id, detect=False)
    from r1jax.sharding import make_mesh

    mesh = make_mesh({name: int(size) for name, size in (item.split("=") for item in args.mesh.split(","))})
    if args.mode == "parity":
        parity(mesh, args.out, args.checkpoints)
    else:
        memory(mesh, args.out, args.checkpoints[0], args.path)


if __name__ == "__main__":
    main()
