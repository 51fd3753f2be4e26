"""The evaluation library and CLI: report numbers by hand, end to end on a tiny model, bad input."""
import json
import subprocess
import sys
from math import comb
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from r1jax.evaluation import evaluate
from r1jax.rollout import PromptRenderer
from r1jax.tasks import get_task, parse_task_specs
from tests.support import ROOT


# three arithmetic prompts, four scripted samples each: (final answer or None, length in tokens)
SCRIPT = {
    "3 + 4": [("7", 10), ("7", 12), ("5", 8), (None, 6)],  # answer 7: 2 correct, majority 7
    "2 * 6": [("3", 5), ("3", 5), ("12", 9), ("3", 5)],  # answer 12: 1 correct, majority 3
    "1 - 3": [("1", 4), (None, 4), (None, 4), ("-3", 4)],  # answer -2: none correct, tie 1 / -3
}
ANSWERS = {"3 + 4": "7", "2 * 6": "12", "1 - 3": "-2"}


class CharTokenizer:
    """Encodes a prompt as its characters, so that the fake rollout can read the text back."""

    bos_id = None

    def encode(self, text, add_bos=False):
        return list(text)


def fake_rollout(calls):
    """Stands in for `rollout`: the scripted completions of each prompt text, `repeat` per prompt."""

    def run(graphdef, params, tokenizer, prompts, rng, *, repeat, **_):
        calls.append((len(prompts), repeat))
        completions, lengths = [], []
        for text in ("".join(ids) for ids in prompts):  # CharTokenizer's "ids" are the characters
            expression = next(e for e in SCRIPT if f"value of {e}." in text)
            assert len(SCRIPT[expression]) == repeat
            for answer, length in SCRIPT[expression]:
                completions.append("<think> hm </think> " + (f"<answer> {answer} </answer>" if answer else "no idea"))
                lengths.append(length)
        return SimpleNamespace(completions=completions, lengths=np.array(lengths))

    return run


def test_report_matches_a_hand_computation_on_a_scripted_grid(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "rollout", fake_rollout(calls))
    # pretend 3 data-parallel devices: 2 prompts x 4 samples must be filled up to 3 prompts x 4
    monkeypatch.setattr(evaluate, "num_batch_shards", lambda mesh: 3)
    examples = [{"expression": e, "answer": a} for e, a in ANSWERS.items()]
    kwargs = dict(task=get_task("arithmetic"), num_samples=4, max_prompt_length=512, max_new_tokens=16,
                  temperature=0.6, top_p=0.95, rng=jax.random.key(0), mesh=None)
    renderer = PromptRenderer(CharTokenizer(), "r1_zero")
    samples = evaluate.sample_task(None, None, renderer, examples, batch_prompts=2, **kwargs)
    assert calls == [(3, 4), (3, 4)]  # chunks of 2 + 1 filler and 1 + 2 fillers; fillers are dropped
    np.testing.assert_array_equal(samples.correct, [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    easy = evaluate.sample_task(None, None, renderer, examples[:1] * 2, batch_prompts=2, **kwargs)
    report = evaluate.build_report({"arithmetic:test": samples, "arithmetic:easy": easy})

    row = report["arithmetic:test"]
    assert sorted(row) == ["cons@4", "num_prompts", "pass@1", "pass@2", "pass@4", "response_length",
                           "samples_per_prompt"]
    # pass@k = 1 - C(n - c, k) / C(n, k) with n = 4 and c = 2, 1, 0 correct samples
    pass_at = lambda c, k: 1 - comb(4 - c, k) / comb(4, k)
    assert row["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert row["pass@2"] == pytest.approx((pass_at(2, 2) + pass_at(1, 2)) / 3) == pytest.approx((5 / 6 + 1 / 2) / 3)
    assert row["pass@4"] == pytest.approx(2 / 3)
    assert row["cons@4"] == pytest.approx(1 / 3)  # only "7" wins its vote and is right
    assert row["response_length"] == pytest.approx((36 + 24 + 16) / 12)
    # the easy task: 2 prompts of the first problem (pass@1 = 0.5, cons right); overall weighs by prompts
    assert report["arithmetic:easy"]["pass@1"] == pytest.approx(0.5)
    assert report["overall"]["num_prompts"] == 5
    assert report["overall"]["pass@1"] == pytest.approx((3 * 0.25 + 2 * 0.5) / 5)
    assert report["overall"]["cons@4"] == pytest.approx((3 * (1 / 3) + 2 * 1.0) / 5)


def test_pass_at_k_values_are_the_powers_of_two():
    assert evaluate.pass_at_k_values(1) == [1]
    assert evaluate.pass_at_k_values(8) == [1, 2, 4, 8]
    assert evaluate.pass_at_k_values(12) == [1, 2, 4, 8]


def test_task_parsing_names_the_choices():
    assert [tuple(spec) for spec in parse_task_specs("arithmetic:test, gsm8k:test[:50]")] == [
        (get_task("arithmetic"), "test", "arithmetic:test"), (get_task("gsm8k"), "test[:50]", "gsm8k:test[:50]")]
    with pytest.raises(ValueError, match="unknown task 'gsm9k'.*arithmetic, countdown, general, gsm8k, humaneval, math, mbpp"):
        parse_task_specs("gsm9k:test")
    with pytest.raises(ValueError, match="names no split.*arithmetic:test"):
        parse_task_specs(["arithmetic"])
    with pytest.raises(ValueError, match="listed twice"):
        parse_task_specs("gsm8k:test,gsm8k:test")


def test_unknown_split_is_named(tmp_path):
    spec, = parse_task_specs("arithmetic:validation")
    with pytest.raises(ValueError, match="no split 'validation'.*'train', 'test'|no split 'validation'.*'test', 'train'"):
        spec.task.load(spec.split, data_dir=tmp_path)


# ---- the CLI, in a subprocess --------------------------------------------------------------

def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_config, tiny_model):
    """A random tiny Llama saved with save_pretrained, its SentencePiece tokenizer beside it."""
    from r1jax.data.prompts import R1_ZERO_TEMPLATE
    from r1jax.models import save_pretrained
    from r1jax.tokenizers import train_sentencepiece

    directory = tmp_path_factory.mktemp("model")
    corpus = [R1_ZERO_TEMPLATE.replace("{prompt}", f"Compute the value of {a} + {b}")
              + f" <think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>" for a in range(10) for b in range(10)]
    tokenizer = train_sentencepiece(corpus, directory / "tokenizer.model", vocab_size=200, byte_fallback=False,
                                    hard_vocab_limit=False)
    config = tiny_config(vocab_size=tokenizer.vocab_size, num_layers=1, num_heads=2, num_kv_heads=1,
                         bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    save_pretrained(tiny_model(config, std=0.5), directory)
    return directory


def test_cli_end_to_end_writes_the_report(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    args = [f"--model={tiny_model_dir}", "--tasks=arithmetic:test", f"--data_dir={tmp_path / 'data'}",
            "--num_samples=4", "--max_new_tokens=6", "--max_prompts=3", f"--out={out}"]
    result = _cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "report.json").read_text())
    assert document["settings"]["num_samples"] == 4 and document["settings"]["tasks"] == ["arithmetic:test"]
    results = document["results"]
    assert sorted(results) == ["arithmetic:test", "overall"]
    for row in results.values():
        assert row["num_prompts"] == 3 and row["samples_per_prompt"] == 4
        for key in ("pass@1", "pass@2", "pass@4", "cons@4"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert row["pass@1"] <= row["pass@2"] <= row["pass@4"]
        assert 1 <= row["response_length"] <= 6
    table = (out / "report.md").read_text()
    assert table.startswith("| task |") and "| arithmetic:test |" in table and "| overall |" in table

    # the report is not replaced without --overwrite
    before = (out / "report.json").read_text()
    again = _cli(*args)
    assert again.returncode != 0
    assert "already holds report.json" in again.stderr and "--overwrite" in again.stderr
    assert (out / "report.json").read_text() == before


def test_cli_unknown_task_is_a_clear_error_and_writes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    result = _cli(f"--model={tiny_model_dir}", "--tasks=arithmetic:test,aime:test", f"--out={out}",
                  f"--data_dir={tmp_path / 'data'}")
    assert result.returncode != 0
    assert "unknown task 'aime'" in result.stderr and "gsm8k" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "data").exists()


def test_a_recipe_made_task_config_is_read_from_its_data_dir(tmp_path):
    """The registry's task reads what a recipe generated under its own config name: no path around the tasks."""
    from r1jax.data import Arithmetic, ArithmeticConfig, load_generated

    config = ArithmeticConfig(name="ops1_max4_n10", seed=3, train_size=10, test_size=6, num_operations=1,
                              max_value=4)
    made = load_generated(Arithmetic, "test", data_dir=tmp_path, config=config)
    spec, = parse_task_specs("arithmetic/ops1_max4_n10:test")
    assert spec == (get_task("arithmetic", config="ops1_max4_n10"), "test", "arithmetic/ops1_max4_n10:test")
    read = spec.task.load(spec.split, data_dir=tmp_path)
    assert [read[i] for i in range(len(read))] == [made[i] for i in range(len(made))]
    other, = parse_task_specs("arithmetic/other:test")
    with pytest.raises(ValueError, match="no config 'other'.*'2_ops'.*none in .*arithmetic/other"):
        other.task.load(other.split, data_dir=tmp_path)
    with pytest.raises(ValueError, match="task 'gsm8k' takes no builder config"):
        parse_task_specs("gsm8k/main:test")


# ---- code tasks: per-problem results, chosen pass@k, greedy ----------------------------------

CODE_PROBLEMS = [
    {"task_id": "t/0", "entry_point": "double", "canonical_solution": "    return 2 * x\n",
     "code_prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
     "test": "def check(candidate):\n    assert candidate(3) == 6\n"},
    {"task_id": "t/1", "entry_point": "negate", "canonical_solution": "    return -x\n",
     "code_prompt": 'def negate(x: int) -> int:\n    """Minus x."""\n',
     "test": "def check(candidate):\n    assert candidate(3) == -3\n"},
]
# per problem, four completions: a body, a fenced chat answer, and wrong ones
CODE_SCRIPT = {
    "double": ["    return 2 * x\n", "```python\ndef double(x):\n    return x + x\n```", "    return x\n", "nope"],
    "negate": ["    return x\n", "    return x\n", "    return x\n", "```python\ndef negate(x):\n    return 0 - x\n```"],
}


def test_code_task_per_problem_results_by_hand(monkeypatch, tmp_path):
    from r1jax.rewards import sandbox_capabilities
    if not sandbox_capabilities().isolated:
        pytest.skip("sandboxed runs need root")
    seen = {}

    def scripted(graphdef, params, tokenizer, prompts, rng, *, repeat, temperature, **_):
        seen["temperature"] = temperature
        texts = ["".join(ids) for ids in prompts]
        completions = [c for text in texts for name in CODE_SCRIPT if f"def {name}(" in text
                       for c in CODE_SCRIPT[name]]
        return SimpleNamespace(completions=completions, lengths=np.array([len(c) for c in completions]))

    monkeypatch.setattr(evaluate, "rollout", scripted)
    monkeypatch.setattr(evaluate, "num_batch_shards", lambda mesh: 1)
    task = get_task("humaneval")  # any function task scores these examples alike
    samples = evaluate.sample_task(None, None, PromptRenderer(CharTokenizer(), "plain"), CODE_PROBLEMS, task=task,
                                   num_samples=4, max_prompt_length=512, max_new_tokens=16, temperature=0.0,
                                   top_p=1.0, rng=jax.random.key(0), mesh=None)
    assert seen["temperature"] == 0.0
    np.testing.assert_array_equal(samples.correct, [[1, 1, 0, 0], [0, 0, 0, 1]])
    rows = evaluate.problem_rows("humaneval:test", CODE_PROBLEMS, samples, ks=[1, 2, 3])
    assert [(r["id"], r["num_correct"]) for r in rows] == [("t/0", 2), ("t/1", 1)]
    # pass@k = 1 - C(n - c, k) / C(n, k), n = 4
    assert rows[0]["pass@1"] == 0.5 and rows[0]["pass@2"] == pytest.approx(1 - comb(2, 2) / comb(4, 2))
    assert rows[1]["pass@3"] == pytest.approx(1 - comb(3, 3) / comb(4, 3)) == pytest.approx(0.75)
    assert [s["correct"] for s in rows[1]["samples"]] == [False, False, False, True]
    assert rows[0]["samples"][1] == {"completion": CODE_SCRIPT["double"][1], "correct": True,
                                     "length": len(CODE_SCRIPT["double"][1])}
    report = evaluate.build_report({"humaneval:test": samples}, ks=[1, 3])
    assert report["humaneval:test"]["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert report["humaneval:test"]["pass@3"] == pytest.approx((1.0 + 0.75) / 2)
    path = evaluate.write_jsonl(rows, tmp_path / "problems.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_cli_greedy_on_humaneval_writes_per_problem_results(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    # --task and --init are the names for --tasks and --model
    result = _cli(f"--init={tiny_model_dir}", "--task=humaneval:test", "--greedy", "--max_new_tokens=4",
                  "--max_prompts=2", "--max_prompt_length=1024", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "report.json").read_text())
    assert document["settings"]["temperature"] == 0.0 and document["settings"]["num_samples"] == 1
    row = document["results"]["humaneval:test"]
    assert row["num_prompts"] == 2 and row["samples_per_prompt"] == 1 and row["pass@1"] == 0.0  # a random model
    problems = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert [(p["task"], p["id"], p["num_samples"], p["num_correct"]) for p in problems] == [
        ("humaneval:test", "HumanEval/0", 1, 0), ("humaneval:test", "HumanEval/1", 1, 0)]
    assert all(len(p["samples"]) == 1 and 1 <= p["samples"][0]["length"] <= 4 for p in problems)
    again = _cli(f"--model={tiny_model_dir}", "--tasks=humaneval:test", "--ks=1,2", "--num_samples=1",
                 f"--out={tmp_path / 'other'}")
    assert again.returncode != 0 and "pass@k needs 1 <= k <= num_samples=1" in again.stderr
    assert not (tmp_path / "other" / "problems.jsonl").exists()
