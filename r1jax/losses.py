"""Loss primitives for GRPO and SFT: pure functions of JAX arrays.

Nothing here knows about models, configs or trainers, so each function can be
imported on its own (``from r1jax.losses import grpo_loss``) and used in any
training loop. Shapes: ``B`` sequences, ``T`` positions, ``V`` vocabulary
entries, ``N`` rewards. Options are keyword-only; the options that change what
is computed (``loss_type``, ``beta`` ...) are Python values, fixed at trace time.
"""
from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
ADVANTAGE_SCALES = ("group", "batch", "none")
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_pp")


# --------------------------------------------------------------------------
# Per-token quantities from logits.
#
# Vocabularies are ~150k wide, so one float32 [B, T, V] array is often the
# largest tensor of the step. Plain autodiff of log_softmax keeps a float32
# copy of the logits (or of exp(logits - max)) alive from the forward to the
# backward pass, and builds softmax and a one-hot scatter as separate arrays in
# the backward. The custom VJPs below keep only the logits (which the caller
# holds anyway, in their own dtype, e.g. bf16) and [B, T] float32 statistics,
# and recompute softmax in the backward inside one elementwise expression that
# XLA fuses into a single pass writing the gradient in the logits' dtype.
# --------------------------------------------------------------------------


def _check_logits_and_tokens(logits, tokens, tokens_name):
  if logits.ndim < 1 or logits.shape[:-1] != tokens.shape:
    raise ValueError(
        f"logits must be [..., V] with leading shape equal to {tokens_name}'s: "
        f"got logits {logits.shape} and {tokens_name} {tokens.shape}. Pass "
        f"logits [B, T, V] and {tokens_name} [B, T] aligned position by position "
        "(logits at position t score the token at position t).")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(
        f"{tokens_name} must be integer token ids, got dtype {tokens.dtype}.")


def _logsumexp_f32(logits):
  # The max is exact in any dtype. Taking it before the cast leaves the cast a
  # single consumer, the sum, into which XLA fuses it; two consumers made XLA
  # (on CPU) write a float32 copy of the logits.
  peak = logits.max(axis=-1).astype(jnp.float32)
  peak = jnp.where(jnp.isfinite(peak), peak, 0)  # all -inf rows give -inf, not NaN
  shifted = logits.astype(jnp.float32) - peak[..., None]
  return peak + jnp.log(jnp.exp(shifted).sum(axis=-1))


@jax.custom_vjp
def _token_logprobs(logits, tokens):
  return _token_logprobs_fwd(logits, tokens)[0]


def _token_logprobs_fwd(logits, tokens):
  log_z = _logsumexp_f32(logits)
  taken = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return taken.astype(jnp.float32) - log_z, (logits, tokens, log_z)


def _token_logprobs_bwd(residuals, g):
  logits, tokens, log_z = residuals
  # d logp / d logits = onehot(token) - softmax(logits), built in one fused pass.
  probs = jnp.exp(logits.astype(jnp.float32) - log_z[..., None])
  is_token = jnp.arange(logits.shape[-1]) == tokens[..., None]
  grad = g[..., None] * (is_token.astype(jnp.float32) - probs)
  return grad.astype(logits.dtype), None  # tokens are integers: no cotangent


_token_logprobs.defvjp(_token_logprobs_fwd, _token_logprobs_bwd)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Log-probabilities of the taken tokens, ``log softmax(logits)[token]``.

  Args:
    logits: [B, T, V], any float dtype (bf16 is fine: the math runs in float32).
    tokens: int [B, T], ids in [0, V).

  Returns:
    float32 [B, T]: ``logits[b, t, tokens[b, t]] - logsumexp(logits[b, t])``.

  No float32 [B, T, V] log-softmax is built: the forward takes two reductions
  over V and saves only [B, T] statistics for the backward, which recomputes
  ``g * (onehot(token) - softmax)`` from the logits in one fused pass (see the
  note above).
  """
  _check_logits_and_tokens(logits, tokens, "tokens")
  return _token_logprobs(logits, tokens)


@jax.custom_vjp
def _entropy(logits):
  return _entropy_fwd(logits)[0]


def _entropy_fwd(logits):
  log_z = _logsumexp_f32(logits)
  logits32 = logits.astype(jnp.float32)
  # H = logsumexp(x) - sum_v p_v x_v, with p = softmax(x).
  mean_logit = jnp.sum(jnp.exp(logits32 - log_z[..., None]) * logits32, axis=-1)
  return log_z - mean_logit, (logits, log_z, mean_logit)


def _entropy_bwd(residuals, g):
  logits, log_z, mean_logit = residuals
  # dH/dx_v = p_v (E_p[x] - x_v), built in one fused pass.
  logits32 = logits.astype(jnp.float32)
  probs = jnp.exp(logits32 - log_z[..., None])
  grad = g[..., None] * probs * (mean_logit[..., None] - logits32)
  return (grad.astype(logits.dtype),)


_entropy.defvjp(_entropy_fwd, _entropy_bwd)


def entropy(logits: jax.Array) -> jax.Array:
  """Per-position entropy of softmax(logits), in nats.

  Args:
    logits: [B, T, V], any float dtype.

  Returns:
    float32 [B, T]: ``H = -sum_v p_v log p_v = logsumexp(x) - sum_v p_v x_v``.

  Memory-aware like ``token_logprobs``: the backward saves only the logits and
  [B, T] statistics, and recomputes ``p (E_p[x] - x)`` in one fused pass.
  """
  if logits.ndim < 1 or not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(
        f"logits must be a float array [..., V], got {logits.dtype} {logits.shape}.")
  return _entropy(logits)


# The LM head, the log-probs and the entropy as one primitive. The head is the
# largest matmul of a small model (SmolLM2-135M: 28M of its 134M matmul
# parameters), and its logits the largest array of a long-completion step:
# [rows x completion tokens x V] floats (32 x 512 x 49,152 = 3.2 GB, 26 GB at
# 4,096 tokens). So the head runs over the positions in chunks of at most
# `chunk_size` positions, forward and backward: the forward keeps only [...]
# statistics, and the backward recomputes each chunk's logits (one more head
# matmul) and accumulates the head's gradient chunk by chunk. Peak memory is
# then one chunk's [chunk, V], whatever the length. When every position fits
# in one chunk (a 64-token GRPO step) the chunk's logits are kept instead, which
# saves the recomputation and is still bounded by [chunk, V].
#
# Inside a chunk, plain autodiff would lose the most on CPU: it materialises
# softmax as its own [.., V] array, and XLA transposes the [n, V] logit
# gradient to compute the head's gradient as a [V, D] = [V, n] x [n, D]
# product. Here the gradient is written once in a fused pass and the head's
# gradient is computed as [D, V] = [D, n] x [n, V] and transposed at the end.

HEAD_CHUNK_SIZE = 2048  # positions per chunk of `head_logprobs` (a [2048, V] float32 block: 400 MB at V = 49,152)


def _head_chunk_forward(hidden, head, tokens):
  """[n, D] x [V, D] -> (logps, entropy, log_z) [n], and the chunk's logits [n, V]."""
  logits = hidden @ head.T
  log_z = _logsumexp_f32(logits)
  taken = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  logits32 = logits.astype(jnp.float32)
  mean_logit = jnp.sum(jnp.exp(logits32 - log_z[:, None]) * logits32, axis=-1)
  return (taken.astype(jnp.float32) - log_z, log_z - mean_logit, log_z), logits


def _head_chunk_backward(hidden, head, tokens, logits, log_z, g):
  """d hidden [n, D] and d head^T [D, V] of sum(g * logps) over one chunk."""
  probs = jnp.exp(logits.astype(jnp.float32) - log_z[:, None])
  is_token = jnp.arange(logits.shape[-1]) == tokens[:, None]
  g_logits = (g[:, None] * (is_token.astype(jnp.float32) - probs)).astype(logits.dtype)
  return g_logits @ head, hidden.T @ g_logits


def _chunks(x, num_chunks):
  """[R, C, ...] -> [num_chunks, R * C / num_chunks, ...], chunk i = columns [i c, (i + 1) c) of every row.

  Chunks cut the columns, not the rows, so that a chunk holds every row and keeps the rows'
  sharding over the data-parallel devices.
  """
  rows, columns = x.shape[:2]
  x = x.reshape(rows, num_chunks, columns // num_chunks, *x.shape[2:]).swapaxes(0, 1)
  return x.reshape(num_chunks, rows * (columns // num_chunks), *x.shape[3:])


def _unchunk(x, rows):
  """The inverse of `_chunks`: [num_chunks, R * c, ...] -> [R, num_chunks * c, ...]."""
  num_chunks = x.shape[0]
  x = x.reshape(num_chunks, rows, -1, *x.shape[2:]).swapaxes(0, 1)
  return x.reshape(rows, -1, *x.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _head_logprobs(hidden, head, tokens, num_chunks):
  return _head_logprobs_fwd(hidden, head, tokens, num_chunks)[0]


def _head_logprobs_fwd(hidden, head, tokens, num_chunks):
  rows = hidden.shape[0]
  if num_chunks == 1:
    (logps, ent, log_z), logits = _head_chunk_forward(hidden.reshape(-1, hidden.shape[-1]), head,
                                                      tokens.reshape(-1))
    return (logps.reshape(rows, -1), ent.reshape(rows, -1)), (hidden, head, tokens, logits, log_z)
  logps, ent, log_z = jax.lax.map(lambda chunk: _head_chunk_forward(chunk[0], head, chunk[1])[0],
                                  (_chunks(hidden, num_chunks), _chunks(tokens, num_chunks)))
  outputs = (_unchunk(logps, rows), _unchunk(ent, rows))
  return outputs, (hidden, head, tokens, None, log_z)


def _head_logprobs_bwd(num_chunks, residuals, cotangents):
  hidden, head, tokens, logits, log_z = residuals
  g = cotangents[0]  # the entropy is a statistic: its cotangent is dropped
  rows, width = hidden.shape[0], hidden.shape[-1]
  if num_chunks == 1:
    d_hidden, d_head_t = _head_chunk_backward(hidden.reshape(-1, width), head, tokens.reshape(-1), logits,
                                              log_z, g.reshape(-1))
    return d_hidden.reshape(hidden.shape).astype(hidden.dtype), d_head_t.T.astype(head.dtype), None

  def chunk_grads(d_head_t, chunk):
    hidden_c, tokens_c, log_z_c, g_c = chunk
    logits_c = hidden_c @ head.T  # recomputed: no [N, V] array lives from the forward to here
    d_hidden_c, d_head_t_c = _head_chunk_backward(hidden_c, head, tokens_c, logits_c, log_z_c, g_c)
    return d_head_t + d_head_t_c.astype(jnp.float32), d_hidden_c

  zeros = jnp.zeros((width, head.shape[0]), jnp.float32)
  d_head_t, d_hidden = jax.lax.scan(chunk_grads, zeros, (
      _chunks(hidden, num_chunks), _chunks(tokens, num_chunks), log_z, _chunks(g, num_chunks)))
  return _unchunk(d_hidden, rows).astype(hidden.dtype), d_head_t.T.astype(head.dtype), None


_head_logprobs.defvjp(_head_logprobs_fwd, _head_logprobs_bwd)


def head_logprobs(hidden: jax.Array, head: jax.Array, tokens: jax.Array, *,
                  chunk_size: int = HEAD_CHUNK_SIZE) -> tuple[jax.Array, jax.Array]:
  """Log-probs of `tokens` and the entropy under ``softmax(hidden @ head.T)``.

  Args:
    hidden: [..., T, D] final hidden states (after the last norm), the positions
      whose next token is scored; any float dtype.
    head: [V, D] the output embedding (the tied input embedding, or the
      transposed LM head), in the dtype the logits should be computed in.
    tokens: int [..., T], the token each position predicts.
    chunk_size: at most this many positions' logits exist at once, forward
      and backward (the last axis T is cut into chunks of whole columns, every
      row in each chunk). Peak memory ~ chunk_size x V floats, whatever T.

  Returns:
    (logps, entropy), float32 [..., T] each: ``token_logprobs(logits, tokens)``
    and ``entropy(logits)`` of ``logits = hidden @ head.T``, from one pass over
    the logits. The entropy is a statistic: it carries no gradient
    (differentiating through it is a silent zero, so only log it).

  Gradients flow to `hidden` and `head` through `logps`. With more than one
  chunk the backward recomputes each chunk's logits instead of keeping all of
  them; it writes each logit gradient in one fused pass and accumulates the
  head's gradient without transposing it (note above).
  """
  _check_logits_and_tokens(hidden, tokens, "tokens")
  if head.ndim != 2 or head.shape[1] != hidden.shape[-1]:
    raise ValueError(f"head must be [V, D] with D = hidden's last dim {hidden.shape[-1]}, got {head.shape}")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r}: the number of positions per chunk, an integer >= 1")
  shape = tokens.shape
  # [R, C, D]: rows (every leading axis but the last) x columns, chunked along the columns
  columns = shape[-1] if shape else 1
  hidden = hidden.reshape(-1, columns, hidden.shape[-1])
  tokens = tokens.reshape(-1, columns)
  rows = hidden.shape[0]
  per_chunk = max(1, chunk_size // max(rows, 1))
  num_chunks = -(-columns // per_chunk)
  if num_chunks > 1:  # pad the columns to whole chunks; padded positions get a zero cotangent
    padded = num_chunks * -(-columns // num_chunks)
    hidden = jnp.pad(hidden, ((0, 0), (0, padded - columns), (0, 0)))
    tokens = jnp.pad(tokens, ((0, 0), (0, padded - columns)))
  logps, ent = _head_logprobs(hidden, head, tokens, num_chunks)
  return tuple(x[:, :columns].reshape(shape) for x in (logps, ent))


# --------------------------------------------------------------------------
# Advantages and KL estimators.
# --------------------------------------------------------------------------


def _check_rewards(rewards, valid, group_size=1):
  """(rewards, valid) as arrays, checked as `group_advantages` documents."""
  rewards = jnp.asarray(rewards)  # rewards are often a host-side list or numpy array
  if not isinstance(group_size, numbers.Integral) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  if rewards.ndim != 1:
    raise ValueError(
        f"rewards must be 1-D [N] (groups laid out consecutively), got shape "
        f"{rewards.shape}; flatten [num_prompts, group_size] rewards first.")
  if rewards.shape[0] % group_size:
    raise ValueError(
        f"The number of rewards ({rewards.shape[0]}) is not a multiple of "
        f"group_size ({group_size}): every prompt needs exactly group_size "
        "samples laid out consecutively.")
  valid = jnp.ones(rewards.shape, bool) if valid is None else jnp.asarray(valid)
  if valid.shape != rewards.shape:
    raise ValueError(
        f"valid must have the shape of rewards {rewards.shape}, got {valid.shape}.")
  return rewards, valid.astype(bool)


def group_advantages(rewards: jax.Array, group_size: int, *, scale: str = "group",
                     eps: float = 1e-4, valid: jax.Array | None = None) -> jax.Array:
  """GRPO advantages: each reward relative to the other samples of its prompt.

  Args:
    rewards: [N], consecutive groups of ``group_size`` samples of one prompt
      (N = num_prompts * group_size).
    group_size: samples per prompt (G).
    scale: divisor of the centred rewards.
      ``"group"``: ``A = (r - mean_g) / (std_g + eps)`` (DeepSeekMath GRPO);
      ``"batch"``: ``A = (r - mean_g) / (std_batch + eps)``;
      ``"none"``:  ``A = r - mean_g`` (Dr. GRPO: no std bias across prompts).
      Standard deviations are population ones (ddof=0; TRL uses ddof=1), over
      the valid rewards of the group, or of the whole batch for ``"batch"``
      (taken around the batch mean).
    eps: added to the standard deviation.
    valid: optional bool [N]; False marks a reward that could not be judged.
      Such samples get advantage 0 and are left out of every mean and std.

  Returns:
    float32 [N] (float64 for float64 rewards). A group whose valid rewards are
    all equal carries no learning signal and gets exactly 0, never NaN.
  """
  if scale not in ADVANTAGE_SCALES:
    raise ValueError(f"Unknown scale {scale!r}; use one of {ADVANTAGE_SCALES}.")
  rewards, valid = _check_rewards(rewards, valid, group_size)

  dtype = jnp.promote_types(rewards.dtype, jnp.float32)
  v = valid.reshape(-1, group_size)
  # Rewards that could not be judged may be NaN: drop them before any sum.
  r = jnp.where(v, rewards.astype(dtype).reshape(-1, group_size), 0)

  count = v.sum(axis=1, keepdims=True)
  mean = r.sum(axis=1, keepdims=True) / jnp.maximum(count, 1)
  centred = jnp.where(v, r - mean, 0)
  if scale == "none":
    advantages = centred
  else:
    if scale == "group":
      variance = (centred ** 2).sum(axis=1, keepdims=True) / jnp.maximum(count, 1)
    else:
      batch_mean = r.sum() / jnp.maximum(v.sum(), 1)
      variance = jnp.where(v, r - batch_mean, 0) ** 2
      variance = variance.sum() / jnp.maximum(v.sum(), 1)
    advantages = centred / (jnp.sqrt(variance) + eps)

  # Rounding in the mean can leave ~1e-8 residues in a group of equal rewards,
  # which a tiny std would blow up; such a group has no signal, so force 0.
  highest = jnp.where(v, r, -jnp.inf).max(axis=1, keepdims=True)
  lowest = jnp.where(v, r, jnp.inf).min(axis=1, keepdims=True)
  advantages = jnp.where(highest == lowest, 0, advantages)
  return advantages.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int, *,
                    valid: jax.Array | None = None) -> jax.Array:
  """RLOO advantages: each reward minus the mean of the OTHER samples of its prompt.

  REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics",
  eq. 7), with n the number of valid samples of the group:

      A_i = r_i - 1/(n-1) sum_{j != i} r_j  =  n/(n-1) (r_i - mean_g(r)).

  The baseline of sample i does not depend on r_i, so the estimate is unbiased; no
  standard deviation divides it.

  Args:
    rewards: [N], consecutive groups of ``group_size`` samples of one prompt.
    group_size: samples per prompt (G).
    valid: optional bool [N], as in ``group_advantages``: an invalid sample gets
      advantage 0 and is nobody's baseline.

  Returns:
    float32 [N] (float64 for float64 rewards); 0 in a group with fewer than two
    valid samples (no other sample to compare with) or whose valid rewards are equal.
  """
  rewards, valid = _check_rewards(rewards, valid, group_size)
  dtype = jnp.promote_types(rewards.dtype, jnp.float32)
  v = valid.reshape(-1, group_size)
  r = jnp.where(v, rewards.astype(dtype).reshape(-1, group_size), 0)  # NaN-free sums
  count = v.sum(axis=1, keepdims=True)
  others = (r.sum(axis=1, keepdims=True) - r) / jnp.maximum(count - 1, 1)
  advantages = jnp.where(v & (count > 1), r - others, 0)
  highest = jnp.where(v, r, -jnp.inf).max(axis=1, keepdims=True)
  lowest = jnp.where(v, r, jnp.inf).min(axis=1, keepdims=True)
  return jnp.where(highest == lowest, 0, advantages).reshape(-1)  # exact 0, no rounding residue


def sequence_kl(logps: jax.Array, ref_logps: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """[B]: ``sum_t M_{i,t} kl_k1(logp_{i,t}, ref_{i,t})``, the k1 KL of each whole sequence.

  Args:
    logps, ref_logps: [B, T] log-probs of the sampled tokens under the sampling
      policy and the reference; completion_mask: bool or 0/1 [B, T].

  Padding may hold garbage log-probs: it is zeroed before the sum.
  """
  if logps.shape != ref_logps.shape or logps.shape != completion_mask.shape or logps.ndim != 2:
    raise ValueError(f"logps, ref_logps and completion_mask must all be [B, T], got {logps.shape}, "
                     f"{ref_logps.shape} and {completion_mask.shape}.")
  dtype = jnp.promote_types(logps.dtype, jnp.float32)
  per_token = kl_k1(logps.astype(dtype), ref_logps.astype(dtype))
  return jnp.where(completion_mask.astype(bool), per_token, 0).sum(axis=-1)


def reinforce_pp_advantages(rewards: jax.Array, *, sequence_kl: jax.Array | None = None,
                            beta: float = 0.0, eps: float = 1e-4,
                            valid: jax.Array | None = None) -> jax.Array:
  """REINFORCE++ advantages: KL-penalised returns, normalised over the whole batch.

  REINFORCE++ (Hu 2025, arXiv:2501.03262): the KL to the reference is folded into the reward,
  r(s_t, a_t) = 1[a_t = EOS] r(x, y) - beta KL_t with KL_t the k1 estimate
  log pi_old(a_t|s_t) / pi_ref(a_t|s_t); with gamma = 1 the return is
  G_t = r(x, y) - beta sum_{s >= t} KL_s, and advantages are normalised with the mean
  and std of the global batch (no per-prompt baseline, no critic):

      R_i = r_i - beta * KL_i,      A_i = (R_i - mean_batch(R)) / (std_batch(R) + eps).

  Here the return is taken per sequence (the return of its first token, KL_i the
  whole sequence's k1 sum, see ``sequence_kl``) and so is the normalisation; the
  paper's per-token returns would give later tokens a smaller KL share.

  Args:
    rewards: [N] one reward per completion (any grouping).
    sequence_kl: [N] ``sum_t kl_k1(old, ref)`` of each completion; None with beta 0.
    beta: KL coefficient in the return, a Python number (the loss then has no KL term).
    eps: added to the batch std (population, ddof=0, over valid samples).
    valid: optional bool [N]: invalid samples get 0 and stay out of mean and std.

  Returns:
    float32 [N] (float64 for float64 rewards); all 0 when every valid return is equal.
  """
  rewards, valid = _check_rewards(rewards, valid)
  dtype = jnp.promote_types(rewards.dtype, jnp.float32)
  returns = rewards.astype(dtype)
  if beta != 0:
    if sequence_kl is None:
      raise ValueError(f"beta={beta} folds the KL into the returns: pass sequence_kl [N] "
                       "(r1jax.losses.sequence_kl), or beta=0.")
    sequence_kl = jnp.asarray(sequence_kl)
    if sequence_kl.shape != rewards.shape:
      raise ValueError(f"sequence_kl must have the shape of rewards {rewards.shape}, got {sequence_kl.shape}.")
    returns = returns - beta * sequence_kl.astype(dtype)
  returns = jnp.where(valid, returns, 0)
  count = jnp.maximum(valid.sum(), 1)
  centred = jnp.where(valid, returns - returns.sum() / count, 0)
  std = jnp.sqrt((centred ** 2).sum() / count)
  highest = jnp.where(valid, returns, -jnp.inf).max()
  lowest = jnp.where(valid, returns, jnp.inf).min()
  return jnp.where(highest == lowest, 0, centred / (std + eps))


def kl_k1(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k1 estimator of KL(pi || pi_ref) per token: ``logp - ref`` (unbiased, high variance, can be < 0)."""
  return logps - ref_logps


def kl_k2(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k2 estimator of KL(pi || pi_ref) per token: ``0.5 (logp - ref)^2`` (biased, low variance)."""
  return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi || pi_ref) per token, the one in the GRPO paper.

  ``exp(ref - logp) - (ref - logp) - 1``: unbiased for samples of pi, and >= 0.
  Written as ``expm1(d) - d`` to keep precision when ``d = ref - logp`` is small.
  """
  d = ref_logps - logps
  return jnp.expm1(d) - d


# --------------------------------------------------------------------------
# Policy losses.
# --------------------------------------------------------------------------


def _masked_mean(x, weights, axis=None):
  """Mean of x where weights == 1; 0 (not NaN) where there is nothing to average."""
  return (x * weights).sum(axis=axis) / jnp.maximum(weights.sum(axis=axis), 1)


def grpo_loss(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None,
              advantages: jax.Array, completion_mask: jax.Array, *,
              epsilon_low: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.04, loss_type: str = "grpo",
              max_completion_length: int | None = None,
              importance_sampling_level: str = "token",
              num_global_tokens: jax.Array | int | None = None,
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped GRPO surrogate with a k3 KL penalty (Shao et al. 2024, DeepSeekMath), or CISPO.

  Args:
    logps: [B, T] log-probs of the completion tokens under the policy being
      trained (the only argument gradients flow through).
    old_logps: [B, T] log-probs under the policy that sampled the completions.
    ref_logps: [B, T] log-probs under the frozen reference policy; may be None
      when ``beta == 0``.
    advantages: [B], one per sequence (see ``group_advantages``).
    completion_mask: bool or 0/1 [B, T], True on completion tokens.
    epsilon_low, epsilon_high: clip range ``[1 - epsilon_low, 1 + epsilon_high]``;
      ``epsilon_high`` defaults to ``epsilon_low`` (DAPO raises it, e.g. 0.28).
      For ``"cispo"`` they are eps_low^IS, eps_high^IS of the weight's clip, and
      ``epsilon_low >= 1`` means no lower bound (MiniMax-M1 sets it large).
    beta: KL coefficient, a Python number; at 0 the KL term is not computed.
    loss_type: how per-token losses l_{i,t} are aggregated (M = mask):
      ``"grpo"``:    mean_i [ sum_t M l / sum_t M ]  (each sequence weighs the same);
      ``"bnpo"``:    sum M l / sum M  over this batch;
      ``"dr_grpo"``: sum M l / (B * max_completion_length)  (Dr. GRPO, no length bias);
      ``"dapo"``:    sum M l / num_global_tokens;
      ``"cispo"``:   the CISPO per-token term below, summed like ``"dapo"``.
    max_completion_length: required by ``"dr_grpo"``, ignored by the others.
    importance_sampling_level: ``"token"`` uses the ratio
      ``r_{i,t} = exp(logp_{i,t} - old_{i,t})``; ``"sequence"`` (GSPO) uses
      ``s_i = exp(mean_t M (logp - old))`` for every token of sequence i, with
      gradients through the mean: ``grad s_i = s_i * mean_t grad logp_{i,t}``.
    num_global_tokens: for ``"dapo"`` and ``"cispo"``, the number of completion tokens of the
      whole optimizer step, over all microbatches and devices. The loss is then
      this microbatch's share of the global token mean: SUM (not average) the
      losses/gradients over microbatches and devices. None: this batch's count.
      Ignored by the other loss types.

  Per token, with ratio r and A = advantages[i]:
    ``l = -min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A) + beta * kl_k3(logp, ref)``.
  Where the clip binds (r above the range with A > 0, below it with A < 0) the token
  contributes no gradient: PPO drops it.

  CISPO (MiniMax-M1, MiniMax 2025, arXiv:2506.13585, sec. 3.1) instead clips the importance weight
  and stops its gradient, so that every token contributes:
    ``l = -sg(clip(r, 1 - epsilon_low, 1 + epsilon_high)) A logp + beta * kl_k3(logp, ref)``,
  ``J = 1 / sum_i |o_i| sum_i sum_t sg(w) A log pi_theta``. Its gradient
  ``-clip(r) A grad logp`` equals the PPO form's ``-r A grad logp`` wherever r is
  inside the range; outside it CISPO keeps ``-(1 +- eps) A grad logp`` where PPO has 0
  (or, for r outside on the side the min does not pick, the unclipped ``-r A``).

  On the first optimisation step on fresh samples (mu = 1, so old_logps == logps)
  with beta = 0, the loss VALUE of the PPO forms is ~0 (CISPO's is ``-A logp``): every ratio is 1, so it is minus the mean
  advantage, which is 0 since advantages are centred per group. The GRADIENT is
  not 0: d ratio / d logp = ratio = 1, so it is the policy gradient
  ``-A * grad logp`` (suitably averaged). A zero loss is therefore expected and
  harmless; it is not a sign that nothing is learnt.

  Returns:
    ``(loss, metrics)``: a scalar loss and a dict of scalar float32 metrics
    (no gradient): ``kl`` (mean k3 KL over completion tokens, only when
    beta != 0); ``clip_fraction/low`` (r < 1 - epsilon_low with A < 0),
    ``clip_fraction/high`` (r > 1 + epsilon_high with A > 0) (for CISPO: the
    weights clipped, whatever the sign of A) and
    ``clip_fraction/region`` (either), as fractions of completion tokens; and
    ``ratio/mean``, ``ratio/min``, ``ratio/max`` over completion tokens. An
    all-masked row contributes 0 everywhere; with no completion token at all
    every metric is 0.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"Unknown loss_type {loss_type!r}; use one of {LOSS_TYPES}.")
  if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
    raise ValueError(
        f"Unknown importance_sampling_level {importance_sampling_level!r}; use one "
        f"of {IMPORTANCE_SAMPLING_LEVELS} (sequence = GSPO).")
  if logps.ndim != 2:
    raise ValueError(f"logps must be [B, T], got shape {logps.shape}.")
  named = {"old_logps": old_logps, "completion_mask": completion_mask}
  if ref_logps is not None:
    named["ref_logps"] = ref_logps
  for name, array in named.items():
    if array.shape != logps.shape:
      raise ValueError(
          f"{name} must have the shape of logps {logps.shape}, got {array.shape}.")
  if advantages.shape != logps.shape[:1]:
    raise ValueError(
        f"advantages must be [B] = {logps.shape[:1]} (one per sequence), got "
        f"{advantages.shape}.")
  if beta != 0 and ref_logps is None:
    raise ValueError(
        f"ref_logps is None but beta={beta}: pass the reference policy's log-probs, "
        "or set beta=0 to train without the KL penalty.")
  if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
    raise ValueError(
        'loss_type="dr_grpo" divides by B * max_completion_length: pass '
        "max_completion_length, the generation budget in tokens (a positive int), "
        f"got {max_completion_length!r}.")
  if epsilon_high is None:
    epsilon_high = epsilon_low
  if not (0 <= epsilon_low and (epsilon_low < 1 or loss_type == "cispo") and epsilon_high >= 0):
    raise ValueError(
        f"The clip range [1 - epsilon_low, 1 + epsilon_high] needs 0 <= epsilon_low < 1 "
        f"(any epsilon_low >= 0 for cispo) and epsilon_high >= 0, got epsilon_low={epsilon_low}, "
        f"epsilon_high={epsilon_high}.")

  dtype = jnp.promote_types(logps.dtype, jnp.float32)
  is_completion = completion_mask.astype(bool)
  weights = is_completion.astype(dtype)
  logps = logps.astype(dtype)
  # Padding may hold garbage log-probs; zeroing the differences there (and in
  # the KL below) keeps exp() from overflowing into NaN values or gradients.
  log_ratio = jnp.where(is_completion, logps - old_logps.astype(dtype), 0)
  if importance_sampling_level == "sequence":
    log_ratio = _masked_mean(log_ratio, weights, axis=-1)[:, None]
  ratio = jnp.broadcast_to(jnp.exp(log_ratio), logps.shape)

  adv = advantages.astype(dtype)[:, None]
  clipped_ratio = jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
  if loss_type == "cispo":
    weight = jax.lax.stop_gradient(clipped_ratio)
    per_token = -weight * adv * jnp.where(is_completion, logps, 0)
  else:
    per_token = -jnp.minimum(ratio * adv, clipped_ratio * adv)
  metrics = {}
  if beta != 0:
    kl = kl_k3(jnp.where(is_completion, logps, 0),
               jnp.where(is_completion, ref_logps.astype(dtype), 0))
    per_token = per_token + beta * kl
    metrics["kl"] = _masked_mean(kl, weights)

  masked_sum = (per_token * weights).sum()
  if loss_type == "grpo":
    loss = _masked_mean(per_token, weights, axis=-1).mean()
  elif loss_type == "bnpo":
    loss = masked_sum / jnp.maximum(weights.sum(), 1)
  elif loss_type == "dr_grpo":
    loss = masked_sum / (logps.shape[0] * max_completion_length)
  else:  # dapo, cispo
    tokens = weights.sum() if num_global_tokens is None else num_global_tokens
    loss = masked_sum / jnp.maximum(tokens, 1)

  clipped_low = ratio < 1 - epsilon_low
  clipped_high = ratio > 1 + epsilon_high
  if loss_type != "cispo":  # the PPO forms clip only where the min picks the clipped term
    clipped_low &= adv < 0
    clipped_high &= adv > 0
  any_token = is_completion.any()
  metrics.update({
      "clip_fraction/low": _masked_mean(clipped_low, weights),
      "clip_fraction/high": _masked_mean(clipped_high, weights),
      "clip_fraction/region": _masked_mean(clipped_low | clipped_high, weights),
      "ratio/mean": _masked_mean(ratio, weights),
      "ratio/min": jnp.where(any_token, jnp.where(is_completion, ratio, jnp.inf).min(), 0),
      "ratio/max": jnp.where(any_token, jnp.where(is_completion, ratio, -jnp.inf).max(), 0),
  })
  metrics = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}
  return loss, metrics


def sft_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked mean token cross-entropy, for SFT and distillation.

  Args:
    logits: [B, T, V], any float dtype; logits[b, t] predict targets[b, t].
    targets: int [B, T]; values at masked positions are ignored (-100 is fine).
    mask: bool or 0/1 [B, T], True where the target counts (e.g. response tokens).

  Returns:
    ``(loss, metrics)``: ``loss = sum M * (-log p(target)) / max(sum M, 1)``
    (float32), and ``accuracy``: the fraction of counted positions whose argmax
    is the target.
  """
  _check_logits_and_tokens(logits, targets, "targets")
  if mask.shape != targets.shape:
    raise ValueError(f"mask must have the shape of targets {targets.shape}, got {mask.shape}.")
  counted = mask.astype(bool)
  weights = counted.astype(jnp.float32)
  # Padding labels such as -100 would index out of the vocabulary.
  targets = jnp.where(counted, targets, 0)
  loss = _masked_mean(-token_logprobs(logits, targets), weights)
  correct = jnp.argmax(logits, axis=-1) == targets
  return loss, {"accuracy": jax.lax.stop_gradient(_masked_mean(correct, weights))}


# --------------------------------------------------------------------------
# Reward model loss.
# --------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards: jax.Array, rejected_rewards: jax.Array, *,
                       margin: jax.Array | float | None = None,
                       mask: jax.Array | None = None,
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pairwise preference loss of a reward model (Bradley-Terry; InstructGPT).

  Under the Bradley-Terry model P(chosen > rejected) = sigmoid(r_c - r_r), so the
  negative log-likelihood of the preferences is

      loss = mean_i -log sigmoid(r_c[i] - r_r[i] - m[i])

  with an optional margin m (Llama 2: a larger required gap for clearer
  preferences). ``log_sigmoid`` keeps it finite and exact for any gap: a gap of
  -1000 costs 1000, not inf.

  Args:
    chosen_rewards: [N] scalar rewards of the preferred responses.
    rejected_rewards: [N] rewards of the dispreferred responses.
    margin: None, a scalar, or [N].
    mask: optional bool or 0/1 [N], True for pairs that count (padding pairs
      are left out of the mean and of the metrics).

  Returns:
    ``(loss, metrics)``: the float32 mean over counted pairs (0 when none), and
    ``accuracy`` (fraction with r_c > r_r; ties count as wrong) and ``margin``
    (mean r_c - r_r), both without gradient.
  """
  chosen_rewards = jnp.asarray(chosen_rewards)
  rejected_rewards = jnp.asarray(rejected_rewards)
  if chosen_rewards.ndim != 1 or chosen_rewards.shape != rejected_rewards.shape:
    raise ValueError(
        "chosen_rewards and rejected_rewards must both be [N], one reward per "
        f"pair, got {chosen_rewards.shape} and {rejected_rewards.shape}.")
  weights = (jnp.ones(chosen_rewards.shape, jnp.float32) if mask is None
             else jnp.asarray(mask).astype(bool).astype(jnp.float32))
  if weights.shape != chosen_rewards.shape:
    raise ValueError(f"mask must be [N] = {chosen_rewards.shape}, got {weights.shape}.")
  gap = chosen_rewards.astype(jnp.float32) - rejected_rewards.astype(jnp.float32)
  target_gap = gap if margin is None else gap - jnp.asarray(margin, jnp.float32)
  loss = _masked_mean(-jax.nn.log_sigmoid(target_gap), weights)
  gap = jax.lax.stop_gradient(gap)
  return loss, {"accuracy": _masked_mean(gap > 0, weights), "margin": _masked_mean(gap, weights)}
