"""Rule-based rewards, computed on the host: accuracy, format, language
consistency, sandboxed code execution, and the parallel evaluator that combines
them. Importing this package registers every built-in reward by name:

  accuracy            math answer vs the example's `answer` (math-verify)
  format              strict <think>…</think><answer>…</answer>
  format_soft         both blocks once each, in order, other text allowed
  format_tag_count    0.25 per think/answer tag present exactly once
  format_reasoning    strict format with <reasoning> instead of <think>
  boxed_format        exactly one non-empty \\boxed{} answer
  answer_phrase_format  ends with "The answer is X."
  countdown           Countdown expression vs `numbers` and `target`
  arithmetic          exact number vs `answer`
  r1_format           R1's |special_token|reasoning|special_token|summary output
  language            share of chain-of-thought words in the target language
  code                fraction of `tests` passed by the sandboxed program
  code_all_or_nothing 1.0 only if every test passes
  code_function       1.0 if the function passes every assert of its `check` (HumanEval's verdict)
  code_function_fraction  share of `check`'s top-level asserts passed, each run on its own
  cosine_length       cosine length shaping keyed on math accuracy
  repetition_penalty  n-gram repetition penalty
"""
from r1jax.rewards.code_reward import (LANGUAGES, Language, code_execution, extract_program,
                                       run_test)
from r1jax.rewards.countdown import (ExpressionError, arithmetic_reward, countdown_reward,
                                     evaluate_expression)
from r1jax.rewards.evaluator import RewardEvaluator, RewardFailure, RewardResult
from r1jax.rewards.extraction import (extract_answer_phrase, extract_boxed, extract_final_answer,
                                      extract_tag)
from r1jax.rewards.format import format_reward
from r1jax.rewards.language import (chain_of_thought, dominant_language, language_consistency,
                                    language_reward)
from r1jax.rewards.math import accuracy_reward, fallback_equal, math_accuracy, parse_exact_number
from r1jax.rewards.r1_format import (R1_OUTPUT_FORMAT, OutputFormat, r1_format_reward,
                                      split_r1_output)
from r1jax.rewards.registry import get_reward, list_rewards, register_reward
from r1jax.rewards.sandbox import (SandboxCapabilities, SandboxLimits, SandboxResult,
                                   reap_sandbox_processes, run_sandboxed, sandbox_capabilities)
from r1jax.rewards.shaping import cosine_scaled_reward, repetition_penalty

__all__ = [
    "LANGUAGES", "Language", "code_execution", "extract_program", "run_test",
    "ExpressionError", "arithmetic_reward", "countdown_reward", "evaluate_expression",
    "RewardEvaluator", "RewardFailure", "RewardResult",
    "extract_answer_phrase", "extract_boxed", "extract_final_answer", "extract_tag",
    "format_reward",
    "chain_of_thought", "dominant_language", "language_consistency", "language_reward",
    "accuracy_reward", "fallback_equal", "math_accuracy", "parse_exact_number",
    "R1_OUTPUT_FORMAT", "OutputFormat", "r1_format_reward", "split_r1_output",
    "get_reward", "list_rewards", "register_reward",
    "SandboxCapabilities", "SandboxLimits", "SandboxResult", "reap_sandbox_processes",
    "run_sandboxed", "sandbox_capabilities",
    "cosine_scaled_reward", "repetition_penalty",
]
