"""Tests for r1jax.sampling: the KV-cache path, greedy parity with HF transformers, the
sampling distribution (chi-square against a float64 numpy reference), stopping, compile
counts and data-parallel sharding through `r1jax.rollout` (8 fake CPU devices, in a subprocess).

Every distinct sampler shape or setting is an XLA compile of a few seconds, so the tests
share a handful of them (the `greedy` fixture) instead of each compiling its own.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from r1jax.batching import pad_left
from r1jax.models import Transformer, from_pretrained, save_pretrained
from r1jax.rollout import rollout
from r1jax.sampling import decode_step, generate, prefill, sample_token
from tests.support import ROOT
from tests.support.tiny import tiny_config

PAD = 0
VOCAB = 64
# eight rows of different lengths, left-padded in every batch below
PROMPTS = [[5, 17, 42, 9, 33, 21, 8], [12, 5, 60], [7, 7, 3, 50, 2], [1],
           [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [63, 0, 2], [9, 9], [30, 31, 32, 33]]
CONTINUATION = np.random.default_rng(0).integers(0, VOCAB, size=(len(PROMPTS), 4))
WIDTH = 16  # the prompt columns of the sampled batches below (`rollout` pads PROMPTS to 16 as well)


def tiny_model(seed=0, sharpness=8.0):
    """A random 2-layer GQA model whose logits spread over a few units (the default init
    gives near-uniform logits, which would make greedy ties and weak sampling tests)."""
    config = tiny_config(vocab_size=VOCAB, max_position_embeddings=128)
    model = Transformer(config, rngs=nnx.Rngs(seed))
    model.lm_head.set_value(jnp.asarray(np.asarray(model.lm_head.get_value()) * sharpness))
    return model


def left_pad(prompts, width=None):
    width = width or max(map(len, prompts))
    tokens = np.full((len(prompts), width), PAD, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return tokens, mask


def sample(model, prompts, rng, *, stop_ids=(), **settings):
    """`generate` on token lists left-padded to WIDTH columns; `model` is a Transformer or (graphdef, state)."""
    graphdef, state = nnx.split(model) if isinstance(model, Transformer) else model
    tokens, mask = pad_left(prompts, PAD, width=WIDTH)
    return generate(graphdef, state, tokens, mask, rng, stop_ids=stop_ids, pad_id=PAD, **settings)


class IdTokenizer:
    """What `rollout` reads of a tokenizer, for prompts given as ids: a completion's text is its ids."""

    pad_id = PAD
    stop_ids = frozenset()

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def reference_logits(model):
    """float64 logits [len(prompt) + 4, V] of each PROMPTS row followed by its CONTINUATION,
    from one cache-free forward pass over the batch padded on the RIGHT: causal attention
    keeps every real position independent of the padding after it."""
    sequences = [prompt + CONTINUATION[row].tolist() for row, prompt in enumerate(PROMPTS)]
    width = max(map(len, sequences))
    tokens = np.array([s + [PAD] * (width - len(s)) for s in sequences], np.int32)
    mask = np.array([[1] * len(s) + [0] * (width - len(s)) for s in sequences], np.int32)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens, mask: nnx.merge(graphdef, state)(tokens, attention_mask=mask))
    logits = np.asarray(forward(state, tokens, mask), np.float64)
    return [logits[row, :len(s)] for row, s in enumerate(sequences)]


@pytest.fixture(scope="module")
def greedy(model):
    """12 greedy tokens for PROMPTS, with no stop ids (compiled once, shared)."""
    return sample(model, PROMPTS, jax.random.key(0), max_new_tokens=12, temperature=0.0)


# ---- the KV-cache path -----------------------------------------------------------------

def test_cached_decoding_matches_full_forward_with_left_padding(model, reference_logits):
    tokens, mask = left_pad(PROMPTS, width=13)  # every row padded, by 2 to 12 slots
    steps = CONTINUATION.shape[1]
    graphdef, state = nnx.split(model)

    @jax.jit
    def cached_logits(state, tokens, mask, continuation):
        model = nnx.merge(graphdef, state)
        cache_length = tokens.shape[1] + steps
        key_mask = jnp.concatenate([mask, jnp.ones((mask.shape[0], steps), mask.dtype)], axis=1)
        cache = prefill(model, tokens[:, :-1], mask[:, :-1], cache_length)
        feed = jnp.concatenate([tokens[:, -1:], continuation], axis=1).T  # the prompt's last token first
        lengths = mask.sum(axis=1)

        def step(cache, t_and_tokens):
            t, step_tokens = t_and_tokens
            logits, cache = decode_step(model, step_tokens, lengths - 1 + t, key_mask, cache)
            return cache, logits

        _, logits = jax.lax.scan(step, cache, (jnp.arange(steps + 1), feed))
        return logits.transpose(1, 0, 2)

    ours = np.asarray(cached_logits(state, tokens, mask, CONTINUATION))
    for row, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(ours[row], reference_logits[row][len(prompt) - 1:], atol=1e-4, rtol=1e-4)


# ---- greedy parity with Hugging Face ---------------------------------------------------

def hf_tiny_model(family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, initializer_range=0.15, bos_token_id=None, eos_token_id=None,
                  pad_token_id=PAD)
    torch.manual_seed(0)
    if family == "llama":  # GQA with tied embeddings
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=True, **common))
    else:  # q/k/v biases, untied head
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=False, **common))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):  # HF initialises biases to zero; make them matter
                    param.normal_(0.0, 0.3)
    return model.float().eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_matches_transformers_generate(family, tmp_path):
    hf = hf_tiny_model(family)
    import torch

    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert ours.config.tie_embeddings == (family == "llama") and ours.config.qkv_bias == (family == "qwen2")

    prompts = PROMPTS[:2]  # lengths 7 and 3: HF pads to 7, we to 16
    tokens, mask = left_pad(prompts)
    with torch.no_grad():
        expected = hf.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                               do_sample=False, max_new_tokens=32, pad_token_id=PAD)[:, tokens.shape[1]:]
    out = sample(ours, prompts, jax.random.key(0), max_new_tokens=32, temperature=0.0)
    assert out.prompt_tokens.shape == (2, 16)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected.numpy())
    assert np.asarray(out.mask).all() and np.asarray(out.lengths).tolist() == [32, 32]


# ---- the sampling distribution ---------------------------------------------------------

def test_top_k_1_is_greedy(model, greedy):
    top_1 = sample(model, PROMPTS, jax.random.key(1), max_new_tokens=12, temperature=1.3, top_k=1)
    np.testing.assert_array_equal(np.asarray(top_1.tokens), np.asarray(greedy.tokens))
    # the distribution sampled from is a point mass: log 1 = 0
    np.testing.assert_allclose(np.asarray(top_1.logprobs), 0.0, atol=1e-6)


def reference_distribution(logits, temperature=1.0, top_k=0, top_p=1.0):
    """float64 sampling distribution, in HF's order: temperature, then top-k, then top-p."""
    scaled = logits / temperature
    order = np.argsort(-scaled, kind="stable")
    keep = np.zeros(scaled.shape, bool)
    keep[order[:top_k or len(scaled)]] = True
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    if top_p < 1:
        mass_before = np.cumsum(probs[order]) - probs[order]  # mass of the strictly more likely tokens
        assert np.abs(mass_before - top_p).min() > 1e-4, "nucleus boundary too close to call"
        keep[order[mass_before >= top_p]] = False
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def check_samples(tokens, logprobs, expected):
    """The draws never leave the support, carry log q(token), and pass a chi-square test."""
    assert (expected[tokens] > 0).all(), "drew a token outside the top-k / nucleus support"
    np.testing.assert_allclose(logprobs, np.log(expected[tokens]), atol=1e-4)
    counts = np.bincount(tokens, minlength=len(expected))

    def chi_square_p(probs):
        # pool the rare tokens (expected count < 5) into one bin, as the test requires
        common = probs * len(tokens) >= 5
        observed = np.append(counts[common], counts[~common].sum())
        predicted = np.append(probs[common], probs[~common].sum()) * len(tokens)
        return stats.chisquare(observed[predicted > 0], predicted[predicted > 0]).pvalue

    assert chi_square_p(expected) > 1e-3
    # ... and the sample is large enough to reject a sharper distribution on the same support
    sharper = expected ** 1.5
    assert chi_square_p(sharper / sharper.sum()) < 1e-3


NUM_SAMPLES = 8000


def test_first_token_follows_the_softmax(model, reference_logits):
    prompt = PROMPTS[0]
    out = sample(model, [prompt] * NUM_SAMPLES, jax.random.key(42), max_new_tokens=1, temperature=1.0)
    expected = reference_distribution(reference_logits[0][len(prompt) - 1])
    check_samples(np.asarray(out.tokens[:, 0]), np.asarray(out.logprobs[:, 0]), expected)


def test_prompts_prefilled_once_per_group_sample_what_repeated_prompts_sample(model):
    """rows_per_prompt=G (GRPO's groups): each prompt is prefilled once and its cache copied to its
    G rows; the tokens and log-probs are those of prefilling every row."""
    graphdef, state = nnx.split(model)
    tokens, mask = pad_left(PROMPTS[:4], PAD, repeat=3)
    outs = [generate(graphdef, state, tokens, mask, jax.random.key(3), max_new_tokens=10, temperature=1.0,
                     stop_ids=(3,), pad_id=PAD, rows_per_prompt=g) for g in (1, 3)]
    np.testing.assert_array_equal(outs[1].tokens, outs[0].tokens)
    np.testing.assert_allclose(outs[1].logprobs, outs[0].logprobs, atol=1e-5)
    assert len({tuple(row) for row in np.asarray(outs[1].tokens)[:3]}) > 1  # a group's rows differ
    with pytest.raises(ValueError, match="prompts of some group of 3 consecutive rows differ"):
        generate(graphdef, state, *pad_left(PROMPTS[:6], PAD), jax.random.key(3), max_new_tokens=2, rows_per_prompt=3)


def test_sampler_logprobs_equal_the_training_forward(model):
    """At temperature 1 without top-k/top-p, the log-prob the sampler records for each token (KV-cache
    decode, left-padded prompts, rows that stop early) is the one the GRPO loss computes for it (a
    cache-free forward with the LM head at the completion columns): GRPO's old log-probs need no
    extra forward pass and no importance correction."""
    from r1jax.rollout import training_batch
    from r1jax.sharding import make_mesh
    from r1jax.train.objectives import completion_logprobs

    new_tokens = 12
    out = sample(model, PROMPTS, jax.random.key(5), stop_ids=(3, 17), max_new_tokens=new_tokens, temperature=1.0)
    mask = np.asarray(out.mask)
    assert 0 < mask.sum() < mask.size  # some rows stopped early
    batch = training_batch(out, make_mesh({"data": 1}, devices=jax.devices()[:1]), old_logps=True)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens, attention_mask: completion_logprobs(
        nnx.merge(graphdef, state), tokens, attention_mask, new_tokens)[0])
    trained = np.asarray(forward(state, batch.tokens, batch.attention_mask))
    sampled = np.asarray(batch.old_logps)[:, -new_tokens:]
    assert np.all(sampled[mask == 0] == 0)
    np.testing.assert_allclose(sampled[mask == 1], trained[mask == 1], rtol=1e-5, atol=1e-5)
    assert np.abs(sampled[mask == 1]).min() > 1e-3  # real log-probs, not zeros


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 0.8), (1.5, 6, 0.9)])
def test_top_k_and_top_p_sample_the_renormalised_filtered_softmax(reference_logits, temperature, top_k, top_p):
    logits = reference_logits[0][len(PROMPTS[0]) - 1]
    expected = reference_distribution(logits, temperature, top_k, top_p)
    assert 3 < (expected > 0).sum() < VOCAB / 2  # the filters bite
    draw = jax.jit(functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p))
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (NUM_SAMPLES, VOCAB))
    tokens, logprobs = draw(batch, jax.random.key(7))
    check_samples(np.asarray(tokens), np.asarray(logprobs), expected)


def test_stop_ids_end_rows_and_pad_the_rest(model, greedy):
    free = np.asarray(greedy.tokens)  # never stopped
    steps = free.shape[1]
    stop = int(free[0, 3])
    # ids outside the vocabulary never match
    out = sample(model, PROMPTS, jax.random.key(0), stop_ids=(stop, 1000), max_new_tokens=steps, temperature=0.0)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free[row] == stop)
        length = hits[0] + 1 if hits.size else steps
        assert int(out.lengths[row]) == length
        np.testing.assert_array_equal(np.asarray(out.mask[row]), np.arange(steps) < length)
        np.testing.assert_array_equal(np.asarray(out.tokens[row]), np.where(np.arange(steps) < length, free[row], PAD))
    assert int(out.lengths[0]) <= 4

    # every row stops by its second token: the loop exits early, the outputs still line up
    out = sample(model, PROMPTS, jax.random.key(0), stop_ids=free[:, 1].tolist(), max_new_tokens=steps,
                 temperature=0.0)
    assert np.asarray(out.lengths).max() <= 2
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, 2:], PAD)
    np.testing.assert_array_equal(np.asarray(out.mask)[:, 2:], 0)


# ---- compiling once --------------------------------------------------------------------

class CompileCounter:
    """Counts XLA compilations (every jit cache miss ends in one) while active."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_same_shapes_and_new_params_do_not_recompile(model):
    graphdef, state = nnx.split(model)
    new_state = jax.tree.map(lambda x: np.asarray(x) * 1.5, state)  # numpy: no compile here
    settings = dict(max_new_tokens=12, temperature=0.0)  # what the `greedy` fixture compiled
    before = sample((graphdef, state), PROMPTS, jax.random.key(0), stop_ids=(3, 4), **settings)  # (compiles unless done)
    shuffled = [prompt[::-1] + [1] for prompt in PROMPTS[::-1]]  # other lengths, same width
    with CompileCounter() as counter:
        sample((graphdef, state), shuffled, jax.random.key(1), stop_ids=(3, 4), **settings)
        renewed = sample((graphdef, new_state), PROMPTS, jax.random.key(0), stop_ids=(3, 4), **settings)
        sample(model, PROMPTS, jax.random.key(2), stop_ids=(5, 6), **settings)  # a new split, new stop ids
    assert counter.count == 0
    assert not np.array_equal(np.asarray(renewed.tokens), np.asarray(before.tokens))  # new params used


# ---- bad input -------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_reason(model):
    graphdef, state = nnx.split(model)
    rng = jax.random.key(0)
    tokens, mask = pad_left([[1, 2]], PAD)
    with pytest.raises(ValueError, match="top_p"):
        generate(graphdef, state, tokens, mask, rng, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(graphdef, state, tokens, mask, rng, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"both be \[batch, prompt_len\]"):
        generate(graphdef, state, tokens[0], mask[0], rng, max_new_tokens=2)
    # the host side's refusals (prompts it cannot pad) are in test_rollout.py


# ---- sharding --------------------------------------------------------------------------

def _sharded_greedy(checkpoint):
    """Run in a subprocess with 8 fake CPU devices: the `greedy` fixture through `rollout` (GRPO's and
    evaluation's host side) on a data-parallel mesh, the parameters placed on it by their logical axes."""
    from r1jax.sharding import make_mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = make_mesh({"data": -1})
    graphdef, state = nnx.split(from_pretrained(checkpoint, mesh=mesh))
    result = rollout(graphdef, state, IdTokenizer(), PROMPTS, jax.random.key(0), repeat=1, max_prompt_length=WIDTH,
                     max_new_tokens=12, temperature=0.0, top_p=1.0, mesh=mesh)
    out = result.samples
    assert out.prompt_tokens.shape == (len(PROMPTS), WIDTH)  # the same columns as the `greedy` fixture's
    assert out.tokens.sharding.shard_shape(out.tokens.shape)[0] == 1  # one row per device
    assert result.completions == [IdTokenizer().decode(row[:n]) for row, n in zip(np.asarray(out.tokens), result.lengths)]
    print(json.dumps({name: np.asarray(getattr(out, name)).tolist() for name in ("tokens", "mask", "lengths")}))


def test_sharded_over_8_devices_equals_unsharded(model, greedy, tmp_path):
    save_pretrained(model, tmp_path)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", __name__, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("tokens", "mask", "lengths"):
        np.testing.assert_array_equal(np.array(sharded[name]), np.asarray(getattr(greedy, name)))


if __name__ == "__main__":
    _sharded_greedy(sys.argv[1])
