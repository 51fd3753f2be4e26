"""Generated TFDS datasets on disk: a damaged one is refused when opened, naming the file and
how to make it again, with nothing changed; generating one leaves no temporary folder."""
import json
import os
import pathlib
import re
import shutil
import tempfile

import pytest
import tensorflow_datasets as tfds

from r1jax import data
from r1jax.data import DamagedDatasetError
from r1jax.data.rejection import RejectionSampled, dataset_path, load_sft_dataset
from r1jax.data.sources import OutputDirError

CONFIG = dict(name="tiny", num_numbers=3, train_size=300, test_size=60, seed=0)
VERSION_DIR = pathlib.Path("countdown", "tiny", "1.0.0")
TRAIN = VERSION_DIR / "countdown-train.array_record-00000-of-00001"
INFO = VERSION_DIR / "dataset_info.json"


def load(data_dir, split="train", config=None):
    return data.load_generated(data.Countdown, split, data_dir=data_dir,
                               config=data.CountdownConfig(**CONFIG) if config is None else config)


def snapshot(directory):
    """Every file under `directory` with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A whole tiny countdown dataset (300 train, 60 test examples), generated once."""
    data_dir = tmp_path_factory.mktemp("generated")
    assert len(load(data_dir)) == 300
    return data_dir


@pytest.fixture
def data_dir(tmp_path, generated):
    copy = tmp_path / "data"
    shutil.copytree(generated, copy)
    return copy


def _rewrite_json(path, change):
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


# Each damage, and the file the refusal must name.
DAMAGES = {
    "garbage shard": (lambda d: (d / TRAIN).write_bytes(os.urandom((d / TRAIN).stat().st_size)), TRAIN),
    "empty shard": (lambda d: (d / TRAIN).write_bytes(b""), TRAIN),
    "missing shard": (lambda d: (d / TRAIN).unlink(), TRAIN),
    # the file TFDS wrote is two 64 KiB blocks: its first half still opens, with no index
    "half-truncated shard": (lambda d: os.truncate(d / TRAIN, (d / TRAIN).stat().st_size // 2), TRAIN),
    "shard cut to 100000 bytes": (lambda d: os.truncate(d / TRAIN, 100_000), TRAIN),
    "a chunk overwritten": (lambda d: _overwrite(d / TRAIN, 5000, b"\x00" * 2000), TRAIN),
    "garbage dataset_info.json": (lambda d: (d / INFO).write_text("{not json"), INFO),
    "empty dataset_info.json": (lambda d: (d / INFO).write_text(""), INFO),
    "missing dataset_info.json": (lambda d: (d / INFO).unlink(), INFO),
    "dataset_info.json without splits": (lambda d: _rewrite_json(d / INFO, lambda i: i.update(splits=[])), INFO),
    "dataset_info.json with a wrong count": (
        lambda d: _rewrite_json(d / INFO, lambda i: i["splits"][0].update(shardLengths=["400"])), TRAIN),
    "garbage metadata.json": (lambda d: (d / VERSION_DIR / "metadata.json").write_text("]"),
                              VERSION_DIR / "metadata.json"),
}


def _overwrite(path, offset, data_bytes):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data_bytes)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_dataset_is_refused_naming_the_file_and_nothing_changes(data_dir, damage):
    make_damage, named = DAMAGES[damage]
    make_damage(data_dir)
    before = snapshot(data_dir)
    with pytest.raises(DamagedDatasetError) as refusal:
        load(data_dir)
    message = str(refusal.value)
    assert str(data_dir / named) in message
    assert f"delete {data_dir / VERSION_DIR} and run again to generate it again" in message
    assert snapshot(data_dir) == before
    # the command line shows it as a user error (OutputDirError), without a traceback
    assert isinstance(refusal.value, OutputDirError)


def test_deleting_the_damaged_folder_generates_the_same_data_again(data_dir):
    whole = load(data_dir)[:]
    DAMAGES["half-truncated shard"][0](data_dir)
    with pytest.raises(DamagedDatasetError):
        load(data_dir)
    shutil.rmtree(data_dir / VERSION_DIR)
    assert load(data_dir)[:] == whole


def test_a_dataset_of_an_earlier_run_is_checked_too(data_dir):
    assert len(load(data_dir, "test", config="tiny")) == 60  # read back by name, without settings
    DAMAGES["garbage shard"][0](data_dir)
    with pytest.raises(DamagedDatasetError, match=re.escape(str(data_dir / TRAIN)) + ".*rerun that run"):
        load(data_dir, "test", config="tiny")


def _sft_dataset(output_dir, records):
    builder = RejectionSampled(records=records, fields={}, metadata={"counts": {"kept": len(records)}},
                               data_dir=output_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert pathlib.Path(builder.data_dir) == dataset_path(output_dir)


def test_a_damaged_rejection_sampled_dataset_is_refused(tmp_path):
    records = [{"prompt": f"p{i}", "completion": f"c{i}", "example_index": i, "sample_index": 0} for i in range(5)]
    _sft_dataset(tmp_path, records)
    assert [record["prompt"] for record in load_sft_dataset(tmp_path)] == [f"p{i}" for i in range(5)]
    shard = dataset_path(tmp_path) / "rejection_sampled-train.array_record-00000-of-00001"
    shard.write_bytes(b"")
    before = snapshot(tmp_path)
    with pytest.raises(DamagedDatasetError, match=re.escape(f"{shard} is empty") + ".*assemble_dataset"):
        load_sft_dataset(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_rejection_sampled_dataset_without_splits_is_whole(tmp_path):
    _sft_dataset(tmp_path, [])
    assert load_sft_dataset(tmp_path) == []


def _math_copy(manual):
    (manual / "test.jsonl").parent.mkdir(parents=True)
    (manual / "test.jsonl").write_text(json.dumps({"problem": "1 + 1?", "solution": "$\\boxed{2}$"}) + "\n")
    return manual


def test_a_damaged_math_build_is_refused(tmp_path):
    manual = _math_copy(tmp_path / "manual")
    assert [example["answer"] for example in data.load_math("test", data_dir=tmp_path, manual_dir=manual)] == ["2"]
    version_dir = tmp_path / "hendrycks_math" / "1.0.0"
    (version_dir / "dataset_info.json").write_text("garbage")
    before = snapshot(tmp_path)
    with pytest.raises(DamagedDatasetError, match=re.escape(f"{version_dir / 'dataset_info.json'} is not readable")
                       + ".*manual_dir"):
        data.load_math("test", data_dir=tmp_path, manual_dir=manual)
    assert snapshot(tmp_path) == before


def test_generating_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """TFDS made a /tmp/tmp…tfds folder for every dataset it built from scratch and kept it
    (countdown, arithmetic, the rejection-sampled SFT data, MATH from a local copy)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    load(tmp_path / "data")
    data.load_generated(data.Arithmetic, "test", data_dir=tmp_path / "data",
                        config=data.ArithmeticConfig(name="tiny", train_size=20, test_size=10))
    _sft_dataset(tmp_path / "sft", [{"prompt": "p", "completion": "c", "example_index": 0, "sample_index": 0}])
    data.load_math("test", data_dir=tmp_path / "data", manual_dir=_math_copy(tmp_path / "manual"))
    assert sorted(os.listdir(temporary)) == []
