"""Many hosts, one program: launching, which process writes, and host values every process needs.

JAX on a TPU pod or a GPU cluster is multi-controller: every host runs the same command,
holds its own devices, and takes part in every computation on the global mesh. What is
not a device computation needs a rule, and this module has them:

    initialize(coordinator, num_processes, process_id)   # before any other JAX call
    primary_first(lambda: task.load("train", data_dir=d))  # process 0 writes, the others then read
    if is_primary(): write_json_atomically(...)            # one writer of every file
    rows = local_rows(samples.tokens)                      # this host's rows of a global batch
    everyone = allgather_objects(my_scores)                # host values (text, metrics) of all hosts

Files: the workdir must be one filesystem every host sees (NFS, a GCS bucket mounted
with gcsfuse), as Orbax requires for multi-host checkpoints. Process 0 writes data,
tokenizers, exports, metrics and summaries; the others wait at a barrier and read.

Faults: a process that dies stops sending heartbeats to JAX's coordination service; the
others are stopped with an error after `heartbeat_timeout_seconds` instead of waiting in
a collective forever. Relaunching the same command on every host resumes from the
latest checkpoint.
"""
from __future__ import annotations

import logging
import pickle
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from r1jax.batching import round_up

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_TIMEOUT_SECONDS = 60  # JAX's default is 100: a dead peer is noticed within a minute instead


def jax_cluster_detectors() -> list[type]:
    """The cluster environments `jax.distributed.initialize()` detects, in the order it tries them.

    Private JAX API, read here and nowhere else: JAX (0.10) offers no public way to ask whether
    `initialize()` would find its arguments without calling it, which joins a cluster or fails.
    The list is `jax._src.clusters.ClusterEnv._cluster_types`, the registry that
    `ClusterEnv.auto_detect_unset_distributed_params` walks: classes with a classmethod
    `is_env_present()` and a bool `opt_in_only_method`. tests/test_distributed.py fails when a
    JAX upgrade moves or reshapes it; until then this raises rather than guess.
    """
    try:
        from jax._src import clusters

        detectors = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"jax {jax.__version__} has no jax._src.clusters.ClusterEnv._cluster_types, the "
                           "private list of cluster detectors r1jax reads: update "
                           "r1jax.distributed.jax_cluster_detectors, or give --coordinator_address, "
                           "--num_processes and --process_id") from error
    if not detectors or not all(callable(getattr(d, "is_env_present", None)) for d in detectors):
        raise RuntimeError(f"jax {jax.__version__}'s ClusterEnv._cluster_types is {detectors!r}, not the list of "
                           "detector classes r1jax expects: update r1jax.distributed.jax_cluster_detectors")
    return detectors


def cluster_detected() -> bool:
    """Whether `jax.distributed.initialize()` can find its arguments on its own (TPU VM, SLURM, Open MPI, k8s).

    Asks JAX's own cluster detectors, skipping those that must be chosen explicitly (mpi4py).
    """
    for cluster in jax_cluster_detectors():
        if getattr(cluster, "opt_in_only_method", False):
            continue
        try:
            if cluster.is_env_present():
                return True
        except Exception:  # a detector that cannot tell (e.g. no metadata server) means: not this one
            continue
    return False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS,
               detect: bool = True) -> None:
    """`jax.distributed.initialize` when this is one process of several; else nothing.

    Given any of the three arguments, they are passed on (all three are needed off a
    cluster, e.g. several processes on one machine). Without them, JAX detects TPU VM
    slices, SLURM and Open MPI (`detect=False` skips that). Call it before any other JAX
    call; a second call is a no-op.
    """
    if jax.distributed.is_initialized():
        return
    given = (coordinator_address, num_processes, process_id)
    if all(value is None for value in given) and not (detect and cluster_detected()):
        return
    if any(value is None for value in given) and not cluster_detected():
        missing = [name for name, value in zip(("coordinator_address", "num_processes", "process_id"), given)
                   if value is None]
        raise ValueError(f"no cluster environment to detect {', '.join(missing)} from: give all of "
                         "--coordinator_address, --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
    """Whether this is the process that writes files and prints (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def primary_first(compute: Callable[[], T], name: str = "primary_first") -> T:
    """`compute()` on process 0, then, once it returned, on every other process.

    For host work that writes what it then reads (generating a dataset, training a
    tokenizer): process 0 writes it, the others find it written. `compute` must not run
    device computations on the global mesh (the processes run it at different times).
    """
    if jax.process_count() == 1:
        return compute()
    if is_primary():
        result = compute()
        barrier(name)
        return result
    barrier(name)
    return compute()


def allgather_objects(value) -> list:
    """Every process's `value` (any picklable host object), in process order, on every process.

    For what is computed on the host per process (decoded text, reward scores): a few
    kilobytes per step, sent as bytes through one all-gather on the devices.
    """
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(pickle.dumps(value), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(gathered[i, :size].tobytes()) for i, size in enumerate(sizes)]


def primary_value(value: T) -> T:
    """Process 0's `value` on every process: one decision where each process might see another state
    (e.g. whether a directory exists, while another process creates it)."""
    return value if jax.process_count() == 1 else allgather_objects(value)[0]


def common_shape(batch: dict[str, np.ndarray], *, pad_values: dict[str, int] | None = None,
                 row_multiple: int = 1) -> dict[str, np.ndarray]:
    """This process's rows of a [rows, width] batch, grown to the shape every process's rows get.

    Rows are added at the bottom (all 0, or `pad_values[name]`), columns on the left (rows
    are left-padded), up to the most rows and the widest entry of any process, the rows
    rounded up to `row_multiple`: then `make_global_batch` can join them, even when
    packing or longer texts gave each host another shape.
    """
    shapes = allgather_objects({name: x.shape for name, x in batch.items()})
    rows = round_up(max(shape[0] for process in shapes for shape in process.values()), row_multiple)
    out = {}
    for name, x in batch.items():
        width = max(process[name][1] for process in shapes)
        out[name] = np.pad(x, ((0, rows - x.shape[0]), (width - x.shape[1], 0)),
                           constant_values=(pad_values or {}).get(name, 0))
    return out


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows (leading dimension) of a batch-sharded global array, in row order, on the host.

    The rows are those this process gave `make_global_batch`; replicas of the same rows
    (e.g. over a `tensor` axis) are read once. On one process: the whole array.
    """
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    blocks: dict[int, jax.Array] = {}
    for shard in x.addressable_shards:
        if shard.data.shape[1:] != x.shape[1:]:
            raise ValueError(f"local_rows reads arrays split along their first dimension only; got shards "
                             f"of shape {shard.data.shape} of {x.shape}")
        blocks.setdefault(shard.index[0].start or 0, shard.data)
    rows = np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])
    if len(rows) == x.shape[0]:  # every row lives here too: which are this process's is unknown
        raise ValueError(f"local_rows got an array whose rows are not split over the processes "
                         f"(sharding {x.sharding}); put it on `batch_sharding(mesh)` first")
    return rows


def process_share(count: int) -> slice:
    """This process's contiguous part of `count` items split as evenly as possible (as `np.array_split`)."""
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(count), jax.process_count())])
    return slice(int(bounds[jax.process_index()]), int(bounds[jax.process_index() + 1]))


def host_copy(tree):
    """`tree` with every global array gathered whole onto this host (e.g. to write a model file).

    Every process must call it (it is an all-gather). Arrays this process holds whole
    already, and non-arrays, are kept as they are.
    """
    def whole(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree.map(whole, tree)
