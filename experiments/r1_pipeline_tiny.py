"""The full DeepSeek-R1 recipe in miniature, on a CPU: `python -m experiments.r1_pipeline_tiny`.

Base -> R1-Zero (with and without the language reward) -> cold-start data and SFT ->
reasoning RL with the language reward -> rejection sampling -> SFT on reasoning and
general data -> reward model -> RL for all scenarios; then a smaller student trained by
RL and by distillation at equal compute. Prints the evaluation table and the paper's
findings (a)-(e), and writes findings.json / findings.md in the workdir.

Every stage is restartable: rerun the same command to resume where it stopped.
Override any field on the command line (`--config.rl.steps=20`); unknown fields are errors.
"""
from __future__ import annotations

import ml_collections

from experiments.r1_zero_tiny import get_config as r1_zero_config
from r1jax import pipelines
from r1jax.pipelines import cli


def get_config() -> ml_collections.ConfigDict:
    base = r1_zero_config()
    c = ml_collections.ConfigDict()
    c.workdir = "runs/r1_pipeline_tiny"
    c.seed = 0
    c.mesh = {"data": -1}
    # "": pretrain the stand-in base (the tokenizer, model and pretrain sections); or a checkpoint
    # (HF directory or GGUF, its tokenizer beside it) that every stage starts from instead
    c.init = ""
    c.template = "r1_zero"
    c.task = base.task.to_dict()
    # R1's marker and the Chinese narration words need pieces of their own
    c.tokenizer = dict(vocab_size=560, corpus_size=3000)
    c.model = base.model.to_dict()
    # as r1_zero_tiny's base, but worked steps are narrated, each word Chinese 30% of the time
    c.pretrain = dict(base.pretrain.to_dict(), narrate=True, chinese_rate=0.3)
    # every RL stage (R1-Zero, reasoning, all-scenario, the student's) uses these settings
    c.rl = base.grpo.to_dict()
    c.language_weight = 0.5  # lambda of the language-consistency reward
    # cold-start data: R1-Zero samples (k per training prompt) that pass the filters, plus
    # `annotated` worked solutions written out by hand (the paper also uses human-written ones);
    # `replay`: the share of each SFT set (here, and in sft and the student's distillation) that is
    # the stand-in base's pretraining corpus, so SFT keeps what the base knew
    c.cold_start = dict(samples_per_prompt=8, temperature=0.6, top_p=0.95, annotated=0, steps=100,
                        batch_size=32, learning_rate=1e-3, warmup_steps=10, replay=0.0)
    c.rejection = dict(samples_per_prompt=8, temperature=0.6, top_p=0.95)
    c.general = dict(prompts=64, sft_pairs=256)  # general (non-reasoning) prompts and SFT answers
    c.sft = dict(steps=150, batch_size=32, learning_rate=1e-3, warmup_steps=10, replay=0.0)
    c.reward_model = dict(pairs=2000, steps=150, batch_size=32, learning_rate=1e-3, warmup_steps=10)
    # worked_rate: how often the student base's pretraining corpus shows a worked solution
    c.student = dict(init="", worked_rate=0.5, model=dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2),
                     distill_batch_size=32, distill_learning_rate=1e-3, distill_warmup_steps=10, distill_replay=0.0)
    c.findings = dict(target_accuracy=0.6)  # finding (c): RL steps until training accuracy reaches this
    c.reward_workers = 1
    c.eval = base.eval.to_dict()
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_pipeline, get_config())
