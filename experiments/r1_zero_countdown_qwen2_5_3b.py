"""R1-Zero on Countdown from Qwen2.5-3B (TinyZero's setup), for a TPU VM or GPU host:

    python -m experiments.r1_zero_countdown_qwen2_5_3b --config.init=/ckpt/Qwen2.5-3B --config.workdir=W

GRPO straight on the base model with the R1-Zero template and rule rewards (the countdown
equation, the think/answer format). Hyperparameters follow TinyZero (Jiayi Pan et al.,
2025: veRL on Qwen2.5-3B): actor learning rate 1e-6, KL coefficient 0.001, 1,024 response
tokens, 256 prompts per step; 8 generations per prompt here (the GRPO group). On 8 chips
set `--config.mesh="{'fsdp': 8}"` (or {'data': 2, 'fsdp': 4}); bfloat16 compute, float32 master weights.
`--config.runlocal=True` shrinks everything to a one-minute CPU smoke run of any small
Llama/Qwen2 checkpoint.
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import LoRAConfig, reward_weights, settings_section, training_section
from r1jax.train.grpo import GRPOSettings


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/r1_zero_countdown_qwen2_5_3b"
    c.runlocal = False
    c.seed = 0
    c.mesh = {"data": -1}
    c.sampler_mesh = {}  # rollouts on a mesh of their own, e.g. {"tensor": 2, "data": -1}; {}: the training mesh
    c.init = ""  # Qwen2.5-3B (base): an HF directory with its tokenizer.json
    c.tokenizer = ""
    c.model = dict(dtype="bfloat16", param_dtype="float32", remat=True)
    c.task = dict(name="countdown", config="3_numbers")
    c.data_dir = ""
    c.grpo = training_section(GRPOSettings, template="r1_zero", system_prompt=placeholder(str), prompts_per_step=256,
                              num_generations=8, max_prompt_length=256, max_new_tokens=1024, temperature=1.0,
                              top_p=1.0, beta=0.001, epsilon_low=0.2, epsilon_high=placeholder(float),
                              loss_type="grpo", importance_sampling_level="token", advantage_scale="group",
                              num_iterations=1, num_minibatches=2, steps=300, learning_rate=1e-6, warmup_steps=0,
                              schedule="constant", save_every=25, eval_every=50)
    c.lora = settings_section(LoRAConfig)  # a LoRA policy: --config.lora.rank=16 (0: full fine-tuning)
    c.rewards = reward_weights(countdown=1.0, format=0.1)  # the others: 0, not used
    c.reward_workers = 8
    c.eval = dict(split="test", num_prompts=500, num_samples=8, temperature=0.6, top_p=0.95,
                  max_new_tokens=1024, scores={"format_reward": "format"})
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CPU smoke run: a few prompts, a few tokens, two steps."""
    c.model.update(dtype="float32", remat=False)
    c.task.update(config=None, train_size=16, test_size=8)
    # the long Countdown question is hundreds of tokens for a test checkpoint's tiny vocabulary
    c.grpo.update(prompts_per_step=2, num_generations=2, num_minibatches=1, max_new_tokens=8, steps=2,
                  save_every=1, eval_every=0, max_prompt_length=1024)
    c.reward_workers = 1
    c.eval.update(num_prompts=4, num_samples=2, max_new_tokens=8, max_prompt_length=1024)
    c.runlocal = True
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero, get_config(), runlocal)
