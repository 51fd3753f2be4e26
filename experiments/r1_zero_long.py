"""R1-Zero where thinking longer pays, in miniature: `python -m experiments.r1_zero_long`.

The paper's signature (DeepSeek-R1, Figure 3 and Table 3): during R1-Zero's RL, responses grow
longer as accuracy rises, and the model re-checks and corrects its own steps more often. Here the
task is a running total of six numbers in 1..5 ("3 + 5 + 1 + ..."), which a quick answer rarely
gets right and a worked solution (one "a + b = c" step per operand, each restating what is left of
the sum) usually does. The stand-in base (r1jax/data/base_corpus.py) answers quickly most of the
time; gives a worked solution now and then, with a careless step at `error_rate`; and, rarely, a
worked solution that re-checks every step and corrects the careless one ("re-check : ... , wait ,
it is c": `check_rate`). RL is told none of this: it gets the accuracy and format rewards, as
R1-Zero does, and held-out problems are new sums it never trained on.

Logged per GRPO step and in both evaluations: response length, reflection rate (the rule in
r1jax/evaluation/reflection.py) and the accuracy of completions that reflect and that do not;
`summary.json` has base/final pass@1 and the first and last steps' length and reflection rate
(`train_*_first`, `train_*_last`). Same stages and options as `experiments.r1_zero_tiny`.
"""
from __future__ import annotations

import ml_collections

from experiments import r1_zero_tiny
from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import training_section
from r1jax.train.sft import SFTSettings


def get_config() -> ml_collections.ConfigDict:
    c = r1_zero_tiny.get_config()
    c.workdir = "runs/r1_zero_long"
    # running totals of 6 numbers in 1..5 (5^6 = 15,625 sums): held-out ones are new to RL
    c.task = dict(name="arithmetic", num_operations=5, max_value=5, operations="+", train_size=4000,
                  test_size=200)
    c.tokenizer = dict(vocab_size=512, corpus_size=3000)
    c.model = dict(hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4, num_kv_heads=2)
    # the base: quick answers (rarely right) 75% of the time; worked solutions 25%, a third of those
    # careless in one step, and 10% of them re-checking every step (which catches the careless one)
    # (packed rows: its solutions are up to ~340 tokens, its quick answers ~6)
    c.pretrain = training_section(SFTSettings, steps=600, batch_size=32, max_length=384, packing=True,
                                  learning_rate=3e-3, warmup_steps=20, weight_decay=0.01, save_every=200,
                                  worked_rate=0.25, error_rate=0.35, tagged_rate=0.5, guess_accuracy=0.05,
                                  check_rate=0.1, restate=True)
    c.grpo.update(steps=40, prompts_per_step=16, num_generations=8, max_new_tokens=256, save_every=10)
    c.eval = dict(num_prompts=60, num_samples=4, temperature=0.6, top_p=0.95)
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_zero_tiny, get_config())
