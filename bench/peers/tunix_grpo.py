"""Peer benchmark: Tunix's GRPOLearner on r1jax's GRPO workload (see PEERS.md).

Runs with the Tunix venv's python, never imports r1jax:

    /work/peers/tunix-venv/bin/python bench/peers/tunix_grpo.py \
        --model_dir /work/peers/smollm2-f32 --steps 6

All chatter goes to stderr; stdout gets a single `RESULT {json}` line.
"""

import argparse
import contextlib
import json
import random
import sys
import time
from importlib import metadata


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", default="/work/peers/smollm2-f32")
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--prompts_per_step", type=int, default=4)
  p.add_argument("--num_generations", type=int, default=8)
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--eos", action="store_true",
                 help="stop completions at <|im_end|> instead of forcing full length")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def make_prompts(tokenizer, n, seed):
  rng = random.Random(seed)
  prompts = []
  for _ in range(n):
    q = (f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? "
         "Put the final answer in \\boxed{}.")
    prompts.append(tokenizer.apply_chat_template(
        [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True))
  return prompts


def boxed_reward(prompts, completions, **_):
  return [1.0 if "\\boxed" in c else 0.0 for c in completions]


def timed(fn, sink, block=lambda out: out):
  """Wraps fn so each call appends its wall time to sink, after block(out) has synced."""
  def wrapper(*a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    block(out)
    sink.append(time.perf_counter() - t0)
    return out
  return wrapper


def main(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx
  from transformers import AutoTokenizer
  from tunix.models.llama3 import model as llama3_model
  from tunix.models.llama3 import params as llama3_params
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout

  t0 = time.perf_counter()
  # Default axis types make the embedding gather raise a ShardingTypeError.
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  cfg = llama3_model.ModelConfig(
      num_layers=30, vocab_size=49152, embed_dim=576, hidden_dim=1536, num_heads=9,
      head_dim=64, num_kv_heads=3, rope_theta=100000, norm_eps=1e-5, weight_tying=True)
  load = lambda: llama3_params.create_model_from_safe_tensors(
      args.model_dir, cfg, mesh=mesh, dtype=jnp.float32)
  # Two separate loads: the actor's buffers get donated by the train step, so a
  # reference sharing them would be invalidated after the first update.
  actor, reference = load(), load()
  tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
  jax.block_until_ready((nnx.state(actor), nnx.state(reference)))
  load_seconds = time.perf_counter() - t0

  n = args.prompts_per_step
  prompts = make_prompts(tokenizer, args.steps * n, args.seed)
  # A numpy array of strings, not a list: the learner maps over lists per string.
  train_ds = [{"prompts": np.array(prompts[i * n:(i + 1) * n])} for i in range(args.steps)]
  # Tunix left-pads every prompt to max_prompt_length; the sampler prepends BOS
  # (<|im_start|>) but dedups it against the template's. All prompts here are 50
  # tokens, so padding to the exact maximum adds no work.
  prompt_len = max(len(tokenizer.encode(p)) for p in prompts)

  rollout_config = base_rollout.RolloutConfig(
      max_tokens_to_generate=args.max_new_tokens,
      max_prompt_length=prompt_len,
      kv_cache_size=prompt_len + args.max_new_tokens,
      temperature=1.0,
      top_p=1.0,  # top_p=None would select greedy; 1.0 with no top_k skips the sort.
      top_k=None,
      # An int, not a PRNGKey: the prefill donates the sampling state, which
      # deletes a key array after the first rollout. Every rollout reuses it.
      seed=args.seed,
      # Tunix has no min_new_tokens; an id that never occurs forces full length.
      eos_tokens=None if args.eos else [-1],
  )
  batch = n  # in prompts: the whole 32-completion rollout is one update
  training_config = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optax.adamw(1e-6),
      eval_every_n_steps=10**9,
      max_steps=args.steps,
      mini_batch_size=batch,
      train_micro_batch_size=batch,
      rollout_micro_batch_size=batch,
      compute_logps_micro_batch_size=batch,
  )
  roles = rl_cluster_lib.Role
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
          rollout_engine="vanilla",
          offload_to_cpu=False,
          training_config=training_config,
          rollout_config=rollout_config,
      ))
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster,
      algo_config=grpo_learner.GRPOConfig(
          num_generations=args.num_generations, num_iterations=1, beta=0.04, epsilon=0.2),
      reward_fns=boxed_reward,
  )

  # Tunix's own perf tracers only report through custom export hooks, so time
  # the phases by wrapping the instance methods the learner calls. Rollout
  # output is already host numpy; the others are synced before the clock stops.
  step_s, gen_s, ref_s, update_s, tokens = [], [], [], [], []
  sync_actor = lambda _: jax.block_until_ready(nnx.state(cluster.actor_trainer.model))

  def count_tokens(out):
    tokens.append(sum(len(t) for t in out.tokens) / len(out.tokens))  # mean per completion, as the others

  cluster.generate = timed(cluster.generate, gen_s, count_tokens)
  cluster.get_ref_per_token_logps = timed(
      cluster.get_ref_per_token_logps, ref_s, jax.block_until_ready)
  cluster.update_actor = timed(cluster.update_actor, update_s, sync_actor)

  def report_step(_):
    sync_actor(None)
    i = len(step_s)
    print(f"step {i + 1}: generate {gen_s[i]:.2f} s, reference {ref_s[i]:.2f} s, "
          f"update {update_s[i]:.2f} s, {tokens[i]:.1f} tokens per completion", file=sys.stderr)

  learner._run_global_step = timed(learner._run_global_step, step_s, report_step)

  learner.train(train_ds)
  print("step seconds: " + ", ".join(f"{s:.2f}" for s in step_s), file=sys.stderr)
  return {
      "peer": "Tunix",
      "version": metadata.version("google-tunix"),
      "jax": jax.__version__,
      "step_seconds": step_s,
      "generate_seconds": gen_s,
      "reference_seconds": ref_s,
      "update_seconds": update_s,
      "completion_tokens": tokens,
      "load_seconds": load_seconds,
      "prompt_tokens": prompt_len,
      "eos": args.eos,
  }


if __name__ == "__main__":
  cli_args = parse_args()
  # Tunix and its dependencies print to stdout; keep stdout for the RESULT line.
  with contextlib.redirect_stdout(sys.stderr):
    result = main(cli_args)
  print("RESULT " + json.dumps(result), flush=True)
