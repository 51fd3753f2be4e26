"""Training metrics on the host: a JSONL log, TensorBoard events, a progress bar, plots.

    logger = MetricsLogger(workdir, total_steps=config.total_steps)
    logger.truncate_after(restored_step)     # on resume: drop steps the checkpoint has not seen
    for step in ...:
        logger.log(step, {"reward": 0.41, "accuracy": 0.3, "kl": 1e-3})
    logger.close()
    plot_metrics(f"{workdir}/metrics.jsonl", f"{workdir}/curves.png")

`workdir/metrics.jsonl` holds one JSON object per line, `{"step": s, **metrics}`, and is
appended to, so a resumed run continues the same file. Non-finite values are written
as `NaN`/`Infinity`, which Python's `json` and pandas read back.

Multi-host: only process 0 writes (`jax.process_index() == 0`); on other processes
every method is a no-op, so the loop calls them unconditionally.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import os
from typing import Iterable, Mapping, Sequence

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
PROGRESS_KEYS = ("loss", "reward", "accuracy", "response_length", "kl")
PLOT_KEYS = ("reward", "accuracy", "response_length", "reflection_rate", "kl")
_WRITER_IDS = itertools.count()


class MetricsLogger:
    """Writes per-step scalars to `workdir/metrics.jsonl`, TensorBoard and a tqdm bar.

    `progress_keys` are the metrics shown live in the bar's postfix (those present).
    """

    def __init__(self, workdir: str | os.PathLike, *, total_steps: int, use_tensorboard: bool = True,
                 progress: bool = True, progress_keys: Sequence[str] = PROGRESS_KEYS):
        import jax  # only for process_index; keeps `plot_metrics` usable without jax

        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        self.total_steps = total_steps
        self.use_tensorboard = use_tensorboard
        self.progress = progress
        self.progress_keys = tuple(progress_keys)
        self.is_writer = jax.process_index() == 0
        self._file = None
        self._tensorboard = None
        self._bar = None
        self._purge_step = None
        if self.is_writer:
            os.makedirs(self.workdir, exist_ok=True)

    def log(self, step: int, metrics: Mapping[str, float]):
        """Records `metrics` (scalars: Python, numpy or 0-d jax arrays) for `step`."""
        if not self.is_writer:
            return
        step = int(step)
        scalars = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or key == "step":
                raise ValueError(f"metric names must be strings other than 'step', got {key!r}")
            try:
                scalars[key] = float(value)
            except (TypeError, ValueError) as error:
                raise TypeError(f"metric {key!r} at step {step} is not a scalar: {value!r}") from error

        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()  # a killed run keeps every logged step

        if self.use_tensorboard:
            if self._tensorboard is None:
                from tensorboardX import SummaryWriter
                # tensorboardX names files by the second and opens them with "wb": the
                # suffix keeps a writer reopened within that second from erasing the last.
                self._tensorboard = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_SUBDIR),
                                                  purge_step=self._purge_step,
                                                  filename_suffix=f".{os.getpid()}.{next(_WRITER_IDS)}")
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, step)

        if self.progress:
            if self._bar is None:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=self.total_steps, initial=step - 1 if step > 0 else 0,
                                 dynamic_ncols=True, unit="step")
            self._bar.set_postfix({k: f"{scalars[k]:.4g}" for k in self.progress_keys if k in scalars},
                                  refresh=False)
            self._bar.update(step - self._bar.n)

    def truncate_after(self, step: int):
        """Drops JSONL lines with step > `step` and tells TensorBoard to hide them.

        Call once on resume from a checkpoint at `step`, before the first `log`, so the
        log matches the restored state rather than the steps the killed run got past.
        """
        if not self.is_writer:
            return
        self.close()
        step = int(step)
        if os.path.exists(self.path):
            kept = [row for row in read_metrics(self.path) if row["step"] <= step]
            temporary = self.path + ".tmp"
            with open(temporary, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in kept)
            os.replace(temporary, self.path)  # a kill mid-rewrite leaves the old file whole
        # TensorBoard cannot delete events; purge_step makes it discard steps >= this one.
        self._purge_step = step + 1

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """The JSONL log as a list of dicts, in file order.

    A torn last line (the process was killed mid-write) is skipped; a bad line
    elsewhere is an error.
    """
    with open(jsonl_path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{jsonl_path}:{number} is not a JSON object ({error}); fix or delete "
                             "that line") from error
    return rows


def curve_ends(rows: Sequence[Mapping[str, object]], keys: Iterable[str], *, window: int) -> dict[str, float]:
    """`{key}_first` and `{key}_last`: the mean of each key over its first and its last `window` logged
    values (all of them when there are fewer: then both ends are the same mean), for a script to read
    where a curve started and ended without the noise of one step. Keys never logged are left out;
    non-finite values (a step where the measure was undefined) are skipped."""
    if window < 1:
        raise ValueError(f"window={window}: the number of steps to average at each end, at least 1")
    ends = {}
    for key in keys:
        values = [float(row[key]) for row in sorted(rows, key=lambda row: row["step"])
                  if _is_number(row.get(key)) and math.isfinite(row[key])]
        if values:
            ends[f"{key}_first"] = sum(values[:window]) / len(values[:window])
            ends[f"{key}_last"] = sum(values[-window:]) / len(values[-window:])
    return ends


def plot_metrics(jsonl_path: str | os.PathLike, out_png: str | os.PathLike,
                 keys: Iterable[str] = PLOT_KEYS) -> list[str]:
    """Saves a grid of per-step curves, one panel per key found in the log.

    Keys absent from the log are skipped; returns the keys plotted. Raises ValueError
    when none of `keys` is in the log, naming the keys that are.
    """
    # a bare Figure draws without a display and leaves pyplot's backend (e.g. a notebook's) alone
    from matplotlib.figure import Figure

    rows = read_metrics(jsonl_path)
    available = sorted({k for row in rows for k in row} - {"step"})
    keys = [k for k in keys if k in available]
    if not keys:
        raise ValueError(f"none of the requested keys are in {jsonl_path}; it has {available}")
    columns = min(2, len(keys))
    grid_rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(5.5 * columns, 3.5 * grid_rows))
    axes = figure.subplots(grid_rows, columns, squeeze=False)
    for axis, key in zip(axes.flat, keys):
        points = sorted((row["step"], row[key]) for row in rows if key in row)
        axis.plot([s for s, _ in points], [v for _, v in points], linewidth=1.2)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(out_png, dpi=100)
    return keys


def summary_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A plain-text table: one column per key (in order of first appearance).

    Numbers are right-aligned (floats to 4 significant digits), text left-aligned,
    missing cells shown as "-".
    """
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format_cell(row.get(column)) for column in columns] for row in rows]
    numeric = [all(_is_number(row.get(column)) or row.get(column) is None for row in rows)
               for column in columns]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def render(values):
        return "  ".join(v.rjust(w) if is_number else v.ljust(w)
                         for v, w, is_number in zip(values, widths, numeric)).rstrip()

    return "\n".join([render(columns), render(["-" * w for w in widths])] + [render(line) for line in cells])


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format_cell(value) -> str:
    if value is None:
        return "-"
    if not _is_number(value):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.4g}"
