"""Generated TFDS datasets on disk: built leaving nothing behind, checked whole when opened.

Our datasets are generated on this machine (the synthetic tasks, the rejection-sampled SFT
data), never downloaded. Two things TFDS does not do for them:

* A builder whose folder has no `dataset_info.json` yet asks GCS for a prepared copy of
  its info, and first makes a temporary folder for it (`/tmp/tmp…tfds`) that it never
  removes: one left behind per generation. `GeneratedDatasetInfo` skips the question.
* A damaged folder (a shard garbage, empty, missing or cut short; `dataset_info.json`
  unreadable) surfaces as a riegeli or protobuf traceback, perhaps only when a record is
  first read, at GRPO step 1. `check_dataset_files` reads the folder once when it is
  opened and raises `DamagedDatasetError` naming the file and how to generate it again.
"""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader

from r1jax.data.sources import OutputDirError


class GeneratedDatasetInfo(tfds.core.DatasetInfo):
    """The DatasetInfo of a dataset generated here: there is no prepared copy to fetch."""

    def initialize_from_bucket(self) -> None:
        # TFDS makes a temporary folder here before looking, and never removes it.
        return None


class DamagedDatasetError(OutputDirError):
    """A prepared dataset's files are damaged; the message names the file and how to make it
    again. Nothing was changed. (An `OutputDirError`: the folder holds something no run may use.)"""


# Written by every TFDS generation; dataset_info.json lists the splits and their shards.
_INFO_FILES = ("dataset_info.json", "features.json")
_READ_BATCH = 4096  # records read at a time when checking a shard


def check_dataset_files(version_dir, how_to_regenerate: str, *, splits: Sequence[str] = ()) -> None:
    """Raise `DamagedDatasetError` unless the prepared TFDS dataset in `version_dir` is whole.

    Whole: its JSON files parse, `dataset_info.json` lists its splits with their shard
    lengths, and every array_record shard it names exists, is not empty, holds as many
    records as listed, and reads to its last record (riegeli checks each chunk's hash, so
    garbage and cut-short files fail). Reading every record costs about 10 µs a record
    (0.1 s for a 10,000-example split), little beside what a run then does with them.

    version_dir: the folder holding dataset_info.json (`<data_dir>/<name>/<config>/<version>`).
    how_to_regenerate: what the user should do, ending the message ("Delete … to generate it again.").
    splits: the splits its builder always writes; dataset_info.json must list them.
    """
    version_dir = pathlib.Path(version_dir)

    def damaged(path, what) -> DamagedDatasetError:
        return DamagedDatasetError(f"The dataset in {version_dir} is damaged: {path} {what}. {how_to_regenerate}")

    infos = {}
    for name in _INFO_FILES + tuple(sorted({p.name for p in version_dir.glob("*.json")} - set(_INFO_FILES))):
        path = version_dir / name
        if not path.is_file():
            raise damaged(path, "is missing")
        try:
            infos[name] = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise damaged(path, f"is not readable JSON ({error})") from None
    info_path = version_dir / "dataset_info.json"
    info = infos["dataset_info.json"]
    listed = info.get("splits", []) if isinstance(info, dict) else None  # no key: no splits
    if not isinstance(listed, list) or not all(
            isinstance(split, dict) and isinstance(split.get("name"), str) and split["name"]
            and isinstance(split.get("shardLengths", []), list) for split in listed):
        raise damaged(info_path, "does not list the splits with their shards")
    missing = sorted(set(splits) - {split["name"] for split in listed})
    if missing:
        raise damaged(info_path, f"lists no split {missing[0]!r}")
    if info.get("fileFormat", "array_record") != "array_record":
        return  # not ours to read: open_split says what to do with it
    for split in listed:
        try:
            lengths = [int(length) for length in split.get("shardLengths", [])]
        except (TypeError, ValueError):
            raise damaged(info_path, f"gives split {split['name']!r} shard lengths that are not numbers") from None
        template = tfds.core.ShardedFileTemplate(
            data_dir=version_dir, template=split.get("filepathTemplate") or tfds.core.naming.DEFAULT_FILENAME_TEMPLATE,
            dataset_name=info.get("name"), split=split["name"], filetype_suffix="array_record")
        for path, length in zip(template.sharded_filepaths(len(lengths)), lengths):
            _check_shard(pathlib.Path(path), length, damaged)


def _check_shard(path: pathlib.Path, length: int, damaged) -> None:
    if not path.is_file():
        raise damaged(path, "is missing")
    if path.stat().st_size == 0:
        raise damaged(path, "is empty")
    try:
        reader = ArrayRecordReader(str(path))
        try:
            count = reader.num_records() if reader.ok() else None
            for start in range(0, length if count == length else 0, _READ_BATCH):
                reader.read(start, min(start + _READ_BATCH, length))
        finally:
            reader.close()  # a reader that failed raises its reason here
    except RuntimeError as error:  # riegeli's: not an array_record file, cut short, a chunk's hash wrong
        reason = _first_line(error)
        raise damaged(path, "is not a whole array_record file" + (f" ({reason})" if reason else "")) from None
    if count is None:
        raise damaged(path, "is not a whole array_record file")
    if count != length:
        raise damaged(path, f"holds {count} records where dataset_info.json lists {length}")


def _first_line(error: Exception) -> str:
    return str(error).split(";")[0].strip()
