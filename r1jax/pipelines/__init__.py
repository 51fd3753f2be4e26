"""Multi-stage recipes that chain data, tokenizer, models and training loops in a workdir.

    r1_zero       RL straight from any checkpoint (`config.init`): experiments/grpo_smollm2.py, ...
    r1_zero_tiny  the same from a stand-in base pretrained here: experiments/r1_zero_tiny.py
    r1_pipeline   the full R1 recipe and the paper's findings: experiments/r1_pipeline_tiny.py
    distill       SFT of a student on a teacher's rejection-sampled traces: experiments/distill_*.py
"""
from r1jax.pipelines.distill import distill
from r1jax.pipelines.r1 import r1_pipeline
from r1jax.pipelines.r1_zero import r1_zero, r1_zero_tiny

__all__ = ["distill", "r1_pipeline", "r1_zero", "r1_zero_tiny"]
