"""Random-access reading of prepared TFDS datasets, without TensorFlow.

Datasets are stored as array_record files and read through
`builder.as_data_source(split)`, whose examples are numpy values with text as
bytes. `ExampleSource` turns them into plain Python (str, int, list) so that
rewards, prompts and JSON logs can use them as they are.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import tensorflow_datasets as tfds

Example = dict[str, Any]


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset has no prepared files in the given data_dir."""


class OutputDirError(ValueError):
    """The output directory holds something this run must not resume, overwrite or read
    (another run's samples, files that are not a run, a damaged dataset); nothing was changed."""


def to_python(value: Any) -> Any:
    """numpy/bytes values of a TFDS example -> str, int, float, list, dict."""
    if isinstance(value, dict):
        return {key: to_python(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return to_python(value.tolist()) if value.ndim else to_python(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_python(item) for item in value]
    return value


class ExampleSource(Sequence):
    """Random-access examples as plain Python dicts, optionally transformed.

    Wraps a TFDS data source (anything with `__len__` and `__getitem__`, and
    optionally the faster batched `__getitems__`).
    """

    def __init__(self, data_source, transform: Callable[[Example], Example] | None = None):
        self._data_source = data_source
        self._transform = transform

    def __len__(self) -> int:
        return len(self._data_source)

    def _finish(self, raw) -> Example:
        example = to_python(raw)
        return self._transform(example) if self._transform else example

    def _check_index(self, index) -> int:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return index % len(self)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.__getitems__(range(*index.indices(len(self))))
        return self._finish(self._data_source[self._check_index(index)])

    def __getitems__(self, indices) -> list[Example]:
        indices = [self._check_index(i) for i in indices]
        if hasattr(self._data_source, "__getitems__"):
            raws = self._data_source.__getitems__(indices)
        else:
            raws = [self._data_source[i] for i in indices]
        return [self._finish(raw) for raw in raws]


def _split_names(split: str) -> list[str]:
    """'train[:10%]+test' -> ['train', 'test'] (TFDS split-slicing syntax)."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


def open_split(builder: tfds.core.DatasetBuilder, split: str, *, how_to_prepare: str,
                              transform: Callable[[Example], Example] | None = None) -> ExampleSource:
    """The examples of a prepared split, with clear errors when they are missing.

    Args:
        builder: a TFDS builder pointing at its data_dir.
        split: a split name, TFDS slicing allowed ('train[:1000]').
        how_to_prepare: what the user should do when the data is not there.
        transform: applied to each decoded example.
    """
    where = builder.name
    if builder.builder_config:
        where += f" (config {builder.builder_config.name})"
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"Dataset {where} is not prepared in {builder.data_dir} "
            f"(split {split!r} requested). {how_to_prepare}")
    known = list(builder.info.splits)
    missing = [name for name in _split_names(split) if name not in known]
    if missing:
        raise ValueError(
            f"Dataset {where} has no split {missing[0]!r} in {builder.data_dir}; "
            f"its splits are {known}. Pass one of them.")
    random_access = [f.value for f in tfds.core.FileFormat.with_random_access()]
    if builder.info.file_format.value not in random_access:
        raise ValueError(
            f"Dataset {where} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which has no random access. Prepare it again "
            f"with file_format='array_record' (one of {random_access}) in another data_dir.")
    return ExampleSource(builder.as_data_source(split), transform)
