"""SFT: pair formatting, the loss mask, packing, evaluation, epochs, and learning a mapping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.data import PromptIterator
from r1jax.sharding import make_mesh
from r1jax.tokenizers import train_sentencepiece
from r1jax.train.loop import LoopSettings, run_training
from r1jax.train.objectives import SFTBatch, sft_objective
from r1jax.train.sft import (SFT, PairFormatter, SFTSettings, encode_pairs, pack_pairs, r1_completion,
                             steps_for_epochs)
from r1jax.train.state import make_optimizer, train_state_from_model
from tests.support.tiny import random_model, tiny_config

# 8 problems of a fixed mapping: prompt -> worked solution in the R1 format
EXAMPLES = [{"expression": f"{a} + {b}", "answer": str(a + b)}
            for a, b in [(8, 6), (3, 4), (9, 1), (2, 7), (5, 5), (6, 3), (1, 8), (4, 9)]]
FORMATTER = PairFormatter("arithmetic", template="plain")  # the question alone: short rows
PAIRS = [FORMATTER.from_solution(ex, f"{ex['expression']} = {ex['answer']}", ex["answer"]) for ex in EXAMPLES]


class CharTokenizer:
    """One id per character (a=4, b=5, ...), BOS 1, EOS 2, pad 0: ids that can be written by hand."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text, *, add_bos=False):
        return [1] * add_bos + [ord(c) - ord("a") + 4 for c in text]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [prompt + completion for prompt, completion in PAIRS] * 4
    return train_sentencepiece(corpus, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=160,
                               byte_fallback=False, hard_vocab_limit=False)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


def tiny_model(vocab_size, seed=0):
    """The tiny model at twice its width, random numpy weights (nothing compiled)."""
    return random_model(tiny_config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                    max_position_embeddings=256), seed=seed)


@pytest.fixture(scope="module")
def forward(tokenizer):
    model = tiny_model(tokenizer.vocab_size, seed=1)
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def logits(tokens, attention_mask, segment_ids=None):
        return nnx.merge(graphdef, params)(tokens, attention_mask=attention_mask, segment_ids=segment_ids)

    return model, logits


# ---- formatting ------------------------------------------------------------------------------

def test_pair_formatter_writes_the_r1_format_after_the_template():
    formatter = PairFormatter("arithmetic", template="r1_zero")
    prompt, completion = formatter.from_solution(EXAMPLES[0], "8 + 6 = 14", "14")
    assert prompt.startswith("A conversation between User and Assistant.")
    assert prompt.endswith("User: Compute the value of 8 + 6. Give the exact integer result as the final "
                           "answer. Assistant:")
    assert completion == " <think> 8 + 6 = 14 </think> <answer> 14 </answer>"
    assert formatter(EXAMPLES[0], "kept as is") == (prompt, "kept as is")
    # the plain template's prompt is the question alone, continued without a space
    assert PAIRS[0] == ("Compute the value of 8 + 6. Give the exact integer result as the final answer.",
                        "<think> 8 + 6 = 14 </think> <answer> 14 </answer>")
    assert r1_completion(" why ", "42\n") == "<think> why </think> <answer> 42 </answer>"


def test_pair_formatter_renders_chat_templates_with_the_tokenizer(tokenizer):
    prompt, completion = PairFormatter("arithmetic", template="plain_chat", tokenizer=tokenizer).from_solution(
        EXAMPLES[1], "3 + 4 = 7", "7")
    # a SentencePiece model without a chat template of its own uses the plain "Role: content" format
    assert prompt == ("User: Compute the value of 3 + 4. Give the exact integer result as the final answer."
                      "\nAssistant:")
    assert completion == " <think> 3 + 4 = 7 </think> <answer> 7 </answer>"
    with pytest.raises(ValueError, match="rendered by a tokenizer"):
        PairFormatter("arithmetic", template="r1_chat")
    with pytest.raises(ValueError, match="unknown template 'r1'.*r1_zero"):
        PairFormatter("arithmetic", template="r1")


# ---- the loss mask ---------------------------------------------------------------------------

def test_padded_and_packed_rows_hand_checked():
    pairs = [("ab", "c"), ("a", "bcd")]  # rows: BOS a b | c EOS  and  BOS a | b c d EOS
    a, b, c, d = 4, 5, 6, 7
    padded = encode_pairs(CharTokenizer(), pairs, max_length=8, pad_to_multiple=8, row_multiple=4)
    np.testing.assert_array_equal(padded["tokens"], [[0, 0, 0, 1, a, b, c, 2], [0, 0, 1, a, b, c, d, 2],
                                                     [0] * 8, [0] * 8])
    np.testing.assert_array_equal(padded["attention_mask"], [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1],
                                                             [0] * 8, [0] * 8])
    np.testing.assert_array_equal(padded["completion_mask"], [[0, 0, 0, 0, 0, 0, 1, 1],
                                                              [0, 0, 0, 0, 1, 1, 1, 1], [0] * 8, [0] * 8])
    packed = pack_pairs(CharTokenizer(), pairs, max_length=12)
    np.testing.assert_array_equal(packed["tokens"], [[1, a, b, c, 2, 1, a, b, c, d, 2, 0]])
    np.testing.assert_array_equal(packed["attention_mask"], [[1] * 11 + [0]])
    np.testing.assert_array_equal(packed["completion_mask"], [[0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]])
    # too long for one row of 8: first fit opens a second row
    np.testing.assert_array_equal(pack_pairs(CharTokenizer(), pairs, max_length=8)["segment_ids"],
                                  [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="more than max_length=5"):
        pack_pairs(CharTokenizer(), pairs, max_length=5)


@jax.jit
def _objective_loss(batch, logits):
    model = lambda tokens, **_: logits  # a stand-in model: fixed logits whatever the tokens
    # the step's normalisation: completion tokens that have a prediction (see make_train_step)
    count = batch.completion_mask[:, 1:].sum()
    return sft_objective()(model, batch, None, tokens_per_microbatch=count)[0]


def _loss(batch, logits):
    return float(_objective_loss(SFTBatch(**{k: jnp.asarray(v) for k, v in batch.items()}), jnp.asarray(logits)))


@pytest.mark.parametrize("pack", [False, True])
def test_loss_ignores_prompt_targets_but_not_completion_targets(pack):
    pairs = [("ab", "c"), ("a", "bcd")]
    batch = (pack_pairs(CharTokenizer(), pairs, max_length=12) if pack else
             encode_pairs(CharTokenizer(), pairs, max_length=8, pad_to_multiple=8))
    logits = jax.random.normal(jax.random.key(0), (*batch["tokens"].shape, 12))
    reference = _loss(batch, logits)
    prompt = (batch["attention_mask"] == 1) & (batch["completion_mask"] == 0)
    changed = dict(batch, tokens=np.where(prompt, (batch["tokens"] + 3) % 12, batch["tokens"]))
    assert _loss(changed, logits) == pytest.approx(reference, abs=1e-6)
    # the same change on completion tokens does change it
    completion = batch["completion_mask"] == 1
    changed = dict(batch, tokens=np.where(completion, (batch["tokens"] + 3) % 12, batch["tokens"]))
    assert abs(_loss(changed, logits) - reference) > 1e-3
    # and the loss is the mean over the completion tokens by hand
    log_probs = np.asarray(jax.nn.log_softmax(logits), np.float64)
    rows, cols = np.nonzero(completion)
    want = -np.mean([log_probs[r, c - 1, batch["tokens"][r, c]] for r, c in zip(rows, cols)])
    assert reference == pytest.approx(want, rel=1e-5)


# ---- packing -----------------------------------------------------------------------------------

def test_packed_segments_get_the_logits_and_loss_of_padded_rows(tokenizer, forward):
    model, logits_fn = forward
    pairs = [PAIRS[0], ("User: 12.", " <answer> 3 </answer>"), PAIRS[3], ("a", "b"), PAIRS[5]]
    packed = pack_pairs(tokenizer, pairs, max_length=96)
    padded = encode_pairs(tokenizer, pairs, max_length=96)
    assert packed["tokens"].shape[0] < len(pairs)  # several pairs did share a row
    packed_logits = np.asarray(logits_fn(packed["tokens"], packed["attention_mask"], packed["segment_ids"]))
    # the unpacked forward: one pair per row, left-padded
    padded_logits = np.asarray(logits_fn(padded["tokens"], padded["attention_mask"]))
    compared = set()
    for row in range(packed["tokens"].shape[0]):
        for segment in set(packed["segment_ids"][row].tolist()) - {0}:
            columns = np.flatnonzero(packed["segment_ids"][row] == segment)
            # the pair of this segment: the padded row with the same tokens
            i = next(i for i in range(len(pairs)) if packed["tokens"][row, columns].tolist()
                     == padded["tokens"][i, padded["attention_mask"][i] == 1].tolist())
            np.testing.assert_allclose(packed_logits[row, columns], padded_logits[i, -len(columns):], atol=1e-5,
                                       err_msg=f"pair {i}")
            compared.add(i)
    assert len(compared) == len(pairs)
    # the objective on the same model: equal to 1e-5
    assert _loss(packed, packed_logits) == pytest.approx(_loss(padded, padded_logits), abs=1e-5)
    with pytest.raises(ValueError, match="segment_ids must be"):
        model(jnp.asarray(packed["tokens"]), segment_ids=jnp.asarray(packed["segment_ids"][:, :5]))


def test_segment_positions_restart_in_each_segment():
    from r1jax.models.transformer import segment_positions

    segment_ids = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(segment_positions(segment_ids, mask), [[0, 1, 2, 0, 1, 0, 0, 0]])


# ---- evaluation --------------------------------------------------------------------------------

def test_evaluate_matches_numpy_over_several_eval_batches(tokenizer, mesh, forward):
    model, logits_fn = forward
    pairs = PAIRS[:7]
    sft = SFT(SFTSettings(max_length=96, eval_batch_size=3), tokenizer=tokenizer, mesh=mesh)
    state = train_state_from_model(tiny_model(tokenizer.vocab_size, seed=1), optax.sgd(0.0), mesh)
    metrics = sft.evaluate(state, pairs)

    rows = [([tokenizer.bos_id] + tokenizer.encode(prompt), tokenizer.encode(completion) + [tokenizer.eos_id])
            for prompt, completion in pairs]
    width = max(len(p) + len(c) for p, c in rows)
    tokens, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for i, (prompt_ids, completion_ids) in enumerate(rows):  # left-padded by hand
        tokens[i, width - len(prompt_ids) - len(completion_ids):] = prompt_ids + completion_ids
        mask[i, width - len(prompt_ids) - len(completion_ids):] = 1
    logits = np.asarray(logits_fn(tokens, mask), np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll, correct, count = 0.0, 0, 0
    for i, (_, completion_ids) in enumerate(rows):
        for t in range(width - len(completion_ids), width):  # each completion token from the position before
            nll -= log_probs[i, t - 1, tokens[i, t]]
            correct += int(np.argmax(logits[i, t - 1]) == tokens[i, t])
            count += 1
    assert metrics["eval_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(correct / count, abs=1e-9)
    packed = SFT(SFTSettings(max_length=96, packing=True, eval_batch_size=3), tokenizer=tokenizer, mesh=mesh)
    assert packed.evaluate(state, pairs)["eval_loss"] == pytest.approx(nll / count, rel=1e-5)


# ---- epochs and learning -------------------------------------------------------------------------

def test_steps_for_epochs_by_hand():
    assert steps_for_epochs(5, 2, 3) == 6  # 2 full batches per epoch, the fifth example dropped
    assert steps_for_epochs(5, 2, 3, drop_remainder=False) == 9
    assert steps_for_epochs(8, 8, 4) == 4
    with pytest.raises(ValueError, match="leaves no batch"):
        steps_for_epochs(3, 4, 1)


EPOCHS, BATCH = 50, 3


@pytest.fixture(scope="module")
def trained(tokenizer, mesh, tmp_path_factory):
    """SFT through run_training: 8 pairs in batches of 3 (3, 3, 2), 50 epochs (150 steps), packed rows."""
    sft = SFT(SFTSettings(max_length=128, packing=True), tokenizer=tokenizer, mesh=mesh)
    seen = []

    def make_batches(state, pairs, rng):
        seen.append(list(pairs))
        return sft.make_batches(state, pairs, rng)

    data = PromptIterator(PAIRS, batch_size=BATCH, seed=0, drop_remainder=False, num_epochs=EPOCHS)
    steps = steps_for_epochs(len(PAIRS), BATCH, EPOCHS, drop_remainder=False)
    model = tiny_model(tokenizer.vocab_size)
    initial = sft.evaluate(train_state_from_model(tiny_model(tokenizer.vocab_size), optax.sgd(0.0), mesh), PAIRS)
    result = run_training(
        LoopSettings(steps=steps, save_every=1000), progress=False, plot_keys=("loss",),
        workdir=tmp_path_factory.mktemp("sft"), model=model,
        optimizer=make_optimizer(5e-3, warmup_steps=3, total_steps=steps), loss_fn=sft.objective(),
        data=data, make_batches=make_batches, mesh=mesh,
        evaluate=lambda state, step: sft.evaluate(state, PAIRS))
    return initial, result, seen, data


def test_sft_memorises_a_fixed_mapping(trained):
    initial, result, _, _ = trained
    assert initial["eval_accuracy"] < 0.2
    assert result.completed
    assert result.eval_metrics["eval_accuracy"] >= 0.95, result.eval_metrics
    assert result.eval_metrics["eval_loss"] < initial["eval_loss"] / 10


def test_epochs_are_exact(trained):
    _, result, seen, data = trained
    assert len(seen) == EPOCHS * 3 == int(result.state.step)
    assert [len(batch) for batch in seen[:3]] == [3, 3, 2]
    counts = {pair: sum(batch.count(pair) for batch in seen) for pair in PAIRS}
    assert set(counts.values()) == {EPOCHS}
    with pytest.raises(StopIteration):  # the data is used up exactly
        next(data)
