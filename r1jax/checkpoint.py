"""Checkpoints for long RL runs: periodic saves, resume, preemption, and a model guard.

One `Checkpointer` per run, built on `orbax.checkpoint.CheckpointManager`. Each saved
step directory holds three items:

    state      the array pytree (params, optimizer state, rng key, ...), possibly sharded
    host       a JSON dict of host-side state (data iterator position, metric tail, ...)
    signature  the JSON `model_signature` of the model that wrote it

Typical loop:

    ckpt = Checkpointer(workdir, save_every=100, model_signature=model_signature(cfg, params))
    restored = ckpt.restore_latest(abstract_state)     # pytree of ShapeDtypeStruct + .sharding
    step, state, host = restored if restored else (0, init_state(), {})
    with Preemption() as preemption:
        for step in range(step + 1, total_steps + 1):
            state, metrics = train_step(state, ...)
            ckpt.save(step, state, {"data_position": ...})
            if preemption.should_stop(step):
                ckpt.save(step, state, {...}, force=True)   # blocks until on disk
                break
    ckpt.close()

Crash safety comes from Orbax: a step is written to `<step>.orbax-checkpoint-tmp` and
renamed to `<step>` only once complete, and only renamed directories are ever listed,
so a save cut short by a kill is never loaded (its leftover is deleted when the next
`Checkpointer` opens the directory, after the model check passes).

A committed checkpoint can still be damaged later (a truncated array file, a garbled
JSON, a zeroed metadata file: disk full, a bad copy, bit rot). `restore_latest` then
logs one warning per damaged step and resumes from the newest step that restores;
when none does it raises `DamagedCheckpointError` listing each step and why. A damaged
step directory is never modified or deleted by r1jax: its number is recorded in
`checkpoints/damaged_steps.json`, retention keeps it beside the `keep` newest intact
steps (Orbax's `max_to_keep` would count it as one of them, then delete it silently),
and when training reaches that step number again the save is skipped with a warning
rather than overwriting it (so a run that ends exactly there keeps its final state in
memory only). Delete the directory, once inspected, to end all this.

A disk (or quota) that fills up during a save raises `CheckpointWriteError`, one line naming
the directory: the save is left as an uncommitted `<step>.orbax-checkpoint-tmp` (deleted
when the next `Checkpointer` opens the directory) and the earlier steps are intact, so a
relaunch after making room resumes from the newest of them. A directory that is, or holds,
a symbolic link loop or a link to nothing is refused up front (`CheckpointDirectoryError`,
`check_directory`), before Orbax writes anything.

Multi-host: every process constructs the `Checkpointer` and calls `save` and
`restore_latest` with the same arguments; Orbax writes each process's shards and lets
the primary process write JSON and rename the directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from r1jax.distributed import allgather_objects, is_primary, primary_value
from r1jax.files import write_json_atomically

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"  # checkpoints live in workdir/checkpoints, beside metrics
DAMAGED_STEPS_FILE = "damaged_steps.json"  # in CHECKPOINT_SUBDIR: {step: why it does not restore}
_MAX_LISTED_DIFFERENCES = 12
_MAX_REASON_CHARS = 300


class IncompatibleCheckpointError(RuntimeError):
    """The workdir holds checkpoints written by a different model."""


class DamagedCheckpointError(RuntimeError):
    """The workdir holds checkpoints, but none of them restores (each is damaged on disk)."""


class CheckpointDirectoryError(RuntimeError):
    """A workdir or checkpoint directory that cannot hold checkpoints: it is, or holds, a symbolic
    link loop or a link to nothing. Found before anything is written."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written because its disk (or quota) is full; earlier ones are intact."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is "no space left on device" (or "quota
    exceeded"): an `OSError` with that errno, or TensorStore's error (a `ValueError` whose
    message carries the OS error code, e.g. `RESOURCE_EXHAUSTED: ... [os_error_code='28']`;
    RESOURCE_EXHAUSTED alone also means out of device memory)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        if any(f"[os_error_code='{code}']" in str(error) for code in _NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False


def check_directory(path: str | os.PathLike) -> None:
    """Refuse (`CheckpointDirectoryError`, naming the path) a directory that is, or holds, a symbolic
    link that loops or leads nowhere; a `path` that does not exist yet is fine.

    Through such a link nothing can be read or saved: Orbax would fail in the middle of a run
    with a long traceback (or `mkdir` with "File exists"), after earlier stages did their work.
    """
    path = os.path.abspath(os.fspath(path))
    _check_link(path)
    if not os.path.isdir(path):
        return
    for parent, directories, files in os.walk(path):  # links are listed, not followed
        for name in directories + files:
            entry = os.path.join(parent, name)
            if os.path.islink(entry):
                _check_link(entry)


def _check_link(path: str) -> None:
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CheckpointDirectoryError(
                f"{path}: a symbolic link loop ({error.strerror}); point the link at a real directory or "
                "remove it, or choose another workdir") from None
        if error.errno == errno.ENOENT and os.path.islink(path):
            raise CheckpointDirectoryError(
                f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist; create its target "
                "or remove the link, or choose another workdir") from None


def model_signature(config: Any, params: Any = None, *, ignore: tuple[str, ...] = ()) -> dict:
    """A JSON dict identifying a model: its config fields and, if given, its param shapes.

    `config` is a dataclass (e.g. `ModelConfig`) or a mapping; `params` any pytree of
    arrays or `jax.ShapeDtypeStruct` (e.g. `nnx.state(model, nnx.Param)` or its
    `jax.eval_shape`). Fields in `ignore` are left out, for settings that may change on
    resume without changing the weights (e.g. `ignore=("remat", "dtype")`).
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        fields = dict(config)
    else:
        raise TypeError(f"model_signature needs a dataclass or a dict config, got {type(config).__name__}")
    signature = {"config": {k: v for k, v in fields.items() if k not in ignore}}
    if params is not None:
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        signature["param_shapes"] = {
            jax.tree_util.keystr(path, simple=True, separator="/"): [list(leaf.shape), str(leaf.dtype)]
            for path, leaf in leaves
        }
    return _as_json(signature, "model_signature")


class Checkpointer:
    """Saves every `save_every` steps into `workdir/checkpoints`, keeping the last `keep`.

    Construction refuses (touching nothing) a workdir whose latest checkpoint was written by
    a model with another signature (`IncompatibleCheckpointError`), and a checkpoint directory
    that is or holds a symbolic link loop or a link to nothing (`CheckpointDirectoryError`).
    Steps recorded as damaged (see the module docstring) are kept on top of `keep`. A save
    that finds the disk full raises `CheckpointWriteError`.
    """

    def __init__(self, workdir: str | os.PathLike, *, save_every: int, keep: int = 3,
                 model_signature: dict):
        if save_every < 1 or keep < 1:
            raise ValueError(f"save_every={save_every} and keep={keep} must both be >= 1")
        self.save_every = save_every
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.directory = os.path.join(self.workdir, CHECKPOINT_SUBDIR)
        self.model_signature = _as_json(model_signature, "model_signature")
        check_directory(self.directory)
        # Check before the writable manager exists: it deletes stale tmp directories. Process 0's
        # view decides for all (another process may look after the writable manager made the directory).
        if primary_value(os.path.isdir(self.directory)):
            with ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
                    read_only=True, create=False, save_interval_steps=0,
                    enable_async_checkpointing=False)) as reader:
                # The newest readable signature judges the workdir; unreadable ones are
                # damaged checkpoints, which restore_latest skips.
                for step in sorted(reader.all_steps(), reverse=True):
                    if self._check_signature(reader, step) is None:
                        break
        self._damaged = self._read_damaged_steps()
        if self._damaged:
            log.warning("checkpoint step(s) %s in %s are damaged (%s); they are kept untouched, never "
                        "deleted or overwritten: delete them once inspected", sorted(self._damaged),
                        self.directory, DAMAGED_STEPS_FILE)
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            preservation_policy=_KeepIntactAndDamaged(keep, self._damaged),
            cleanup_tmp_directories=True,
            # Async: `save` returns once arrays are copied to host memory (so the
            # caller may donate or overwrite the state); files are written by a
            # background thread, which the next save, `wait` or `close` joins.
            enable_async_checkpointing=True,
        ))

    @property
    def latest_step(self) -> int | None:
        """The newest step directory, a damaged one included (`restore_latest` may pick an older one)."""
        return self._manager.latest_step()

    @property
    def all_steps(self) -> list[int]:
        """Every step directory, damaged ones included."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, train_state: Any, host_state: dict, *, force: bool = False) -> bool:
        """Saves if `step % save_every == 0` or `force`; returns whether a save started.

        Asynchronous unless `force`: a forced save (preemption, end of training) blocks
        until the checkpoint is on disk, so the process may exit right after. Saving a
        step that is already saved is a no-op returning False; so is saving a step whose
        directory holds a damaged checkpoint, which is left as it is, with a warning.
        """
        step = int(step)
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            if step in self._damaged:
                log.warning("step %d not saved: %s holds a damaged checkpoint of that step, left untouched; "
                            "delete it to let this step be saved", step, os.path.join(self.directory, str(step)))
            if force:
                self._manager.wait_until_finished()
            return False
        # Our rule above is the only one: Orbax's own policy would also save the first
        # step it sees, whatever save_every says. It first waits for the previous (async)
        # save, which is where that one's failure comes out.
        with self._disk_full_named():
            saved = self._manager.save(step, force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state),
                host=ocp.args.JsonSave(_as_json(host_state, "host_state")),
                signature=ocp.args.JsonSave(self.model_signature),
            ))
            if force:
                self._manager.wait_until_finished()
        return saved

    def restore_latest(self, abstract_train_state: Any) -> tuple[int, Any, dict] | None:
        """(step, train_state, host_state) of the newest checkpoint that restores, or None if none is saved.

        `abstract_train_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding`
        set (e.g. `jax.eval_shape(init)` mapped to the run's shardings); arrays are
        read straight into those shardings, whatever mesh the checkpoint was saved from.
        Newer checkpoints that fail to restore are skipped with a warning each and
        recorded as damaged; if every one fails, `DamagedCheckpointError` lists them.
        """
        self.wait()
        self._manager.reload()
        skipped = {}
        for step in sorted(self._manager.all_steps(), reverse=True):
            restored, reason = self._try_restore(step, abstract_train_state)
            # A process that reads only its own shards may be alone in finding one damaged:
            # every process must resume from the same step.
            reason = next((r for r in allgather_objects(reason) if r is not None), None)
            if reason is None:
                self._record_damaged(skipped, restored=step)
                return step, restored["state"], dict(restored["host"])
            skipped[step] = reason
            log.warning("checkpoint step %d in %s is damaged, skipped: %s (left untouched on disk)",
                        step, self.directory, reason)
        if skipped:
            listed = "\n  ".join(f"step {step}: {reason}" for step, reason in skipped.items())
            raise DamagedCheckpointError(
                f"no checkpoint in {self.directory} restores; each is damaged:\n  {listed}\nNothing was "
                f"changed: repair one of them to resume from it, or delete {self.directory} to start over.")
        return None

    def wait(self):
        """Blocks until every pending save is on disk."""
        with self._disk_full_named():
            self._manager.wait_until_finished()

    def close(self):
        """Waits for pending saves and deletions, then releases Orbax's threads (also when a save failed)."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info):
        self.close()

    @contextlib.contextmanager
    def _disk_full_named(self):
        """Turns a save that failed for want of space (Orbax's error: a 40-line TensorStore spec
        under a traceback from its background thread) into `CheckpointWriteError`, one line."""
        try:
            yield
        except Exception as error:
            if not is_disk_full(error):
                raise
            steps = sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
            resumes = (f"it resumes from step {steps[-1]}, the newest complete checkpoint there (the earlier "
                       "ones are intact)") if steps else "it starts over, no checkpoint being complete yet"
            raise CheckpointWriteError(
                f"{self.directory}: no space left on its device for a checkpoint; free space there (or give the "
                f"run more quota), then relaunch the same command: {resumes}") from error

    def _try_restore(self, step: int, abstract_train_state: Any) -> tuple[dict, str | None]:
        """({"host": ..., "state": ...}, None), or ({}, why not) naming the damaged item.

        One item at a time, so that the reason names it: a JSON error alone does not say
        which file it is in.
        """
        reason = self._check_signature(self._manager, step)
        if reason is not None:
            return {}, reason
        restored = {}
        for item, args in (("host", ocp.args.JsonRestore()),
                           ("state", ocp.args.StandardRestore(abstract_train_state))):
            try:
                restored[item] = self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
            except Exception as error:  # any type: TensorStore raises a bare Exception on a short file
                return {}, f"{item} item unreadable: {_one_line(error)}"
        return restored, None

    def _check_signature(self, manager: ocp.CheckpointManager, step: int) -> str | None:
        """None if `step` was written by this model; why not if its signature is damaged.

        Raises `IncompatibleCheckpointError` if it has no signature or another model's.
        """
        try:
            saved = manager.restore(step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())).signature
        except KeyError as error:  # Orbax's "Item "signature" was not found": no r1jax checkpoint
            raise IncompatibleCheckpointError(
                f"checkpoint step {step} in {self.directory} has no readable model signature "
                f"({type(error).__name__}: {error}); it was not written by r1jax.checkpoint. Nothing "
                f"was changed: use a new workdir, or delete {self.directory} to start over.") from error
        except Exception as error:  # the item is there but unparseable: damaged
            return f"signature item unparseable: {_one_line(error)}"
        if not isinstance(saved, Mapping):
            return f"signature item unparseable: a JSON {type(saved).__name__}, not an object"
        differences = _differences(dict(saved), self.model_signature)
        if differences:
            listed = "\n  ".join(differences[:_MAX_LISTED_DIFFERENCES])
            more = len(differences) - _MAX_LISTED_DIFFERENCES
            raise IncompatibleCheckpointError(
                f"workdir {self.workdir} holds a checkpoint (step {step}) of a different model; "
                f"{len(differences)} signature field(s) differ (checkpoint vs this run):\n  {listed}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + f"\nNothing was changed. Use a new workdir for this model, or delete "
                  f"{self.directory} if that run is no longer needed.")
        return None

    def _read_damaged_steps(self) -> dict[int, str]:
        """The recorded damaged steps whose directories still exist (the user may have deleted some)."""
        path = os.path.join(self.directory, DAMAGED_STEPS_FILE)
        if not os.path.exists(path):
            return {}
        try:
            with open(path) as f:
                recorded = {int(step): reason for step, reason in json.load(f).items()}
        except (ValueError, AttributeError) as error:
            raise DamagedCheckpointError(f"{path} is unreadable ({_one_line(error)}); it lists the damaged "
                                         "checkpoints that must not be deleted: repair or delete it") from error
        damaged = {step: reason for step, reason in recorded.items()
                   if os.path.isdir(os.path.join(self.directory, str(step)))}
        if damaged != recorded:
            self._write_damaged_steps(damaged)
        return damaged

    def _record_damaged(self, skipped: dict[int, str], *, restored: int):
        """Adds the steps `restore_latest` skipped, and forgets `restored` (repaired since)."""
        before = dict(self._damaged)
        self._damaged.pop(restored, None)
        self._damaged.update(skipped)  # in place: the retention policy holds this dict
        if self._damaged != before:
            self._write_damaged_steps(self._damaged)

    def _write_damaged_steps(self, damaged: dict[int, str]):
        if not is_primary():
            return
        path = os.path.join(self.directory, DAMAGED_STEPS_FILE)
        if not damaged:
            if os.path.exists(path):
                os.remove(path)
            return
        write_json_atomically(path, {str(step): damaged[step] for step in sorted(damaged)}, indent=1)


@dataclasses.dataclass
class _KeepIntactAndDamaged:
    """Orbax retention (a `PreservationPolicy`): the `keep` newest steps not in `damaged`, and all of `damaged`.

    Orbax's own `max_to_keep` counts a damaged step as one of the kept, which leaves
    fewer restorable steps, and later deletes it unseen.
    """
    keep: int
    damaged: Mapping[int, str]  # the Checkpointer's record, updated in place

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        intact = sorted(info.step for info in checkpoints if info.step not in self.damaged)
        kept = set(intact[-self.keep:]) | set(self.damaged)
        return [info.step in kept for info in checkpoints]


# A SIGTERM that no `preemption_requested()` call has acted on yet (one process). It outlives the
# `Preemption` that caught it: a notice that comes during a run's last save stops the next stage.
_notice_pending = False
# The last step asked about (several processes): between training runs the runner asks at the
# step after it, where a notice that came during the last save has set JAX's sync point.
_last_step = 0


def preemption_requested(step: int | None = None) -> bool:
    """True, once, at the first call after a preemption notice (SIGTERM): save and stop there.

    One process: a SIGTERM caught while a `Preemption` was installed. Several processes: JAX's
    coordination service watches SIGTERM on every host and agrees on a step that every process
    reaches (`multihost_utils.reached_preemption_sync_point`: the step after the furthest one
    any process had asked about), so every process must ask at the same points: `step`, each
    training step (Orbax's saves ask about the step they save, in the same count); None, between
    stages: the step after the last one asked about.
    """
    global _notice_pending, _last_step
    if jax.process_count() == 1:
        noticed, _notice_pending = _notice_pending, False
        return noticed
    _last_step = _last_step + 1 if step is None else int(step)
    try:
        return multihost_utils.reached_preemption_sync_point(_last_step)
    except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
        return False


class Preemption:
    """Turns SIGTERM (a scheduler's preemption notice) into a flag the loop polls.

    Use as a context manager (the previous handler comes back on exit) or call
    `install()`. The loop calls `should_stop(step)` after each step and, when True, saves
    with `force=True` and leaves the loop; the caller then reports the run as stopped (the
    command-line entry exits with status 143, 128 + SIGTERM: "not done, relaunch").

    Single process: the Python handler records the notice. Multi-process: JAX's coordination
    service already watches SIGTERM (see `preemption_requested`), so no Python handler is
    installed (it would replace JAX's); every process must then call `should_stop` at every step.
    """

    def __init__(self):
        self.preempted = False
        self._previous_handler = None

    def install(self) -> Preemption:
        if jax.process_count() == 1:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def uninstall(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def should_stop(self, step: int) -> bool:
        """Whether a preemption notice came (and, several processes, every process is at `step`): stays True."""
        self.preempted = self.preempted or preemption_requested(step)
        return self.preempted

    def __enter__(self) -> Preemption:
        return self.install()

    def __exit__(self, *exc_info):
        self.uninstall()

    def _on_sigterm(self, signum, frame):
        global _notice_pending
        _notice_pending = True


def install_sigterm_handler() -> Preemption:
    """`Preemption().install()`: for loops that cannot use the context manager."""
    return Preemption().install()


def _as_json(value: dict, what: str) -> dict:
    """A JSON round trip: checks serialisability and turns tuples into lists up front."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serialisable ({error}); convert arrays and numpy "
                        "scalars with .tolist() / int() / float(), or put arrays in the train state") from error


def _one_line(error: BaseException) -> str:
    """An error as one short line: its innermost cause, which says what is wrong.

    TensorStore's outer message is a 40-line spec; the cause names the file and the
    byte range that could not be read.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return line if len(line) <= _MAX_REASON_CHARS else line[:_MAX_REASON_CHARS - 3] + "..."


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in list(saved) + [k for k in current if k not in saved]:
            where = f"{path}.{key}" if path else str(key)
            if key not in current:
                out.append(f"{where}: {saved[key]!r} vs (absent)")
            elif key not in saved:
                out.append(f"{where}: (absent) vs {current[key]!r}")
            else:
                out.extend(_differences(saved[key], current[key], where))
        return out
    return [] if saved == current else [f"{path or '(root)'}: {saved!r} vs {current!r}"]
