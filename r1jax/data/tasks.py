"""`load_task`: the synthetic tasks by name, built on first use.

    train = load_task("countdown", "train", data_dir="/data/tfds")
    train[0]  # {'numbers': [85, 64, 51], 'target': 72, 'solution': '(85 - 64) + 51'}
    test = load_task("arithmetic", "test", data_dir="runs/data", config="ops1_max6_n78")  # a recipe's own
"""
from __future__ import annotations

import json
import pathlib

import tensorflow_datasets as tfds

from r1jax.data.arithmetic import Arithmetic, ArithmeticConfig
from r1jax.data.countdown import Countdown, CountdownConfig
from r1jax.data.sources import ExampleSource, open_split
from r1jax.data.synthetic import SyntheticConfig
from r1jax.distributed import primary_first

TASK_BUILDERS = {"countdown": Countdown, "arithmetic": Arithmetic}
TASK_CONFIGS = {"countdown": CountdownConfig, "arithmetic": ArithmeticConfig}


def _builder(name: str, config, data_dir) -> tfds.core.GeneratorBasedBuilder:
    if name not in TASK_BUILDERS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASK_BUILDERS)}.")
    builder_cls = TASK_BUILDERS[name]
    if config is not None and not isinstance(config, (str, SyntheticConfig)):
        raise TypeError(f"config must be a config name or a {TASK_CONFIGS[name].__name__}, "
                        f"got {type(config).__name__}.")
    return builder_cls(config=config, data_dir=data_dir, file_format="array_record")


def _check_same_generation(builder) -> None:
    """Data already on disk under this config name must come from the same params."""
    wanted = json.loads(json.dumps(builder.builder_config.generation_params()))
    # The builder's info was restored from disk, so its metadata is what was stored.
    stored = builder.info.metadata.get("generation")
    if stored != wanted:
        raise ValueError(
            f"{builder.data_dir} holds {builder.name}/{builder.builder_config.name} "
            f"generated with {stored}, not the requested {wanted}. Give the config "
            "another name, or delete that folder to generate it again.")


def _generated_earlier(name: str, config: str, data_dir) -> tfds.core.DatasetBuilder:
    """The builder of the data generated earlier in `data_dir` under a config name that is not built in:
    a run's own config (`ArithmeticConfig(name="ops1_max6_n78", ...)`), read back without its settings."""
    where = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR) / TASK_BUILDERS[name].name / config
    versions = sorted(where.glob("*/dataset_info.json"))
    if not versions:
        raise ValueError(
            f"Task {name!r} has no config {config!r}; its configs are "
            f"{list(TASK_BUILDERS[name].builder_configs)}, or pass a "
            f"{TASK_CONFIGS[name].__name__}(name=..., ...) of your own, or the name of one generated "
            f"earlier in the data dir (none in {where}; pass the data dir of the run that generated it).")
    return tfds.builder_from_directory(versions[-1].parent)


def load_task(name: str, split: str, *, data_dir, config=None) -> ExampleSource:
    """A random-access sequence of the examples of a synthetic task.

    The data is generated into `data_dir` the first time (no download) and
    read back from its array_record files afterwards.

    Args:
      name: 'countdown' or 'arithmetic'.
      split: 'train' or 'test' (TFDS slicing allowed: 'train[:1000]').
      data_dir: the TFDS data folder.
      config: a config name (default: the first of the builder's configs) or a
        `CountdownConfig` / `ArithmeticConfig` with its own name, sizes and seed. A name
        that is not built in reads what an earlier run generated in `data_dir` under that
        name (e.g. a recipe's "ops1_max6_n78"), as it is.

    Returns:
      Examples as dicts of plain Python values (str, int, list[int]).
    """
    if name in TASK_BUILDERS and isinstance(config, str) and config not in TASK_BUILDERS[name].builder_configs:
        builder = _generated_earlier(name, config, data_dir)
        return open_split(builder, split, how_to_prepare=f"Rerun the run that generated {builder.data_dir}.")

    def prepare():
        builder = _builder(name, config, data_dir)
        if builder.is_prepared():
            _check_same_generation(builder)
        else:
            builder.download_and_prepare(
                # The data is made here; never ask GCS for a prepared copy.
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        return builder

    # several hosts share the data dir: one generates, the others then read
    builder = primary_first(prepare, name=f"prepare {name}")
    return open_split(builder, split,
                      how_to_prepare=f"load_task({name!r}, ...) should have generated it.")
