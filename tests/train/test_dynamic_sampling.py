"""DAPO's dynamic sampling under static shapes (`grpo.dynamic_sampling`, `r1jax.train.dynamic_sampling`).

Rewards are faked per example (`mixed`: the group's rewards differ, else they are all equal), so
that which groups a step keeps, carries and masks is known by hand. Two processes run in fresh
Python processes (tests/support/multiprocess_dynamic_sampling.py, launched by tests/support/launch.py).
"""
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.batching import pad_left
from r1jax.pipelines.settings import grpo_training
from r1jax.rollout import Rollout, prompt_width
from r1jax.sampling import SampleOutput
from r1jax.sharding import make_mesh
from r1jax.train import grpo as grpo_module
from r1jax.train.dynamic_sampling import informative_groups
from r1jax.train.grpo import GRPO
from r1jax.train.loop import run_training
from r1jax.train.state import train_state_from_model
from r1jax.train.step import make_train_step
from tests.support.launch import launch, wait
from tests.support.multiprocess_dynamic_sampling import (EXPECTED, FLAGS, SECTION, VOCAB, FakeRewards, FakeTokenizer,
                                                         examples)
from tests.support.tiny import fixed_model, tiny_config

BASE = dict(steps=3, learning_rate=1e-2, num_generations=2, prompts_per_step=2, max_new_tokens=8, beta=0.0)


def stage(rewards, **options) -> GRPO:
    return stage_and_loop(rewards, **options)[0]


def stage_and_loop(rewards, **options):
    """The GRPO stage of a config section `BASE` + `options`, and the section's loop and optimizer settings."""
    settings, loop, optimizer = grpo_training({**BASE, **options}, where="grpo")
    grpo = GRPO(settings, tokenizer=FakeTokenizer(), rewards=rewards, task="arithmetic",
                mesh=make_mesh({"data": -1}))
    return grpo, loop, optimizer


def test_informative_groups_are_those_whose_valid_rewards_differ():
    total = np.array([1, 1, 1, 1,   0, 1, 0, 0,   np.nan, 2, 2, 2,   np.nan, 5, np.nan, 7,   4, np.nan, np.nan, np.nan])
    valid = np.isfinite(total)
    valid[[8, 12, 14, 17, 18, 19]] = False
    np.testing.assert_array_equal(informative_groups(total, valid, 4), [False, True, False, True, False])
    # an invalid row's value is not read, whatever it holds
    np.testing.assert_array_equal(informative_groups(np.nan_to_num(total, nan=9.0), valid, 4),
                                  [False, True, False, True, False])


def test_settings_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="oversample=2.*set dynamic_sampling=True"):
        grpo_training({**BASE, "oversample": 2.0}, where="grpo")
    with pytest.raises(ValueError, match="oversample >= 1"):
        grpo_training({**BASE, "dynamic_sampling": True, "oversample": 0.5}, where="grpo")
    with pytest.raises(ValueError, match="dynamic_sampling_rounds=0"):
        grpo_training({**BASE, "dynamic_sampling": True, "dynamic_sampling_rounds": 0}, where="grpo")
    with pytest.raises(ValueError, match="reinforce_pp"):
        grpo_training({**BASE, "dynamic_sampling": True, "advantage_estimator": "reinforce_pp"}, where="grpo")
    assert stage(None, dynamic_sampling=True, oversample=1.5, prompts_per_step=10).prompts_per_round == 15
    assert stage(None, dynamic_sampling=True, oversample=1.1, prompts_per_step=10).prompts_per_round == 11
    assert stage(None, prompts_per_step=10).prompts_per_round == 10


# ---- no group filtered: plain GRPO, bit for bit, with the real sampler ---------------------------------

def new_model():
    """The tiny model with fixed weights; a new one for each state, since a train step donates its buffers."""
    return fixed_model(tiny_config(vocab_size=VOCAB, num_layers=1))


def test_when_no_group_is_filtered_it_is_plain_grpo_bit_for_bit():
    """Every group informative (distinct rewards), oversample 1: the batches (tokens, masks, advantages,
    old and reference log-probs), the metrics and the update after them are plain GRPO's, to the bit.
    Prompts of 3 to 9 words: left padding; the sampler's stop token: ragged completions."""
    options = dict(num_iterations=2, beta=0.04, mask_truncated=True, advantage_scale="batch", prompts_per_step=4,
                   max_new_tokens=12)
    data = examples([1, 1, 1, 1], words=[3, 9, 5, 7])
    results = []
    for dynamic in (False, True):
        grpo = stage(FakeRewards(distinct=True), dynamic_sampling=dynamic, **options)
        state = train_state_from_model(new_model(), optax.adam(1e-2), grpo.mesh)
        grpo.set_reference(state)
        batches, metrics = grpo.make_batches(state, data, jax.random.key(3))
        step = make_train_step(grpo.objective(), state, grpo.mesh)  # per state: its graphdef is static
        for i, batch in enumerate(batches):
            state, _ = step(state, batch, jax.random.key(i))
        results.append((batches, metrics, jax.device_get(state.params)))
    (plain, plain_metrics, plain_params), (dynamic, dynamic_metrics, dynamic_params) = results
    assert len(plain) == len(dynamic) == 2
    lengths = np.asarray(plain[0].completion_mask).sum(axis=1)
    assert len(set(lengths.tolist())) > 1  # the check covers ragged rows
    for a, b in zip(plain, dynamic):
        assert a.completion_columns == b.completion_columns and a.rows_per_group == b.rows_per_group
        for name in ("tokens", "attention_mask", "completion_mask", "advantages", "old_logps", "ref_logps"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert {k: v for k, v in dynamic_metrics.items() if not k.startswith(("dynamic/", "time/"))} == \
        {k: v for k, v in plain_metrics.items() if not k.startswith("time/")}
    assert dynamic_metrics["dynamic/groups_kept"] == 4 and dynamic_metrics["dynamic/groups_masked"] == 0
    jax.tree.map(np.testing.assert_array_equal, plain_params, dynamic_params)


# ---- saturated groups: keep, carry, sample again, mask ------------------------------------------------

@pytest.fixture
def fake_rollout(monkeypatch):
    """The sampler replaced: left-padded prompts, completions of `max_new_tokens` 5s with log-probs drawn from the
    prompts' lengths (the same prompts, the same draws); the calls recorded."""
    calls = []

    def fake(graphdef, params, tokenizer, prompts, rng, *, repeat, max_prompt_length, max_new_tokens, mesh, **_):
        calls.append([len(p) for p in prompts])
        prompt_tokens, prompt_mask = pad_left(prompts, tokenizer.pad_id, repeat=repeat)
        rows = len(prompt_tokens)
        tokens = np.full((rows, max_new_tokens), 5, np.int32)
        logprobs = -np.random.default_rng(calls[-1]).random(tokens.shape, np.float32)
        samples = SampleOutput(jnp.asarray(tokens), jnp.asarray(logprobs), jnp.ones_like(jnp.asarray(tokens)),
                               jnp.full(rows, max_new_tokens), jnp.asarray(prompt_tokens), jnp.asarray(prompt_mask))
        return Rollout(samples, ["7"] * rows, np.full(rows, max_new_tokens))

    monkeypatch.setattr(grpo_module, "rollout", fake)
    return calls


def test_plain_and_dynamic_batches_choose_the_same_widths(monkeypatch):
    """One width rule (`rollout.prompt_width`, `rollout.completion_width`): for the same prompts and completion
    lengths, plain GRPO's batch (rollout, `trim_to_longest`) and dynamic sampling's (`assemble`) have the same
    columns. Expected widths by hand: at least 64 completion columns, multiples of 32 from 64 tokens, of 64 from
    128, never more than the sampler's 150; the longer prompt's 85 tokens pad to 96 columns (multiples of 16 from
    64 tokens)."""
    longest = {}

    def fake(graphdef, params, tokenizer, prompts, rng, *, repeat, max_prompt_length, max_new_tokens, mesh, **_):
        prompt_tokens, prompt_mask = pad_left(prompts, tokenizer.pad_id, width=prompt_width(
            max(map(len, prompts)), max_prompt_length), repeat=repeat)
        lengths = np.array([longest["n"], 3, 5, 2] * (len(prompt_tokens) // 4))
        mask = (np.arange(max_new_tokens) < lengths[:, None]).astype(np.int32)
        samples = SampleOutput(jnp.asarray(mask * 5), jnp.zeros(mask.shape), jnp.asarray(mask), jnp.asarray(lengths),
                               jnp.asarray(prompt_tokens), jnp.asarray(prompt_mask))
        return Rollout(samples, ["7"] * len(lengths), lengths)

    monkeypatch.setattr(grpo_module, "rollout", fake)
    data = examples([1, 1], words=[3, 9])
    widths = {}
    for dynamic in (False, True):
        grpo = stage(FakeRewards(distinct=True), dynamic_sampling=dynamic, max_new_tokens=150)
        state = train_state_from_model(new_model(), optax.identity(), grpo.mesh)
        grpo.set_reference(state)
        for n in (1, 9, 64, 70, 100, 130, 150):
            longest["n"] = n
            (batch,), _ = grpo.make_batches(state, data, jax.random.key(0))
            widths[dynamic, n] = (batch.tokens.shape[1] - batch.completion_columns, batch.completion_columns)
    renderer = grpo.renderer
    tokens = max(len(renderer.encode(text)) for text in renderer.texts(data, grpo.task))
    assert tokens == 85
    prompt = 96
    assert [widths[True, n] for n in (1, 9, 64, 70, 100, 130, 150)] == \
        [widths[False, n] for n in (1, 9, 64, 70, 100, 130, 150)] == \
        [(prompt, 64), (prompt, 64), (prompt, 64), (prompt, 96), (prompt, 128), (prompt, 150), (prompt, 150)]


def prompt_lengths(batch) -> list[int]:
    """The prompt length of each group: which example it is (examples of distinct lengths)."""
    prompt = np.asarray(batch.attention_mask)[:, :batch.tokens.shape[1] - batch.completion_columns]
    return prompt.sum(axis=1)[::2].tolist()


def test_saturated_groups_are_replaced_carried_and_at_last_masked(fake_rollout):
    """P = 2 groups a step, 4 prompts a round (oversample 2), 2 rounds at most. In data order:
    step 1 samples 3 informative groups: trains 2, carries 1; step 2 finds none in its first round and
    one in its second: trains the carried one and that; step 3 finds none in two rounds: 2 masked groups."""
    flags = [1, 1, 1, 0,   0, 0, 0, 0,   0, 0, 0, 1,   0, 0, 0, 0,   0, 0, 0, 0]
    grpo = stage(FakeRewards(), dynamic_sampling=True, oversample=2.0, dynamic_sampling_rounds=2)
    data = examples(flags, words=[2 * i + 1 for i in range(len(flags))])  # a prompt's length names its example
    iterator = grpo.prompt_iterator(data, seed=0)
    order = iterator.epoch_order(0)
    for position, index in enumerate(order):  # the flags above are in the order the data comes
        data[index]["mixed"] = bool(flags[position])
    state = train_state_from_model(new_model(), optax.identity(), grpo.mesh)
    grpo.set_reference(state)
    steps = [grpo.make_batches(state, next(iterator), jax.random.key(step)) for step in range(3)]
    length = dict(zip(order.tolist(), [n for call in fake_rollout for n in call]))  # the rollouts' prompts

    assert [len(call) for call in fake_rollout] == [4, 4, 4, 4, 4]  # one shape for every rollout
    (first,), metrics = steps[0]
    assert prompt_lengths(first) == [length[order[0]], length[order[1]]]
    np.testing.assert_array_equal(first.advantages != 0, True)  # every row trained carries a signal
    assert {k: v for k, v in metrics.items() if k.startswith("dynamic/")} == {
        "dynamic/rounds": 1, "dynamic/groups_sampled": 4, "dynamic/groups_kept": 3, "dynamic/groups_carried": 1,
        "dynamic/groups_dropped": 0, "dynamic/groups_masked": 0, "dynamic/groups_from_last_step": 0}
    assert metrics["reward"] == pytest.approx((0.5 * 3 + 1) / 4)  # of every row sampled, not of those trained

    (second,), metrics = steps[1]
    assert prompt_lengths(second) == [length[order[2]], length[order[11]]]  # the carried group first
    np.testing.assert_array_equal(second.advantages != 0, True)
    assert second.tokens.shape[0] == first.tokens.shape[0]
    assert metrics["dynamic/rounds"] == 2 and metrics["dynamic/groups_sampled"] == 8
    assert metrics["dynamic/groups_kept"] == 1 and metrics["dynamic/groups_from_last_step"] == 1
    assert metrics["dynamic/groups_carried"] == 0 and metrics["dynamic/groups_masked"] == 0

    (third,), metrics = steps[2]
    assert metrics["dynamic/rounds"] == 2 and metrics["dynamic/groups_masked"] == 2
    assert third.tokens.shape[0] == first.tokens.shape[0]
    np.testing.assert_array_equal(third.completion_mask, 0)  # masked: no token enters the loss
    np.testing.assert_array_equal(third.advantages, 0)
    assert iterator.state()["index"] == 0 and iterator.state()["epoch"] == 1  # 20 prompts drawn: all of epoch 0


def test_the_carry_survives_a_checkpoint(fake_rollout):
    """The groups carried past a step go into the data's state (the checkpoint's host JSON): a new stage that
    restores it trains the next step exactly as the uninterrupted one, the sampler's log-probs of the carried
    groups included (num_iterations 2 keeps them); a state from a run with other settings is refused."""
    flags = [1, 1, 1, 0,   0, 0, 0, 0,   0, 0, 0, 1,   0, 0, 0, 0]
    options = dict(dynamic_sampling=True, oversample=2.0, dynamic_sampling_rounds=2, num_iterations=2)
    data = examples(flags, words=[2 * i + 1 for i in range(len(flags))])

    def start(**more):
        grpo = stage(FakeRewards(), **options, **more)
        iterator = grpo.prompt_iterator(data, seed=0)
        for position, index in enumerate(iterator.epoch_order(0)):
            data[index]["mixed"] = bool(flags[position])
        state = train_state_from_model(new_model(), optax.identity(), grpo.mesh)
        grpo.set_reference(state)
        return grpo, iterator, state

    grpo, iterator, state = start()
    grpo.make_batches(state, next(iterator), jax.random.key(0))
    saved = json.loads(json.dumps(iterator.state()))  # as the checkpoint writes and reads it
    assert saved["carry"] is not None and len(saved["carry"]["prompts"]) == 1
    uninterrupted = grpo.make_batches(state, next(iterator), jax.random.key(1))

    grpo, iterator, state = start()
    iterator.restore(saved)
    resumed = grpo.make_batches(state, next(iterator), jax.random.key(1))
    assert resumed[1]["dynamic/groups_from_last_step"] == 1 and resumed[1]["dynamic/groups_masked"] == 0
    assert {k: v for k, v in resumed[1].items() if not k.startswith("time/")} == \
        {k: v for k, v in uninterrupted[1].items() if not k.startswith("time/")}
    for a, b in zip(uninterrupted[0], resumed[0]):
        for name in ("tokens", "attention_mask", "completion_mask", "advantages", "old_logps"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert np.asarray(resumed[0][0].old_logps).any()  # the carried log-probs are the sampler's, not zeros

    grpo, iterator, state = start(num_generations=4)
    with pytest.raises(ValueError, match="num_generations=2 .* max_new_tokens=8"):
        iterator.restore(saved)


def test_without_the_iterator_a_second_round_says_what_to_do(fake_rollout):
    grpo = stage(FakeRewards(), dynamic_sampling=True, dynamic_sampling_rounds=2)
    state = train_state_from_model(new_model(), optax.identity(), grpo.mesh)
    grpo.set_reference(state)
    with pytest.raises(RuntimeError, match="prompt_iterator"):
        grpo.make_batches(state, examples([0, 0]), jax.random.key(0))


# ---- the loop: no compilation after step 1, the metrics logged --------------------------------------

def test_the_loop_trains_full_carried_and_masked_steps_without_compiling_again(tmp_path):
    """The real sampler on the tiny model, 3 steps through `run_training`: step 1 keeps 3 of 3 groups (one
    carried), step 2 takes the carried one and samples a second round, step 3 masks both groups. After
    step 1 nothing compiles: rollouts, reference log-probs and train step keep their shapes."""
    flags = [1, 1, 1,   0, 0, 0,   1, 0, 0,   0, 0, 0,   0, 0, 0]
    grpo, loop, optimizer = stage_and_loop(FakeRewards(), dynamic_sampling=True, oversample=1.5,
                                           dynamic_sampling_rounds=2, beta=0.04, save_every=1)
    model = new_model()
    data = examples(flags)
    iterator = grpo.prompt_iterator(data, seed=0)
    for position, index in enumerate(iterator.epoch_order(0)):
        data[index]["mixed"] = bool(flags[position])
    grpo.set_reference(train_state_from_model(model, optax.identity(), grpo.mesh))  # copies: beta > 0
    compiles, marks = [], []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    def make_batches(state, examples, rng):
        marks.append(len(compiles))
        return grpo.make_batches(state, examples, rng)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run_training(loop, workdir=tmp_path, model=model, optimizer=optimizer.optimizer(loop.steps),
                     loss_fn=grpo.objective(), data=iterator, make_batches=make_batches, mesh=grpo.mesh,
                     progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "jit(train_step)" in compiles[:marks[1]]  # the counter sees step 1's compilations
    assert compiles[marks[1]:] == []
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dynamic = [{k.split("/")[1]: row[k] for k in row if k.startswith("dynamic/")} for row in rows]
    assert [(d["rounds"], d["groups_sampled"], d["groups_kept"], d["groups_carried"], d["groups_masked"])
            for d in dynamic] == [(1, 3, 3, 1, 0), (2, 6, 1, 0, 0), (2, 6, 0, 0, 2)]


# ---- the carry survives a checkpoint; two processes choose as one --------------------------------------

def training_run(workdir, params=None) -> tuple[list[dict], dict]:
    """A run's metrics.jsonl rows (timings left out), and its final parameters (`params`, or params.npz
    beside the workdir)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if not k.startswith("time/") and k != "step_seconds"} for row in rows]
    return rows, jax.device_get(params) if params is not None else dict(np.load(workdir.parent / "params.npz"))


@pytest.mark.slow  # three runs of the tiny model through the loop, each compiling: 164 s on 2 busy cores
def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """3 steps (`multiprocess_dynamic_sampling.FLAGS`: step 2 carries two groups to step 3) through `run_training`
    with the real sampler, once straight through and once stopped by SIGTERM after step 2 (its checkpoint) and
    relaunched with a new stage: the same metrics and the same parameters, bit for bit."""

    def run(workdir, stop_after=None):
        grpo, loop, optimizer = stage_and_loop(FakeRewards(), **{**SECTION, "steps": 3, "save_every": 1})
        data = examples(FLAGS, words=[2 * i + 1 for i in range(len(FLAGS))])
        iterator = grpo.prompt_iterator(data, seed=0)
        for position, index in enumerate(iterator.epoch_order(0)):
            data[index]["mixed"] = bool(FLAGS[position])
        grpo.set_reference(train_state_from_model(new_model(), optax.identity(), grpo.mesh))
        made = []

        def make_batches(state, examples, rng):
            made.append(1)
            if len(made) == stop_after:  # a scheduler's notice during the step: the loop saves it and stops
                signal.raise_signal(signal.SIGTERM)
            return grpo.make_batches(state, examples, rng)

        result = run_training(loop, workdir=workdir, model=new_model(), optimizer=optimizer.optimizer(loop.steps),
                              loss_fn=grpo.objective(), data=iterator, make_batches=make_batches, mesh=grpo.mesh,
                              progress=False)
        return result, training_run(workdir, params=result.state.params)

    _, (straight, straight_params) = run(tmp_path / "straight")
    stopped, _ = run(tmp_path / "resumed", stop_after=2)
    assert not stopped.completed
    _, (resumed, resumed_params) = run(tmp_path / "resumed")
    assert [row["dynamic/groups_from_last_step"] for row in straight] == [0, 1, 2]  # the checkpoint held two
    assert resumed == straight
    jax.tree.map(np.testing.assert_array_equal, resumed_params, straight_params)


@pytest.mark.slow  # three JAX processes (1 + 2), 284 s on 2 cores shared with a training run (load ~6)
def test_two_processes_choose_and_train_the_groups_one_process_would(tmp_path):
    """4 steps through `run_training` in which groups are filtered, carried, dropped and masked
    (`multiprocess_dynamic_sampling.FLAGS`: process 0 would keep one group of step 1, process 1 two),
    as 1 process x 2 devices and as 2 processes x 1 device: the same groups in the same order, each
    process training its half, so the metrics (1e-5 relative) and the parameters (1e-5) agree."""
    runs = {}
    for name, processes, devices in (("one", 1, 2), ("two", 2, 1)):
        (tmp_path / name).mkdir()
        runs[name] = launch("tests.support.multiprocess_dynamic_sampling", ["--out", str(tmp_path / name)],
                            processes=processes, devices=devices, log_dir=tmp_path, name=name)
    for run in runs.values():
        wait(run, timeout=600)
    (one, one_params), (two, two_params) = (training_run(tmp_path / name / "run") for name in ("one", "two"))
    counts = [tuple(row[f"dynamic/{k}"] for k in ("rounds", "groups_kept", "groups_carried", "groups_dropped",
                                                  "groups_masked", "groups_from_last_step")) for row in one]
    assert counts == EXPECTED
    assert [set(row) for row in two] == [set(row) for row in one]
    for step, (a, b) in enumerate(zip(two, one), 1):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), f"step {step}: {key}"
    assert set(two_params) == set(one_params)
    worst = max(float(np.abs(two_params[k] - one_params[k]).max()) for k in one_params)
    assert worst <= 1e-5, f"parameters differ by up to {worst:.1e}"
    initial = {"/".join(map(str, path)): np.asarray(v)
               for path, v in nnx.to_flat_state(nnx.state(new_model(), nnx.Param))}
    moved = max(float(np.abs(one_params[k] - initial[k]).max()) for k in one_params)
    assert moved > 1e-3  # the steps trained: the runs agree on updates, not on an unchanged model
    print(f"losses {[row['loss'] for row in one]} vs {[row['loss'] for row in two]}; "
          f"parameters differ by up to {worst:.1e}, moved by up to {moved:.1e}")
