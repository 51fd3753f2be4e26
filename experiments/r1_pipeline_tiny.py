"""The full DeepSeek-R1 recipe in miniature, on a CPU: `python -m experiments.r1_pipeline_tiny`.

Base -> R1-Zero (with and without the language reward) -> cold-start data and SFT ->
reasoning RL with the language reward -> rejection sampling -> SFT on reasoning and
general data -> reward model -> RL for all scenarios; then a smaller student trained by
RL and by distillation at equal compute. Prints the evaluation table and the paper's
findings (a)-(f) judged against their standard errors, and writes findings.json /
findings.md in the workdir. About 15 minutes on 2 CPU cores (README).

Every stage is restartable: rerun the same command to resume where it stopped.
Override any field on the command line (`--config.grpo.steps=20`); unknown fields are errors.
"""
from __future__ import annotations

import ml_collections

from experiments.r1_zero_tiny import get_config as r1_zero_config
from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import (ColdStartSettings, LoRAConfig, RejectionSettings, ReplaySettings,
                                     settings_section, training_section)
from r1jax.train.reward_model import RewardModelSettings
from r1jax.train.sft import SFTSettings


def get_config() -> ml_collections.ConfigDict:
    base = r1_zero_config()
    c = ml_collections.ConfigDict()
    c.workdir = "runs/r1_pipeline_tiny"
    c.seed = 0
    c.mesh = {"data": -1}
    # "": pretrain the stand-in base (the tokenizer, model and pretrain sections); or a checkpoint
    # (HF directory or GGUF, its tokenizer beside it) that every stage starts from instead
    c.init = ""
    # the bare question: rows 3x shorter than the R1-Zero prompt's, so pretraining gets 3x the steps
    # for its time, and a base pretrained 600 steps on the R1-Zero prompt still miscopied operands
    c.template = "plain"
    # two-step sums and differences on 1..9 (4374 problems): each step is one of a small table of
    # facts that every training problem exercises, so SFT on worked solutions of training problems
    # teaches working them out, which carries over to held-out problems (one-operation problems
    # are each a fact of their own: SFT on some made the model forget the others)
    c.task = dict(name="arithmetic", num_operations=2, max_value=9, operations="+-", train_size=2000,
                  test_size=200)
    # R1's marker and the Chinese narration words get pieces of their own (the plain template's
    # corpus has room for at most ~428)
    c.tokenizer = dict(vocab_size=400, corpus_size=3000)
    c.model = base.model.to_dict()
    # as r1_zero_tiny's base, but worked steps are narrated, each word Chinese 30% of the time
    c.pretrain = dict(base.pretrain.to_dict(), steps=1000, save_every=333, narrate=True, chinese_rate=0.3)
    # every RL stage (R1-Zero, reasoning, all-scenario, the student's) uses these settings
    c.grpo = base.grpo.to_dict()
    c.language_weight = 0.5  # lambda of the language-consistency reward
    # cold-start data: R1-Zero samples (k per training prompt) that pass the filters, plus
    # `annotated` worked solutions written out by hand (the paper also uses human-written ones);
    # `replay`: the share of each SFT set (here, and in sft and the student's distillation) that is
    # the stand-in base's pretraining corpus, so SFT keeps what the base knew; none in the cold start,
    # whose set is the behaviour RL starts from (replay there brought the base's guesses back)
    # (the training sections list every field of the loop and the optimizer: `training_section`; each
    # field is a settings dataclass's: `replay` of `ReplaySettings`, the sampling of `ColdStartSettings`)
    c.cold_start = training_section(SFTSettings, ReplaySettings, ColdStartSettings, prompts=384,
                                    samples_per_prompt=4, temperature=0.6, top_p=0.95, annotated=0, steps=100,
                                    batch_size=32, learning_rate=1e-3, warmup_steps=10, weight_decay=0.01,
                                    save_every=33, replay=0.0)
    # prompts: how many training prompts (the first ones) are sampled, 0 for all of them (`RejectionSettings`)
    c.lora = settings_section(LoRAConfig)  # LoRA policies: --config.lora.rank=16 (0: full fine-tuning)
    c.rejection = settings_section(RejectionSettings, prompts=384, samples_per_prompt=4, temperature=0.6, top_p=0.95)
    c.general = dict(prompts=64, sft_pairs=256)  # general (non-reasoning) prompts and SFT answers
    c.sft = training_section(SFTSettings, ReplaySettings, steps=150, batch_size=32, learning_rate=1e-3,
                             warmup_steps=10, weight_decay=0.01, save_every=50, replay=0.5)
    c.reward_model = training_section(RewardModelSettings, pairs=2000, steps=150, batch_size=32, learning_rate=1e-3,
                                      warmup_steps=10, weight_decay=0.01, save_every=150)
    # worked_rate: how often the student base's pretraining corpus shows a worked solution;
    # rl_steps: its GRPO run's steps (0: grpo.steps), whose FLOPs the distillation then gets too:
    # `distill` has no steps, they follow from that budget
    distill = training_section(SFTSettings, ReplaySettings, batch_size=32, learning_rate=1e-3, warmup_steps=10,
                               weight_decay=0.01, replay=0.5)
    c.student = dict(init="", worked_rate=0.2, rl_steps=120, model=dict(hidden_size=64, intermediate_size=192,
                     num_layers=2, num_heads=4, num_kv_heads=2), distill=distill)
    c.findings = dict(target_accuracy=0.6)  # finding (c): RL steps until training accuracy reaches this
    c.reward_workers = 1
    # every held-out problem, so that a difference between models is larger than its noise
    c.eval = dict(base.eval.to_dict(), num_prompts=200)
    return c


if __name__ == "__main__":
    cli.run(pipelines.r1_pipeline, get_config())
