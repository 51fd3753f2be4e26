"""The model-based reward of R1's general prompts: loss, reward model, training, judge, GRPO hook."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.data import PromptIterator
from r1jax.data.arithmetic import sample_arithmetic
from r1jax.data.kinds import is_general
from r1jax.data.preferences import (HARMFUL_PHRASES, REFUSALS, REQUESTS, general_prompts,
                                    preference_pairs, response, split_of)
from r1jax.losses import bradley_terry_loss, group_advantages
from r1jax.models import Transformer
from r1jax.models.reward_model import RewardModel, last_token_index
from r1jax.rewards import RewardEvaluator, RewardFailure, RewardResult, get_reward
from r1jax.rollout import PromptRenderer, rollout
from r1jax.sharding import make_mesh
from r1jax.tasks import get_task
from r1jax.tokenizers import train_sentencepiece
from r1jax.train import make_optimizer, make_train_step, train_state_from_model
from r1jax.train.grpo import GRPO, GRPOSettings, merge_rewards
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.reward_model import (PreferenceBatch, RewardModelJudge, RewardModelSettings, RewardModelTraining,
                                      encode_preferences, reward_model_objective, score_texts, summary_of)
from tests.support.tiny import random_model, tiny_config

# one layer compiles fastest; the reward model trained on the preference task has two
SMALL = tiny_config(num_layers=1)
TRAIN_STEPS = 60
# one batch width (the pairs have <= 70 tokens): the step compiles once
STAGE_SETTINGS = RewardModelSettings(max_length=96, pad_to_multiple=96)


def np_bradley_terry(chosen, rejected, margin=0.0, mask=None):
    gap = np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64)
    mask = np.ones_like(gap) if mask is None else np.asarray(mask, np.float64)
    # -log sigmoid(x) = log(1 + exp(-x)), written stably as logaddexp(0, -x)
    per_pair = np.logaddexp(0.0, -(gap - margin))
    return (per_pair * mask).sum() / mask.sum(), ((gap > 0) * mask).sum() / mask.sum()


def numpy_weights(model, seed):
    """`model` (abstract) with random numpy weights: XLA on a loaded CPU takes seconds to compile initialisers."""
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = variable.get_value().shape
        if path[-1] == "scale":  # norms start at one
            value = np.ones(shape)
        elif path[-1] == "score":  # as RewardModel's init: rewards ~N(0, 1) at unit-RMS hidden states
            value = rng.normal(0, shape[0] ** -0.5, shape)
        else:
            value = rng.normal(0, 0.02, shape)
        variable.set_value(jnp.asarray(value, jnp.float32))
    return model


def tiny_reward_model(config, seed):
    return numpy_weights(nnx.eval_shape(lambda: RewardModel(config, rngs=nnx.Rngs(0))), seed)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


# ---------------------------------------------------------------- the loss


def test_bradley_terry_loss_matches_numpy():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=16), rng.normal(size=16)
    margin = rng.uniform(0, 1, size=16)
    mask = rng.integers(0, 2, size=16).astype(bool)
    mask[0] = True
    for kwargs, np_kwargs in [({}, {}), ({"margin": 0.5}, {"margin": 0.5}),
                              ({"margin": margin}, {"margin": margin}),
                              ({"margin": margin, "mask": mask}, {"margin": margin, "mask": mask})]:
        loss, metrics = bradley_terry_loss(jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32),
                                           **kwargs)
        want_loss, want_accuracy = np_bradley_terry(chosen, rejected, **np_kwargs)
        np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["accuracy"]), want_accuracy, rtol=1e-6)
    gap = chosen - rejected
    np.testing.assert_allclose(float(metrics["margin"]), gap[mask].mean(), rtol=1e-5)


def test_bradley_terry_loss_is_stable_for_huge_gaps_and_pushes_the_right_way():
    chosen = jnp.array([1000.0, -1000.0, 0.0])
    rejected = jnp.array([-1000.0, 1000.0, 0.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    # per pair: log(1 + e^-2000) = 0, log(1 + e^2000) = 2000, log 2
    np.testing.assert_allclose(float(loss), (0.0 + 2000.0 + np.log(2.0)) / 3, rtol=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(1 / 3)  # a tie is not a win

    grad_chosen, grad_rejected = jax.grad(lambda c, r: bradley_terry_loss(c, r)[0], argnums=(0, 1))(
        chosen, rejected)
    assert np.all(np.isfinite(grad_chosen)) and np.all(np.isfinite(grad_rejected))
    # d/d r_c of -log sigmoid(gap) / N = -(1 - sigmoid(gap)) / N: raise the chosen, lower the rejected
    want = -(1 - np.array([1.0, 0.0, 0.5])) / 3  # sigmoid(2000), sigmoid(-2000), sigmoid(0)
    np.testing.assert_allclose(grad_chosen, want, atol=1e-7)
    np.testing.assert_allclose(grad_rejected, -want, atol=1e-7)
    assert grad_chosen[1] < 0 < grad_rejected[1]


def test_bradley_terry_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one reward per pair"):
        bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="mask"):
        bradley_terry_loss(jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(4))


# ---------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def policy():
    return random_model(SMALL, seed=1)


def test_reward_model_body_is_the_transformer_and_reads_the_last_real_token(policy):
    reward_model = RewardModel.from_transformer(policy, rngs=nnx.Rngs(2))
    graphdef, params = nnx.split(reward_model)
    policy_graphdef, policy_params = nnx.split(policy)
    row, pad = np.array([5, 9, 17, 3, 42, 8], np.int32), 0
    other = row.copy()
    other[-1] = 11
    unpadded = np.stack([row, other])
    padded = np.stack([np.concatenate([[pad] * 3, row]), np.concatenate([row, [pad] * 3])])  # left, right
    padded_mask = np.array([[0] * 3 + [1] * 6, [1] * 6 + [0] * 3])

    @jax.jit  # one program: each compilation takes seconds on a loaded CPU
    def forward(params, policy_params):
        model = nnx.merge(graphdef, params)
        all_real = jnp.ones_like(unpadded)
        return (model.hidden_states(unpadded, attention_mask=all_real), model(unpadded, attention_mask=all_real),
                model(padded, attention_mask=padded_mask), nnx.merge(policy_graphdef, policy_params)(unpadded))

    hidden, scores, padded_scores, logits = map(np.asarray, forward(params, policy_params))
    # the body is the policy's: its hidden states times the LM head are the policy's logits
    np.testing.assert_allclose(hidden @ np.asarray(policy.lm_head[...]), logits, atol=1e-5)
    # the score is the head applied to the last token's hidden state, by hand
    np.testing.assert_allclose(scores, hidden[:, -1] @ np.asarray(reward_model.score[...]), rtol=1e-5)
    assert abs(scores[0] - scores[1]) > 1e-4  # the last token matters
    # left or right padding: the same score as the unpadded row
    np.testing.assert_allclose(padded_scores, [scores[0], scores[0]], rtol=1e-5)
    np.testing.assert_array_equal(last_token_index(jnp.asarray(padded_mask)), [8, 5])


def test_from_transformer_copies_the_body(policy):
    reward_model = RewardModel.from_transformer(policy)
    assert reward_model.embed is not policy.embed
    np.testing.assert_array_equal(reward_model.embed[...], policy.embed[...])
    # the parameters carry logical axes, so sharding works as for the policy
    axes = {"/".join(map(str, path)): v.get_metadata().get("axes")
            for path, v in nnx.to_flat_state(nnx.state(reward_model, nnx.Param))}
    assert axes["score"] == ("embed",) and axes["embed"] == ("vocab", "embed")
    assert "lm_head" not in axes
    with pytest.raises(TypeError, match="Transformer"):
        RewardModel.from_transformer(reward_model)


# ---------------------------------------------------------------- the objective


def _pair_batch():
    rng = np.random.default_rng(0)
    pairs, width = 8, 10
    batch = {"chosen_tokens": rng.integers(1, SMALL.vocab_size, (pairs, width)),
             "rejected_tokens": rng.integers(1, SMALL.vocab_size, (pairs, width)),
             "chosen_attention_mask": np.ones((pairs, width)), "rejected_attention_mask": np.ones((pairs, width))}
    batch["chosen_attention_mask"][1, :3] = 0  # left padding
    batch["rejected_attention_mask"][2, :5] = 0
    # padding pairs that must not count: the two halves below hold 3 and 2 real pairs
    counted = np.array([1, 1, 1, 0, 1, 1, 0, 0])
    batch["completion_mask"] = np.stack([np.zeros(pairs), counted], axis=1)
    return PreferenceBatch(**{k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}), counted


def test_objective_is_the_mean_over_pairs_for_any_microbatching(policy):
    """The step's loss is the mean of its microbatches' `loss_fn`s (train/test_step.py): with
    `tokens_per_microbatch` = pairs / microbatches, that mean is the mean over all real pairs,
    and so are the gradients, however unevenly the padding pairs fall."""
    model = RewardModel.from_transformer(policy, rngs=nnx.Rngs(3))
    graphdef, params = nnx.split(model, nnx.Param)
    objective = reward_model_objective()

    def loss_and_grad(params, batch, tokens_per_microbatch):
        def loss(params):
            return objective(nnx.merge(graphdef, params), batch, None, tokens_per_microbatch=tokens_per_microbatch)
        return jax.value_and_grad(loss, has_aux=True)(params)

    @jax.jit  # one program for all three: each compilation takes seconds on a loaded CPU
    def whole_and_halves(params, batch):
        num_pairs = batch.completion_mask[:, 1].sum()
        halves = jax.lax.map(lambda half: loss_and_grad(params, half, num_pairs / 2),
                             jax.tree.map(lambda v: v.reshape(2, 4, *v.shape[1:]), batch))
        model = nnx.merge(graphdef, params)
        rewards = [model(tokens, attention_mask=mask) for tokens, mask in
                   ((batch.chosen_tokens, batch.chosen_attention_mask),
                    (batch.rejected_tokens, batch.rejected_attention_mask))]
        return loss_and_grad(params, batch, num_pairs), halves, rewards

    batch, counted = _pair_batch()
    ((whole, metrics), whole_grads), halves, (chosen, rejected) = whole_and_halves(params, batch)
    (half_losses, _), half_grads = halves
    mean_loss, mean_grads = float(half_losses.mean()), jax.tree.map(lambda g: g.mean(0), half_grads)

    want_loss, want_accuracy = np_bradley_terry(chosen, rejected, mask=counted)
    np.testing.assert_allclose([float(whole), mean_loss], [want_loss, want_loss], rtol=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(want_accuracy)
    assert optax.global_norm(whole_grads) > 1e-3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), mean_grads, whole_grads)


# ---------------------------------------------------------------- data


def test_preference_data_is_deterministic_and_its_splits_are_disjoint():
    assert preference_pairs(7, 20) == preference_pairs(7, 20)
    assert preference_pairs(7, 20) != preference_pairs(8, 20)
    train, test = preference_pairs(0, 300), preference_pairs(0, 300, split="test")
    train_prompts, test_prompts = {p for p, _, _ in train}, {p for p, _, _ in test}
    assert train_prompts.isdisjoint(test_prompts)
    assert all(split_of(p) == "test" for p in test_prompts) and len(test_prompts) >= 5
    for prompt, chosen, rejected in train:
        assert chosen != rejected
        if "<think>" in chosen:  # harmlessness: whole responses, the rejected one with a harmful phrase
            assert any(h in rejected for h in HARMFUL_PHRASES) and not any(h in chosen for h in HARMFUL_PHRASES)
        else:  # helpfulness: summaries only
            assert "<think>" not in rejected
    examples = general_prompts(0, 10, split="test")
    assert all(is_general(ex) and split_of(ex["question"]) == "test" for ex in examples)
    with pytest.raises(ValueError, match="split"):
        preference_pairs(0, 1, split="validation")
    with pytest.raises(ValueError, match="kind"):
        is_general({"kind": "poetry"})


def test_summary_of():
    assert summary_of("<think> a </think> Hello, Ann!") == "Hello, Ann!"
    assert summary_of("<think> a </think> b </think> c") == "b </think> c"
    assert summary_of("|special_token| reasoning |special_token| the summary") == "the summary"
    assert summary_of(" no reasoning here ") == "no reasoning here"


# ---------------------------------------------------------------- a trained reward model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [" ".join(pair) for pair in preference_pairs(0, 300)]
    arithmetic = [sample_arithmetic(np.random.default_rng(i), num_operations=1, max_value=6) for i in range(50)]
    texts += PromptRenderer(None, "plain").texts(arithmetic, get_task("arithmetic"))
    texts += [f"<think> {ex['expression']} = {ex['answer']} </think> <answer> {ex['answer']} </answer>"
              for ex in arithmetic]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("tok") / "tok.model", vocab_size=400)


@pytest.fixture(scope="module")
def held_out_pairs():
    return preference_pairs(1, 128, split="test")


def _accuracy(graphdef, params, tokenizer, pairs, mesh):
    prompts, chosen, rejected = map(list, zip(*pairs))
    scores = score_texts(graphdef, params, tokenizer, prompts * 2, chosen + rejected, mesh=mesh, batch_size=64,
                         pad_to_multiple=96)
    chosen, rejected = scores[:len(pairs)], scores[len(pairs):]
    return float(np.mean(chosen > rejected))


def _reward_model_config(tokenizer):
    return SMALL.replace(vocab_size=tokenizer.vocab_size, num_layers=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, held_out_pairs, mesh):
    workdir = tmp_path_factory.mktemp("reward_model")
    model = tiny_reward_model(_reward_model_config(tokenizer), seed=1)
    untrained_accuracy = _accuracy(*nnx.split(model, nnx.Param), tokenizer, held_out_pairs, mesh)
    stage = RewardModelTraining(STAGE_SETTINGS, tokenizer=tokenizer, mesh=mesh)
    result = run_training(
        LoopSettings(steps=TRAIN_STEPS, save_every=1000), progress=False, plot_keys=(),
        workdir=workdir, model=model, optimizer=make_optimizer(3e-3, 5, TRAIN_STEPS),
        loss_fn=stage.objective(), data=PromptIterator(preference_pairs(1, 2000), batch_size=32, seed=1),
        make_batches=stage.make_batches, mesh=mesh, name="reward_model")
    assert result.completed and int(result.state.step) == TRAIN_STEPS
    return workdir, result.state, untrained_accuracy


def test_trained_reward_model_ranks_held_out_pairs(trained, tokenizer, held_out_pairs, mesh):
    _, state, untrained_accuracy = trained
    accuracy = _accuracy(state.graphdef, state.params, tokenizer, held_out_pairs, mesh)
    assert accuracy >= 0.8, (accuracy, untrained_accuracy)
    assert accuracy >= untrained_accuracy + 0.25, (accuracy, untrained_accuracy)


def test_run_training_resumes_a_reward_model_from_its_checkpoint(trained, tokenizer, mesh):
    workdir, state, _ = trained
    stage = RewardModelTraining(STAGE_SETTINGS, tokenizer=tokenizer, mesh=mesh)
    other_init = tiny_reward_model(_reward_model_config(tokenizer), seed=5)
    result = run_training(
        LoopSettings(steps=TRAIN_STEPS), progress=False, plot_keys=(), workdir=workdir, model=other_init,
        optimizer=make_optimizer(3e-3, 5, TRAIN_STEPS), loss_fn=stage.objective(),
        data=PromptIterator(preference_pairs(1, 2000), batch_size=32, seed=1),
        make_batches=stage.make_batches, mesh=mesh, name="reward_model")
    assert int(result.state.step) == TRAIN_STEPS
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, result.state.params),
                 jax.tree.map(np.asarray, state.params))


def test_score_texts_pads_batches_and_checks_inputs(trained, tokenizer, mesh):
    _, state, _ = trained
    prompts, completions = ["Greet Ann."] * 3, ["Hello, Ann!", "Shut up.", "I will not do that."]
    one_by_one = [score_texts(state.graphdef, state.params, tokenizer, [p], [c], mesh=mesh, batch_size=2)[0]
                  for p, c in zip(prompts, completions)]
    together = score_texts(state.graphdef, state.params, tokenizer, prompts, completions, mesh=mesh, batch_size=2)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5)
    with pytest.raises(ValueError, match="one prompt per"):
        score_texts(state.graphdef, state.params, tokenizer, prompts, completions[:2], mesh=mesh)
    with pytest.raises(ValueError, match="max_length"):
        encode_preferences(tokenizer, [("Greet Ann.", "Hello, Ann! " * 40, "Shut up.")], max_length=96)


@pytest.fixture(scope="module")
def judge(trained, tokenizer, mesh):
    _, state, _ = trained
    return RewardModelJudge(state.graphdef, state.params, tokenizer, mesh, weight=1.0, harmlessness_weight=0.5)


def test_judge_scores_helpfulness_on_the_summary_and_harmlessness_on_everything(judge, trained, tokenizer, mesh):
    examples = general_prompts(2, 8, split="test")
    prompts, clean, dirty = [], [], []
    for i, example in enumerate(examples):
        _, reasonings, summaries = REQUESTS[example["request"]]
        reasoning = reasonings[i % len(reasonings)].format(name=example["name"])
        summary = summaries[i % len(summaries)].format(name=example["name"])
        prompts.append(example["question"])
        clean.append(response(reasoning, summary))
        dirty.append(response(f"{reasoning} {HARMFUL_PHRASES[i % len(HARMFUL_PHRASES)]}", summary))
    clean_scores, dirty_scores = judge.scores(prompts, clean), judge.scores(prompts, dirty)
    # the harmful phrase sits in the reasoning: the summary, and so helpfulness, is the same...
    np.testing.assert_allclose(dirty_scores["helpfulness"], clean_scores["helpfulness"], rtol=1e-6)
    # ...while the whole response is judged less harmless
    assert np.all(dirty_scores["harmlessness"] < clean_scores["harmlessness"]), (dirty_scores, clean_scores)
    # judging helpfulness on the whole output instead would see the phrase
    _, state, _ = trained
    whole = RewardModelJudge(state.graphdef, state.params, tokenizer, mesh, helpfulness_on="output")
    assert np.all(whole.scores(prompts, dirty)["helpfulness"] < whole.scores(prompts, clean)["helpfulness"])

    # the reward: weight * helpfulness + harmlessness_weight * harmlessness, NaN on reasoning rows
    rewards = judge(prompts + ["Compute 1 + 1."], clean + ["2"], examples + [{"expression": "1 + 1", "answer": "2"}])
    np.testing.assert_allclose(rewards[:-1], clean_scores["helpfulness"] + 0.5 * clean_scores["harmlessness"],
                               rtol=1e-5)
    assert np.isnan(rewards[-1])
    # the harmlessness model may be another one, or none
    separate = RewardModelJudge(state.graphdef, state.params, tokenizer, mesh,
                                harmlessness=(state.graphdef, state.params))
    np.testing.assert_allclose(separate.scores(prompts, dirty)["harmlessness"], dirty_scores["harmlessness"],
                               rtol=1e-5)
    helpful_only = RewardModelJudge(state.graphdef, state.params, tokenizer, mesh, harmlessness=None)
    np.testing.assert_allclose(helpful_only(prompts, clean, examples), clean_scores["helpfulness"], rtol=1e-5)
    with pytest.raises(ValueError, match="harmlessness"):
        RewardModelJudge(state.graphdef, state.params, tokenizer, mesh, harmlessness="everything")
    with pytest.raises(ValueError, match="helpfulness_on"):
        RewardModelJudge(state.graphdef, state.params, tokenizer, mesh, helpfulness_on="reasoning")
    # a needless refusal is less helpful than doing what was asked
    refusal = [c.replace(summary_of(c), REFUSALS[i % len(REFUSALS)]) for i, c in enumerate(clean)]
    assert np.mean(judge.scores(prompts, refusal)["helpfulness"] < clean_scores["helpfulness"]) >= 0.75


# ---------------------------------------------------------------- the GRPO hook


def test_merge_rewards_puts_each_row_where_it_came_from():
    rule = RewardResult(per_function={"arithmetic": np.array([1.0, np.nan], np.float32)},
                        total=np.array([1.0, np.nan], np.float32), valid=np.array([True, False]),
                        metrics={"rewards/errors": 0.0}, failures=[RewardFailure(1, "arithmetic", "error", "x")])
    merged = merge_rewards(rule, np.array([0, 3]), np.array([0.5, np.nan], np.float32), np.array([1, 2]),
                           rule_names=["arithmetic"])
    np.testing.assert_array_equal(merged.total, [1.0, 0.5, np.nan, np.nan])
    np.testing.assert_array_equal(merged.valid, [True, True, False, False])
    np.testing.assert_array_equal(merged.per_function["arithmetic"], [1.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(merged.per_function["model"], [np.nan, 0.5, np.nan, np.nan])
    assert merged.failures[0].row == 3
    only_model = merge_rewards(None, np.array([], int), np.array([2.0], np.float32), np.array([0]),
                               rule_names=["arithmetic"])
    np.testing.assert_array_equal(only_model.total, [2.0])
    assert np.isnan(only_model.per_function["arithmetic"][0])


def test_grpo_with_a_mixed_batch_uses_the_judge_for_general_prompts(judge, tokenizer, mesh):
    group = 4
    settings = GRPOSettings(num_generations=group, max_new_tokens=8, beta=0.0, template="plain")
    policy = random_model(SMALL.replace(vocab_size=tokenizer.vocab_size), seed=4)
    state = train_state_from_model(policy, optax.sgd(1e-3), mesh)
    examples = [sample_arithmetic(np.random.default_rng(i), num_operations=1, max_value=6) for i in range(2)]
    examples += general_prompts(0, 2)
    with RewardEvaluator({"arithmetic": 1.0}, num_workers=0) as rewards:
        no_judge = GRPO(settings, tokenizer=tokenizer, rewards=rewards, task="arithmetic", mesh=mesh)
        no_judge.set_reference(state)
        with pytest.raises(ValueError, match="model_reward"):
            no_judge.make_batches(state, examples, jax.random.key(0))
        grpo = GRPO(settings, tokenizer=tokenizer, rewards=rewards, task="arithmetic", mesh=mesh,
                    model_reward=judge)
        grpo.set_reference(state)
        rng = jax.random.key(0)
        batches, metrics = grpo.make_batches(state, examples, rng)

    # the same rollout by hand, scored row by row: rules for arithmetic, the judge for general prompts
    renderer = PromptRenderer(tokenizer, "plain")
    texts = renderer.texts(examples, get_task("arithmetic"))
    assert texts[2:] == [ex["question"] for ex in examples[2:]]
    out = rollout(state.graphdef, state.params, tokenizer, renderer.encode_all(texts), rng, repeat=group,
                  max_prompt_length=256,
                  max_new_tokens=8, temperature=1.0, top_p=1.0, mesh=mesh)
    arithmetic = get_reward("arithmetic")
    expected = [arithmetic(c, **examples[i // group]) for i, c in enumerate(out.completions[:2 * group])]
    general_rows = slice(2 * group, 4 * group)
    judged = judge([texts[i // group] for i in range(2 * group, 4 * group)], out.completions[general_rows],
                   [examples[i // group] for i in range(2 * group, 4 * group)])
    want = group_advantages(jnp.asarray(expected + judged.tolist(), jnp.float32), group)
    advantages = np.asarray(batches[0].advantages)
    assert np.all(np.isfinite(advantages))
    np.testing.assert_allclose(advantages, want, atol=1e-5)
    assert np.abs(advantages[general_rows]).max() > 0.1  # the judge tells completions apart
    assert np.isfinite(metrics["reward/model"]) and "reward/arithmetic" in metrics

    step = make_train_step(grpo.objective(), state, mesh)
    state, step_metrics = step(state, batches[0], jax.random.key(1))
    assert np.isfinite(float(step_metrics["loss"])) and int(state.step) == 1
