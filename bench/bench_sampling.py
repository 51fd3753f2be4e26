"""Generation throughput of r1jax's compiled sampler against Hugging Face `generate`, same run, same model.

    python bench/bench_sampling.py                        # SmolLM2-135M, batch 32, 128 new tokens
    python bench/bench_sampling.py --model tiny --batch 8 --new-tokens 32   # a quick check

Both sides sample (temperature 1, no top-k/top-p unless asked) and are forced to emit every
token: no stop ids for ours, `min_new_tokens` for HF. Decode tokens/s = B * (N - 1) / (time
of a generation of N tokens - time of a generation of 1 token); prefill tokens/s = B * P /
time of a generation of 1 token. Model FLOP utilisation compares `ModelConfig.flops_per_token`
with the machine's f32 matmul peak (a 2048^3 jnp matmul, re-measured every round, best kept,
since the machine may be shared). Times are the best of `--repeats` interleaved rounds.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models import ModelConfig, from_pretrained
from r1jax.sampling import generate


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` runs (the machine is shared: the minimum is the least disturbed)."""
    return min(seconds(fn) for _ in range(repeats))


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    return 2 * size ** 3 / best_time(lambda: matmul(a).block_until_ready(), repeats)


def load_models(name: str, workdir: pathlib.Path):
    """(our Transformer, HF model) with identical weights."""
    import torch
    import transformers

    if name == "smollm2":
        from r1jax.assets import smollm2_gguf_path
        gguf = smollm2_gguf_path()
        ours = from_pretrained(gguf)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    elif name == "tiny":
        hf_config = transformers.LlamaConfig(
            vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        torch.manual_seed(0)
        theirs = transformers.LlamaForCausalLM(hf_config).float()
        theirs.save_pretrained(workdir / "tiny")
        ours = from_pretrained(workdir / "tiny")
    else:
        raise SystemExit(f"--model {name!r}: choose smollm2 or tiny")
    return ours, theirs.eval()


def ours_runner(model, prompts, args):
    """run(new_tokens) for r1jax's compiled sampler."""
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(prompts, jnp.int32)
    mask = jnp.ones_like(tokens)
    settings = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, stop_ids=())

    def run(new_tokens):
        out = generate(graphdef, state, tokens, mask, jax.random.key(new_tokens), max_new_tokens=new_tokens,
                       **settings)
        jax.block_until_ready(out)
        assert int(out.lengths.min()) == new_tokens, "every row must run to max_new_tokens"

    return run


def hf_runner(model, prompts, args):
    """run(new_tokens) for transformers' `generate`, with torch's best thread count."""
    import torch

    tokens = torch.tensor(np.asarray(prompts), dtype=torch.long)
    mask = torch.ones_like(tokens)
    kwargs = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  pad_token_id=0, eos_token_id=None)

    def run(new_tokens):
        with torch.inference_mode():
            out = model.generate(tokens, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, **kwargs)
        assert out.shape[1] == tokens.shape[1] + new_tokens

    # torch's OpenMP threads collapse when the machine is oversubscribed (on this shared
    # machine 2 threads ran 6x slower than 1): probe, and give HF its better setting
    candidates = [args.torch_threads] if args.torch_threads else sorted({1, torch.get_num_threads()})
    probe = {}
    for threads in candidates:
        torch.set_num_threads(threads)
        probe[threads] = seconds(lambda: run(3))
    run.threads = min(probe, key=probe.get)
    torch.set_num_threads(run.threads)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="0 = the faster of 1 and torch's default, probed")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        ours, theirs = load_models(args.model, pathlib.Path(workdir))
    config: ModelConfig = ours.config
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, config.vocab_size, size=(args.batch, args.prompt_len))
    peaks = [matmul_peak_flops()]  # re-measured every round: the machine's load varies
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    # decode attends to P + N/2 keys on average; the prefill to P/2
    decode_flops = b * (n - 1) * config.flops_per_token(p + n // 2)
    prefill_flops = b * p * config.flops_per_token(p // 2)

    print(f"model={args.model} ({config.num_params / 1e6:.0f}M params) batch={b} prompt={p} "
          f"new_tokens={n} temperature={args.temperature} top_p={args.top_p} top_k={args.top_k}")
    runners = {"r1jax": ours_runner(ours, prompts, args)}
    first_call = seconds(lambda: (runners["r1jax"](n), runners["r1jax"](1)))  # compiles both programs
    if not args.skip_hf:
        runners["transformers"] = hf_runner(theirs, prompts, args)
    # interleaved rounds, so that both sides see the same background load; best of each
    times = {name: {"prefill": [], "total": []} for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name]["prefill"].append(seconds(lambda: run(1)))
            times[name]["total"].append(seconds(lambda: run(n)))
        peaks.append(matmul_peak_flops())
    results = {name: {k: min(v) for k, v in t.items()} for name, t in times.items()}
    results["r1jax"]["first_call"] = first_call
    if "transformers" in runners:
        results["transformers"]["threads"] = runners["transformers"].threads
    peak = max(peaks)
    print(f"devices: {jax.devices()}; f32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"(best of {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
    for name, r in results.items():
        decode = r["total"] - r["prefill"]
        r["decode_tps"] = b * (n - 1) / decode
        r["prefill_tps"] = b * p / r["prefill"]
        extra = f"  (compile + first calls {r['first_call']:.1f}s)" if "first_call" in r else ""
        extra += f"  (torch threads: {r['threads']})" if "threads" in r else ""
        print(f"{name:>12}: decode {r['decode_tps']:8.1f} tok/s  MFU {decode_flops / decode / peak:6.1%} | "
              f"prefill {r['prefill_tps']:8.1f} tok/s  MFU {prefill_flops / r['prefill'] / peak:6.1%} | "
              f"total {r['total']:.2f}s{extra}")
    if "transformers" in results:
        ratio = results["r1jax"]["decode_tps"] / results["transformers"]["decode_tps"]
        print(f"decode speed-up r1jax / transformers: {ratio:.2f}x  "
              f"(prefill {results['r1jax']['prefill_tps'] / results['transformers']['prefill_tps']:.2f}x)")


if __name__ == "__main__":
    main()
