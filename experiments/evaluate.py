"""Evaluate a model as DeepSeek-R1 reports it: pass@1 over k samples, cons@k, pass@k.

    python -m experiments.evaluate --model=runs/r1_zero_tiny/base/model \
        --tasks=arithmetic:test,gsm8k:test --data_dir=/data/tfds --num_samples=8 \
        --max_new_tokens=512 --out=runs/eval

--model is a Hugging Face directory (config.json + safetensors) or a .gguf file; its
tokenizer is read from beside it unless --tokenizer names one. Writes report.json, report.md
and problems.jsonl (per problem: its completions, their verdicts, its pass@k) into --out, and
refuses to replace an earlier report without --overwrite. Code, e.g. HumanEval's pass@1 and
pass@10 from 20 samples, or greedily:

    python -m experiments.evaluate --model=... --tasks=humaneval:test --num_samples=20 --ks=1,10 --out=...
    python -m experiments.evaluate --model=... --tasks=humaneval:test --greedy --out=...
The logic lives in `r1jax.evaluation.evaluate`.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from r1jax.evaluation import evaluate
from r1jax.distributed import is_primary
from r1jax.evaluation import EVAL_TEMPERATURE, EVAL_TOP_P, report_markdown
from r1jax.pipelines.cli import launch_flags
from r1jax.tasks import list_tasks

_MODEL = flags.DEFINE_string("model", None, "Hugging Face model directory or .gguf file.", required=True)
_TASKS = flags.DEFINE_list("tasks", None, f"<task>[/<config>]:<split> entries; tasks: {', '.join(list_tasks())}.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "Directory for report.json and report.md.", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer path (default: the model's own).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder (default: TFDS's own).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Local copy of MATH, to prepare the math task once.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Completions sampled per prompt (k).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None, "Completion token budget (default: each task's own, "
                                      "e.g. 128 for arithmetic, 2048 for math).")
_MAX_PROMPT_LENGTH = flags.DEFINE_integer("max_prompt_length", 512, "Longest prompt, in tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", EVAL_TEMPERATURE, "Sampling temperature (R1: 0.6).")
_TOP_P = flags.DEFINE_float("top_p", EVAL_TOP_P, "Nucleus sampling threshold (R1: 0.95).")
_TEMPLATE = flags.DEFINE_string("template", "r1_zero", "Prompt template: r1_zero, plain, r1_chat, plain_chat, or "
                                 "chat (the tokenizer's own chat template).")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", None, "System turn of --template=chat (default: the "
                                     "tokenizer template's own).")
_MAX_PROMPTS = flags.DEFINE_integer("max_prompts", None, "Evaluate only the first N examples of each split.")
_BATCH_PROMPTS = flags.DEFINE_integer("batch_prompts", 64, "Prompts sampled together.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Decode greedily: temperature 0, one sample per prompt.")
_KS = flags.DEFINE_list("ks", None, "The k of the reported pass@k (default: powers of two up to --num_samples).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing report in --out.")
flags.DEFINE_alias("task", "tasks")
flags.DEFINE_alias("init", "model")
_JOIN = launch_flags()  # several hosts: the same command on each (see r1jax.pipelines.cli)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    _JOIN()
    settings = {flag.name: flag.value for flag in (
        _MODEL, _TASKS, _TOKENIZER, _DATA_DIR, _NUM_SAMPLES, _MAX_NEW_TOKENS, _MAX_PROMPT_LENGTH, _TEMPERATURE,
        _TOP_P, _TEMPLATE, _SYSTEM_PROMPT, _MAX_PROMPTS, _SEED, _GREEDY, _KS)}
    num_samples, temperature = (1, 0.0) if _GREEDY.value else (_NUM_SAMPLES.value, _TEMPERATURE.value)
    settings.update(num_samples=num_samples, temperature=temperature)
    try:
        ks = [int(k) for k in _KS.value] if _KS.value else None
    except ValueError:
        sys.exit(f"error: --ks takes whole numbers, got {_KS.value}")
    try:
        evaluate.check_out_dir(_OUT.value, overwrite=_OVERWRITE.value)
        report = evaluate.evaluate_model(
            _MODEL.value, _TASKS.value, tokenizer=_TOKENIZER.value, data_dir=_DATA_DIR.value,
            manual_dir=_MANUAL_DIR.value, num_samples=num_samples, max_new_tokens=_MAX_NEW_TOKENS.value,
            max_prompt_length=_MAX_PROMPT_LENGTH.value, temperature=temperature, top_p=_TOP_P.value,
            template=_TEMPLATE.value, system_prompt=_SYSTEM_PROMPT.value, max_prompts=_MAX_PROMPTS.value,
            seed=_SEED.value, batch_prompts=_BATCH_PROMPTS.value, ks=ks,
            problems_file=os.path.join(_OUT.value, evaluate.PROBLEMS_FILE))
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: say what, not where
        sys.exit(f"error: {error}")
    if is_primary():  # every process holds the whole report
        out = evaluate.write_report(report, _OUT.value, settings=settings, overwrite=_OVERWRITE.value)
        print(report_markdown(report))
        print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / evaluate.PROBLEMS_FILE}")


if __name__ == "__main__":
    app.run(main)
