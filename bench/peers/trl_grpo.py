"""Peer runner: the bench_grpo_step.py workload on TRL's GRPOTrainer (PyTorch, CPU).

Runs with a separate venv that has torch/transformers/trl/accelerate/datasets (never r1jax):

    /work/peers/trl-venv/bin/python bench/peers/trl_grpo.py --model_dir /work/peers/smollm2-f32 --steps 2
    /work/peers/trl-venv/bin/python bench/peers/trl_grpo.py --model_dir /work/peers/smollm2-f32 --steps 2 \
        --max_new_tokens 512 --gradient_checkpointing

Each step: 4 prompts x 8 generations = 32 completions of 64 tokens (forced with min_new_tokens
unless --eos), one reference log-prob pass (beta 0.04), one AdamW update. Gradient checkpointing
is off unless --gradient_checkpointing (TRL's own default is on); at 512+ tokens it needs it to
stay within 24 GiB. The last stdout line is `RESULT {json}`; everything else goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts_per_step", type=int, default=4)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--eos", action="store_true", help="stop completions at EOS instead of forcing full length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory, another forward)")
    a = p.parse_args()

    # stdout is reserved for the RESULT line; the trainer's log dicts are printed to stdout otherwise.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(a)
    print("RESULT " + json.dumps(result), flush=True)


def run(a: argparse.Namespace) -> dict:
    import torch
    torch.set_num_threads(a.threads)  # before anything else creates the intra-op pool
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rng = random.Random(a.seed)
    n = a.steps * a.prompts_per_step
    # Conversational prompts so TRL applies SmolLM2's chat template (with its default system prompt).
    prompts = [[{"role": "user", "content": f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? "
                 "Put the final answer in \\boxed{}."}] for _ in range(n)]
    dataset = Dataset.from_dict({"prompt": prompts})

    def boxed_present(completions, **_):
        # Conversational completions arrive as [{"role": "assistant", "content": ...}].
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float("\\boxed" in t) for t in texts]

    gen_kwargs = None if a.eos else {"min_new_tokens": a.max_new_tokens}
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_grpo_"),
        # In TRL, per_device_train_batch_size counts completions, not prompts; with one accumulation
        # step the generation batch equals it, so each optimizer step generates exactly this many.
        per_device_train_batch_size=a.prompts_per_step * a.num_generations,
        num_generations=a.num_generations, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=a.max_new_tokens, generation_kwargs=gen_kwargs,
        temperature=1.0, top_p=1.0, top_k=0,  # top_k=0 disables top-k
        # TRL defaults differ from classic GRPO: loss "dapo", gradient checkpointing on, bf16 on.
        loss_type="grpo", beta=0.04, epsilon=0.2, learning_rate=1e-6,
        lr_scheduler_type="constant", warmup_steps=0,
        gradient_checkpointing=a.gradient_checkpointing, bf16=False, use_vllm=False, use_cpu=True,
        shuffle_dataset=False,  # step k takes prompts k*4 .. k*4+3, as the r1jax bench does
        max_steps=a.steps, logging_steps=1, save_strategy="no", report_to="none", seed=a.seed,
        disable_tqdm=True,
    )

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    # The trainer builds the reference model by reloading model_dir (same dtype as the policy).
    trainer = GRPOTrainer(model=model, reward_funcs=boxed_present, args=config,
                          train_dataset=dataset, processing_class=tokenizer)
    load_seconds = time.perf_counter() - t0

    acc = {"generate": 0.0, "reference": 0.0, "rows": 0, "width": 0}
    gen_rows, gen_width = [], []

    # Instance-level wrappers: _generate_single_turn is the pure sampling call (model.generate plus
    # padding/EOS masking); _get_per_token_logps_and_entropies is also used for the policy's own
    # forward in the loss, so only the calls on the reference model are counted.
    generate_single_turn = trainer._generate_single_turn
    def timed_generate(prompt_ids, *args, **kwargs):
        s = time.perf_counter()
        out = generate_single_turn(prompt_ids, *args, **kwargs)
        acc["generate"] += time.perf_counter() - s
        acc["rows"] += len(out[0])
        acc["width"] = max([acc["width"], *map(len, out[0])])
        return out
    trainer._generate_single_turn = timed_generate

    logps = trainer._get_per_token_logps_and_entropies
    def timed_logps(model, *args, **kwargs):
        if model is not trainer.ref_model:
            return logps(model, *args, **kwargs)
        s = time.perf_counter()
        out = logps(model, *args, **kwargs)
        acc["reference"] += time.perf_counter() - s
        return out
    trainer._get_per_token_logps_and_entropies = timed_logps

    steps, gen, ref, lengths = [], [], [], []

    class Timer(TrainerCallback):
        # Generation happens inside training_step (via _prepare_inputs), so it falls between these.
        def on_step_begin(self, args, state, control, **kw):
            acc.update(generate=0.0, reference=0.0, rows=0, width=0)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter() - self.start)
            gen.append(acc["generate"]); ref.append(acc["reference"])
            gen_rows.append(acc["rows"]); gen_width.append(acc["width"])
            print(f"step {state.global_step}: {steps[-1]:.1f} s (generate {gen[-1]:.1f} s, reference "
                  f"{ref[-1]:.1f} s), {acc['rows']} completions, longest {acc['width']} tokens", file=sys.stderr)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer.add_callback(Timer())
    trainer.train()

    return {"peer": "TRL", "version": trl.__version__, "torch": torch.__version__,
            "step_seconds": steps, "generate_seconds": gen, "reference_seconds": ref,
            "completion_tokens": lengths, "load_seconds": load_seconds,
            "completions_per_step": gen_rows, "longest_completion": gen_width,
            "eos": a.eos, "threads": a.threads, "gradient_checkpointing": a.gradient_checkpointing}


if __name__ == "__main__":
    main()
