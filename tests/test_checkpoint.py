"""Tests for r1jax.checkpoint: round trips, retention, crash safety, the model guard,
preemption and restoring onto another device layout (the last three in subprocesses)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.checkpoint import (CHECKPOINT_SUBDIR, Checkpointer, IncompatibleCheckpointError, Preemption,
                              install_sigterm_handler, model_signature)
from r1jax.models.config import ModelConfig
from tests.support.files import snapshot

SIGNATURE = {"config": {"num_layers": 2, "hidden_size": 8}, "param_shapes": {"w": [[2, 3], "float32"]}}


def make_state(seed):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)},
        "opt_state": (jnp.asarray(rng.integers(0, 100, size=(4,)), jnp.int32), jnp.float32(seed)),
        "rng": jax.random.key(seed),
    }


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_bit_exact(restored, expected):
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(unwrap(got)).reshape(-1).view(np.uint8),
                                      np.asarray(unwrap(want)).reshape(-1).view(np.uint8))


def run_python(code, *, devices=1, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- in-process


def test_round_trip_every_and_keep(tmp_path):
    host = {"data_position": 17, "history": [{"reward": 0.5}, {"reward": None}], "name": "r1-zero"}
    with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE) as ckpt:
        assert ckpt.restore_latest(abstract(make_state(0))) is None
        started = [s for s in range(1, 8) if ckpt.save(s, make_state(s), dict(host, step=s))]
        ckpt.wait()
        assert started == [2, 4, 6]
        assert ckpt.all_steps == [4, 6]
        assert sorted(os.listdir(tmp_path / CHECKPOINT_SUBDIR)) == ["4", "6"]

    # A fresh Checkpointer, as after a restart, sees the same latest step.
    with Checkpointer(tmp_path, save_every=2, keep=2, model_signature=SIGNATURE) as ckpt:
        step, state, restored_host = ckpt.restore_latest(abstract(make_state(0)))
        assert step == 6
        assert restored_host == dict(host, step=6)
        assert_bit_exact(state, make_state(6))


def test_force_save_off_schedule_and_resave_is_noop(tmp_path):
    with Checkpointer(tmp_path, save_every=100, keep=3, model_signature=SIGNATURE) as ckpt:
        assert not ckpt.save(7, make_state(7), {"step": 7})
        assert ckpt.save(7, make_state(7), {"step": 7}, force=True)
        assert ckpt.all_steps == [7]  # a forced save is on disk when it returns
        assert not ckpt.save(7, make_state(8), {"step": 8}, force=True)
        step, state, host = ckpt.restore_latest(abstract(make_state(0)))
    assert (step, host) == (7, {"step": 7})
    assert_bit_exact(state, make_state(7))


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer(tmp_path, save_every=0, model_signature=SIGNATURE)
    with pytest.raises(TypeError, match="model_signature must be JSON"):
        Checkpointer(tmp_path, save_every=1, model_signature={"shape": np.zeros(2)})
    with Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE) as ckpt:
        with pytest.raises(TypeError, match="host_state must be JSON"):
            ckpt.save(1, make_state(1), {"position": object()})


def test_incompatible_model_is_refused_and_workdir_untouched(tmp_path):
    with Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE) as ckpt:
        ckpt.save(1, make_state(1), {"step": 1})
        ckpt.save(2, make_state(2), {"step": 2})
    # Leftover of a save killed mid-write: the writable manager would delete it.
    stale_tmp = tmp_path / CHECKPOINT_SUBDIR / "3.orbax-checkpoint-tmp"
    stale_tmp.mkdir()
    (stale_tmp / "partial").write_bytes(b"x")
    before = snapshot(tmp_path)

    other = {"config": {"num_layers": 4, "hidden_size": 8},
             "param_shapes": {"w": [[2, 3], "float32"], "v": [[1], "float32"]}}
    with pytest.raises(IncompatibleCheckpointError) as info:
        Checkpointer(tmp_path, save_every=1, model_signature=other)
    message = str(info.value)
    assert "config.num_layers: 2 vs 4" in message
    assert "param_shapes.v: (absent) vs [[1], 'float32']" in message
    assert "hidden_size" not in message  # equal fields are not listed
    assert str(tmp_path) in message and "new workdir" in message and "delete" in message
    assert snapshot(tmp_path) == before


def test_checkpoint_without_signature_is_refused(tmp_path):
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(tmp_path / CHECKPOINT_SUBDIR) as manager:
        manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.ones(2)})))
    before = snapshot(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="no readable model signature"):
        Checkpointer(tmp_path, save_every=1, model_signature=SIGNATURE)
    assert snapshot(tmp_path) == before


def test_model_signature_from_config_and_params():
    cfg = ModelConfig(vocab_size=11, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1)
    params = {"embed": jax.ShapeDtypeStruct((11, 8), jnp.float32), "layers": [jnp.zeros((8, 16), jnp.bfloat16)]}
    signature = model_signature(cfg, params, ignore=("remat",))
    assert signature["config"]["num_kv_heads"] == 1 and signature["config"]["head_dim"] == 4
    assert "remat" not in signature["config"]
    assert signature["param_shapes"] == {"embed": [[11, 8], "float32"], "layers/0": [[8, 16], "bfloat16"]}
    with pytest.raises(TypeError, match="dataclass or a dict"):
        model_signature(42)


def test_preemption_flag_from_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert not preemption.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not preemption.should_stop(2) and time.time() < deadline:
            time.sleep(0.01)  # Python runs signal handlers between bytecodes of the main thread
        assert preemption.preempted and preemption.should_stop(3)  # it stays stopped
    assert signal.getsignal(signal.SIGTERM) is previous
    handler = install_sigterm_handler()
    try:
        assert signal.getsignal(signal.SIGTERM) == handler._on_sigterm
    finally:
        handler.uninstall()


# ---------------------------------------------------------------- subprocesses


def test_incomplete_checkpoint_from_killed_process_is_ignored(tmp_path):
    # The child completes step 2, then is SIGKILLed inside the step-4 save right
    # where Orbax would rename `4.orbax-checkpoint-tmp` to `4`.
    result = run_python(f"""
        import os, signal
        import jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from r1jax.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r}, save_every=2, model_signature={SIGNATURE!r})
        ckpt.save(2, {{"w": jnp.full((3,), 2.0)}}, {{"step": 2}}, force=True)
        async def killed_before_rename(self):
            os.kill(os.getpid(), signal.SIGKILL)
        atomicity.AtomicRenameTemporaryPath.finalize = killed_before_rename
        ckpt.save(4, {{"w": jnp.full((3,), 4.0)}}, {{"step": 4}}, force=True)
        print("not reached")
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "not reached" not in result.stdout
    directory = tmp_path / CHECKPOINT_SUBDIR
    assert sorted(os.listdir(directory)) == ["2", "4.orbax-checkpoint-tmp"]
    assert os.listdir(directory / "4.orbax-checkpoint-tmp")  # data was written, not committed

    like = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
    with Checkpointer(tmp_path, save_every=2, model_signature=SIGNATURE) as ckpt:
        step, state, host = ckpt.restore_latest(like)
        assert (step, host) == (2, {"step": 2})
        np.testing.assert_array_equal(state["w"], np.full((3,), 2.0, np.float32))
        assert ckpt.save(4, {"w": jnp.full((3,), 5.0)}, {"step": 4})  # the step can be saved again
        step, state, host = ckpt.restore_latest(like)
    assert (step, host) == (4, {"step": 4})
    np.testing.assert_array_equal(state["w"], np.full((3,), 5.0, np.float32))
    assert sorted(os.listdir(directory)) == ["2", "4"]


def test_sigterm_mid_run_leaves_checkpoint_at_current_step(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        import jax.numpy as jnp
        from r1jax.checkpoint import Checkpointer, Preemption
        state = {{"w": jnp.zeros((4,))}}
        with Checkpointer({str(tmp_path)!r}, save_every=1000, model_signature={SIGNATURE!r}) as ckpt, \\
                Preemption() as preemption:
            for step in range(1, 100000):
                state = {{"w": state["w"] + 1.0}}
                time.sleep(0.02)
                print("step", step, flush=True)
                ckpt.save(step, state, {{"step": step}})
                if preemption.should_stop(step):
                    ckpt.save(step, state, {{"step": step}}, force=True)
                    print("saved", step, flush=True)
                    break
    """)], env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.strip() == "step 3":
                child.send_signal(signal.SIGTERM)
                break
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    saved_step = int(out.strip().splitlines()[-1].split()[-1])
    assert out.strip().splitlines()[-1] == f"saved {saved_step}" and saved_step >= 3

    like = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
    with Checkpointer(tmp_path, save_every=1000, model_signature=SIGNATURE) as ckpt:
        assert ckpt.all_steps == [saved_step]
        step, state, host = ckpt.restore_latest(like)
    assert (step, host) == (saved_step, {"step": saved_step})
    np.testing.assert_array_equal(state["w"], np.full((4,), float(saved_step), np.float32))


def test_restore_onto_other_device_layouts(tmp_path):
    # In a 4-device child: save from one device and restore sharded over a mesh, and
    # save sharded for this (1-device) process to restore.
    one_device, sharded = tmp_path / "one_device", tmp_path / "sharded"
    result = run_python(f"""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
        from r1jax.checkpoint import Checkpointer
        assert jax.device_count() == 4
        mesh = jax.make_mesh((2, 2), ("data", "tensor"))
        value = np.arange(32, dtype=np.float32).reshape(8, 4)

        with Checkpointer({str(one_device)!r}, save_every=1, model_signature={SIGNATURE!r}) as ckpt:
            ckpt.save(1, {{"w": jax.device_put(value, SingleDeviceSharding(jax.devices()[0]))}}, {{}})
        target = NamedSharding(mesh, P("data", "tensor"))
        with Checkpointer({str(one_device)!r}, save_every=1, model_signature={SIGNATURE!r}) as ckpt:
            step, state, _ = ckpt.restore_latest({{"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=target)}})
        assert state["w"].sharding == target, state["w"].sharding
        assert len(state["w"].addressable_shards) == 4
        assert state["w"].addressable_shards[0].data.shape == (4, 2)
        np.testing.assert_array_equal(np.asarray(state["w"]), value)

        with Checkpointer({str(sharded)!r}, save_every=1, model_signature={SIGNATURE!r}) as ckpt:
            ckpt.save(3, {{"w": jax.device_put(value * 2, NamedSharding(mesh, P(None, "tensor")))}}, {{"mesh": [2, 2]}})
        print("ok")
    """, devices=4)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]

    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with Checkpointer(sharded, save_every=1, model_signature=SIGNATURE) as ckpt:
        step, state, host = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=single)})
    assert (step, host) == (3, {"mesh": [2, 2]})
    assert state["w"].sharding == single
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32, dtype=np.float32).reshape(8, 4) * 2)
