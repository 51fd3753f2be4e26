"""The TFDS builder behind the synthetic verifiable tasks (countdown, arithmetic).

Their data is generated on the machine from a seed, with no download: the same
config gives byte-identical array_record files. A task subclasses
`SyntheticTaskBuilder` with its features, a sampler and a key naming a problem;
problems are drawn without repeats, the test split first, so that the test
set does not change when `train_size` does and never overlaps the train set.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Hashable

import numpy as np
import tensorflow_datasets as tfds

from r1jax.data.prepared import GeneratedDatasetInfo

Example = dict[str, Any]
SPLITS = ("train", "test")  # what every synthetic task writes

# Problem spaces much smaller than the requested sizes would make the
# without-repeats sampling spin; past this many draws per example we give up.
_MAX_DRAWS_PER_EXAMPLE = 50


@dataclasses.dataclass(eq=False)  # like BuilderConfig: compared by identity, hashable
class SyntheticConfig(tfds.core.BuilderConfig):
    """Sizes and seed shared by the synthetic tasks; tasks add difficulty fields."""

    seed: int = 0
    train_size: int = 10_000
    test_size: int = 500

    def generation_params(self) -> dict[str, Any]:
        """The fields that determine the data (stored with it and checked on reuse)."""
        own = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in own}


def sample_unique(sample, key, rng: np.random.Generator, count: int,
                  seen: set, what: str) -> list[Example]:
    """`count` examples from `sample(rng)` whose `key(example)` is not in `seen`."""
    examples = []
    max_draws = _MAX_DRAWS_PER_EXAMPLE * count + 100
    for _ in range(max_draws):
        if len(examples) == count:
            break
        example = sample(rng)
        if key(example) not in seen:
            seen.add(key(example))
            examples.append(example)
    if len(examples) < count:
        raise ValueError(
            f"{what}: found only {len(examples)} distinct problems of the {count} asked "
            f"in {max_draws} draws; the difficulty settings allow too few problems. "
            "Lower train_size/test_size or widen the ranges.")
    return examples


class SyntheticTaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose examples come from a seeded sampler."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    @abc.abstractmethod
    def _features(self) -> dict[str, Any]:
        """The TFDS feature of each field."""

    @abc.abstractmethod
    def _sample(self, rng: np.random.Generator) -> Example:
        """One random problem of this builder's config."""

    @abc.abstractmethod
    def _problem_key(self, example: Example) -> Hashable:
        """Equal for two examples that pose the same problem."""

    def _info(self) -> tfds.core.DatasetInfo:
        return GeneratedDatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(self._features()),
            metadata=tfds.core.MetadataDict(
                generation=self.builder_config.generation_params()),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated here, nothing to download
        config = self.builder_config
        rng = np.random.default_rng(config.seed)
        seen = set()
        what = f"{self.name}/{config.name}"
        test = sample_unique(self._sample, self._problem_key, rng, config.test_size, seen, what)
        train = sample_unique(self._sample, self._problem_key, rng, config.train_size, seen, what)
        return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, examples):
        yield from enumerate(examples)
