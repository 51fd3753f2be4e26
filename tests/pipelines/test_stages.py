"""The stage runner: stages in order, skipped when their result is there, "stopped" once, bad tables refused."""
import dataclasses
import json

import pytest

from r1jax.checkpoint import IncompatibleCheckpointError
from r1jax.models import ModelConfig
from r1jax.pipelines.stages import STOPPED, Stage, finished_model, given, run_stages


def _writer(calls, name, value=None):
    """A stage that records its call and writes `output/result.json`."""
    def run(output, *inputs):
        calls.append((name, inputs))
        output.mkdir(parents=True, exist_ok=True)
        result = value if value is not None else f"{name}({', '.join(map(str, inputs))})"
        (output / "result.json").write_text(json.dumps(result))
        return result
    return run


def _stored(output):
    path = output / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(calls, stop_at=None):
    def b(output, a):
        if stop_at == "b":
            calls.append(("b", (a,)))
            return STOPPED
        return _writer(calls, "b")(output, a)
    return [Stage("a", _writer(calls, "a"), finished=_stored),
            Stage("b", b, inputs=("a",), finished=_stored),
            Stage("c", _writer(calls, "c"), inputs=("a", "b"), output="nested/c", finished=_stored)]


def test_stages_run_in_order_with_the_results_of_their_inputs(tmp_path):
    calls = []
    run = run_stages(tmp_path, _table(calls))
    assert run.stopped is None
    assert calls == [("a", ()), ("b", ("a()",)), ("c", ("a()", "b(a())"))]
    assert run.results == {"a": "a()", "b": "b(a())", "c": "c(a(), b(a()))"}
    assert _stored(tmp_path / "nested" / "c") == "c(a(), b(a()))"  # `output` is the stage's folder


def test_a_stage_whose_result_is_there_is_skipped(tmp_path):
    run_stages(tmp_path, _table([]))
    calls = []
    run = run_stages(tmp_path, _table(calls))
    assert calls == [] and run.results["c"] == "c(a(), b(a()))"
    (tmp_path / "b" / "result.json").unlink()  # b's result is gone: b runs again, c stays done
    run = run_stages(tmp_path, _table(calls))
    assert calls == [("b", ("a()",))] and run.stopped is None


def test_a_stopped_stage_stops_the_run_and_the_rerun_resumes_there(tmp_path):
    calls = []
    run = run_stages(tmp_path, _table(calls, stop_at="b"))
    assert run.stopped == "b" and calls == [("a", ()), ("b", ("a()",))]
    assert set(run.results) == {"a"} and not (tmp_path / "nested").exists()  # c never ran
    calls.clear()
    run = run_stages(tmp_path, _table(calls))
    assert run.stopped is None and calls == [("b", ("a()",)), ("c", ("a()", "b(a())"))]  # a was not redone


def test_a_stage_without_finished_always_runs(tmp_path):
    calls = []
    table = [Stage("a", _writer(calls, "a"), finished=None)]
    run_stages(tmp_path, table)
    run_stages(tmp_path, table)
    assert calls == [("a", ()), ("a", ())]


def test_given_results_and_none_results_are_inputs_like_any_other(tmp_path):
    calls = []
    run = run_stages(tmp_path, [given("init", tmp_path / "checkpoint"),
                                Stage("skipped", lambda output: None, finished=None),
                                Stage("a", _writer(calls, "a"), inputs=("init", "skipped"), finished=None)],
                     given={"seed": 3})
    assert run.results["init"] == tmp_path / "checkpoint" and run.results["skipped"] is None
    assert calls == [("a", (tmp_path / "checkpoint", None))] and run.results["seed"] == 3


def test_the_default_finished_is_a_model_export(tmp_path):
    config = ModelConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    calls = []
    stage = Stage("train", _writer(calls, "train"))
    run_stages(tmp_path, [stage])
    assert calls == [("train", ())]  # no export yet: it ran
    (tmp_path / "train" / "model").mkdir()
    (tmp_path / "train" / "model" / "config.json").write_text(json.dumps(config.to_hf()))
    run = run_stages(tmp_path, [stage])
    assert calls == [("train", ())] and run.results["train"] == tmp_path / "train" / "model"
    assert finished_model(tmp_path / "train", config) == tmp_path / "train" / "model"
    with pytest.raises(IncompatibleCheckpointError, match="hidden_size: 8 vs 16"):
        finished_model(tmp_path / "train", dataclasses.replace(config, hidden_size=16))


@pytest.mark.parametrize("table,message", [
    (lambda run: [Stage("a", run, inputs=("b",)), Stage("b", run)], r"stage 'a' takes \['b'\], which no earlier"),
    (lambda run: [Stage("a", run), Stage("a", run)], "stage 'a' comes twice"),
    (lambda run: [Stage("a", run), ("b", run)], "a recipe is a sequence of Stage"),
])
def test_a_bad_table_is_refused_before_any_stage_runs(tmp_path, table, message):
    calls = []
    with pytest.raises((ValueError, TypeError), match=message):
        run_stages(tmp_path, table(_writer(calls, "x")))
    assert calls == [] and not any(tmp_path.iterdir())


def test_a_training_section_reaches_the_loop_of_its_stage(tmp_path, monkeypatch):
    """num_microbatches and keep_checkpoints of a config section get to `run_training`, and SFT rounds
    its rows to the microbatches."""
    from flax import nnx

    from r1jax.models import Transformer
    from r1jax.pipelines.settings import training_from, training_section
    from r1jax.pipelines.stages import sft as sft_module
    from r1jax.train.loop import TrainResult
    from r1jax.train.sft import SFTSettings

    section = training_section(SFTSettings, steps=4, learning_rate=1e-3, warmup_steps=1, num_microbatches=2,
                               keep_checkpoints=3, batch_size=8)
    loop, optimizer, batches = training_from(section, SFTSettings, where="sft")
    calls = []
    monkeypatch.setattr(sft_module, "run_training", lambda settings, **kwargs: calls.append((settings, kwargs))
                        or TrainResult(None, {}, completed=False))
    model = Transformer(ModelConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                                    num_kv_heads=1, max_position_embeddings=64), rngs=nnx.Rngs(0))
    result = sft_module.sft_stage(tmp_path, model, [("a", "b")] * 3, to_pairs=None, tokenizer=None, loop=loop,
                                  optimizer=optimizer, batches=batches, mesh=None, seed=0, name="sft")
    assert result is STOPPED
    [(settings, kwargs)] = calls
    assert (settings.num_microbatches, settings.keep_checkpoints, settings.steps) == (2, 3, 4)
    assert kwargs["make_batches"].__self__.row_multiple == 2
    assert kwargs["data"].batch_size == 3  # fewer pairs than a batch: every step sees them all


class _Renderer:
    """Prompt texts of examples {"id": i}: "q<i>"."""

    def texts(self, examples, task):
        return [f"q{example['id']}" for example in examples]


class _Task:
    accuracy_reward = "format"


def test_the_cold_start_stage_samples_as_its_settings_say(tmp_path, monkeypatch):
    """`ColdStartSettings` reach the sampler: the first `prompts` examples, `samples_per_prompt`
    samples of each at its temperature and top_p; `annotated` is recorded with the kept pairs."""
    from r1jax.pipelines.settings import ColdStartSettings
    from r1jax.pipelines.stages import cold_start as cold_start_module

    sampler, records = {}, []

    def rollout_sampler(graphdef, params, renderer, **settings):
        sampler.update(settings)
        return lambda texts, rng: [(f"{text} #{j}", 1, True) for text in texts for j in range(settings["num_samples"])]

    def build_cold_start(sampled, **_):
        records.extend(sampled)
        return [(record["prompt"], record["completion"]) for record in sampled], {"kept": len(sampled)}

    monkeypatch.setattr(cold_start_module, "from_pretrained", lambda path, mesh: None)
    monkeypatch.setattr(cold_start_module, "split", lambda model: (None, None))
    monkeypatch.setattr(cold_start_module, "rollout_sampler", rollout_sampler)
    monkeypatch.setattr(cold_start_module, "build_cold_start", build_cold_start)
    settings = ColdStartSettings(prompts=3, samples_per_prompt=2, temperature=0.3, top_p=0.5, annotated=1)
    pairs = cold_start_module.cold_start_stage(
        tmp_path, tmp_path / "r1_zero", examples=[{"id": i} for i in range(5)], settings=settings,
        renderer=_Renderer(), task=_Task(), max_new_tokens=8, mesh=None, seed=0, output_format=None,
        annotated=[("q9", "worked")])
    assert (sampler["num_samples"], sampler["temperature"], sampler["top_p"]) == (2, 0.3, 0.5)
    assert [(r["prompt"], r["completion"], r["id"]) for r in records] == [
        ("q0", "q0 #0", 0), ("q0", "q0 #1", 0), ("q1", "q1 #0", 1), ("q1", "q1 #1", 1), ("q2", "q2 #0", 2),
        ("q2", "q2 #1", 2)]
    assert pairs == [(r["prompt"], r["completion"]) for r in records] + [("q9", "worked")]
    assert json.loads((tmp_path / "data.json").read_text())["stats"] == {"kept": 6, "annotated": 1}
