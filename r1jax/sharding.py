"""Sharding said once: the mesh, the logical-axis table, and how batches are split.

Model code names *logical* axes (`embed`, `mlp`, `heads`, ...) on parameters (the
`axes` metadata of each `nnx.Param`) and on key activations (`constrain`). This module
alone maps those names to mesh axes (`data`, `fsdp`, `tensor`) through `LOGICAL_RULES`,
so changing the parallelism layout is an edit of one table, never of model code.

The same code runs on one CPU, on fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and on a multi-host pod:

    r1jax.distributed.initialize()                # multi-host only; before any other JAX call
    mesh = make_mesh({"fsdp": -1})
    shardings = tree_shardings(abstract_state, mesh)   # from the `axes` metadata
    batch = make_global_batch(local_batch, mesh)  # each host passes its own rows
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations: the batch is split over every data-parallel axis
    "seq": None,
    "cache_seq": None,
    "vocab": "tensor",
    "embed": "fsdp",  # parameters: ZeRO-3 style, gathered per layer by XLA
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "act_embed": None,  # activations keep the model dimension whole
}

_ACTIVE: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("r1jax_mesh", default=None)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices (of all hosts) with axes `data`, `fsdp`, `tensor`.

    `shape` maps axis name to size; one axis may be -1 ("the rest"); missing axes are 1.
    E.g. `make_mesh({"data": -1})` is pure data parallelism, `{"data": 2, "fsdp": 2,
    "tensor": 2}` a 3D layout on 8 devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {"data": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"found {len(devices)}; set one axis to -1 to absorb the rest")
    # Auto axes: XLA propagates shardings from the parameters and the `constrain` hints
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None] | None, rules=None) -> P:
    """PartitionSpec for a tuple of logical axis names (None entries stay replicated)."""
    rules = LOGICAL_RULES if rules is None else rules
    if axes is None:
        return P()
    used: set[str] = set()
    spec = []
    for name in axes:
        mesh_axes = rules.get(name) if name is not None else None
        if isinstance(mesh_axes, str):
            mesh_axes = (mesh_axes,)
        # one mesh axis may shard only one dimension of an array
        mesh_axes = tuple(a for a in (mesh_axes or ()) if a not in used)
        used.update(mesh_axes)
        spec.append(mesh_axes if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return P(*spec)


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Within this context, `constrain` pins activations to `mesh` by the logical table."""
    token = _ACTIVE.set(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh of the innermost `activate`, or None (e.g. for a kernel that needs `shard_map`)."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation; a no-op unless a mesh is active (`activate`)."""
    mesh = _ACTIVE.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes)))


# ---- parameters and other state -------------------------------------------------------


def _names(spec_entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry or ())


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """`spec` with the mesh axes dropped from every dimension they do not divide evenly.

    Uneven shards would need padding; replicating that one dimension instead keeps
    any model runnable on any mesh (e.g. SmolLM2's 9 heads with tensor=2).
    """
    fitted = []
    for size, mesh_axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        kept, ways = [], 1
        for name in _names(mesh_axes):
            if size % (ways * mesh.shape[name]) == 0:
                kept.append(name)
                ways *= mesh.shape[name]
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return P(*fitted)


def _variable_sharding(variable: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
    axes = variable.get_metadata().get("axes")
    shape = jax.tree.leaves(variable)[0].shape
    if axes is not None and len(axes) != len(shape):
        raise ValueError(f"a parameter of shape {shape} is annotated with {len(axes)} logical axes "
                         f"{axes}: give one name (or None) per dimension")
    return NamedSharding(mesh, fit_spec(logical_to_spec(axes, rules), shape, mesh))


def tree_shardings(tree, mesh: Mesh, rules=None):
    """A `NamedSharding` for every array of `tree`, in the same structure.

    Arrays held in an `nnx.Variable` with `axes` metadata (parameters, and the optimizer
    moments that mirror them) are sharded by the logical table; everything else (step
    counters, scalars) is replicated. `tree` may be concrete or abstract
    (`jax.eval_shape` output), e.g. a whole train state.
    """
    replicated = NamedSharding(mesh, P())

    def sharding_of(leaf):
        if isinstance(leaf, nnx.Variable):
            sharding = _variable_sharding(leaf, mesh, rules)
            return jax.tree.map(lambda _: sharding, leaf)  # keep the Variable node: same structure
        return replicated

    return jax.tree.map(sharding_of, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=None) -> nnx.Module:
    """Move an already-built model (e.g. from `from_pretrained`) onto `mesh`, in place.

    Every process must hold the same full values (as after loading one checkpoint);
    each device then keeps only its own shard.
    """
    state = nnx.state(model)
    shardings = tree_shardings(state, mesh, rules)
    if jax.process_count() == 1:
        nnx.update(model, jax.device_put(state, shardings))
    else:
        nnx.update(model, jax.tree.map(_put_full_value, state, shardings))
    return model


def reshard(tree, mesh: Mesh, rules=None):
    """`tree` (global arrays, e.g. parameters) moved onto `mesh` by the logical table, device to device.

    For a sampler mesh of its own: XLA copies the shards between devices (collectives),
    nothing goes through the host, with one process or several.
    """
    return jax.device_put(tree, tree_shardings(tree, mesh, rules))


# ---- batches ---------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every data-parallel mesh axis, the rest whole."""
    return NamedSharding(mesh, logical_to_spec(("batch",)))


def num_batch_shards(mesh: Mesh) -> int:
    """Into how many parts `batch_sharding` splits the batch dimension (`data` x `fsdp`)."""
    return int(np.prod([mesh.shape[a] for a in _names(batch_sharding(mesh).spec[0])]))


def make_global_batch(local_batch, mesh: Mesh):
    """One global array per leaf from this process's rows of the batch.

    Each process passes its own slice of the global batch (process i holds rows
    [i * b, (i + 1) * b) for a local batch of b rows, in the order of `mesh.devices`);
    the global batch has b * process_count rows. On one host this is a device_put.
    """
    sharding = batch_sharding(mesh)
    n_shards = num_batch_shards(mesh)

    def to_global(x):
        x = np.asarray(x)
        if x.ndim == 0 or (x.shape[0] * jax.process_count()) % n_shards:
            raise ValueError(f"every batch leaf needs a leading batch dimension whose global size "
                             f"({jax.process_count()} processes x local rows) splits into the "
                             f"{n_shards} data-parallel shards of the mesh; got a local shape {x.shape}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(to_global, local_batch)


def put_on_mesh(tree, shardings):
    """`jax.device_put(tree, shardings)` that also works with several processes.

    Global arrays are resharded; with one process anything goes. With several, a local
    value (numpy, a one-device array, a PRNG key) must go to a replicated sharding and
    be the same on every process (a seed, a learning rate); a process's share of a
    batch goes through `make_global_batch` instead. `shardings` may be a tree prefix.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(_put_on_mesh, tree, jax.tree.broadcast(shardings, tree))


def _put_on_mesh(x, sharding: NamedSharding):
    local = not (isinstance(x, jax.Array) and not x.is_fully_addressable)
    if local and not sharding.is_fully_replicated:
        raise ValueError(f"a local array of shape {np.shape(x)} cannot be split over processes; "
                         "pass a global array (make_global_batch builds one from each process's rows)")
    return _put_full_value(x, sharding)


def _put_full_value(x, sharding: NamedSharding):
    """`x` on `sharding` when x is global, or when every process holds its whole value."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # a reshard
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put_full_value(jax.random.key_data(x), sharding),
                                        impl=jax.random.key_impl(x))
    # each process fills only its own devices' shards
    full = np.asarray(x)
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])
