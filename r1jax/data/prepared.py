"""Generated TFDS datasets on disk: built leaving nothing behind.

Our datasets are generated on this machine (the synthetic tasks, the rejection-sampled SFT
data), never downloaded. What TFDS does not do for them:

* A builder whose folder has no `dataset_info.json` yet asks GCS for a prepared copy of
  its info, and first makes a temporary folder for it (`/tmp/tmp…tfds`) that it never
  removes: one left behind per generation. `GeneratedDatasetInfo` skips the question.
"""
from __future__ import annotations

import tensorflow_datasets as tfds


class GeneratedDatasetInfo(tfds.core.DatasetInfo):
    """The DatasetInfo of a dataset generated here: there is no prepared copy to fetch."""

    def initialize_from_bucket(self) -> None:
        # TFDS makes a temporary folder here before looking, and never removes it.
        return None
