"""Damaged checkpoints: resume from the newest one that restores, leave the bad one as it is.

A base run of a one-layer model saves steps 2 and 4; copies of its workdir get step 4
damaged the ways a disk or a copy does it (a truncated array file, a garbled JSON, a
zeroed metadata file). Each damaged copy must resume from step 2 and end bit-exact like
a copy whose step 4 was simply never written. The rest uses `Checkpointer` alone.
"""
import json
import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.checkpoint import (CHECKPOINT_SUBDIR, DAMAGED_STEPS_FILE, Checkpointer, DamagedCheckpointError,
                              IncompatibleCheckpointError)
from r1jax.data import PromptIterator
from r1jax.models import ModelConfig, Transformer
from r1jax.sharding import make_mesh
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.objectives import SFTBatch, sft_objective
from tests.support.files import snapshot

TINY = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
TOTAL_STEPS = 6  # the base run stops at 4; the resumed ones go on to 6
LIKE = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
SIGNATURE = {"config": {"hidden_size": 8}}
ROWS = [np.random.default_rng(i).integers(1, TINY.vocab_size, size=8).tolist() for i in range(12)]


# ---------------------------------------------------------------- the runs


def tiny_model():
    """Random numpy weights on an abstract model: XLA compiles initialisers slowly on a loaded CPU."""
    model = nnx.eval_shape(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = variable.get_value().shape
        value = np.ones(shape) if path[-1] == "scale" else rng.normal(0, 0.2, shape)
        variable.set_value(jnp.asarray(value, jnp.float32))
    return model


def make_batches(state, rows, rng):
    tokens = np.asarray(rows, np.int32)
    completion_mask = np.ones_like(tokens)
    completion_mask[:, 0] = 0  # column 0 has no prediction
    return [SFTBatch(tokens, np.ones_like(tokens), completion_mask)], {}


def train(workdir, steps):
    return run_training(
        LoopSettings(steps=steps, save_every=2, keep_checkpoints=2), progress=False, plot_keys=(),
        # momentum SGD: an optimizer state to restore, and half of Adam's compile time
        workdir=workdir, model=tiny_model(), optimizer=optax.sgd(0.05, momentum=0.9),
        loss_fn=sft_objective(), data=PromptIterator(ROWS, batch_size=4, seed=0), make_batches=make_batches,
        mesh=make_mesh({"data": 1}, devices=jax.devices()[:1]))


def metrics(workdir):
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_seconds"} for row in rows]  # wall time differs


def assert_bit_exact(got, want):
    got, want = [(s.step, s.params, s.opt_state, s.skipped_steps) for s in (got, want)]  # not the optimizer's functions
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a).reshape(-1).view(np.uint8),
                                      np.asarray(b).reshape(-1).view(np.uint8))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run stopped at step 4, with checkpoints 2 and 4."""
    workdir = tmp_path_factory.mktemp("base")
    train(workdir, 4)
    assert sorted(os.listdir(workdir / CHECKPOINT_SUBDIR)) == ["2", "4"]
    return workdir


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """What a resume from step 2 gives when nothing is damaged: step 4 was never written."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(base, workdir)
    shutil.rmtree(workdir / CHECKPOINT_SUBDIR / "4")
    result = train(workdir, TOTAL_STEPS)
    return result.state, metrics(workdir)


# ---------------------------------------------------------------- the damage, in the files Orbax writes


def truncate_array_file(step_dir):
    """Half of the largest array data file of the train state (TensorStore's OCDBT store)."""
    files = list((step_dir / "state").glob("ocdbt.process_*/d/*"))
    largest = max(files, key=lambda path: path.stat().st_size)
    os.truncate(largest, largest.stat().st_size // 2)


def garble_json(path):
    text = path.read_text()
    path.write_text(text[:len(text) // 2] + "#" * (len(text) - len(text) // 2))


def zero_file(path):
    path.write_bytes(b"\0" * path.stat().st_size)


DAMAGE = {
    "truncated array data": (truncate_array_file, "state item unreadable"),
    "garbled host json": (lambda step_dir: garble_json(step_dir / "host" / "metadata"), "host item unreadable"),
    "zeroed array metadata": (lambda step_dir: zero_file(step_dir / "state" / "_METADATA"), "state item unreadable"),
}


def damaged_warnings(caplog):
    return [r for r in caplog.records if r.name == "r1jax.checkpoint" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_skips_a_damaged_latest_checkpoint(kind, base, reference, tmp_path, caplog):
    damage, reason = DAMAGE[kind]
    workdir = tmp_path / "run"
    shutil.copytree(base, workdir)
    step_4 = workdir / CHECKPOINT_SUBDIR / "4"
    damage(step_4)
    damaged_files = snapshot(step_4)

    with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
        result = train(workdir, TOTAL_STEPS)

    reference_state, reference_metrics = reference
    assert result.completed
    assert_bit_exact(result.state, reference_state)
    assert metrics(workdir) == reference_metrics
    assert snapshot(step_4) == damaged_files  # neither repaired, nor overwritten when step 4 came again
    # kept on top of keep_checkpoints=2, which counts the intact steps 2 and 6
    assert sorted(os.listdir(workdir / CHECKPOINT_SUBDIR)) == ["2", "4", "6", DAMAGED_STEPS_FILE]

    skipped, not_saved = damaged_warnings(caplog)
    message = skipped.getMessage()
    assert "checkpoint step 4 " in message and "damaged, skipped" in message and reason in message
    assert "\n" not in message and skipped.exc_info is None  # one line, no traceback
    assert "different model" not in message
    assert not_saved.getMessage().startswith("step 4 not saved")


def test_garbled_model_signature_is_damage_not_another_model(tmp_path, caplog):
    with Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE) as ckpt:
        ckpt.save(1, {"w": jnp.ones(3)}, {"step": 1})
        ckpt.save(2, {"w": jnp.ones(3) * 2}, {"step": 2})
    garble_json(tmp_path / CHECKPOINT_SUBDIR / "2" / "signature" / "metadata")
    with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
        with Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE) as ckpt:  # not refused as foreign
            step, _, host = ckpt.restore_latest(LIKE)
    assert (step, host) == (1, {"step": 1})
    [skipped] = damaged_warnings(caplog)
    assert skipped.getMessage().startswith("checkpoint step 2 in ")
    assert "damaged, skipped: signature item unparseable: JSONDecodeError" in skipped.getMessage()

    # alone: the error says damaged too
    shutil.rmtree(tmp_path / CHECKPOINT_SUBDIR / "1")
    with Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE) as ckpt:
        with pytest.raises(DamagedCheckpointError) as info:
            ckpt.restore_latest(LIKE)
    message = str(info.value)
    assert "each is damaged" in message and "step 2: signature item unparseable: JSONDecodeError" in message
    assert "different model" not in message and not isinstance(info.value, IncompatibleCheckpointError)


def test_no_checkpoint_restores_lists_each_and_changes_nothing(base, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(base, workdir)
    truncate_array_file(workdir / CHECKPOINT_SUBDIR / "4")
    garble_json(workdir / CHECKPOINT_SUBDIR / "2" / "host" / "metadata")
    before = snapshot(workdir)

    with pytest.raises(DamagedCheckpointError) as info:
        train(workdir, TOTAL_STEPS)
    lines = str(info.value).splitlines()
    assert lines[0] == f"no checkpoint in {workdir / CHECKPOINT_SUBDIR} restores; each is damaged:"
    assert lines[1].startswith("  step 4: state item unreadable: ValueError: OUT_OF_RANGE")
    assert lines[2].startswith("  step 2: host item unreadable: JSONDecodeError")
    assert "Nothing was changed" in lines[3]
    assert snapshot(workdir) == before  # no record of damage, no metrics: nothing


def test_later_runs_never_delete_or_overwrite_the_damaged_step(tmp_path, caplog):
    state = lambda step: {"w": jnp.full((3,), float(step))}
    with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE) as ckpt:
        for step in (2, 4):
            ckpt.save(step, state(step), {"step": step})
    step_4 = tmp_path / CHECKPOINT_SUBDIR / "4"
    zero_file(step_4 / "state" / "_METADATA")
    damaged_files = snapshot(step_4)

    with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
        with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE) as ckpt:
            assert ckpt.restore_latest(LIKE)[0] == 2
            assert not ckpt.save(4, state(4), {"step": 4}, force=True)  # would overwrite step 4
            assert ckpt.save(6, state(6), {"step": 6})
            assert ckpt.save(8, state(8), {"step": 8})
        # Orbax's max_to_keep=2 would have kept 4 (damaged) and 8, then deleted 4 unseen.
        assert sorted(os.listdir(tmp_path / CHECKPOINT_SUBDIR)) == ["4", "6", "8", DAMAGED_STEPS_FILE]

        # A later process resumes from an intact step and never reads step 4: the record keeps it.
        with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE) as ckpt:
            step, restored, host = ckpt.restore_latest(LIKE)
            assert (step, host) == (8, {"step": 8})
            for step in (10, 12):
                ckpt.save(step, state(step), {"step": step})
    assert sorted(os.listdir(tmp_path / CHECKPOINT_SUBDIR)) == ["10", "12", "4", DAMAGED_STEPS_FILE]
    assert snapshot(step_4) == damaged_files
    assert "state item unreadable: JSONDecodeError" in json.loads(
        (tmp_path / CHECKPOINT_SUBDIR / DAMAGED_STEPS_FILE).read_text())["4"]
    assert any("step(s) [4]" in r.getMessage() and "never deleted" in r.getMessage()
               for r in damaged_warnings(caplog))

    # Deleting the damaged step, once inspected, ends the special treatment.
    shutil.rmtree(step_4)
    with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE):
        pass
    assert sorted(os.listdir(tmp_path / CHECKPOINT_SUBDIR)) == ["10", "12"]
