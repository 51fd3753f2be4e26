"""The stages besides GRPO on two processes compute what one computes; `r1jax.distributed`'s helpers.

The main job on two processes (and killed, preempted, relaunched) is in tests/pipelines/test_r1_zero.py.
Here tests/support/multihost_sft.py runs packed SFT, its held-out loss, a sampled evaluation,
rejection sampling, reward-model training and scoring as 1 process x 4 fake devices and as
2 processes x 2 (tests/support/launch.py), with data that packs into more rows on one host than
on the other and a different number of texts to score on each.
"""
import json

import jax
import numpy as np
import pytest

from r1jax import distributed
from r1jax.sharding import make_global_batch, make_mesh
from tests.support.launch import launch, wait


@pytest.mark.slow  # 100 s on 2 cores; GRPO on two processes stays in the default suite (tests of r1_zero)
def test_sft_evaluation_rejection_and_reward_model_on_two_processes(tmp_path):
    runs = {}
    for name, processes, devices in (("one", 1, 4), ("two", 2, 2)):
        (tmp_path / name).mkdir()
        runs[name] = launch("tests.support.multihost_sft", [f"--out={tmp_path / name}"], processes=processes,
                            devices=devices, log_dir=tmp_path, name=name)
    for run in runs.values():
        wait(run)
    one, two = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two"))
    rows = two["rows_per_process"]
    assert rows[0] > rows[1], f"the long pairs should fill more rows: {rows}"
    assert two["eval"] == pytest.approx(one["eval"], rel=1e-5)
    assert two["sampled"] == one["sampled"]
    assert two["rejection"] == one["rejection"] and one["rejection"]["records"]
    # the scores of the reward model each run trained: equal training and equal scoring
    np.testing.assert_allclose(two["scores"], one["scores"], rtol=1e-5, atol=1e-6)
    params, want = dict(np.load(tmp_path / "two" / "params.npz")), dict(np.load(tmp_path / "one" / "params.npz"))
    worst = max(float(np.abs(params[k] - want[k]).max()) for k in want)
    assert worst <= 1e-5, f"parameters differ by up to {worst:.1e}"
    print(f"packed rows per process {rows}; eval loss {two['eval']['eval_loss']} vs {one['eval']['eval_loss']}; "
          f"parameters differ by up to {worst:.1e}")


def test_helpers_on_one_process_are_the_identity():
    assert distributed.allgather_objects({"a": [1, "x"]}) == [{"a": [1, "x"]}]
    assert distributed.primary_value(3) == 3 and distributed.is_primary()
    assert distributed.process_share(5) == slice(0, 5)
    assert distributed.primary_first(lambda: "done") == "done"
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    rows = np.arange(12).reshape(6, 2)
    np.testing.assert_array_equal(distributed.local_rows(make_global_batch(rows, mesh)), rows)
    tree = {"w": np.ones(3)}
    assert distributed.host_copy(tree) is not None and np.all(distributed.host_copy(tree)["w"] == 1)
