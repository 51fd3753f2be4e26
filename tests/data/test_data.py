"""Tests of r1jax.data: synthetic TFDS tasks, GSM8K/MATH loaders, prompts, batches."""
import ast
import importlib.util
import collections
import json
import operator
import socket
import sys
from fractions import Fraction
from pathlib import Path
from unittest import mock

import pytest
import tensorflow_datasets as tfds

from r1jax import data
from r1jax.tasks import get_task
from r1jax.data import (ArithmeticConfig, CountdownConfig, DatasetNotPreparedError,
                        PromptIterator)

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub,
              ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str):
    """(exact value, integer literals used, number of operations) of + - * / text.

    Independent of the generators: parses the text with Python's ast and
    evaluates with Fractions, so '/' is exact division.
    """
    literals, operations = [], 0

    def value(node):
        nonlocal operations
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            operations += 1
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"unexpected syntax in {expression!r}: {ast.dump(node)}")

    result = value(ast.parse(expression, mode="eval").body)
    return result, literals, operations


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_countdown(**overrides):
    params = dict(name="tiny", num_numbers=4, train_size=300, test_size=60, seed=0)
    return CountdownConfig(**{**params, **overrides})


# ---------------------------------------------------------------- synthetic tasks

@pytest.mark.parametrize("num_numbers", [3, 4])
def test_countdown_builds_offline_and_every_solution_reaches_its_target(
        tmp_path, no_network, num_numbers):
    config = tiny_countdown(name=f"n{num_numbers}", num_numbers=num_numbers)
    splits = {split: list(data.load_generated(data.Countdown, split, data_dir=tmp_path, config=config))
              for split in ("train", "test")}
    assert len(splits["train"]) == 300 and len(splits["test"]) == 60
    for example in splits["train"] + splits["test"]:
        assert set(example) == {"numbers", "target", "solution"}
        assert len(example["numbers"]) == num_numbers
        assert all(1 <= n <= 99 for n in example["numbers"])
        assert 1 <= example["target"] <= 100
        value, used, _ = evaluate(example["solution"])
        assert value == example["target"], example
        # each listed number used at most once (a multiset inclusion)
        assert not collections.Counter(used) - collections.Counter(example["numbers"]), example
    problem = lambda ex: (tuple(sorted(ex["numbers"])), ex["target"])  # noqa: E731
    train = {problem(ex) for ex in splits["train"]}
    assert len(train) == 300 and not train & {problem(ex) for ex in splits["test"]}


def test_arithmetic_answers_match_an_independent_evaluation(tmp_path, no_network):
    config = ArithmeticConfig(name="tiny", num_operations=5, max_value=30,
                              train_size=300, test_size=50)
    examples = list(data.load_generated(data.Arithmetic, "train", data_dir=tmp_path, config=config))
    assert len(examples) == 300
    for example in examples:
        value, literals, operations = evaluate(example["expression"])
        assert operations == 5 and all(1 <= n <= 30 for n in literals)
        assert value.denominator == 1 and str(value.numerator) == example["answer"], example
    # precedence is exercised: some expressions need parentheses, some do not
    assert any("(" in ex["expression"] for ex in examples)
    assert any("(" not in ex["expression"] for ex in examples)


def _record_files(data_dir: Path):
    return {path.name: path.read_bytes() for path in sorted(data_dir.rglob("*.array_record*"))}


def test_same_seed_gives_identical_bytes_and_another_seed_other_data(tmp_path):
    runs = {}
    for run, seed in [("a", 0), ("b", 0), ("c", 1)]:
        config = tiny_countdown(seed=seed)
        runs[run] = list(data.load_generated(data.Countdown, "train", data_dir=tmp_path / run,
                                        config=config))
    files_a, files_b = _record_files(tmp_path / "a"), _record_files(tmp_path / "b")
    assert len(files_a) == 2 and files_a == files_b  # train and test shards, byte for byte
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    assert len({json.dumps(ex) for ex in runs["a"]} & {json.dumps(ex) for ex in runs["c"]}) < 30


def test_reusing_a_config_name_with_other_params_is_refused(tmp_path):
    data.load_generated(data.Countdown, "test", data_dir=tmp_path, config=tiny_countdown())
    with pytest.raises(ValueError, match="another name"):
        data.load_generated(data.Countdown, "test", data_dir=tmp_path, config=tiny_countdown(seed=7))


def test_unknown_config_and_split_give_clear_errors(tmp_path):
    # an unknown task name is the task registry's error (tests/tasks)
    with pytest.raises(ValueError, match=r"configs are \['3_numbers', '4_numbers'\]"):
        data.load_generated(data.Countdown, "train", data_dir=tmp_path, config="5_numbers")
    with pytest.raises(ValueError, match=r"countdown \(config tiny\) has no split 'validation'"
                                         r".*\['train', 'test'\]"):
        data.load_generated(data.Countdown, "validation", data_dir=tmp_path, config=tiny_countdown())


def test_builds_and_reads_without_tensorflow(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed; this test shows the data path runs without it")
    config = CountdownConfig(name="tiny", train_size=20, test_size=5)
    examples = data.load_generated(data.Countdown, "train", data_dir=tmp_path, config=config)
    assert len(examples) == 20 and isinstance(examples[0]["solution"], str)
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- GSM8K and MATH

GSM8K_ROWS = {
    "train": [{"question": "Tom has 1,000 apples and buys 234 more. How many now?",
               "answer": "1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234"},
              {"question": "What is 6 times 12?", "answer": "6 * 12 = 72\n#### 72"}],
    "test": [{"question": "Ann owes 5 dollars. What is her balance?",
              "answer": "She has -5 dollars.\n#### -5"}],
    "train_socratic": [{"question": "q", "answer": "a\n#### 1"}],
    "test_socratic": [{"question": "q", "answer": "a\n#### 2"}],
}


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """TFDS's own gsm8k builder, run on hand-written rows instead of the download."""
    root = tmp_path_factory.mktemp("gsm8k")
    files = {}
    for split, rows in GSM8K_ROWS.items():
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    fake_download = lambda self, urls: {split: files[split] for split in urls}  # noqa: E731
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fake_download):
        builder = tfds.builder("gsm8k", data_dir=root / "tfds", file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return root / "tfds"


def test_gsm8k_loader_extracts_gold_answers(gsm8k_dir):
    train = data.load_gsm8k("train", data_dir=gsm8k_dir)
    by_question = {ex["question"]: ex for ex in train}
    assert {q: ex["answer"] for q, ex in by_question.items()} == {
        GSM8K_ROWS["train"][0]["question"]: "1234", GSM8K_ROWS["train"][1]["question"]: "72"}
    example = by_question[GSM8K_ROWS["train"][0]["question"]]
    assert example["solution"] == GSM8K_ROWS["train"][0]["answer"]
    assert example["short_answer"] == "1,234"  # TFDS's own field is kept
    assert [ex["answer"] for ex in data.load_gsm8k("test", data_dir=gsm8k_dir)] == ["-5"]


def test_gsm8k_loader_under_tfds_mock_data(gsm8k_dir):
    # mock_data intercepts as_data_source; USE_FILES keeps the real split names.
    rows = [{"question": b"How many?", "answer": b"2 + 2 = 4\n#### 4",
             "annotation": b"2 + 2 = 4\n", "short_answer": b"4"}]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=gsm8k_dir,
                                as_data_source_fn=lambda self, split, **kwargs: rows):
        examples = data.load_gsm8k("test", data_dir="/elsewhere")
        assert [(ex["question"], ex["answer"]) for ex in examples] == [("How many?", "4")]
        with pytest.raises(ValueError, match="no split 'dev'"):
            data.load_gsm8k("dev", data_dir="/elsewhere")


def test_gsm8k_missing_data_or_split_says_what_to_do(tmp_path, gsm8k_dir):
    with pytest.raises(DatasetNotPreparedError,
                       match=r"gsm8k is not prepared.*'train'.*tfds build gsm8k"):
        data.load_gsm8k("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"gsm8k has no split 'validation'.*'test_socratic'"):
        data.load_gsm8k("validation", data_dir=gsm8k_dir)


def test_gsm8k_gold_answer():
    assert data.gsm8k_gold_answer("so 1,000 + 234\n#### 1,234") == "1234"
    assert data.gsm8k_gold_answer("####  12 ") == "12"
    with pytest.raises(ValueError, match="no '#### <answer>'"):
        data.gsm8k_gold_answer("The answer is 3.")


@pytest.mark.parametrize("solution, answer", [
    (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"First $\boxed{3}$, then $\boxed{\sqrt{2}}$.", r"\sqrt{2}"),
    (r"The set is $\boxed{\{1, 2\}}$.", r"\{1, 2\}"),
    (r"$\boxed{\left\{ x \right.}$", r"\left\{ x \right."),
    (r"Thus $\fbox{7}$", "7"),
    (r"hence $\boxed 5$.", "5"),
    (r"no box here", None),
    (r"$\boxed{\frac{1}{2}$", None),
])
def test_last_boxed_answer(solution, answer):
    assert data.last_boxed_answer(solution) == answer


def _write_json(path: Path, row):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))


def test_math_loader_builds_from_the_release_layout(tmp_path, no_network):
    manual = tmp_path / "manual"
    _write_json(manual / "MATH/train/algebra/1.json", {
        "problem": "Compute $1/2$.", "level": "Level 1", "type": "Algebra",
        "solution": r"It is $\boxed{\frac{1}{2}}$."})
    _write_json(manual / "MATH/train/algebra/2.json", {
        "problem": "No box.", "level": "Level 2", "type": "Algebra",
        "solution": "It is 3."})  # skipped: nothing to grade against
    _write_json(manual / "MATH/test/geometry/3.json", {
        "problem": "Area?", "level": "Level 3", "type": "Geometry",
        "solution": r"Half of $\boxed{2}$ is $\boxed{1}$."})
    train = list(data.load_math("train", data_dir=tmp_path / "tfds", manual_dir=manual))
    assert train == [{"problem": "Compute $1/2$.", "question": "Compute $1/2$.",
                      "solution": r"It is $\boxed{\frac{1}{2}}$.", "answer": r"\frac{1}{2}",
                      "level": "Level 1", "type": "Algebra"}]
    # prepared now: no manual_dir needed
    assert [ex["answer"] for ex in data.load_math("test", data_dir=tmp_path / "tfds")] == ["1"]


def test_math_loader_reads_jsonl_and_explains_missing_data(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"problem": "p1", "solution": r"$\boxed{10}$", "answer": "10", "subject": "Algebra",
             "level": 2}, {"problem": "p2", "solution": r"$\boxed{x^{2}}$", "level": 5}]
    (manual / "test.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(DatasetNotPreparedError, match=r"hendrycks_math.*'test'.*manual_dir"):
        data.load_math("test", data_dir=tmp_path / "tfds")
    examples = data.load_math("test", data_dir=tmp_path / "tfds", manual_dir=manual)
    assert sorted((ex["question"], ex["answer"], ex["level"]) for ex in examples) == [
        ("p1", "10", "2"), ("p2", "x^{2}", "5")]
    with pytest.raises(ValueError, match=r"hendrycks_math has no split 'train'.*\['test'\]"):
        data.load_math("train", data_dir=tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="No MATH files found.*MATH/<split>"):
        data.load_math("test", data_dir=tmp_path / "other", manual_dir=tmp_path / "missing")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "README").write_text("not MATH")
    with pytest.raises(FileNotFoundError, match="No MATH files found.*<split>.jsonl"):
        data.load_math("test", data_dir=tmp_path / "other", manual_dir=tmp_path / "unrelated")


# ---------------------------------------------------------------- prompts

PAPER_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:")


def test_r1_zero_template_is_the_papers():
    assert data.R1_ZERO_TEMPLATE == PAPER_TEMPLATE
    assert data.format_prompt("What is 2 + 3?") == PAPER_TEMPLATE.replace(
        "{prompt}", "What is 2 + 3?")
    assert data.format_prompt("Add 2 and 3.").endswith("User: Add 2 and 3. Assistant:")
    assert data.format_prompt("Add 2 and 3.", template="plain") == "Add 2 and 3."


def test_chat_messages():
    assert data.chat_messages("Add 2 and 3.") == [
        {"role": "system", "content": data.R1_SYSTEM_PROMPT},
        {"role": "user", "content": "Add 2 and 3."}]
    assert data.chat_messages("Add 2 and 3.", template="plain_chat") == [
        {"role": "user", "content": "Add 2 and 3."}]


def test_unknown_template_or_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="known text templates: plain, r1_zero"):
        data.format_prompt("q", template="r1")
    with pytest.raises(ValueError, match="known chat templates: plain_chat, r1_chat"):
        data.chat_messages("q", template="r1_zero")


def test_countdown_question_text():
    countdown = get_task("countdown").question({"numbers": [3, 5, 7], "target": 22})
    assert countdown.startswith("Using the numbers [3, 5, 7], create an equation that equals 22.")
    assert "(+, -, *, /)" in countdown and "at most once" in countdown


# ---------------------------------------------------------------- PromptIterator

SOURCE = [{"id": i} for i in range(23)]


def ids(batch):
    return [example["id"] for example in batch]


def take(iterator, count):
    return [ids(next(iterator)) for _ in range(count)]


def test_each_epoch_is_a_seeded_permutation():
    iterator = PromptIterator(SOURCE, batch_size=5, seed=3)
    assert iterator.batches_per_epoch == 4  # 23 // 5, the last 3 dropped
    epochs = [sum(take(iterator, 4), []) for _ in range(3)]
    for epoch in epochs:
        assert len(set(epoch)) == 20 and set(epoch) <= set(range(23))
    assert epochs[0] != epochs[1]
    again = PromptIterator(SOURCE, batch_size=5, seed=3)
    assert sum(take(again, 4), []) == epochs[0]
    other_seed = PromptIterator(SOURCE, batch_size=5, seed=4)
    assert sum(take(other_seed, 4), []) != epochs[0]
    in_order = PromptIterator(SOURCE, batch_size=5, seed=3, shuffle=False)
    assert take(in_order, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14],
                                 [15, 16, 17, 18, 19], [0, 1, 2, 3, 4]]


def test_resume_sees_the_same_prompts_as_an_uninterrupted_run():
    uninterrupted = take(PromptIterator(SOURCE, batch_size=4, seed=0), 17)
    first = PromptIterator(SOURCE, batch_size=4, seed=0)
    take(first, 9)  # crosses an epoch boundary (5 batches per epoch)
    state = json.loads(json.dumps(first.state()))  # as stored in a checkpoint
    assert all(type(value) is int for value in state.values())
    resumed = PromptIterator(SOURCE, batch_size=4, seed=0)
    resumed.restore(state)
    assert take(resumed, 8) == uninterrupted[9:]


def test_restore_refuses_another_seed_or_dataset():
    state = PromptIterator(SOURCE, batch_size=4, seed=0).state()
    with pytest.raises(ValueError, match="seed=0 over 23 examples"):
        PromptIterator(SOURCE, batch_size=4, seed=1).restore(state)
    with pytest.raises(ValueError, match="same seed and data"):
        PromptIterator(SOURCE[:20], batch_size=4, seed=0).restore(state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_get_disjoint_slices_that_cover_each_global_batch(process_count):
    global_batches = take(PromptIterator(SOURCE, batch_size=8, seed=1), 6)
    hosts = [take(PromptIterator(SOURCE, batch_size=8, seed=1, process_index=host,
                                 process_count=process_count), 6)
             for host in range(process_count)]
    for step, global_batch in enumerate(global_batches):
        parts = [hosts[host][step] for host in range(process_count)]
        assert all(len(part) == 8 // process_count for part in parts)
        assert sum(parts, []) == global_batch  # disjoint, covering, in order


def test_last_partial_batch_and_finite_epochs():
    iterator = PromptIterator(SOURCE, batch_size=10, seed=0, drop_remainder=False, num_epochs=2)
    batches = [ids(batch) for batch in iterator]
    assert [len(b) for b in batches] == [10, 10, 3, 10, 10, 3]
    assert sorted(sum(batches[:3], [])) == list(range(23))
    host_parts = [ids(PromptIterator(SOURCE, batch_size=10, seed=0, drop_remainder=False,
                                     process_index=host, process_count=2, num_epochs=1)
                      .__iter__().__next__()) for host in range(2)]
    assert sum(host_parts, []) == batches[0]


def test_iterator_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of process_count=4"):
        PromptIterator(SOURCE, batch_size=6, seed=0, process_count=4)
    with pytest.raises(ValueError, match="process_index=2"):
        PromptIterator(SOURCE, batch_size=4, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="exceeds the 23 examples"):
        PromptIterator(SOURCE, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="empty source"):
        PromptIterator([], batch_size=1, seed=0)


def test_iterator_over_a_tfds_task(tmp_path):
    source = data.load_generated(data.Countdown, "test", data_dir=tmp_path, config=tiny_countdown())
    iterator = PromptIterator(source, batch_size=16, seed=0)
    batch = next(iterator)
    order = iterator.epoch_order(0)[:16]
    assert batch == [source[int(i)] for i in order]
    prompts = [data.format_prompt(get_task("countdown").question(ex)) for ex in batch]
    assert all(p.startswith("A conversation") and str(ex["target"]) in p
               for p, ex in zip(prompts, batch))
