"""R1-Zero on MATH from Qwen2.5-Math-1.5B, for a TPU VM or GPU host:

    python -m experiments.r1_zero_math_qwen2_5_math_1_5b --config.init=/ckpt/Qwen2.5-Math-1.5B \
        --config.task.manual_dir=/data/MATH --config.workdir=W

GRPO on the base model with the R1-Zero template and the math-verify accuracy reward
(MATH's boxed answers; `--config.task.name=gsm8k` for GSM8K, prepared with `tfds build
gsm8k` and `--config.data_dir`). Hyperparameters follow the Dr. GRPO recipe of
"Understanding R1-Zero-Like Training" (Liu et al., 2025, Qwen2.5-Math-1.5B on MATH):
learning rate 1e-6, 128 prompts x 8 samples per step, temperature 1.0, no KL term
(beta 0), the unbiased loss (`loss_type=dr_grpo`, advantages not divided by the group's
std), and a 3,000-token response budget within Qwen2.5-Math's 4,096-token context.
`--config.runlocal=True` shrinks everything to a one-minute CPU smoke run.
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
    c.workdir = "runs/r1_zero_math_qwen2_5_math_1_5b"
    c.runlocal = False
    c.seed = 0
    c.mesh = {"data": -1}
    c.sampler_mesh = {}  # rollouts on a mesh of their own, e.g. {"tensor": 2, "data": -1}; {}: the training mesh
    c.init = ""  # Qwen2.5-Math-1.5B (base)
    c.tokenizer = ""
    c.model = dict(dtype="bfloat16", param_dtype="float32", remat=True)
    c.task = dict(name="math", manual_dir="")
    c.data_dir = ""
    c.grpo = training_section(GRPOSettings, template="r1_zero", system_prompt=placeholder(str), prompts_per_step=128,
                              num_generations=8, max_prompt_length=512, max_new_tokens=3000, temperature=1.0,
                              top_p=1.0, beta=0.0, epsilon_low=0.2, epsilon_high=placeholder(float),
                              loss_type="dr_grpo", importance_sampling_level="token", advantage_scale="none",
                              num_iterations=1, num_minibatches=1, steps=400, learning_rate=1e-6, warmup_steps=0,
                              schedule="constant", save_every=25, eval_every=50)
    c.lora = settings_section(LoRAConfig)  # a LoRA policy: --config.lora.rank=16 (0: full fine-tuning)
    c.rewards = reward_weights(accuracy=1.0)  # the others: 0, not used
    c.reward_workers = 8
    c.eval = dict(split="test", num_prompts=500, num_samples=8, temperature=0.6, top_p=0.95,
                  max_new_tokens=3000, scores={"format_reward": "format"})
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CPU smoke run: a few prompts, a few tokens, two steps."""
    c.model.update(dtype="float32", remat=False)
    c.grpo.update(prompts_per_step=2, num_generations=2, max_new_tokens=8, steps=2, save_every=1, eval_every=0)
    c.reward_workers = 1
    c.eval.update(num_prompts=4, num_samples=2, max_new_tokens=8)
    c.runlocal = True
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero, get_config(), runlocal)
