"""Tests for r1jax.metrics: JSONL and TensorBoard files read back independently, resume
truncation, the progress bar, plots and the terminal table."""
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from r1jax import metrics as metrics_lib
from r1jax.metrics import MetricsLogger, plot_metrics, read_metrics, summary_table


def read_events(directory):
    """All events of every TFRecord file under `directory` (length, crc, data, crc framing)."""
    events = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12:offset + 12 + length])
            events.append(event)
            offset += 12 + length + 4
    return events


def scalars(events):
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def test_jsonl_tensorboard_and_progress_bar(tmp_path, capsys):
    with MetricsLogger(tmp_path, total_steps=10) as logger:
        logger.log(1, {"reward": 0.5, "accuracy": np.float32(0.25), "kl": jnp.asarray(0.125)})
        logger.log(2, {"reward": 0.75, "accuracy": 1, "loss": float("nan")})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0] == {"step": 1, "reward": 0.5, "accuracy": 0.25, "kl": 0.125}
    assert rows[1]["step"] == 2 and rows[1]["accuracy"] == 1.0 and math.isnan(rows[1]["loss"])
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]  # one object per line

    logged = scalars(read_events(tmp_path / "tensorboard"))
    assert logged[("reward", 1)] == 0.5 and logged[("accuracy", 1)] == 0.25 and logged[("kl", 1)] == 0.125
    assert logged[("reward", 2)] == 0.75 and math.isnan(logged[("loss", 2)])
    assert len(logged) == 6

    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "2/10" in bar and "reward=0.75" in bar and "accuracy=1" in bar and "kl" not in bar


def test_resume_truncates_jsonl_and_purges_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, total_steps=10, progress=False) as logger:
        for step in range(1, 6):
            logger.log(step, {"reward": step / 10})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "rew')  # torn line of a killed run

    with MetricsLogger(tmp_path, total_steps=10, progress=False) as logger:  # resumed from step 3
        logger.truncate_after(3)
        assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
        logger.log(4, {"reward": -1.0})
    assert [(row["step"], row["reward"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, -1.0)]

    events = read_events(tmp_path / "tensorboard")
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [4]  # TensorBoard hides the old run's events from step 4 on
    logged = scalars(events)
    assert logged[("reward", 4)] == -1.0 and logged[("reward", 3)] == pytest.approx(0.3)
    assert len([name for name in os.listdir(tmp_path / "tensorboard")]) == 2


def test_bad_lines_and_metrics_are_explained(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON object"):
        read_metrics(tmp_path / "metrics.jsonl")
    with MetricsLogger(tmp_path / "run", total_steps=3, progress=False, use_tensorboard=False) as logger:
        with pytest.raises(TypeError, match="'reward' at step 1 is not a scalar"):
            logger.log(1, {"reward": [1.0, 2.0]})
        with pytest.raises(ValueError, match="other than 'step'"):
            logger.log(1, {"step": 1.0})


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with MetricsLogger(tmp_path / "run", total_steps=3) as logger:
        logger.log(1, {"reward": 1.0})
        logger.truncate_after(0)
    assert not (tmp_path / "run").exists()


def test_plot_metrics_writes_a_grid_of_present_keys(tmp_path):
    import matplotlib.image
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": math.sin(s / 5), "accuracy": s / 50, "kl": 0.01 * s})
                            + "\n" for s in range(50)))
    out = tmp_path / "curves.png"
    plotted = plot_metrics(path, out, keys=("reward", "accuracy", "response_length", "kl"))
    assert plotted == ["reward", "accuracy", "kl"]
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600  # a 2x2 grid
    not_white = (image[..., :3] < 0.9).any(-1).mean()
    assert 0.01 < not_white < 0.5  # axes, labels and curves, not an empty canvas
    with pytest.raises(ValueError, match=r"it has \['accuracy', 'kl', 'reward'\]"):
        plot_metrics(path, tmp_path / "none.png", keys=("entropy",))


def test_summary_table_alignment():
    rows = [{"task": "gsm8k", "pass@1": 0.5, "n": 100},
            {"task": "countdown", "pass@1": 0.123456, "n": np.int64(7), "extra": "x"}]
    assert summary_table(rows) == "\n".join([
        "task       pass@1    n  extra",
        "---------  ------  ---  -----",
        "gsm8k         0.5  100  -",
        "countdown  0.1235    7  x",
    ])
    assert metrics_lib.summary_table([]) == ""


def test_curve_ends_average_the_first_and_last_steps_skipping_undefined_ones():
    from r1jax.metrics import curve_ends

    rows = [{"step": s, "response_length": float(s), "reflection_rate": float("nan") if s == 1 else 0.1 * s}
            for s in range(1, 9)]
    ends = curve_ends(list(reversed(rows)), ["response_length", "reflection_rate", "absent"], window=3)
    assert ends["response_length_first"] == pytest.approx((1 + 2 + 3) / 3)
    assert ends["response_length_last"] == pytest.approx((6 + 7 + 8) / 3)
    assert ends["reflection_rate_first"] == pytest.approx((0.2 + 0.3 + 0.4) / 3)  # step 1 was NaN
    assert "absent_first" not in ends
    short = curve_ends(rows[:2], ["response_length"], window=5)
    assert short["response_length_first"] == short["response_length_last"] == 1.5
    with pytest.raises(ValueError, match="window"):
        curve_ends(rows, ["response_length"], window=0)
