"""Generated TFDS datasets on disk: generating one leaves no temporary folder."""
import os
import pathlib
import tempfile

import tensorflow_datasets as tfds

from r1jax import data
from r1jax.data.rejection import RejectionSampled, dataset_path

CONFIG = dict(name="tiny", num_numbers=3, train_size=300, test_size=60, seed=0)


def load(data_dir, split="train", config=None):
    return data.load_generated(data.Countdown, split, data_dir=data_dir,
                               config=data.CountdownConfig(**CONFIG) if config is None else config)


def _sft_dataset(output_dir, records):
    builder = RejectionSampled(records=records, fields={}, metadata={"counts": {"kept": len(records)}},
                               data_dir=output_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert pathlib.Path(builder.data_dir) == dataset_path(output_dir)


def test_generating_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """TFDS made a /tmp/tmp…tfds folder for every dataset it built from scratch and kept it."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    load(tmp_path / "data")
    data.load_generated(data.Arithmetic, "test", data_dir=tmp_path / "data",
                        config=data.ArithmeticConfig(name="tiny", train_size=20, test_size=10))
    _sft_dataset(tmp_path / "sft", [{"prompt": "p", "completion": "c", "example_index": 0, "sample_index": 0}])
    assert sorted(os.listdir(temporary)) == []
