"""Loaders for real math datasets: GSM8K and MATH (Hendrycks et al., 2021).

Both give examples {"question": str, "answer": str (the gold final answer)}
plus their original fields, read at random from array_record files.

* GSM8K is TFDS's own `gsm8k` builder. Its data is downloaded, so it must be
  prepared where internet exists (`tfds build gsm8k --data_dir=DIR
  --file_format=array_record`) and DIR passed as `data_dir`. Its original
  `answer` (worked solution ending "#### 42") is kept as `solution`.
* TFDS has no builder for MATH (its `math_dataset` is DeepMind's generated
  mathematics, without boxed solutions), so `HendrycksMath` below builds one
  from a local copy of the release, and the gold answer is the content of the
  last \\boxed{...} of the solution.
"""
from __future__ import annotations

import json
import logging
import pathlib

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.text.gsm8k.gsm8k import Gsm8k

from r1jax.data.prepared import GeneratedDatasetInfo, check_dataset_files
from r1jax.data.sources import Example, ExampleSource, open_split

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def gsm8k_gold_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: text after '####', commas removed."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {solution!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def last_boxed_answer(solution: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces allowed.

    Also reads the brace-less form '\\boxed 5$'. None when there is no box or
    its braces do not close.
    """
    start, command = max((solution.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = solution[start + len(command):]
    if rest.startswith(" "):
        return rest.split("$", 1)[0].strip() or None
    if not rest.startswith("{"):
        return None
    depth, i = 0, 0
    while i < len(rest):
        char = rest[i]
        if char == "\\":  # \{ and \} are literal braces, not grouping
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return rest[1:i]
        i += 1
    return None


def _gsm8k_example(raw: Example) -> Example:
    return {**raw, "solution": raw["answer"], "answer": gsm8k_gold_answer(raw["answer"])}


def load_gsm8k(split: str, *, data_dir) -> ExampleSource:
    """GSM8K examples from TFDS `gsm8k` prepared in `data_dir` (splits: train,
    test, train_socratic, test_socratic)."""
    return open_split(
        Gsm8k(data_dir=data_dir), split, transform=_gsm8k_example,
        how_to_prepare=(
            "Prepare it where internet exists with `tfds build gsm8k "
            "--data_dir=DIR --file_format=array_record`, copy DIR here and pass "
            "data_dir=DIR."))


class HendrycksMath(tfds.core.GeneratorBasedBuilder):
    """MATH competition problems with worked solutions and boxed final answers."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put a copy of MATH in manual_dir, either the extracted MATH.tar "
        "(MATH/<split>/<subject>/<id>.json with problem, level, type, solution) "
        "or one JSON-lines file per split (<split>.jsonl, e.g. MATH-500's "
        "test.jsonl) whose rows have problem and solution.")

    def _info(self) -> tfds.core.DatasetInfo:
        return GeneratedDatasetInfo(  # built here from a local copy, never fetched
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                name: tfds.features.Text()
                for name in ("problem", "solution", "level", "type", "answer")}),
            homepage="https://github.com/hendrycks/math",
        )

    def _split_generators(self, dl_manager):
        root = epath.Path(dl_manager.manual_dir)
        if (root / "MATH").is_dir():
            root = root / "MATH"
        splits = {}
        if root.is_dir():
            splits.update({path.stem: [path] for path in root.glob("*.jsonl")})
            splits.update({folder.name: sorted(folder.glob("*/*.json"))
                           for folder in root.iterdir() if folder.is_dir()})
        splits = {name: files for name, files in splits.items() if files}
        if not splits:
            raise FileNotFoundError(
                f"No MATH files found in {dl_manager.manual_dir}. "
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {name: self._generate_examples(files, root) for name, files in splits.items()}

    def _generate_examples(self, files, root):
        skipped = 0
        for path in files:
            if path.suffix == ".jsonl":
                rows = [(f"{path.name}:{n}", json.loads(line))
                        for n, line in enumerate(path.read_text().splitlines()) if line.strip()]
            else:
                rows = [(str(path.relative_to(root)), json.loads(path.read_text()))]
            for key, row in rows:
                answer = last_boxed_answer(row["solution"])
                if answer is None:  # nothing to check a completion against
                    skipped += 1
                    continue
                yield key, {
                    "problem": row["problem"], "solution": row["solution"],
                    "level": str(row.get("level", "")),
                    "type": row.get("type", row.get("subject", "")), "answer": answer}
        if skipped:
            logging.warning("MATH: skipped %d problems without a \\boxed answer.", skipped)


def _math_example(raw: Example) -> Example:
    return {**raw, "question": raw["problem"]}


def load_math(split: str, *, data_dir, manual_dir=None) -> ExampleSource:
    """MATH examples, built into `data_dir` from `manual_dir` the first time.

    Args:
      split: a split of the copy in manual_dir ('train', 'test').
      data_dir: the TFDS data folder.
      manual_dir: the local MATH copy (see HendrycksMath.MANUAL_DOWNLOAD_INSTRUCTIONS);
        needed only while the dataset is not yet prepared.
    """
    where = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR) / HendrycksMath.name / str(HendrycksMath.VERSION)
    if where.is_dir() and any(where.iterdir()):  # built earlier: whole, or refused before TFDS reads it
        check_dataset_files(where, f"It was built from a local copy of MATH: delete {where} and pass "
                                   "manual_dir=<that copy> to build it again.")
    builder = HendrycksMath(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared() and manual_dir is not None:
        if not epath.Path(manual_dir).is_dir() or not any(epath.Path(manual_dir).iterdir()):
            raise FileNotFoundError(f"No MATH files found in {manual_dir}. "
                                    + HendrycksMath.MANUAL_DOWNLOAD_INSTRUCTIONS)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
    return open_split(
        builder, split, transform=_math_example,
        how_to_prepare="Pass manual_dir=<folder with a copy of MATH>: "
                       + HendrycksMath.MANUAL_DOWNLOAD_INSTRUCTIONS)
