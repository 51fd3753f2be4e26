"""Tests for r1jax.losses against independent float64 numpy implementations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.losses import (entropy, grpo_loss, group_advantages, head_logprobs, kl_k1,
                          kl_k2, kl_k3, reinforce_pp_advantages, rloo_advantages, sequence_kl,
                          sft_loss, token_logprobs)

TOL = dict(rtol=1e-5, atol=1e-5)
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"]
LEVELS = ["token", "sequence"]


# ---------------------------------------------------------------- references


def np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_token_logprobs(logits, tokens):
  return np.take_along_axis(np_log_softmax(logits), np.asarray(tokens)[..., None], -1)[..., 0]


def np_entropy(logits):
  logp = np_log_softmax(logits)
  return -(np.exp(logp) * logp).sum(-1)


def np_group_advantages(rewards, group_size, scale, eps, valid):
  rewards = np.asarray(rewards, np.float64)
  valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid)
  out = np.zeros(len(rewards))
  batch_std = np.std(rewards[valid]) if valid.any() else 0.0
  for start in range(0, len(rewards), group_size):
    idx = np.arange(start, start + group_size)[valid[start:start + group_size]]
    if len(idx) == 0 or np.all(rewards[idx] == rewards[idx][0]):
      continue  # nothing to compare with: advantage 0
    centred = rewards[idx] - rewards[idx].mean()
    if scale == "group":
      centred = centred / (np.std(rewards[idx]) + eps)
    elif scale == "batch":
      centred = centred / (batch_std + eps)
    out[idx] = centred
  return out


def np_rloo(rewards, group_size, valid):
  """A_i = r_i - mean of the other valid rewards of the group, by an explicit loop."""
  rewards = np.asarray(rewards, np.float64)
  valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid)
  out = np.zeros(len(rewards))
  for start in range(0, len(rewards), group_size):
    idx = [i for i in range(start, start + group_size) if valid[i]]
    for i in idx:
      others = [rewards[j] for j in idx if j != i]
      if others:
        out[i] = rewards[i] - np.mean(others)
  return out


def np_reinforce_pp(rewards, kl, beta, eps, valid):
  """(R - mean R) / (std R + eps) over the valid rows, R = r - beta * KL."""
  returns = np.asarray(rewards, np.float64) - beta * np.asarray(kl, np.float64)
  valid = np.ones(len(returns), bool) if valid is None else np.asarray(valid)
  out = np.zeros(len(returns))
  if valid.any():
    out[valid] = (returns[valid] - returns[valid].mean()) / (returns[valid].std() + eps)
  return out


def np_grpo(logps, old, ref, adv, mask, *, eps_low, eps_high, beta, loss_type,
            max_len, level, num_global_tokens=None):
  """Row by row, touching only completion tokens, in float64."""
  logps, old, adv = (np.asarray(x, np.float64) for x in (logps, old, adv))
  ref = None if ref is None else np.asarray(ref, np.float64)
  mask = np.asarray(mask, bool)
  eps_high = eps_low if eps_high is None else eps_high
  rows, ratios, kls, low, high = [], [], [], [], []
  for i in range(len(logps)):
    tok = mask[i]
    log_ratio = logps[i, tok] - old[i, tok]
    if level == "sequence" and tok.any():
      log_ratio = np.full(tok.sum(), log_ratio.mean())
    ratio = np.exp(log_ratio)
    if loss_type == "cispo":  # the clipped weight is a constant: sg() is a no-op on values
      loss = -np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[i] * logps[i, tok]
    else:
      loss = -np.minimum(ratio * adv[i], np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[i])
    if beta:
      d = ref[i, tok] - logps[i, tok]
      kl = np.exp(d) - d - 1
      loss = loss + beta * kl
      kls.extend(kl)
    rows.append(loss)
    ratios.extend(ratio)
    any_sign = loss_type == "cispo"  # CISPO clips the weight whatever the sign of A
    low.extend((ratio < 1 - eps_low) & (any_sign or adv[i] < 0))
    high.extend((ratio > 1 + eps_high) & (any_sign or adv[i] > 0))
  total = sum(r.sum() for r in rows)
  num_tokens = mask.sum()
  if loss_type == "grpo":
    value = np.mean([r.mean() if len(r) else 0.0 for r in rows])
  elif loss_type == "bnpo":
    value = total / num_tokens
  elif loss_type == "dr_grpo":
    value = total / (len(logps) * max_len)
  else:
    value = total / (num_tokens if num_global_tokens is None else num_global_tokens)
  metrics = {
      "clip_fraction/low": np.mean(low),
      "clip_fraction/high": np.mean(high),
      "clip_fraction/region": np.mean(np.array(low) | np.array(high)),
      "ratio/mean": np.mean(ratios),
      "ratio/min": np.min(ratios),
      "ratio/max": np.max(ratios),
  }
  if beta:
    metrics["kl"] = np.mean(kls)
  return value, metrics


# ---------------------------------------------------------------- inputs


def policy_batch(seed=0, dtype=np.float32):
  """Six sequences of up to 7 tokens, ragged, one of them empty, one with a hole."""
  rng = np.random.default_rng(seed)
  B, T = 6, 7
  lengths = [7, 3, 0, 5, 1, 6]
  mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
  mask[0, 2] = False  # a hole, e.g. a tool-output token
  logps = -rng.uniform(0.05, 3.0, (B, T))
  old = logps + rng.normal(0, 0.3, (B, T))
  ref = logps + rng.normal(0, 0.3, (B, T))
  # Garbage on padding: exp(logps - old) would overflow if it were computed there.
  logps[~mask], old[~mask], ref[~mask] = 80.0, -80.0, -80.0
  adv = rng.normal(0, 1, B)
  return [x.astype(dtype) for x in (logps, old, ref, adv)] + [mask]


def loss_options(loss_type, level, beta, epsilon_high, T=7):
  return dict(epsilon_low=0.2, epsilon_high=epsilon_high, beta=beta,
              loss_type=loss_type, max_completion_length=T + 2,
              importance_sampling_level=level)


# ---------------------------------------------------------------- token_logprobs / entropy


# Inputs come from numpy and calls are jitted: op-by-op JAX would compile
# dozens of tiny programs and make the tests several times slower.


def random_logits(shape, dtype=jnp.float32, seed=0):
  return jnp.asarray(3 * np.random.default_rng(seed).normal(size=shape), dtype)


def random_tokens(shape, vocab, seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def random_cotangent(shape, seed=2):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_logprobs_matches_numpy_log_softmax_gather(dtype):
  logits = random_logits((3, 5, 11), dtype)
  tokens = random_tokens((3, 5), 11)
  got = jax.jit(token_logprobs)(logits, tokens)
  assert got.dtype == jnp.float32
  want = np_token_logprobs(np.asarray(logits.astype(jnp.float32)), tokens)
  np.testing.assert_allclose(got, want, **TOL)
  np.testing.assert_allclose(token_logprobs(logits, tokens), want, **TOL)  # op by op too


def test_token_logprobs_with_banned_vocabulary_entries():
  logits = random_logits((2, 4, 9)).at[..., 5:].set(-jnp.inf)
  tokens = jnp.array([[0, 1, 2, 3], [4, 0, 1, 2]])
  np.testing.assert_allclose(jax.jit(token_logprobs)(logits, tokens),
                             np_token_logprobs(logits, tokens), **TOL)
  grad = jax.jit(jax.grad(lambda x: token_logprobs(x, tokens).sum()))(logits)
  assert np.isfinite(grad).all() and np.all(grad[..., 5:] == 0)


def naive_token_logprobs(logits, tokens):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def naive_entropy(logits):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_token_logprobs_gradient_equals_naive_log_softmax(dtype, atol):
  logits = random_logits((3, 5, 11), dtype)
  tokens = random_tokens((3, 5), 11)
  cotangent = random_cotangent((3, 5))
  vjp = lambda f: jax.jit(lambda x, g: jax.vjp(lambda x: f(x, tokens), x)[1](g)[0])
  grad = vjp(token_logprobs)(logits, cotangent)
  want = vjp(naive_token_logprobs)(logits, cotangent)
  assert grad.dtype == dtype
  np.testing.assert_allclose(grad.astype(jnp.float32), want.astype(jnp.float32), atol=atol)
  # Also through vmap (the custom VJP must batch).
  vmapped = jax.jit(jax.vmap(jax.grad(lambda x, t: token_logprobs(x, t).sum())))(
      logits, tokens)
  np.testing.assert_allclose(vmapped.astype(jnp.float32),
                             vjp(naive_token_logprobs)(logits, jnp.ones((3, 5)))
                             .astype(jnp.float32), atol=atol)


def test_entropy_matches_numpy_and_naive_gradient():
  logits = random_logits((3, 5, 11))
  got = jax.jit(entropy)(logits)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_entropy(logits), **TOL)
  np.testing.assert_allclose(entropy(jnp.zeros((1, 1, 8))), [[np.log(8)]], **TOL)
  cotangent = random_cotangent((3, 5))
  vjp = lambda f: jax.jit(lambda x, g: jax.vjp(f, x)[1](g)[0])
  grad = vjp(entropy)(logits, cotangent)
  want = vjp(naive_entropy)(logits, cotangent)
  np.testing.assert_allclose(grad, want, atol=1e-6)


def test_head_logprobs_match_numpy_and_the_gradient_of_the_plain_head():
  rng = np.random.default_rng(3)
  hidden = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(11, 7)), jnp.float32)
  tokens = random_tokens((3, 5), 11)
  logps, ent = jax.jit(head_logprobs)(hidden, head, tokens)
  logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64).T
  np.testing.assert_allclose(logps, np_token_logprobs(logits, tokens), **TOL)
  np.testing.assert_allclose(ent, np_entropy(logits), **TOL)
  cotangent = random_cotangent((3, 5))
  plain = lambda h, w: naive_token_logprobs(jnp.einsum("btd,vd->btv", h, w), tokens)
  ours = lambda h, w: head_logprobs(h, w, tokens)[0]
  got = jax.jit(lambda h, w, g: jax.vjp(ours, h, w)[1](g))(hidden, head, cotangent)
  want = jax.jit(lambda h, w, g: jax.vjp(plain, h, w)[1](g))(hidden, head, cotangent)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # the entropy is a statistic: a loss built on it gets no gradient (documented)
  no_grad = jax.grad(lambda h: head_logprobs(h, head, tokens)[1].sum())(hidden)
  assert not np.any(np.asarray(no_grad))
  with pytest.raises(ValueError, match="head must be"):
    head_logprobs(hidden, head.T, tokens)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 15, 16])
def test_chunked_head_equals_numpy_and_the_one_chunk_head(chunk_size):
  """Chunks of whole columns (3 rows x 5 columns: 1 to 5 columns a chunk, some ragged): the same
  log-probs and entropy as numpy, and the same gradients as the head in one chunk."""
  rng = np.random.default_rng(4)
  hidden = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(11, 7)), jnp.float32)
  tokens = random_tokens((3, 5), 11)
  cotangent = random_cotangent((3, 5))
  logps, ent = jax.jit(functools.partial(head_logprobs, chunk_size=chunk_size))(hidden, head, tokens)
  logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64).T
  np.testing.assert_allclose(logps, np_token_logprobs(logits, tokens), **TOL)
  np.testing.assert_allclose(ent, np_entropy(logits), **TOL)
  grads = lambda size: jax.jit(lambda h, w, g: jax.vjp(
      lambda h, w: head_logprobs(h, w, tokens, chunk_size=size)[0], h, w)[1](g))(hidden, head, cotangent)
  for got, want in zip(grads(chunk_size), grads(10**6)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="chunk_size=0"):
    head_logprobs(hidden, head, tokens, chunk_size=0)


def test_chunked_head_keeps_no_positions_by_vocabulary_array():
  """The gradient's scratch memory is about one chunk's logits, not all positions' ([N, V])."""
  positions, vocab, width = 4096, 8192, 32
  shapes = (jax.ShapeDtypeStruct((8, positions // 8, width), jnp.float32),
            jax.ShapeDtypeStruct((vocab, width), jnp.float32),
            jax.ShapeDtypeStruct((8, positions // 8), jnp.int32))

  def temp_bytes(chunk_size):
    grad = jax.grad(lambda h, w, t: head_logprobs(h, w, t, chunk_size=chunk_size)[0].sum(), argnums=(0, 1))
    return jax.jit(grad).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

  all_logits = positions * vocab * 4
  assert temp_bytes(positions) > all_logits  # one chunk: the logits live from the forward to the backward
  assert temp_bytes(512) < all_logits / 4


def naive_sft_loss(logits, targets, mask):
  return -(naive_token_logprobs(logits, targets) * mask).sum() / mask.sum()


@pytest.mark.parametrize("fn,naive_fn", [
    (token_logprobs, naive_token_logprobs),
    (lambda x, t: entropy(x), lambda x, t: naive_entropy(x)),
    (lambda x, t: sft_loss(x, t, t >= 0)[0], lambda x, t: naive_sft_loss(x, t, t >= 0)),
], ids=["token_logprobs", "entropy", "sft_loss"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_value_and_gradient_keep_fewer_float32_copies_of_the_logits(fn, naive_fn, dtype):
  # Temporary buffers XLA allocates for a jitted value_and_grad, counted in
  # float32 [B, T, V] arrays. Plain log_softmax autodiff keeps at least one more.
  # With float32 logits ours need none; with bf16 logits XLA:CPU still writes
  # the bf16 -> f32 cast once (its reduction kernels take float32 inputs).
  B, T, V = 2, 8, 8192
  logits = jnp.zeros((B, T, V), dtype)
  tokens = jnp.zeros((B, T), jnp.int32)
  def copies(f):
    step = jax.jit(jax.value_and_grad(lambda x: f(x, tokens).sum()))
    return step.lower(logits).compile().memory_analysis().temp_size_in_bytes / (B * T * V * 4)
  ours = copies(fn)
  assert ours <= copies(naive_fn) - 0.99
  if dtype == jnp.float32:
    assert ours < 0.01


# ---------------------------------------------------------------- advantages


# Groups of 5: unlike 4, the float32 mean of five equal rewards need not be the
# reward itself, which is what the zero-variance guard is for.
REWARDS = np.array([0.12, 0.12, 0.12, 0.12, 0.12,   # all equal: no signal
                    1.0, 0.0, 0.5, 0.0, 0.25,
                    0.1, 0.9, 0.3, 0.2, 0.4,
                    0.12, np.nan, 0.12, 0.12, 0.7,  # NaN: could not be judged
                    0.0, 1.0, 1.0, 0.0, 0.5], np.float32)
VALID = np.array([1, 1, 1, 1, 1,
                  1, 0, 1, 1, 1,
                  0, 0, 0, 0, 0,                    # nothing valid in this group
                  1, 0, 1, 1, 0,                    # the valid ones are equal
                  1, 1, 1, 0, 1], bool)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("use_valid", [False, True])
def test_group_advantages_match_numpy(scale, use_valid):
  rewards = REWARDS if use_valid else np.nan_to_num(REWARDS, nan=3.0)
  valid = VALID if use_valid else None
  advantages_fn = jax.jit(functools.partial(group_advantages, group_size=5,
                                            scale=scale, eps=1e-4))
  got = advantages_fn(jnp.asarray(rewards), valid=valid)
  assert got.shape == (25,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_group_advantages(rewards, 5, scale, 1e-4, valid), **TOL)
  assert np.all(np.asarray(got[:5]) == 0)  # exactly, despite rounding in the mean
  if use_valid:
    assert np.all(np.asarray(got)[~VALID] == 0)
    assert np.all(np.asarray(got[15:20]) == 0)


def test_group_advantages_hand_example():
  # mean 0.5, population std 0.5: A = +-0.5 / (0.5 + eps).
  got = jax.jit(functools.partial(group_advantages, group_size=2, eps=0.1))(
      jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(got, [0.5 / 0.6, -0.5 / 0.6], **TOL)
  got = jax.jit(functools.partial(group_advantages, group_size=2, scale="none"))(
      jnp.array([1.0, 0.0, 3.0, 3.0]))
  np.testing.assert_allclose(got, [0.5, -0.5, 0.0, 0.0], **TOL)


def test_group_advantages_bad_input():
  with pytest.raises(ValueError, match="not a multiple of group_size"):
    group_advantages(jnp.zeros(10), 4)
  with pytest.raises(ValueError, match="Unknown scale 'std'"):
    group_advantages(jnp.zeros(8), 4, scale="std")
  with pytest.raises(ValueError, match="valid must have the shape"):
    group_advantages(jnp.zeros(8), 4, valid=jnp.ones(4, bool))
  with pytest.raises(ValueError, match="1-D"):
    group_advantages(jnp.zeros((2, 4)), 4)


@pytest.mark.parametrize("use_valid", [False, True])
def test_rloo_advantages_match_numpy(use_valid):
  rewards = REWARDS if use_valid else np.nan_to_num(REWARDS, nan=3.0)
  valid = VALID if use_valid else None
  got = jax.jit(functools.partial(rloo_advantages, group_size=5))(jnp.asarray(rewards), valid=valid)
  assert got.shape == (25,) and got.dtype == jnp.float32
  want = np_rloo(rewards, 5, valid)
  np.testing.assert_allclose(got, want, **TOL)
  assert np.abs(want).max() > 0.5
  assert np.all(np.asarray(got[:5]) == 0)  # equal rewards: exactly 0
  if use_valid:
    assert np.all(np.asarray(got)[~VALID] == 0)


def test_rloo_is_the_rescaled_group_mean_baseline():
  # A_i = G/(G-1) (r_i - mean): Dr. GRPO's advantages times G/(G-1).
  rewards = np.random.default_rng(3).normal(size=12).astype(np.float32)
  got = jax.jit(functools.partial(rloo_advantages, group_size=4))(rewards)
  centred = group_advantages(rewards, 4, scale="none")
  np.testing.assert_allclose(got, 4 / 3 * np.asarray(centred), **TOL)


def test_rloo_advantages_hand_example():
  # Group 1: r = (1, 0, 0, 1); the others of sample 0 average (0 + 0 + 1) / 3 = 1/3,
  # so A_0 = 1 - 1/3 = 2/3, and A_1 = 0 - (1 + 0 + 1) / 3 = -2/3.
  # Group 2: r = (3, 1, NaN, 2) with the NaN invalid: A = 3 - 1.5, 1 - 2.5, 0, 2 - 2.
  got = jax.jit(functools.partial(rloo_advantages, group_size=4))(
      jnp.array([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, np.nan, 2.0]),
      valid=jnp.array([1, 1, 1, 1, 1, 1, 0, 1], bool))
  np.testing.assert_allclose(got, [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.5, -1.5, 0.0, 0.0], **TOL)
  # A single valid sample has no other to compare with.
  got = rloo_advantages(jnp.array([5.0, 1.0]), 2, valid=jnp.array([True, False]))
  np.testing.assert_array_equal(got, [0.0, 0.0])


@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("use_valid", [False, True])
def test_reinforce_pp_advantages_match_numpy(beta, use_valid):
  rewards = REWARDS if use_valid else np.nan_to_num(REWARDS, nan=3.0)
  valid = VALID if use_valid else None
  kl = np.random.default_rng(4).uniform(0, 2, 25).astype(np.float32)
  got = jax.jit(functools.partial(reinforce_pp_advantages, beta=beta, eps=1e-4))(
      jnp.asarray(rewards), sequence_kl=kl, valid=valid)
  assert got.shape == (25,) and got.dtype == jnp.float32
  want = np_reinforce_pp(rewards, kl, beta, 1e-4, valid)
  np.testing.assert_allclose(got, want, **TOL)
  # normalised over the whole batch, not per group: the first group's equal
  # rewards (0.12, below the batch mean) get advantages too
  assert np.abs(np.asarray(got)[:5]).max() > 0.1
  if use_valid:
    assert np.all(np.asarray(got)[~VALID] == 0)


def test_reinforce_pp_advantages_hand_example():
  # r = (1, 0, 0, 1), KL = (0, 1, 0, 0), beta = 0.5: R = (1, -0.5, 0, 1), mean 0.375,
  # R - mean = (0.625, -0.875, -0.375, 0.625), variance 1.6875 / 4 = 0.421875, std 0.6495191.
  got = reinforce_pp_advantages(jnp.array([1.0, 0.0, 0.0, 1.0]), sequence_kl=jnp.array([0.0, 1.0, 0.0, 0.0]),
                                beta=0.5, eps=0.0)
  np.testing.assert_allclose(got, np.array([0.625, -0.875, -0.375, 0.625]) / np.sqrt(0.421875), **TOL)
  # Equal returns carry no signal: exactly 0.
  np.testing.assert_array_equal(reinforce_pp_advantages(jnp.full(4, 0.7)), np.zeros(4))


def test_sequence_kl_matches_numpy():
  logps, _, ref, _, mask = policy_batch()  # garbage on padding must not leak into the sums
  got = jax.jit(sequence_kl)(logps, ref, mask)
  want = [np.sum(logps[i, mask[i]].astype(np.float64) - ref[i, mask[i]]) for i in range(len(logps))]
  np.testing.assert_allclose(got, want, **TOL)


def test_new_advantage_estimators_bad_input():
  with pytest.raises(ValueError, match="not a multiple of group_size"):
    rloo_advantages(jnp.zeros(10), 4)
  with pytest.raises(ValueError, match="valid must have the shape"):
    rloo_advantages(jnp.zeros(8), 4, valid=jnp.ones(4, bool))
  with pytest.raises(ValueError, match="pass sequence_kl"):
    reinforce_pp_advantages(jnp.zeros(8), beta=0.1)
  with pytest.raises(ValueError, match="sequence_kl must have the shape"):
    reinforce_pp_advantages(jnp.zeros(8), sequence_kl=jnp.zeros(4), beta=0.1)
  with pytest.raises(ValueError, match="1-D"):
    reinforce_pp_advantages(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"must all be \[B, T\]"):
    sequence_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 4)))


# ---------------------------------------------------------------- KL


def test_kl_estimators_match_numpy():
  logps, _, ref, _, _ = policy_batch()
  logps, ref = logps.clip(-5, 0), ref.clip(-5, 0)
  l64, r64 = logps.astype(np.float64), ref.astype(np.float64)
  np.testing.assert_allclose(kl_k1(logps, ref), l64 - r64, **TOL)
  np.testing.assert_allclose(kl_k2(logps, ref), 0.5 * (l64 - r64) ** 2, **TOL)
  np.testing.assert_allclose(kl_k3(logps, ref), np.exp(r64 - l64) - (r64 - l64) - 1, **TOL)
  assert np.all(np.asarray(kl_k3(logps, ref)) >= 0)


def test_kl_k3_keeps_precision_for_close_policies():
  # k3 ~ d^2 / 2 ~ 5e-9 here: exp(d) - d - 1 in float32 rounds to a multiple
  # of ~6e-8 (error > 100%), expm1(d) - d keeps a few digits.
  d = np.array([1e-4, -3e-4, 2e-3])
  got = kl_k3(jnp.zeros(3, jnp.float32), jnp.asarray(d, jnp.float32))
  d32 = d.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(got, np.expm1(d32) - d32, rtol=1e-2)


# ---------------------------------------------------------------- grpo_loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("beta,epsilon_high", [(0.04, None), (0.0, 0.28)])
def test_grpo_loss_matches_numpy(loss_type, level, beta, epsilon_high):
  logps, old, ref, adv, mask = policy_batch()
  options = loss_options(loss_type, level, beta, epsilon_high)
  loss, metrics = jax.jit(functools.partial(grpo_loss, **options))(
      logps, old, ref if beta else None, adv, mask)
  want, want_metrics = np_grpo(
      logps, old, ref, adv, mask, eps_low=0.2, eps_high=epsilon_high, beta=beta,
      loss_type=loss_type, max_len=options["max_completion_length"], level=level)
  assert loss.shape == () and np.isfinite(loss)
  np.testing.assert_allclose(loss, want, **TOL)
  assert set(metrics) == set(want_metrics)
  for name, value in want_metrics.items():
    np.testing.assert_allclose(metrics[name], value, **TOL, err_msg=name)


def test_policy_batch_covers_both_clip_sides():
  # Otherwise the clip metrics and the clipped branch would be tested on zeros.
  logps, old, _, adv, mask = policy_batch()
  _, metrics = np_grpo(logps, old, None, adv, mask, eps_low=0.2, eps_high=None,
                       beta=0, loss_type="grpo", max_len=7, level="token")
  assert metrics["clip_fraction/low"] > 0 and metrics["clip_fraction/high"] > 0


def test_dapo_num_global_tokens_splits_over_microbatches():
  batch = policy_batch()  # logps, old, ref, adv, mask
  options = loss_options("dapo", "token", 0.04, None)
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda *arrays, n: grpo_loss(*arrays, **options, num_global_tokens=n)[0]))
  want, _ = np_grpo(*batch, eps_low=0.2, eps_high=None, beta=0.04, loss_type="dapo",
                    max_len=9, level="token", num_global_tokens=50)
  np.testing.assert_allclose(loss_and_grad(*batch, n=50)[0], want, **TOL)
  # Microbatches that each divide by the step's token count sum to the full
  # batch's loss, and so do their gradients.
  full_loss, full_grad = loss_and_grad(*batch, n=None)
  num_tokens = jnp.asarray(batch[-1].sum())
  first = loss_and_grad(*[x[:2] for x in batch], n=num_tokens)
  second = loss_and_grad(*[x[2:] for x in batch], n=num_tokens)
  np.testing.assert_allclose(first[0] + second[0], full_loss, **TOL)
  np.testing.assert_allclose(jnp.concatenate([first[1], second[1]]), full_grad, **TOL)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "cispo"])  # cispo: sg() by design
@pytest.mark.parametrize("level", LEVELS)
def test_grpo_loss_gradient_matches_finite_differences(loss_type, level):
  with jax.enable_x64(True):
    logps, old, ref, adv, mask = policy_batch(seed=1, dtype=np.float64)
    options = loss_options(loss_type, level, 0.04, 0.28)
    loss_fn = lambda x: grpo_loss(x, old, ref, adv, mask, **options)[0]
    assert jax.eval_shape(loss_fn, logps).dtype == jnp.float64
    # Keep clear of the clip kinks, where the derivative jumps.
    log_ratio = np.where(mask, logps - old, 0)
    if level == "sequence":
      log_ratio = log_ratio.sum(1) / np.maximum(mask.sum(1), 1)
    for edge in (np.log(0.8), np.log(1.28)):
      assert np.abs(log_ratio - edge).min() > 1e-4
    grad = np.asarray(jax.jit(jax.grad(loss_fn))(logps))
    h = 1e-6
    steps = h * np.eye(logps.size).reshape(-1, *logps.shape)  # one entry at a time
    batched_loss = jax.jit(jax.vmap(loss_fn))
    numeric = (batched_loss(logps + steps) - batched_loss(logps - steps)) / (2 * h)
    numeric = np.asarray(numeric).reshape(logps.shape)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-3
    assert np.all(grad[~mask] == 0)  # and no NaN from the garbage on padding
  assert jnp.zeros(1).dtype == jnp.float32  # x64 stayed inside the test


@pytest.mark.parametrize("level", LEVELS)
def test_first_step_loss_is_zero_but_gradient_is_policy_gradient(level):
  # mu = 1: old_logps are the current logps, so every ratio is 1.
  logps, _, _, _, mask = policy_batch(seed=2)
  mask[2, :2] = True  # no empty row: each sequence then carries its advantage
  logps[2, :2] = -1.0
  adv = jax.jit(group_advantages, static_argnums=1)(np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.8]), 3)
  loss_fn = lambda x, old: grpo_loss(x, old, None, adv, mask, beta=0.0,
                                     importance_sampling_level=level)[0]
  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(logps, logps)
  assert abs(float(loss)) < 1e-6
  # d loss / d logp_{i,t} = -A_i / (B * |o_i|) on completion tokens.
  lengths = mask.sum(1, keepdims=True)
  want = np.where(mask, -np.asarray(adv)[:, None] / (6 * lengths), 0)
  np.testing.assert_allclose(grad, want, **TOL)
  assert np.abs(want).max() > 0.05


@pytest.mark.parametrize("level", LEVELS)
def test_cispo_gradient_is_the_clipped_weight_times_the_policy_gradient(level):
  # d/dlogp of -sg(w) A logp / N is -w A / N: the weight gets no gradient (finite
  # differences of the value would also move w) and every completion token has one.
  logps, old, ref, adv, mask = policy_batch(seed=1)
  options = loss_options("cispo", level, 0.0, 0.28)
  grad = jax.jit(jax.grad(lambda x: grpo_loss(x, old, None, adv, mask, **options)[0]))(logps)
  log_ratio = np.where(mask, logps.astype(np.float64) - old, 0)
  if level == "sequence":
    log_ratio = np.broadcast_to((log_ratio.sum(1) / np.maximum(mask.sum(1), 1))[:, None], mask.shape)
  weight = np.clip(np.exp(log_ratio), 0.8, 1.28)
  want = np.where(mask, -weight * adv[:, None].astype(np.float64) / mask.sum(), 0)
  np.testing.assert_allclose(grad, want, **TOL)
  assert np.all(np.asarray(grad)[mask] != 0)  # no token dropped


def test_cispo_gradient_differs_from_grpo_exactly_where_the_clip_binds():
  # Same aggregation (dapo: token sum / token count), beta = 0. Inside the clip range
  # both gradients are -r A / N; outside it CISPO keeps -clip(r) A / N, where the PPO
  # form has 0 (clipped term picked by the min) or -r A / N (unclipped term picked).
  logps, old, _, adv, mask = policy_batch()
  grad = {loss_type: np.asarray(jax.jit(jax.grad(lambda x, t=loss_type: grpo_loss(
      x, old, None, adv, mask, beta=0.0, epsilon_high=0.28, loss_type=t)[0]))(logps))
      for loss_type in ("dapo", "cispo")}
  ratio = np.exp(logps.astype(np.float64) - old)
  binds = mask & ((ratio < 0.8) | (ratio > 1.28))
  assert binds.sum() >= 4 and (mask & ~binds).sum() >= 4
  differs = ~np.isclose(grad["dapo"], grad["cispo"], rtol=1e-6, atol=1e-9)
  np.testing.assert_array_equal(differs, binds)
  np.testing.assert_allclose(grad["cispo"][binds], -(np.clip(ratio, 0.8, 1.28) * adv[:, None])[binds] / mask.sum(),
                             **TOL)


def test_cispo_epsilon_low_above_one_means_no_lower_bound():
  logps, old, _, adv, mask = policy_batch()
  loss, metrics = grpo_loss(logps, old, None, adv, mask, beta=0.0, loss_type="cispo",
                            epsilon_low=5.0, epsilon_high=0.28)
  want, _ = np_grpo(logps, old, None, adv, mask, eps_low=np.inf, eps_high=0.28, beta=0,
                    loss_type="cispo", max_len=7, level="token")
  np.testing.assert_allclose(loss, want, **TOL)
  assert float(metrics["clip_fraction/low"]) == 0 and float(metrics["clip_fraction/high"]) > 0
  with pytest.raises(ValueError, match="clip range"):
    grpo_loss(logps, old, None, adv, mask, beta=0.0, loss_type="dapo", epsilon_low=5.0)


def test_cispo_hand_example():
  # One sequence, A = 2, tokens with logp = log 0.5 and ratios 1.5 (clipped to 1.28),
  # 1.0 and 0.5 (clipped to 0.8):  loss = -(1.28 + 1.0 + 0.8) * 2 * log(0.5) / 3.
  logps = np.full((1, 3), np.log(0.5), np.float32)
  old = logps - np.log(np.array([[1.5, 1.0, 0.5]], np.float32))
  loss, _ = grpo_loss(logps, old, None, np.array([2.0], np.float32), np.ones((1, 3), bool),
                      beta=0.0, loss_type="cispo", epsilon_low=0.2, epsilon_high=0.28)
  np.testing.assert_allclose(loss, -(1.28 + 1.0 + 0.8) * 2 * np.log(0.5) / 3, **TOL)


def test_beta_zero_does_not_compute_the_kl():
  logps, old, ref, adv, mask = policy_batch()
  loss, metrics = jax.jit(functools.partial(grpo_loss, beta=0.0))(
      logps, old, np.full_like(ref, np.nan), adv, mask)
  assert np.isfinite(loss) and "kl" not in metrics
  want, _ = np_grpo(logps, old, None, adv, mask, eps_low=0.2, eps_high=None, beta=0,
                    loss_type="grpo", max_len=7, level="token")
  np.testing.assert_allclose(loss, want, **TOL)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_without_completion_tokens_is_zero(loss_type):
  logps, old, ref, adv, mask = policy_batch()
  empty = np.zeros_like(mask)
  loss, metrics = jax.jit(functools.partial(
      grpo_loss, loss_type=loss_type, max_completion_length=7))(logps, old, ref, adv, empty)
  values = [loss] + list(metrics.values())
  assert all(float(v) == 0 for v in values), metrics


def test_grpo_loss_bad_input():
  logps, old, ref, adv, mask = policy_batch()
  call = functools.partial(grpo_loss, logps, old, ref, adv, mask)
  with pytest.raises(ValueError, match="Unknown loss_type 'ppo'"):
    call(loss_type="ppo")
  with pytest.raises(ValueError, match="Unknown importance_sampling_level 'seq'"):
    call(importance_sampling_level="seq")
  with pytest.raises(ValueError, match="max_completion_length"):
    call(loss_type="dr_grpo")
  with pytest.raises(ValueError, match="clip range"):
    call(epsilon_low=-0.2)
  with pytest.raises(ValueError, match="ref_logps is None but beta=0.04"):
    grpo_loss(logps, old, None, adv, mask)
  with pytest.raises(ValueError, match=r"old_logps must have the shape of logps \(6, 7\)"):
    grpo_loss(logps, old[:, :5], ref, adv, mask)
  with pytest.raises(ValueError, match="ref_logps must have the shape"):
    grpo_loss(logps, old, ref[:3], adv, mask)
  with pytest.raises(ValueError, match="completion_mask must have the shape"):
    grpo_loss(logps, old, ref, adv, mask[:, 1:])
  with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
    grpo_loss(logps, old, ref, adv[:, None], mask)
  with pytest.raises(ValueError, match=r"logps must be \[B, T\]"):
    grpo_loss(logps[0], old[0], ref[0], adv, mask[0])


# ---------------------------------------------------------------- sft_loss


def test_sft_loss_matches_numpy():
  logits = random_logits((4, 6, 13))
  targets = np.array(random_tokens((4, 6), 13))
  mask = np.arange(6)[None, :] < np.array([6, 2, 0, 4])[:, None]
  targets[~mask] = -100  # the Hugging Face padding label
  targets[0, :3] = np.argmax(logits[0, :3], -1)  # some right answers
  loss, metrics = jax.jit(sft_loss)(logits, targets, mask)
  safe_targets = np.where(mask, targets, 0)
  want = -np_token_logprobs(logits, safe_targets)[mask].mean()
  np.testing.assert_allclose(loss, want, **TOL)
  accuracy = (np.argmax(np.asarray(logits), -1) == targets)[mask].mean()
  assert accuracy >= 0.25
  np.testing.assert_allclose(metrics["accuracy"], accuracy, **TOL)
  grad = jax.jit(jax.grad(lambda x: sft_loss(x, targets, mask)[0]))(logits)
  assert np.isfinite(grad).all() and np.all(np.asarray(grad)[~mask] == 0)


def test_logits_and_tokens_bad_input():
  logits = random_logits((2, 3, 5))
  with pytest.raises(ValueError, match="leading shape equal to tokens"):
    token_logprobs(logits, jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(TypeError, match="integer token ids"):
    token_logprobs(logits, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="mask must have the shape of targets"):
    sft_loss(logits, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4), bool))
