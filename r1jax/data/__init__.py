"""Data: synthetic TFDS tasks, GSM8K/MATH loaders, prompt templates, batches.

    from r1jax import data
    train = data.load_generated(data.Countdown, "train", data_dir="/data/tfds")  # or r1jax.tasks
    batches = data.PromptIterator(train, batch_size=64, seed=0)
    prompts = [data.format_prompt(question) for question in questions]  # or r1jax.rollout.PromptRenderer
"""
from r1jax.data.arithmetic import Arithmetic, ArithmeticConfig, sample_arithmetic
from r1jax.data.base_corpus import CorpusStyle, base_corpus
from r1jax.data.cold_start import build_cold_start, to_r1_format
from r1jax.data.countdown import Countdown, CountdownConfig, sample_countdown
from r1jax.data.iterator import PromptIterator
from r1jax.data.prompts import (CHAT_TEMPLATES, R1_SYSTEM_PROMPT, R1_ZERO_TEMPLATE,
                                TEXT_TEMPLATES, chat_messages, format_prompt)
from r1jax.data.real import (HendrycksMath, gsm8k_gold_answer, last_boxed_answer,
                             load_gsm8k, load_math)
from r1jax.data.rejection import load_sft_dataset, to_sft_pairs
from r1jax.data.prepared import DamagedDatasetError
from r1jax.data.sources import DatasetNotPreparedError, ExampleSource
from r1jax.data.generated import load_generated

__all__ = [
    "Arithmetic", "ArithmeticConfig", "sample_arithmetic",
    "CorpusStyle", "base_corpus", "build_cold_start", "to_r1_format",
    "load_sft_dataset", "to_sft_pairs",
    "Countdown", "CountdownConfig", "sample_countdown",
    "PromptIterator",
    "CHAT_TEMPLATES", "R1_SYSTEM_PROMPT", "R1_ZERO_TEMPLATE", "TEXT_TEMPLATES",
    "chat_messages", "format_prompt",
    "HendrycksMath", "gsm8k_gold_answer", "last_boxed_answer", "load_gsm8k", "load_math",
    "DamagedDatasetError", "DatasetNotPreparedError", "ExampleSource",
    "load_generated",
]
