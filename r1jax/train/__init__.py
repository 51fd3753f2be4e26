"""Training: the train state, the one jitted step, and the objectives it optimises."""
from r1jax.rollout import RolloutBatch
from r1jax.train.objectives import SFTBatch, grpo_objective, sequence_logprobs, sft_objective
from r1jax.train.state import (TrainState, abstract_train_state, copy_params, create_train_state,
                               make_optimizer, make_schedule, reference_params, split_trainable,
                               train_state_from_model)
from r1jax.train.step import make_logprobs_fn, make_train_step, metrics_to_host

__all__ = ["TrainState", "abstract_train_state", "copy_params", "create_train_state", "make_optimizer",
           "make_schedule", "reference_params", "split_trainable", "train_state_from_model", "make_train_step", "make_logprobs_fn",
           "metrics_to_host", "grpo_objective", "sft_objective", "sequence_logprobs", "RolloutBatch", "SFTBatch"]
