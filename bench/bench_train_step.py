"""Train-step throughput and model FLOP utilisation (MFU) on this machine.

    python bench/bench_train_step.py                 # tiny and SmolLM2-135M-sized models
    python bench/bench_train_step.py --quick         # tiny model only, a few seconds
    python bench/bench_train_step.py --sizes 135m --batch 4 --seq 512 --microbatches 2

MFU compares the model FLOPs the step must do (training = 3 x forward: 6 N per token
for N matmul parameters, plus 12 L H E T for attention over T keys, as in PaLM) with
the peak this machine reaches on one large float32 matmul, timed here. Random weights;
one GRPO update (loss, KL-free, with entropy and clip metrics) per step. Memory per
token is XLA's own accounting of the compiled step (`memory_analysis`).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models import ModelConfig, Transformer
from r1jax.sharding import make_global_batch, make_mesh
from r1jax.train import RolloutBatch, create_train_state, grpo_objective, make_optimizer, make_train_step

SIZES = {
    "tiny": ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
                        num_heads=4, num_kv_heads=2, tie_embeddings=True),
    "135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                        num_heads=9, num_kv_heads=3, tie_embeddings=True),
}


def matmul_peak_flops(sizes=(1024, 2048, 4096), repeats: int = 3) -> float:
    """The best FLOP/s of square float32 matmuls: the roofline MFU is measured against.

    The best over sizes and repeats, so that a busy moment of a shared machine lowers
    the peak as little as possible (a higher peak makes a lower, more honest MFU).
    """
    matmul = jax.jit(lambda a, b: a @ b)
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        matmul(a, a).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def random_batch(config: ModelConfig, batch: int, seq: int, seed: int = 0) -> RolloutBatch:
    """GRPO-shaped rows: the first quarter prompt, the rest completion."""
    rng = np.random.default_rng(seed)
    completion_mask = np.zeros((batch, seq), np.int32)
    completion_mask[:, seq // 4:] = 1
    return RolloutBatch(tokens=rng.integers(0, config.vocab_size, (batch, seq)).astype(np.int32),
                        attention_mask=np.ones((batch, seq), np.int32), completion_mask=completion_mask,
                        advantages=rng.normal(size=batch).astype(np.float32))


def bench(name: str, config: ModelConfig, batch_size: int, seq: int, steps: int, microbatches: int,
          peak: float) -> dict:
    mesh = make_mesh({"data": -1})
    tx = make_optimizer(1e-5, warmup_steps=0, schedule="constant")
    start = time.perf_counter()
    state = create_train_state(lambda: Transformer(config, rngs=nnx.Rngs(0)), tx, mesh)
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start

    train_step = make_train_step(grpo_objective(beta=0.0), state, mesh, num_microbatches=microbatches)
    batch = make_global_batch(random_batch(config, batch_size, seq), mesh)
    start = time.perf_counter()
    compiled = train_step.jitted.lower(state, batch, jax.random.key(0)).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()

    # the compiled step itself: train_step(...) would compile a second time (lower() does not
    # fill jit's cache); inputs are already in place, so nothing else differs
    state, metrics = compiled(state, batch, jax.random.key(0))  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(i + 1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    tokens = batch_size * seq
    train_flops_per_token = 3 * config.flops_per_token(context=seq)
    achieved = tokens * train_flops_per_token / seconds
    return {
        "model": name,
        "params_M": config.num_params / 1e6,
        "batch": f"{batch_size}x{seq}/{microbatches}mb",
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "GFLOP_per_s": achieved / 1e9,
        "MFU": achieved / peak,
        "temp_MB_per_token": memory.temp_size_in_bytes / tokens / 2 ** 20 if memory else float("nan"),
        "peak_GB": (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
                    - memory.alias_size_in_bytes) / 2 ** 30 if memory else float("nan"),
        "init_s": init_seconds,
        "compile_s": compile_seconds,
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,135m", help=f"comma-separated, of {sorted(SIZES)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--remat", action="store_true", help="recompute each block in the backward pass")
    parser.add_argument("--quick", action="store_true", help="tiny model, small batch, 2 steps")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batch, args.seq, args.steps = "tiny", 4, 128, 2
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}; choose from {sorted(SIZES)}")

    peak = matmul_peak_flops()
    print(f"{jax.devices()[0].platform} x{jax.device_count()}, matmul peak {peak / 1e9:.1f} GFLOP/s "
          "(float32, best square matmul of 1024, 2048, 4096)")
    for name in args.sizes.split(","):
        config = SIZES[name].replace(remat=args.remat)
        row = bench(name, config, args.batch, args.seq, args.steps, args.microbatches, peak)
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)


if __name__ == "__main__":
    main()
