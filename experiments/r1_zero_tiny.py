"""R1-Zero in miniature, end to end on a laptop CPU: `python -m experiments.r1_zero_tiny`.

1. generate the multi-step arithmetic task (a local TFDS dataset) and train a
   SentencePiece tokenizer on it;
2. pretrain a tiny Llama-style base model on noisy, mostly unformatted worked solutions
   (our stand-in for a pretrained base: it can solve problems, unreliably);
3. run R1-Zero GRPO from that base with rule-based rewards (accuracy + format);
4. report base vs final pass@1 and cons@k on held-out problems (temperature 0.6,
   top-p 0.95) and write summary.json, metrics and plots in the workdir.

Every stage is restartable: rerun the same command to resume where it stopped.
Override any config field on the command line, e.g. `--config.grpo.steps=20`,
`--config.workdir=/tmp/run`; an unknown field is an error that names it. The rewards section
lists every registered reward, 0 meaning not used: `--config.rewards.language=0.5` adds one.
"""
from __future__ import annotations

import ml_collections

from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import LoRAConfig, reward_weights, settings_section, training_section
from r1jax.train.grpo import GRPOSettings
from r1jax.train.sft import SFTSettings


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/r1_zero_tiny"
    c.seed = 0
    c.mesh = {"data": -1}
    c.sampler_mesh = {}  # rollouts on a mesh of their own, e.g. {"tensor": 2, "data": -1}; {}: the training mesh
    c.template = "r1_zero"  # the paper's prompt; "plain" is the bare question (4x shorter rows)
    # one operation on 1..6: every problem there is (108), split into RL training and held-out tests
    c.task = dict(name="arithmetic", num_operations=1, max_value=6, train_size=78, test_size=30)
    c.tokenizer = dict(vocab_size=512, corpus_size=3000)
    c.model = dict(hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4, num_kv_heads=2)
    # the stand-in base (r1jax/data/base_corpus.py): half its answers are worked solutions (all
    # right, half of them in the R1 format), half are quick answers without working (10% right)
    # (below ~500 steps the tiny model has not yet learned to read the operands)
    # training sections (`training_section`) list every field of the loop and the optimizer
    c.pretrain = training_section(SFTSettings, steps=600, batch_size=64, learning_rate=3e-3, warmup_steps=20,
                                  weight_decay=0.01, save_every=200,
                                  worked_rate=0.5, error_rate=0.0, tagged_rate=0.5, guess_accuracy=0.1,
                                  check_rate=0.0, restate=False)
    # the template is `c.template`, for the pretraining corpus and GRPO alike
    c.grpo = training_section(GRPOSettings, exclude=("template",), steps=30, prompts_per_step=16, num_generations=8,
                              max_new_tokens=48,
                              temperature=1.0, top_p=1.0, beta=0.04, epsilon_low=0.2, loss_type="grpo",
                              num_iterations=1, num_minibatches=1, learning_rate=1e-4, warmup_steps=5,
                              schedule="constant", save_every=10, eval_every=0)
    c.lora = settings_section(LoRAConfig)  # a LoRA policy: --config.lora.rank=16 (0: full fine-tuning)
    c.rewards = reward_weights(arithmetic=1.0, format=1.0)  # the others: 0, not used
    c.reward_workers = 1
    c.eval = dict(num_prompts=30, num_samples=8, temperature=0.6, top_p=0.95)
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero_tiny, get_config())
