"""Every GRPO option set in a config section reaches what the loss computes (one test per option).

A section goes through the same path as an experiment's `config.grpo`
(`grpo_training(section)` -> `GRPO`), and the loss, the
advantages, the rollout request or the update batches are compared with those of the
default settings and with the primitive (`r1jax.losses`) called with that option.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.losses import group_advantages, grpo_loss
from r1jax.models import ModelConfig, Transformer
from r1jax.pipelines.settings import grpo_training
from r1jax.rewards import RewardResult
from r1jax.rollout import Rollout, RolloutBatch
from r1jax.sampling import SampleOutput
from r1jax.sharding import make_mesh
from r1jax.train import grpo as grpo_module
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.objectives import sequence_logprobs
from r1jax.train.state import train_state_from_model

BASE = dict(steps=1, learning_rate=1e-3, num_generations=4, prompts_per_step=2, max_new_tokens=6, beta=0.0)
VOCAB = 32


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=64)
    return Transformer(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch(model):
    """8 rows of 4 prompt + 6 completion tokens in 2 groups of 4 (num_generations); old and reference
    log-probs moved off the policy's."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, (8, 10))
    tokens[:, :4] = np.repeat(tokens[::4, :4], 4, axis=0)  # a rollout's: each group of 4 shares its prompt
    tokens = jnp.asarray(tokens, jnp.int32)
    lengths = np.array([6, 2, 5, 3, 6, 1, 4, 6])
    completion = np.arange(6)[None, :] < lengths[:, None]
    completion_mask = jnp.asarray(np.concatenate([np.zeros((8, 4), bool), completion], axis=1), jnp.int32)
    attention_mask = jnp.asarray(np.concatenate([np.ones((8, 4), bool), completion], axis=1), jnp.int32)
    logps = sequence_logprobs(model(tokens, attention_mask=attention_mask), tokens)
    # ratios up to e^0.5: some tokens fall outside every clip range used below
    old = logps + jnp.asarray(rng.uniform(-0.5, 0.5, logps.shape), jnp.float32)
    ref = logps + jnp.asarray(rng.uniform(-1.0, 1.0, logps.shape), jnp.float32)
    advantages = jnp.asarray([1.5, -0.5, 0.8, -1.8, 0.3, -0.2, 1.1, -1.2], jnp.float32)
    batch = RolloutBatch(tokens, attention_mask, completion_mask, advantages=advantages, old_logps=old,
                         ref_logps=ref, rows_per_group=4)
    return batch, logps


def stage(**options) -> GRPO:
    settings, _, _ = grpo_training({**BASE, **options}, where="grpo")
    return GRPO(settings, tokenizer=FakeTokenizer(), rewards=None, task="arithmetic", mesh=make_mesh({"data": -1}))


def loss_of(model, batch, **options) -> float:
    batch, _ = batch
    tokens = int(batch.completion_mask.sum())
    loss, _ = stage(**options).objective()(model, batch, jax.random.key(0), tokens_per_microbatch=tokens)
    return float(loss)


def reference(batch, **options) -> float:
    """The primitive itself, with `options` on top of the defaults the objective passes."""
    kwargs = dict(epsilon_low=0.2, epsilon_high=None, beta=0.0, loss_type="grpo", importance_sampling_level="token",
                  max_completion_length=BASE["max_new_tokens"])
    kwargs.update(options)
    batch, logps = batch
    loss, _ = grpo_loss(logps, batch.old_logps, batch.ref_logps if kwargs["beta"] else None,
                        batch.advantages, batch.completion_mask, **kwargs)
    return float(loss)


@pytest.mark.parametrize("option, value", [
    ("beta", 0.3),
    ("epsilon_low", 0.05),
    ("epsilon_high", 0.45),
    ("loss_type", "bnpo"),
    ("loss_type", "dr_grpo"),
    ("loss_type", "dapo"),
    ("importance_sampling_level", "sequence"),
    ("loss_type", "cispo"),
])
def test_a_loss_option_changes_the_loss_as_the_primitive_does(model, batch, option, value):
    default = loss_of(model, batch)
    changed = loss_of(model, batch, **{option: value})
    assert changed != pytest.approx(default, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(changed, reference(batch, **{option: value}), rtol=1e-5, atol=1e-6)


def test_max_new_tokens_sets_the_dr_grpo_normaliser(model, batch):
    short = loss_of(model, batch, loss_type="dr_grpo")
    long = loss_of(model, batch, loss_type="dr_grpo", max_new_tokens=12)
    np.testing.assert_allclose(long, short * 6 / 12, rtol=1e-5)


# ---- options that act through the rollout ---------------------------------------------------------

class FakeTokenizer:
    """Just what GRPO's renderer and rollout read."""

    bos_id, eos_id, pad_id, vocab_size, chat_template = 1, 2, 0, VOCAB, None
    stop_ids = frozenset({2})

    def encode(self, text, add_bos=False):
        return ([1] if add_bos else []) + [3 + len(word) % 20 for word in text.split()]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return " | ".join(f"{m['role']}: {m['content']}" for m in messages) + " | assistant:"


class FakeRewards:
    """Rewards 0, 1, 2, ... per row: groups with different spreads."""

    names = ("arithmetic",)

    def submit(self, completions, examples):
        total = np.arange(len(completions), dtype=np.float32) ** 1.5
        result = RewardResult({"arithmetic": total}, total, np.ones(len(total), bool), {}, [])
        return type("Pending", (), {"result": lambda self: result})()


@pytest.fixture
def captured(monkeypatch):
    """Replace the sampler: record what GRPO asks of the rollout, return fixed completions."""
    calls = []

    def fake_rollout(graphdef, params, tokenizer, prompts, rng, *, repeat, max_prompt_length, max_new_tokens,
                     temperature, top_p, mesh, **_):
        calls.append(dict(prompts=prompts, repeat=repeat, max_prompt_length=max_prompt_length,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
        rows, width = len(prompts) * repeat, max(len(p) for p in prompts)
        prompt_tokens = np.ones((rows, width), np.int32)
        tokens = np.full((rows, max_new_tokens), 5, np.int32)
        mask = np.ones_like(tokens)
        samples = SampleOutput(jnp.asarray(tokens), jnp.zeros(tokens.shape), jnp.asarray(mask),
                               jnp.full(rows, max_new_tokens), jnp.asarray(prompt_tokens), jnp.ones_like(prompt_tokens))
        return Rollout(samples, ["7"] * rows, np.full(rows, max_new_tokens))

    monkeypatch.setattr(grpo_module, "rollout", fake_rollout)
    return calls


EXAMPLES = [{"expression": "1 + 2", "answer": "3"}, {"expression": "2 * 3", "answer": "6"}]


def make_batches(model, captured, **options):
    grpo = stage(**options)
    grpo.rewards = FakeRewards()
    state = train_state_from_model(model, optax.identity(), make_mesh({"data": -1}))
    grpo.set_reference(state)
    batches, metrics = grpo.make_batches(state, EXAMPLES, jax.random.key(0))
    return batches, captured[-1]


@pytest.mark.parametrize("option, value", [("temperature", 0.7), ("top_p", 0.9), ("max_new_tokens", 9),
                                           ("max_prompt_length", 77), ("num_generations", 3)])
def test_a_sampling_option_reaches_the_rollout(model, captured, option, value):
    _, request = make_batches(model, captured, **{option: value})
    key = "repeat" if option == "num_generations" else option
    assert request[key] == value
    _, default = make_batches(model, captured)
    assert default[key] != value


def test_advantage_scale_changes_the_advantages(model, captured):
    rewards = jnp.arange(8, dtype=jnp.float32) ** 1.5
    for scale in ("group", "batch", "none"):
        batches, _ = make_batches(model, captured, advantage_scale=scale)
        np.testing.assert_allclose(batches[0].advantages, group_advantages(rewards, 4, scale=scale), rtol=1e-6)
    group, _ = make_batches(model, captured)
    none, _ = make_batches(model, captured, advantage_scale="none")
    assert not np.allclose(group[0].advantages, none[0].advantages)


def test_num_iterations_repeats_the_rollout_with_its_own_old_logprobs(model, captured):
    batches, _ = make_batches(model, captured, num_iterations=3)
    assert len(batches) == 3 and all(b.old_logps is not None for b in batches)
    default, _ = make_batches(model, captured)
    assert len(default) == 1 and default[0].old_logps is None


def test_num_minibatches_splits_the_rollout_into_updates(model, captured):
    batches, _ = make_batches(model, captured, num_minibatches=2)
    assert [b.tokens.shape[0] for b in batches] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([b.advantages for b in batches]),
                                  make_batches(model, captured)[0][0].advantages)


def test_the_update_runs_on_the_columns_the_longest_completion_needs(model, captured, monkeypatch):
    """Rows that stopped at 3 and 70 of 200 tokens: the batch keeps padded_width(70) = 96 completion
    columns (and says so), its reference log-probs too, and the sampled tokens are all there."""
    fake = grpo_module.rollout

    def stopping_rollout(*args, **kwargs):
        out = fake(*args, **kwargs)
        lengths = np.where(np.arange(len(out.lengths)) % 2, 3, 70)
        mask = (np.arange(out.samples.tokens.shape[1]) < lengths[:, None]).astype(np.int32)
        samples = out.samples._replace(tokens=out.samples.tokens * mask, mask=jnp.asarray(mask),
                                       lengths=jnp.asarray(lengths))
        return Rollout(samples, out.completions, lengths)

    monkeypatch.setattr(grpo_module, "rollout", stopping_rollout)
    (batch,), request = make_batches(model, captured, max_new_tokens=200, beta=0.04)
    prompt_width = len(request["prompts"][0])
    assert batch.completion_columns == 96 and batch.tokens.shape[1] == prompt_width + 96
    assert batch.ref_logps.shape == batch.tokens.shape
    np.testing.assert_array_equal(batch.completion_mask.sum(axis=1), np.where(np.arange(8) % 2, 3, 70))


def test_template_and_system_prompt_change_the_prompts(model, captured):
    _, text = make_batches(model, captured, template="plain")
    _, chat = make_batches(model, captured, template="chat")
    _, system = make_batches(model, captured, template="chat", system_prompt="Be brief and exact.")
    assert len({str(text["prompts"]), str(chat["prompts"]), str(system["prompts"])}) == 3
    assert len(system["prompts"][0]) > len(chat["prompts"][0])


def test_unknown_and_bad_options_fail_naming_the_field():
    with pytest.raises(ValueError, match="config.grpo has no field 'betta'"):
        grpo_training({**BASE, "betta": 0.1}, where="grpo")
    with pytest.raises(ValueError, match="num_generations=1"):
        grpo_training({**BASE, "num_generations": 1}, where="grpo")
    with pytest.raises(ValueError, match="system_prompt"):
        grpo_training({**BASE, "template": "r1_zero", "system_prompt": "x"}, where="grpo")
    with pytest.raises(ValueError, match="loss_type='bogus'; choose one of"):
        grpo_training({**BASE, "loss_type": "bogus"}, where="grpo")
    with pytest.raises(ValueError, match="learning_rate=nan"):
        grpo_training({**BASE, "learning_rate": float("nan")}, where="grpo")


def test_every_settings_field_is_a_config_field():
    """The experiment modules' grpo sections name every GRPOSettings field: nothing is left unsettable."""
    import experiments.grpo_smollm2 as smollm2
    fields = {f.name for f in dataclasses.fields(GRPOSettings)}
    assert fields <= set(smollm2.get_config().grpo.keys())


# ---- issue 23: overlong shaping and filtering, advantage estimators, CISPO ---------------------------

from r1jax.losses import reinforce_pp_advantages, rloo_advantages  # noqa: E402
from r1jax.rewards.overlong import soft_overlong_punishment  # noqa: E402

REWARDS = np.arange(8, dtype=np.float32) ** 1.5  # FakeRewards'
LENGTHS = np.array([6, 2, 5, 3, 6, 1, 4, 6])  # of max_new_tokens = 6: rows 0, 4 and 7 drew the whole budget


@pytest.fixture
def ragged(captured, monkeypatch):
    """The fake rollout with the completion lengths `LENGTHS`: each row that stopped early ends with the
    stop token (2), and so does row 7, which stopped exactly at the budget; rows 0 and 4 were cut off."""
    fake = grpo_module.rollout

    def ragged_rollout(*args, **kwargs):
        out = fake(*args, **kwargs)
        width = out.samples.tokens.shape[1]
        lengths = np.minimum(LENGTHS, width)
        tokens = np.where(np.arange(width) < lengths[:, None], 5, 0)
        tokens[np.arange(8), lengths - 1] = 2
        tokens[[0, 4], lengths[[0, 4]] - 1] = 7  # no stop token: truncated
        mask = (np.arange(width) < lengths[:, None]).astype(np.int32)
        samples = out.samples._replace(tokens=jnp.asarray(tokens, jnp.int32), mask=jnp.asarray(mask),
                                       lengths=jnp.asarray(lengths))
        return Rollout(samples, out.completions, lengths)

    monkeypatch.setattr(grpo_module, "rollout", ragged_rollout)
    return captured


def batches_and_metrics(model, **options):
    grpo = stage(**options)
    grpo.rewards = FakeRewards()
    state = train_state_from_model(model, optax.identity(), make_mesh({"data": -1}))
    grpo.set_reference(state)
    return grpo.make_batches(state, EXAMPLES, jax.random.key(0))


def test_overlong_buffer_adds_dapos_length_penalty_to_the_rewards(model, ragged):
    """L_cache = 4 of L_max = 6: lengths 6, 2, 5, 3, 6, 1, 4, 6 cost -1, 0, -0.75, -0.25, -1, 0, -0.5, -1."""
    (batch,), metrics = batches_and_metrics(model, overlong_buffer=4)
    penalty = np.array([-1, 0, -0.75, -0.25, -1, 0, -0.5, -1])
    np.testing.assert_allclose(soft_overlong_punishment(LENGTHS, max_length=6, buffer=4), penalty)
    np.testing.assert_allclose(batch.advantages, group_advantages(REWARDS + penalty, 4), rtol=1e-6)
    assert metrics["reward/overlong"] == pytest.approx(penalty.mean())
    assert metrics["reward"] == pytest.approx((REWARDS + penalty).mean())
    (default,), default_metrics = batches_and_metrics(model)
    assert "reward/overlong" not in default_metrics
    assert not np.allclose(batch.advantages, default.advantages, atol=1e-3)


def test_mask_truncated_takes_cut_off_completions_out_of_the_loss(model, ragged):
    """Rows 0 and 4 drew the whole budget without a stop token: no token of theirs enters the loss;
    row 7 stopped exactly at the budget and stays. Advantages keep every row in the statistics."""
    (batch,), metrics = batches_and_metrics(model, mask_truncated=True)
    (default,), default_metrics = batches_and_metrics(model)
    np.testing.assert_array_equal(default.completion_mask.sum(axis=1), LENGTHS)
    np.testing.assert_array_equal(batch.completion_mask.sum(axis=1), np.where([1, 0, 0, 0, 1, 0, 0, 0], 0, LENGTHS))
    np.testing.assert_array_equal(batch.advantages, default.advantages)
    assert metrics["truncated_fraction"] == default_metrics["truncated_fraction"] == 2 / 8
    # and the step computes another loss: -mean_i A_i over the rows left (mu = 1, ratio 1)
    tokens = lambda b: int(b.completion_mask.sum())
    loss = lambda b: float(stage().objective()(model, b, None, tokens_per_microbatch=tokens(b))[0])
    assert loss(default) == pytest.approx(0, abs=1e-5)
    kept = np.array([0, 1, 1, 1, 0, 1, 1, 1], bool)
    np.testing.assert_allclose(loss(batch), -np.asarray(batch.advantages)[kept].sum() / 8, rtol=1e-5)


def test_rloo_estimator_gives_the_leave_one_out_advantages(model, captured):
    batches, _ = make_batches(model, captured, advantage_estimator="rloo")
    np.testing.assert_allclose(batches[0].advantages, rloo_advantages(REWARDS, 4), rtol=1e-6)
    default, _ = make_batches(model, captured)
    assert not np.allclose(batches[0].advantages, default[0].advantages, atol=1e-3)


def test_reinforce_pp_estimator_folds_the_kl_into_batch_normalised_returns(model, ragged):
    """beta = 0.3 weighs the k1 KL(pi_old || pi_ref) of each completion in its return; the loss has no
    KL term (the batch carries no reference log-probs). pi_old's log-probs here are the fake sampler's
    (0: temperature 1, so the sampler is the policy), pi_ref the model's; completions of different
    lengths have different KLs."""
    (batch,), metrics = batches_and_metrics(model, advantage_estimator="reinforce_pp", beta=0.3)
    ref = sequence_logprobs(model(batch.tokens, attention_mask=batch.attention_mask), batch.tokens)
    kl = np.asarray((batch.completion_mask * (0 - ref)).sum(axis=1))
    assert kl.min() > 1  # a random model: each token costs about log(32)
    np.testing.assert_allclose(batch.advantages, reinforce_pp_advantages(REWARDS, sequence_kl=kl, beta=0.3),
                               rtol=1e-4, atol=1e-5)
    assert metrics["kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert batch.ref_logps is None and batch.old_logps is None
    (no_kl,), _ = batches_and_metrics(model, advantage_estimator="reinforce_pp")
    np.testing.assert_allclose(no_kl.advantages, reinforce_pp_advantages(REWARDS), rtol=1e-6)
    assert not np.allclose(batch.advantages, no_kl.advantages, atol=1e-3)
    # the loss's beta is 0: the same loss as without any KL
    tokens = int(batch.completion_mask.sum())
    with_kl = stage(advantage_estimator="reinforce_pp", beta=0.3).objective()(
        model, batch, None, tokens_per_microbatch=tokens)
    without = stage(advantage_estimator="reinforce_pp").objective()(model, batch, None, tokens_per_microbatch=tokens)
    assert float(with_kl[0]) == float(without[0]) and "kl" not in with_kl[1]


def test_new_options_are_config_fields_and_bad_values_fail_naming_the_field():
    import experiments.grpo_smollm2 as smollm2
    section = smollm2.get_config().grpo
    assert section.overlong_buffer == 0 and section.mask_truncated is False
    assert section.advantage_estimator == "grpo"
    with pytest.raises(ValueError, match="advantage_estimator='ppo'; choose one of"):
        grpo_training({**BASE, "advantage_estimator": "ppo"}, where="grpo")
    with pytest.raises(ValueError, match="advantage_scale='none' scales the grpo estimator only"):
        grpo_training({**BASE, "advantage_estimator": "rloo", "advantage_scale": "none"}, where="grpo")
    with pytest.raises(ValueError, match="overlong_buffer=7"):
        grpo_training({**BASE, "overlong_buffer": 7}, where="grpo")


def test_the_step_logs_reflection_and_the_accuracy_of_rows_that_reflect(model, captured, monkeypatch):
    """R1's "aha moment" measures in the step's metrics, against a hand count over the 8 rows."""
    fake = grpo_module.rollout
    texts = ["Wait, 7", "7", "let me check: 6", "6", "7", "re-check: 5", "5", "8"]
    accuracy = np.array([1, 0, 1, 1, 0, 0, 1, 1], np.float32)

    def reflective_rollout(*args, **kwargs):
        return fake(*args, **kwargs)._replace(completions=texts)

    class AccuracyRewards(FakeRewards):
        def submit(self, completions, examples):
            assert completions == texts
            result = RewardResult({"arithmetic": accuracy}, accuracy, np.ones(8, bool), {}, [])
            return type("Pending", (), {"result": lambda self: result})()

    monkeypatch.setattr(grpo_module, "rollout", reflective_rollout)
    grpo = stage()
    grpo.rewards = AccuracyRewards()
    state = train_state_from_model(model, optax.identity(), make_mesh({"data": -1}))
    grpo.set_reference(state)
    _, metrics = grpo.make_batches(state, EXAMPLES, jax.random.key(0))
    assert metrics["reflection_rate"] == pytest.approx(3 / 8)  # rows 0, 2, 5
    assert metrics["accuracy_reflecting"] == pytest.approx(2 / 3)
    assert metrics["accuracy_not_reflecting"] == pytest.approx(3 / 5)  # rows 1, 3, 4, 6, 7
