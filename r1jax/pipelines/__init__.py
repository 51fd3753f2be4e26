"""Multi-stage recipes that chain data, tokenizer, models and training loops in a workdir.

    r1_zero      RL straight on a (stand-in) base model: experiments/r1_zero_tiny.py
    r1_pipeline  the full R1 recipe and the paper's findings: experiments/r1_pipeline_tiny.py
"""
from r1jax.pipelines.r1 import r1_pipeline
from r1jax.pipelines.r1_zero import r1_zero

__all__ = ["r1_pipeline", "r1_zero"]
