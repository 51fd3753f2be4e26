"""Distillation into Qwen2.5-1.5B: SFT of the student on a teacher's rejection-sampled MATH traces,
for a TPU VM or GPU host:

    python -m experiments.distill_qwen2_5_1_5b --config.init=/ckpt/Qwen2.5-1.5B-Instruct \
        --config.teacher.init=/ckpt/DeepSeek-R1-Distill-Qwen-7B --config.task.manual_dir=/data/MATH \
        --config.workdir=W

The teacher samples 4 traces per training problem at the paper's T=0.6 / top-p 0.95;
the correct and clean ones (r1jax.pipelines.stages.rejection) are the SFT set, as in DeepSeek-R1's
distillation (section 2.4: SFT only, no RL on the student). The SFT settings follow
Open-R1's distillation recipe for Qwen2.5-1.5B-Instruct (learning rate 5e-5, cosine
schedule, packed sequences, bfloat16). `--config.runlocal=True` shrinks everything to a
one-minute CPU smoke run in which the teacher is the student itself and every sample is
kept (`teacher.keep=all`: a random checkpoint's samples are never correct).
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from r1jax import pipelines
from r1jax.pipelines import cli
from r1jax.pipelines.settings import LoRAConfig, settings_section, training_section
from r1jax.train.sft import SFTSettings


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/distill_qwen2_5_1_5b"
    c.runlocal = False
    c.seed = 0
    c.mesh = {"data": -1}
    c.init = ""  # the student: Qwen2.5-1.5B(-Instruct)
    c.tokenizer = ""
    c.model = dict(dtype="bfloat16", param_dtype="float32", remat=True)
    c.teacher = dict(init="", tokenizer="", num_samples=4, max_new_tokens=8192, temperature=0.6, top_p=0.95,
                     max_prompts=0, max_prompt_length=512, keep="correct")
    c.task = dict(name="math", manual_dir="")
    c.data_dir = ""
    c.template = "chat"
    c.system_prompt = placeholder(str)
    c.sft = training_section(SFTSettings, steps=2000, learning_rate=5e-5, warmup_steps=100, schedule="cosine",
                             weight_decay=0.0, save_every=200, eval_every=0, batch_size=16, max_length=16384,
                             packing=True)
    c.lora = settings_section(LoRAConfig)  # the student's LoRA: --config.lora.rank=16 (0: full fine-tuning)
    c.eval = dict(split="test", num_prompts=500, num_samples=8, temperature=0.6, top_p=0.95, max_new_tokens=8192,
                  scores={"format_reward": "format"})
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CPU smoke run: the student is its own teacher, a few prompts and tokens, two SFT steps."""
    c.model.update(dtype="float32", remat=False)
    c.teacher.update(num_samples=2, max_new_tokens=8, max_prompts=4, keep="all")
    c.sft.update(steps=2, warmup_steps=0, save_every=1, batch_size=4, max_length=256, packing=False)
    c.eval.update(num_prompts=4, num_samples=2, max_new_tokens=8)
    c.runlocal = True
    return c


if __name__ == "__main__":
    cli.run(pipelines.distill, get_config(), runlocal)
