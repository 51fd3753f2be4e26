"""`load_generated`: a generated (synthetic) TFDS dataset, built on first use, read back after.

    train = load_generated(Countdown, "train", data_dir="/data/tfds")
    train[0]  # {'numbers': [85, 64, 51], 'target': 72, 'solution': '(85 - 64) + 51'}
    test = load_generated(Countdown, "test", data_dir="runs/data", config="n3_max50_t100_n5000")  # a run's own

Datasets are named by their builder class; the names users pick are the tasks' (`r1jax.tasks`).

A dataset on disk is checked whole each time it is opened (`prepared.check_dataset_files`): a
damaged one is refused with `DamagedDatasetError`, naming the file, before anything reads it.
It is not regenerated on its own: the folder may be shared by several hosts or runs that read
it, and a damaged file can be a disk's first sign of trouble; deleting the folder is the user's
call, and generating it again gives the same bytes.
"""
from __future__ import annotations

import json
import pathlib

import tensorflow_datasets as tfds

from r1jax.data.prepared import check_dataset_files
from r1jax.data.sources import ExampleSource, open_split
from r1jax.data.synthetic import SPLITS, SyntheticConfig, SyntheticTaskBuilder
from r1jax.distributed import primary_first


def _builder(builder_cls: type[SyntheticTaskBuilder], config, data_dir) -> tfds.core.GeneratorBasedBuilder:
    if config is not None and not isinstance(config, (str, SyntheticConfig)):
        raise TypeError(f"config must be a config name or a {builder_cls.BUILDER_CONFIGS[0].__class__.__name__}, "
                        f"got {type(config).__name__}.")
    return builder_cls(config=config, data_dir=data_dir, file_format="array_record")


def _version_dir(builder_cls: type[SyntheticTaskBuilder], config, data_dir) -> pathlib.Path:
    """Where TFDS keeps the dataset: `<data_dir>/<name>/<config>/<version>`."""
    if isinstance(config, SyntheticConfig):
        config = config.name
    config = config or builder_cls.DEFAULT_BUILDER_CONFIG_NAME or builder_cls.BUILDER_CONFIGS[0].name
    return (pathlib.Path(data_dir or tfds.core.constants.DATA_DIR) / builder_cls.name / config
            / str(builder_cls.VERSION))


def _check_if_there(version_dir: pathlib.Path, how_to_regenerate: str) -> None:
    """Check the dataset in `version_dir` if anything is there (TFDS renames a finished
    generation into place, so a folder with files holds a whole dataset or a damaged one)."""
    if version_dir.is_dir() and any(version_dir.iterdir()):
        check_dataset_files(version_dir, how_to_regenerate, splits=SPLITS)


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


def _generated_earlier(builder_cls, config: str, data_dir) -> tfds.core.DatasetBuilder:
    """The builder of the data generated earlier in `data_dir` under a config name that is not built in:
    a run's own config (`CountdownConfig(name="n3_max50_t100_n5000", ...)`), read back without its settings."""
    where = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR) / builder_cls.name / config
    versions = sorted(where.glob("*/dataset_info.json"))
    if not versions:
        raise ValueError(
            f"Dataset {builder_cls.name!r} has no config {config!r}; its configs are "
            f"{list(builder_cls.builder_configs)}, or pass a "
            f"{builder_cls.BUILDER_CONFIGS[0].__class__.__name__}(name=..., ...) of your own, or the name of one "
            f"generated earlier in the data dir (none in {where}; pass the data dir of the run that generated it).")
    check_dataset_files(versions[-1].parent, f"A run with its own settings generated it: delete "
                        f"{versions[-1].parent} and rerun that run to generate it again.", splits=SPLITS)
    return tfds.builder_from_directory(versions[-1].parent)


def load_generated(builder_cls: type[SyntheticTaskBuilder], split: str, *, data_dir, config=None) -> ExampleSource:
    """A random-access sequence of the examples of a generated dataset.

    The data is generated into `data_dir` the first time (no download) and
    read back from its array_record files afterwards.

    Args:
      builder_cls: its TFDS builder (a `SyntheticTaskBuilder`), e.g. `Countdown`.
      split: 'train' or 'test' (TFDS slicing allowed: 'train[:1000]').
      data_dir: the TFDS data folder.
      config: a config name (default: the first of the builder's configs) or a config of
        the builder's kind (e.g. `CountdownConfig`) with its own name, sizes and seed. A name
        that is not built in reads what an earlier run generated in `data_dir` under that
        name (a recipe's own config), as it is.

    Returns:
      Examples as dicts of plain Python values (str, int, list[int]).
    """
    if isinstance(config, str) and config not in builder_cls.builder_configs:
        builder = _generated_earlier(builder_cls, config, data_dir)
        return open_split(builder, split, how_to_prepare=f"Rerun the run that generated {builder.data_dir}.")

    def prepare():
        where = _version_dir(builder_cls, config, data_dir)
        _check_if_there(where, f"It is generated data: delete {where} and run again to generate it again.")
        builder = _builder(builder_cls, config, data_dir)
        if builder.is_prepared():
            _check_same_generation(builder)
        else:
            builder.download_and_prepare(
                # The data is made here; never ask GCS for a prepared copy.
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        return builder

    # several hosts share the data dir: one generates, the others then read
    builder = primary_first(prepare, name=f"prepare {builder_cls.name}")
    return open_split(builder, split,
                      how_to_prepare=f"load_generated({builder_cls.__name__}, ...) should have generated it.")
