"""The train state, the optimizer and the one jitted step (GRPO and SFT) on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.losses import group_advantages
from r1jax.sharding import make_global_batch, make_mesh
from r1jax.train import (RolloutBatch, SFTBatch, TrainState, create_train_state, grpo_objective, make_logprobs_fn,
                         make_optimizer, make_schedule, make_train_step, sequence_logprobs, sft_objective)
from tests.support.tiny import fixed_model, tiny_config  # fixed weights: compile in ~1 s, not ~5 s

CONFIG = tiny_config()
BATCH, LENGTH, PROMPT = 8, 10, 4


def host_copy(tree):
    return jax.tree.map(np.array, tree)


@jax.jit
def device_copy(state: TrainState) -> TrainState:
    """A fresh state to hand to a step: the step donates (deletes) its input."""
    return jax.tree.map(jnp.copy, state)


def grpo_batch(seed=0, **overrides):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CONFIG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    attention_mask = np.ones((BATCH, LENGTH), np.int32)
    attention_mask[1, :2] = 0  # left padding
    tokens[1, :2] = 0
    completion_mask = np.zeros((BATCH, LENGTH), np.int32)
    completion_mask[:, PROMPT:] = 1
    completion_mask[::2, -3:] = 0  # completions of different lengths
    arrays = {"tokens": tokens, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "advantages": rng.normal(size=BATCH).astype(np.float32)}
    rows_per_group = overrides.pop("rows_per_group", 1)
    arrays.update(overrides)
    return RolloutBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}, rows_per_group=rows_per_group)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def initial_state(mesh):
    # eps=1e-3 keeps Adam's update ~linear in small gradients, so comparing parameters
    # after one update compares gradients (eps=1e-8 would blow up rounding in tiny ones)
    tx = make_optimizer(3e-3, schedule="constant", weight_decay=0.1, eps=1e-3)
    return create_train_state(lambda: fixed_model(CONFIG), tx, mesh)


@pytest.fixture(scope="module")
def forward(initial_state):
    """Logits of the initial model, jitted: eager op-by-op execution compiles every op."""
    logits = jax.jit(lambda params, batch: initial_state.model(params)(
        batch.tokens, attention_mask=batch.attention_mask))
    return lambda batch: logits(initial_state.params, batch)


@pytest.fixture(scope="module")
def dapo_steps(mesh, initial_state):
    """Token-sum ("dapo") GRPO steps with 1 and with 2 microbatches, compiled once for the module."""
    objective = grpo_objective(beta=0.0, loss_type="dapo")
    return {m: make_train_step(objective, initial_state, mesh, num_microbatches=m) for m in (1, 2)}


def test_later_steps_do_not_recompile(mesh, initial_state, dapo_steps):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state, _ = dapo_steps[2](device_copy(initial_state), grpo_batch(), jax.random.key(0))
        jax.block_until_ready(state)
        first = list(compiles)
        compiles.clear()
        # the same shapes from other sources: make_global_batch, and a jitted function
        # whose output names the mesh (as a rollout computed on the mesh would)
        state, _ = dapo_steps[2](state, make_global_batch(host_copy(grpo_batch(seed=1)), mesh),
                                 jax.random.key(1))
        on_mesh = jax.jit(lambda b: b, out_shardings=NamedSharding(mesh, P()))(grpo_batch(seed=2))
        jax.block_until_ready(on_mesh)
        compiles.clear()
        state, metrics = dapo_steps[2](state, on_mesh, jax.random.key(2))
        jax.block_until_ready(metrics)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "jit(train_step)" in first  # the counter sees the step's compilation
    assert compiles == []
    assert int(state.step) == 3


def test_nonfinite_loss_skips_the_update(initial_state, dapo_steps):
    state = device_copy(initial_state)
    before = host_copy(state)
    poisoned = grpo_batch(advantages=np.array([np.nan] + [1.0] * (BATCH - 1), np.float32))
    state, metrics = dapo_steps[2](state, poisoned, jax.random.key(0))

    assert float(metrics["skipped"]) == 1 and int(metrics["skipped_steps"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    after = host_copy(state)
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    assert int(after.step) == 0 and int(after.skipped_steps) == 1

    state, metrics = dapo_steps[2](state, grpo_batch(), jax.random.key(0))
    assert float(metrics["skipped"]) == 0 and int(state.step) == 1 and int(state.skipped_steps) == 1
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), host_copy(state.params), before.params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_nonfinite_gradient_with_a_finite_loss_skips_too(mesh, initial_state):
    def finite_loss_nan_gradient(model, batch, rng, *, tokens_per_microbatch):
        # sqrt(|scale - 1|) at scale = 1: the value 0, the derivative inf * 0 = NaN
        return jnp.sqrt(jnp.abs(model.final_norm.scale[...] - 1.0)).sum(), {}

    step = make_train_step(finite_loss_nan_gradient, initial_state, mesh)
    before = host_copy(initial_state)
    state, metrics = step(device_copy(initial_state), grpo_batch(), jax.random.key(0))
    assert float(metrics["loss"]) == 0 and not np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["skipped"]) == 1 and int(state.skipped_steps) == 1 and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, host_copy(state.params), before.params)
    jax.tree.map(np.testing.assert_array_equal, host_copy(state.opt_state), before.opt_state)


def _one_step(step, state, batch):
    state, metrics = step(device_copy(state), batch, jax.random.key(0))
    return host_copy(state.params), {k: float(v) for k, v in metrics.items()}


def test_two_microbatches_equal_one_big_batch_grpo_dapo(initial_state, dapo_steps):
    batch = grpo_batch()
    whole, whole_metrics = _one_step(dapo_steps[1], initial_state, batch)
    split, split_metrics = _one_step(dapo_steps[2], initial_state, batch)
    np.testing.assert_allclose(split_metrics["loss"], whole_metrics["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split_metrics["grad_norm"], whole_metrics["grad_norm"], rtol=1e-5)
    assert whole_metrics["grad_norm"] > 1e-3  # a real gradient, not zero on both sides
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), split, whole)


def test_sft_loss_is_the_token_mean_of_the_whole_batch_over_microbatches(mesh, initial_state, forward):
    rollout_batch = grpo_batch()
    batch = SFTBatch(rollout_batch.tokens, rollout_batch.attention_mask, rollout_batch.completion_mask)
    step = make_train_step(sft_objective(), initial_state, mesh, num_microbatches=2)
    state, metrics = step(device_copy(initial_state), batch, jax.random.key(0))
    # the reference: mean token cross-entropy of the whole batch, from the logits by hand
    # (the microbatches, rows 0::2 and 1::2, hold 12 and 24 counted tokens: a mean of
    # their means would differ)
    logits = np.asarray(forward(batch), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.completion_mask)
    nll = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    expected = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert float(metrics["skipped"]) == 0 and int(state.step) == 1


def test_sequence_logprobs_are_aligned_with_tokens(mesh, initial_state, forward):
    batch = grpo_batch()
    logits = np.asarray(forward(batch), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens = np.asarray(batch.tokens)
    expected = np.zeros(tokens.shape)
    for b in range(BATCH):
        for t in range(1, LENGTH):  # token t is predicted by the logits at t - 1
            expected[b, t] = logp[b, t - 1, tokens[b, t]]
    np.testing.assert_allclose(sequence_logprobs(jnp.asarray(logits, jnp.float32), batch.tokens),
                               expected, atol=1e-5)
    logprobs_fn = make_logprobs_fn(initial_state, mesh, num_microbatches=2)
    np.testing.assert_allclose(logprobs_fn(initial_state.params, batch.tokens, batch.attention_mask),
                               expected, atol=1e-5)


def grouped_batch(group=2):
    """`grpo_batch` whose consecutive rows come in groups sharing one (left-padded) prompt, as in a rollout."""
    batch = grpo_batch(ref_logps=np.random.default_rng(1).normal(size=(BATCH, LENGTH)).astype(np.float32) * 0.1 - 2.0,
                       rows_per_group=group)
    shared = lambda x: x.at[:, :PROMPT].set(jnp.repeat(x[::group, :PROMPT], group, axis=0))
    return batch.replace(tokens=shared(batch.tokens), attention_mask=shared(batch.attention_mask))


def test_completion_columns_and_shared_prompts_change_no_number(mesh, initial_state):
    """GRPO's LM head at the completion positions only, and each group's prompt run once: the same
    log-probs, loss, metrics and update as the plain forward over every position, with 1 and 2
    microbatches."""
    batch = grouped_batch()
    columns = LENGTH - PROMPT  # the completion_mask is 0 before them
    logprobs = {(cols, group): make_logprobs_fn(initial_state, mesh, completion_columns=cols, rows_per_group=group,
                                                num_microbatches=2)(
        initial_state.params, batch.tokens, batch.attention_mask)
        for cols, group in ((None, 1), (columns, 1), (columns, 2))}
    full = logprobs[None, 1]
    for key in ((columns, 1), (columns, 2)):
        np.testing.assert_allclose(logprobs[key][:, -columns:], full[:, -columns:], atol=1e-6, err_msg=str(key))
        assert not np.any(np.asarray(logprobs[key][:, :-columns]))
    results = {}
    # the update: each change alone is checked above through the log-probs; here all at once
    for cols, group, micro in ((None, 1, 1), (columns, 2, 2)):
        objective = grpo_objective(beta=0.04, completion_columns=cols)
        step = make_train_step(objective, initial_state, mesh, num_microbatches=micro)
        results[cols, group, micro] = step(device_copy(initial_state), batch.replace(rows_per_group=group),
                                           jax.random.key(0))
    state_all, m_all = results[None, 1, 1]
    for key, (state, metrics) in results.items():
        for name in m_all:
            np.testing.assert_allclose(float(metrics[name]), float(m_all[name]), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{key} {name}")
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state_all.params)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(key))


def test_a_batch_cut_to_its_longest_completion_changes_no_number(mesh, initial_state):
    """`trim_to_longest`'s cut (the rollout's padding columns after every completion dropped, the
    batch's own `completion_columns` telling the objective and the log-probs where completions
    start): the same log-probs, metrics and update as over every sampled column."""
    padded = 3  # columns no completion reaches: padding after every row stopped
    batch = grouped_batch()
    extend = lambda x: jnp.pad(x, ((0, 0), (0, padded)))
    full = batch.replace(tokens=extend(batch.tokens), attention_mask=extend(batch.attention_mask),
                         completion_mask=extend(batch.completion_mask), completion_columns=LENGTH - PROMPT + padded)
    cut = batch.replace(completion_columns=LENGTH - PROMPT)
    logprobs_fn = make_logprobs_fn(initial_state, mesh, rows_per_group=2)
    ref = {name: logprobs_fn(initial_state.params, b.tokens, b.attention_mask, completion_columns=b.completion_columns)
           for name, b in (("full", full), ("cut", cut))}
    np.testing.assert_allclose(ref["cut"], ref["full"][:, :LENGTH], atol=1e-6)
    step = make_train_step(grpo_objective(beta=0.04), initial_state, mesh)  # the batch says its columns
    (state_full, m_full), (state_cut, m_cut) = (
        step(device_copy(initial_state), b.replace(ref_logps=ref[name] * 1.01), jax.random.key(0))
        for name, b in (("full", full), ("cut", cut)))
    for name in m_full:
        np.testing.assert_allclose(float(m_cut[name]), float(m_full[name]), rtol=1e-5, atol=1e-7, err_msg=name)
    for a, b in zip(jax.tree.leaves(state_cut.params), jax.tree.leaves(state_full.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("settings", [  # the first combines most; the others (25 s each) are slow
    dict(attention="blockwise", attention_block=2, head_chunk_size=3, remat="block"),
    pytest.param(dict(remat="dots_saveable"), marks=pytest.mark.slow),
    pytest.param(dict(remat="attention", attention="blockwise", attention_block=4), marks=pytest.mark.slow)])
def test_long_completion_settings_change_no_number(mesh, initial_state, settings):
    """What long completions need (blockwise attention over several blocks, the LM head in chunks of
    one column, remat policies), against the default model: the same GRPO metrics and update, with
    shared prompts and two microbatches."""
    batch = grouped_batch()
    tx = make_optimizer(3e-3, schedule="constant", weight_decay=0.1, eps=1e-3)
    objective = grpo_objective(beta=0.04, completion_columns=LENGTH - PROMPT)
    results = []
    for config in (CONFIG, CONFIG.replace(**settings)):
        state = create_train_state(lambda: fixed_model(config), tx, mesh)
        results.append(make_train_step(objective, state, mesh, num_microbatches=2)(state, batch, jax.random.key(0)))
    (state, metrics), (default_state, default_metrics) = results[1], results[0]
    for name in default_metrics:
        np.testing.assert_allclose(float(metrics[name]), float(default_metrics[name]), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(default_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_rows_that_do_not_share_their_prompt_skip_the_update(mesh, initial_state):
    batch = grouped_batch()
    batch = batch.replace(tokens=batch.tokens.at[3, PROMPT - 2].add(1))  # row 3's prompt differs from row 2's
    step = make_train_step(grpo_objective(beta=0.04, completion_columns=LENGTH - PROMPT), initial_state, mesh)
    state, metrics = step(device_copy(initial_state), batch, jax.random.key(0))
    assert float(metrics["skipped"]) == 1 and int(state.step) == 0
    with pytest.raises(ValueError, match="whole groups of 4 rows"):
        make_train_step(grpo_objective(beta=0.0), initial_state, mesh, num_microbatches=4)(
            device_copy(initial_state), batch.replace(rows_per_group=4), jax.random.key(0))


def test_grpo_learns_a_bandit(initial_state, dapo_steps):
    """Reward 1 for one chosen first token: its probability climbs from ~1/V to > 0.9.

    One group of BATCH samples of one left-padded prompt per step; the completion is the
    single token after the prompt.
    """
    target = 7
    prompt = jnp.tile(jnp.arange(LENGTH - 1, dtype=jnp.int32) % 5, (BATCH, 1)).at[:, :2].set(0)
    prompt_mask = jnp.ones_like(prompt).at[:, :2].set(0)
    graphdef = initial_state.graphdef

    @jax.jit
    def rollout(params, rng):
        logits = nnx.merge(graphdef, params)(prompt, attention_mask=prompt_mask)[:, -1]
        completion = jax.random.categorical(rng, logits)
        rewards = (completion == target).astype(jnp.float32)
        batch = RolloutBatch(tokens=jnp.concatenate([prompt, completion[:, None]], axis=1),
                             attention_mask=jnp.pad(prompt_mask, ((0, 0), (0, 1)), constant_values=1),
                             completion_mask=jnp.zeros((BATCH, LENGTH), jnp.int32).at[:, -1].set(1),
                             advantages=group_advantages(rewards, BATCH))
        return batch, jax.nn.softmax(logits[0])[target]

    state = device_copy(initial_state)
    rng = jax.random.key(0)
    probabilities = []
    for _ in range(300):
        rng, rollout_rng, step_rng = jax.random.split(rng, 3)
        batch, probability = rollout(state.params, rollout_rng)
        probabilities.append(float(probability))
        if probabilities[-1] > 0.9:
            break
        state, metrics = dapo_steps[1](state, batch, step_rng)
    assert probabilities[0] < 3 / CONFIG.vocab_size
    assert probabilities[-1] > 0.9, probabilities[::10]
    assert int(state.skipped_steps) == 0


def test_schedules():
    cosine = make_schedule(1.0, warmup_steps=10, total_steps=110)
    np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                               [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    constant = make_schedule(2.0, warmup_steps=4, total_steps=100, schedule="constant")
    np.testing.assert_allclose([constant(0), constant(2), constant(4), constant(99)], [0, 1, 2, 2], atol=1e-6)
    assert float(make_schedule(3.0, 0, 1, schedule="constant")(0)) == 3.0
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(1.0, 0, 10, schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(1.0, 10, 10)


def test_weight_decay_spares_norms_and_clipping_bounds_the_update():
    params = {"matrix": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    tx = make_optimizer(0.1, schedule="constant", weight_decay=0.5, max_grad_norm=1.0)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # AdamW with zero gradients: only the decoupled decay, -lr * wd * p, and only on matrices
    np.testing.assert_allclose(updates["matrix"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["scale"], np.zeros(2))
    # clipping: a gradient of norm 100 becomes one of norm 1 before Adam (visible in mu)
    huge = {"matrix": jnp.full((2, 2), 50.0), "scale": jnp.zeros((2,))}
    tx = make_optimizer(0.1, schedule="constant", b1=0.0, max_grad_norm=1.0)
    _, opt_state = tx.update(huge, tx.init(params), params)
    mu = opt_state[1][0].mu
    np.testing.assert_allclose(mu["matrix"], np.full((2, 2), 0.5), rtol=1e-6)


def test_bad_batches_are_rejected_with_a_clear_message(mesh, initial_state, dapo_steps):
    with pytest.raises(ValueError, match="multiple of 2"):
        dapo_steps[2](device_copy(initial_state), jax.tree.map(lambda v: v[:3], grpo_batch()),
                      jax.random.key(0))
    with pytest.raises(ValueError, match="same leading batch size"):
        dapo_steps[1](device_copy(initial_state), grpo_batch().replace(advantages=jnp.zeros(BATCH - 1)),
                      jax.random.key(0))
    with pytest.raises(TypeError, match="not a train batch"):  # a dict of the old layout
        dapo_steps[1](device_copy(initial_state), {"tokens": grpo_batch().tokens}, jax.random.key(0))
    with pytest.raises(ValueError, match="no advantages"):
        dapo_steps[1](device_copy(initial_state), grpo_batch().replace(advantages=None), jax.random.key(0))
    step = make_train_step(grpo_objective(beta=0.04), initial_state, mesh)
    with pytest.raises(ValueError, match="ref_logps"):
        step(device_copy(initial_state), grpo_batch(), jax.random.key(0))
