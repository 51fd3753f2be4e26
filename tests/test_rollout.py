"""The host side of sampling (r1jax.rollout): prompts rendered and encoded, padded, grouped, decoded.

What `generate` draws is tested in test_sampling.py (the sampler's log-probs against the training
forward, the rollout on 8 devices against one); here, what `rollout` and `training_batch` do
around it, with numbers written by hand.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.data.prompts import R1_SYSTEM_PROMPT, R1_ZERO_TEMPLATE
from r1jax.rollout import PromptRenderer, Rollout, RolloutBatch, rollout, training_batch, trim_to_longest
from r1jax.sampling import SampleOutput
from r1jax.sharding import batch_sharding, make_mesh
from r1jax.tasks import get_task
from tests.support.tiny import random_model, tiny_config

PAD = 0
STOP = frozenset(range(1, 33))  # half the tiny vocabulary: most rows stop before MAX_NEW_TOKENS
MAX_NEW_TOKENS = 6
PROMPTS = [[40, 41, 42], [43, 44, 45, 46, 47, 48, 49, 50, 51], [52]]  # 9 tokens at most: padded to 16


class CharTokenizer:
    """One id per character (its code point), BOS 1; a chat renders as "<role>content" turns."""

    bos_id, eos_id, pad_id = 1, 2, PAD
    stop_ids = STOP

    def __init__(self, chat_template=None):
        self.chat_template = chat_template  # None: no jinja template of its own

    def encode(self, text, *, add_bos=False):
        return [self.bos_id] * add_bos + [ord(c) for c in text]

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>" * add_generation_prompt


# ---- PromptRenderer ------------------------------------------------------------------------------

def test_a_text_template_wraps_the_question_and_encodes_after_bos():
    renderer = PromptRenderer(CharTokenizer(), "r1_zero")
    text = renderer("What is 2 + 3?")
    assert text == R1_ZERO_TEMPLATE.replace("{prompt}", "What is 2 + 3?")
    assert renderer.encode(text) == [1, *map(ord, text)]
    plain = PromptRenderer(CharTokenizer(), "plain")
    assert plain("  2 + 3  ") == "2 + 3"
    assert plain.encode_all(["ab", "c"]) == [[1, 97, 98], [1, 99]]


def test_texts_take_the_task_question_and_a_general_prompt_its_own():
    renderer = PromptRenderer(None, "plain")  # a text template renders without a tokenizer
    examples = [{"expression": "3 + 4", "answer": "7"}, {"kind": "general", "question": "Name a colour."}]
    assert renderer.texts(examples, get_task("arithmetic")) == [
        "Compute the value of 3 + 4. Give the exact integer result as the final answer.", "Name a colour."]


def test_the_tokenizers_chat_template_renders_the_system_prompt_and_adds_no_bos():
    tokenizer = CharTokenizer(chat_template="its own")
    with_system = PromptRenderer(tokenizer, "chat", system_prompt="Be brief.")
    text = with_system(" What is 2 + 3? ")
    assert text == "<system>Be brief.<user>What is 2 + 3?<assistant>"
    assert with_system.encode(text) == list(map(ord, text))  # the rendered ids alone: the template has any BOS
    # no system prompt: the turns the tokenizer's template is given are the user's alone
    assert PromptRenderer(tokenizer, "chat")("What is 2 + 3?") == "<user>What is 2 + 3?<assistant>"


def test_a_named_chat_template_brings_its_system_prompt():
    renderer = PromptRenderer(CharTokenizer(chat_template="its own"), "r1_chat")
    assert renderer("Add 2 and 3.") == f"<system>{R1_SYSTEM_PROMPT}<user>Add 2 and 3.<assistant>"
    # a tokenizer without a jinja template renders chats as plain text, which starts with BOS
    plain_chat = PromptRenderer(CharTokenizer(), "plain_chat")
    assert plain_chat.encode(plain_chat("hi")) == [1, *map(ord, "<user>hi<assistant>")]


def test_bad_templates_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown template 'r1'; choose one of \['plain', 'r1_zero', "
                                         r"'plain_chat', 'r1_chat', 'chat'\]"):
        PromptRenderer(CharTokenizer(), "r1")
    with pytest.raises(ValueError, match="system_prompt is used by the 'chat' template only, not by 'r1_zero'"):
        PromptRenderer(CharTokenizer(), "r1_zero", system_prompt="Be brief.")
    with pytest.raises(ValueError, match="the chat template 'r1_chat' is rendered by a tokenizer"):
        PromptRenderer(None, "r1_chat")


# ---- rollout -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy():
    graphdef, params = nnx.split(random_model(tiny_config(), seed=0, std=0.5))
    return graphdef, params, make_mesh({"data": 1}, devices=jax.devices()[:1])


def sample(policy, prompts, *, max_prompt_length, seed=0):
    graphdef, params, mesh = policy
    return rollout(graphdef, params, CharTokenizer(), prompts, jax.random.key(seed), repeat=2,
                   max_prompt_length=max_prompt_length, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0,
                   mesh=mesh)


@pytest.fixture(scope="module")
def grouped(policy):
    return sample(policy, PROMPTS, max_prompt_length=32)


def test_rows_are_grouped_by_prompt_and_left_padded_to_the_padded_width(grouped):
    samples = grouped.samples
    # padded_width(9) = 16 columns; each prompt twice in a row
    np.testing.assert_array_equal(samples.prompt_tokens, [
        [0] * 13 + [40, 41, 42]] * 2 + [[0] * 7 + [43, 44, 45, 46, 47, 48, 49, 50, 51]] * 2 + [[0] * 15 + [52]] * 2)
    np.testing.assert_array_equal(samples.prompt_mask, [[0] * 13 + [1] * 3] * 2 + [[0] * 7 + [1] * 9] * 2
                                  + [[0] * 15 + [1]] * 2)
    assert samples.tokens.shape == samples.mask.shape == (6, MAX_NEW_TOKENS)


def test_each_completion_is_its_rows_tokens_up_to_its_length(grouped):
    tokens, lengths = np.asarray(grouped.samples.tokens), grouped.lengths
    np.testing.assert_array_equal(lengths, grouped.samples.lengths)
    assert 0 < lengths.min() < MAX_NEW_TOKENS and len(set(lengths.tolist())) > 1  # rows stop at different steps
    assert grouped.completions == [" ".join(str(t) for t in row[:n]) for row, n in zip(tokens.tolist(), lengths)]
    for row, n in zip(tokens, lengths):
        assert n == MAX_NEW_TOKENS or row[n - 1] in STOP  # a row ends with its stop token, kept
        assert (row[n:] == PAD).all()
    np.testing.assert_array_equal(grouped.samples.mask, np.arange(MAX_NEW_TOKENS) < lengths[:, None])


def test_the_padded_width_is_capped_at_max_prompt_length(policy):
    out = sample(policy, PROMPTS, max_prompt_length=12)  # 9 tokens fit; padded_width(9) = 16 would not
    assert out.samples.prompt_tokens.shape == (6, 12)
    np.testing.assert_array_equal(out.samples.prompt_tokens[2], [0] * 3 + PROMPTS[1])


def test_an_over_long_or_empty_prompt_is_refused_before_anything_is_compiled():
    refuse = dict(repeat=1, max_prompt_length=8, max_new_tokens=2, temperature=1.0, top_p=1.0, mesh=None)
    with pytest.raises(ValueError, match="9 tokens, more than max_prompt_length=8"):
        rollout(None, None, CharTokenizer(), [list(range(1, 10))], jax.random.key(0), **refuse)
    with pytest.raises(ValueError, match="a prompt has no tokens"):
        rollout(None, None, CharTokenizer(), [[1, 2], []], jax.random.key(0), **refuse)


def test_trim_to_longest_keeps_the_padded_width_of_the_longest_completion():
    def cut(lengths, columns=40):
        lengths = np.asarray(lengths)
        mask = (np.arange(columns) < lengths[:, None]).astype(np.int32)
        samples = SampleOutput(tokens=jnp.asarray(mask * 7), logprobs=jnp.asarray(mask * -0.5), mask=jnp.asarray(mask),
                               lengths=jnp.asarray(lengths), prompt_tokens=jnp.ones((len(lengths), 2), jnp.int32),
                               prompt_mask=jnp.ones((len(lengths), 2), jnp.int32))
        trimmed = trim_to_longest(Rollout(samples, [""] * len(lengths), lengths))
        width = trimmed.tokens.shape[1]
        assert trimmed.logprobs.shape[1] == trimmed.mask.shape[1] == width
        np.testing.assert_array_equal(trimmed.mask, mask[:, :width])  # nothing a row drew is lost
        np.testing.assert_array_equal(trimmed.prompt_tokens, samples.prompt_tokens)
        return width

    assert cut([9, 3], columns=200) == 64  # never below MIN_TRIMMED_WIDTH
    assert cut([0, 0], columns=200) == 64  # no row drew a token
    assert cut([9, 3], columns=40) == 40  # all the sampler returned: nothing to cut
    assert cut([70, 3], columns=200) == 96  # padded_width(70, per_doubling=2): multiples of 32 from 64 tokens
    assert cut([130, 3], columns=150) == 150  # padded_width(130) = 192 > 150 columns: never wider than sampled
    assert cut([200, 3], columns=1024) == 256


# ---- training_batch and RolloutBatch -------------------------------------------------------------

def hand_samples():
    """Two rows of one prompt (2 columns, the first row left-padded) and 3 completion columns."""
    return SampleOutput(tokens=jnp.array([[7, 8, 0], [9, 0, 0]]),
                        logprobs=jnp.array([[-0.5, -1.0, 0.0], [-2.0, 0.0, 0.0]]),
                        mask=jnp.array([[1, 1, 0], [1, 0, 0]]), lengths=jnp.array([2, 1]),
                        prompt_tokens=jnp.array([[0, 5], [0, 5]]), prompt_mask=jnp.array([[0, 1], [0, 1]]))


def test_training_batch_puts_the_completion_after_its_prompt():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    batch = training_batch(hand_samples(), mesh, rows_per_group=2)
    np.testing.assert_array_equal(batch.tokens, [[0, 5, 7, 8, 0], [0, 5, 9, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask, [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch.completion_mask, [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    assert batch.advantages is None and batch.old_logps is None and batch.ref_logps is None
    assert batch.rows_per_group == 2
    assert batch.tokens.sharding == batch_sharding(mesh)
    # the sampler's log-probs as old_logps: zero over the prompt columns
    with_old = training_batch(hand_samples(), mesh, old_logps=True)
    np.testing.assert_array_equal(with_old.old_logps, [[0, 0, -0.5, -1.0, 0], [0, 0, -2.0, 0, 0]])
    assert with_old.rows_per_group == 1


def test_rows_per_group_is_static_and_the_missing_fields_are_no_leaves():
    batch = RolloutBatch(jnp.zeros((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32),
                         rows_per_group=2)
    assert len(jax.tree.leaves(batch)) == 3  # the three arrays; None fields and rows_per_group are not leaves
    scored = batch.replace(advantages=jnp.arange(4.0))
    assert len(jax.tree.leaves(scored)) == 4 and scored.rows_per_group == 2

    @jax.jit
    def group_count(batch):
        return batch.tokens.shape[0] // batch.rows_per_group  # a Python int inside jit: static

    assert group_count(batch) == 2
