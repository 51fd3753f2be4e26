r"""Memory of a GRPO run before launching it: a formula per token and per layer, checked against
XLA's own accounting of the compiled step.

    python bench/memory_model.py                                  # SmolLM2-135M, 32 rows, 512..4096 tokens
    python bench/memory_model.py --compile                        # and XLA's figures for the same step
    python bench/memory_model.py --model qwen2.5-1.5b --rows 8 --prompt 256 --lengths 8192 \
        --dtype bfloat16 --param_dtype bfloat16 --devices 1 --device_gib 16

The model (README "Memory: what grows with what"), per device, for P parameters, L layers,
width D, MLP width F, K key/value heads of E dims, V vocabulary; c bytes per compute value
(`dtype`), p per parameter (`param_dtype`); a step of `rows` x (prompt + N) tokens:

  static   = P x (3 p + 2 p [Adam's moments] + p [reference copy, beta > 0]) / fsdp devices
             (parameters, gradients, optimizer state, the frozen reference)
  update   = tokens x (L x D x c [each layer's input, kept by remat "block"]
                       + W [one layer's recomputed activations and their gradients, ~(8 D + 6 F) x c])
             + chunk x V x 4 x 3 [the LM head's chunk: logits, gradient, probabilities]
             + rows x H x b^2 x 4 x 4 [a blockwise attention block b x b, forward and backward]
  sampling = rows x (prompt + N) x 2 x L x K x E x c [the KV cache]
             + the same head chunk for one token a row (negligible)

Without remat every layer keeps ~(8 D + 6 F) x c per token instead of D x c. `--compile`
lowers the real train step (abstract shapes: nothing is allocated) on this machine's CPU and
prints XLA's temp + argument + output bytes beside the formula; the GRPO-step benchmark's peak
RSS (`bench_grpo_step.py`) adds the sampler, the host and the runtime.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from r1jax.models import ModelConfig

PRESETS = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                         num_kv_heads=3, tie_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                         num_kv_heads=2, tie_embeddings=True, qkv_bias=True, architecture="qwen2"),
    "qwen2.5-3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
                       num_kv_heads=2, tie_embeddings=True, qkv_bias=True, architecture="qwen2"),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                         num_kv_heads=8, tie_embeddings=True),
}
GIB = 2 ** 30


def formula(cfg: ModelConfig, *, rows: int, prompt: int, new_tokens: int, devices: int, beta: float) -> dict:
    """Bytes per device, by the model in the module docstring."""
    c, p = jnp.dtype(cfg.dtype).itemsize, jnp.dtype(cfg.param_dtype).itemsize
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    tokens = rows * (prompt + new_tokens) / devices
    working = (8 * d + 6 * f) * c
    kept = layers * d * c if cfg.remat == "block" else layers * working
    block = min(cfg.attention_block, prompt + new_tokens)
    static = cfg.num_params * p * (5 + (beta != 0)) / devices
    update = (tokens * (kept + working) + cfg.head_chunk_size * cfg.vocab_size * 4 * 3
              + rows / devices * cfg.num_heads * block ** 2 * 4 * 4)
    cache = tokens * 2 * layers * cfg.num_kv_heads * cfg.head_dim * c
    return {"static": static, "update": update, "sampling": cache, "per_token_per_layer": kept / layers,
            "kv_per_token_per_layer": 2 * cfg.num_kv_heads * cfg.head_dim * c}


def compiled_bytes(cfg: ModelConfig, *, rows: int, prompt: int, new_tokens: int, microbatches: int, beta: float,
                   generations: int) -> dict:
    """XLA's accounting of the real GRPO train step for these shapes (compiled, never run)."""
    from flax import nnx

    from r1jax.models import Transformer
    from r1jax.sharding import make_mesh
    from r1jax.train import RolloutBatch, grpo_objective, make_optimizer, make_train_step
    from r1jax.train.state import abstract_train_state

    mesh = make_mesh({"data": -1})
    state = abstract_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), make_optimizer(1e-6, schedule="constant"))
    objective = grpo_objective(beta=beta, completion_columns=new_tokens, max_completion_length=new_tokens)
    step = make_train_step(objective, state, mesh, num_microbatches=microbatches)
    width = prompt + new_tokens
    arrays = {name: jax.ShapeDtypeStruct((rows, width), dtype) for name, dtype in (
        ("tokens", jnp.int32), ("attention_mask", jnp.int32), ("completion_mask", jnp.int32),
        ("ref_logps", jnp.float32))}
    batch = RolloutBatch(**arrays, advantages=jax.ShapeDtypeStruct((rows,), jnp.float32), rows_per_group=generations)
    started = time.perf_counter()
    analysis = step.jitted.lower(state, batch, jax.eval_shape(lambda: jax.random.key(0))).compile().memory_analysis()
    return {"temp": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes,
            "outputs": analysis.output_size_in_bytes, "compile_seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PRESETS), default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32, help="completions per step (prompts x generations)")
    parser.add_argument("--generations", type=int, default=8, help="rows sharing one prompt")
    parser.add_argument("--prompt", type=int, default=56, help="padded prompt tokens")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--remat", default="block")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--param_dtype", default="float32")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--devices", type=int, default=1, help="data/fsdp devices the rows and state split over")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--device_gib", type=float, default=0, help="say whether the run fits this memory")
    parser.add_argument("--compile", action="store_true", help="also compile the real step here (CPU) and print "
                        "XLA's figures (one compile per length, ~1 minute each for SmolLM2)")
    args = parser.parse_args()
    cfg = ModelConfig(**PRESETS[args.model], remat=args.remat, dtype=args.dtype, param_dtype=args.param_dtype,
                      max_position_embeddings=args.prompt + max(args.lengths))
    rows_per_microbatch = args.rows // args.microbatches
    print(f"{args.model}: {cfg.num_params / 1e6:.0f}M parameters, {cfg.num_layers} layers, D={cfg.hidden_size}, "
          f"F={cfg.intermediate_size}, V={cfg.vocab_size}; {args.dtype} compute, {args.param_dtype} parameters, "
          f"remat {args.remat}; {args.rows} rows ({args.microbatches} microbatches) x ({args.prompt} + N) tokens "
          f"on {args.devices} device(s)")
    one = formula(cfg, rows=1, prompt=0, new_tokens=1, devices=1, beta=args.beta)
    print(f"per token and layer: update {one['per_token_per_layer']:.0f} B kept for the backward, KV cache "
          f"{one['kv_per_token_per_layer']:.0f} B")
    header = "| N | static GiB | update GiB (formula) | KV cache GiB | total GiB (formula) |"
    if args.compile:
        header += " XLA step temp GiB | XLA step total GiB | XLA bytes per update token |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n in args.lengths:
        est = formula(cfg, rows=rows_per_microbatch, prompt=args.prompt, new_tokens=n, devices=args.devices,
                      beta=args.beta)
        cache = formula(cfg, rows=args.rows, prompt=args.prompt, new_tokens=n, devices=args.devices, beta=args.beta)
        total = est["static"] + max(est["update"], cache["sampling"])
        line = (f"| {n} | {est['static'] / GIB:.2f} | {est['update'] / GIB:.2f} | {cache['sampling'] / GIB:.2f} | "
                f"{total / GIB:.2f}{' (fits)' if args.device_gib and total < args.device_gib * GIB else ''}"
                f"{' (does not fit)' if args.device_gib and total >= args.device_gib * GIB else ''} |")
        if args.compile:
            xla = compiled_bytes(cfg, rows=args.rows, prompt=args.prompt, new_tokens=n, microbatches=args.microbatches,
                                 beta=args.beta, generations=args.generations)
            tokens = rows_per_microbatch * (args.prompt + n)
            line += (f" {xla['temp'] / GIB:.2f} | {(xla['temp'] + xla['arguments']) / GIB:.2f} | "
                     f"{xla['temp'] / tokens / 1e3:.0f} kB |")
        print(line, flush=True)


if __name__ == "__main__":
    main()
