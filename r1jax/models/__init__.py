"""Llama / Qwen2 transformers in Flax NNX, and their checkpoint import/export."""
from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.transformer import KVCache, Transformer
from r1jax.models.lora import LoRAConfig, add_lora, merge_lora
from r1jax.models.weights import CheckpointError, from_pretrained, load_gguf, load_hf, save_hf, save_peft

save_pretrained = save_hf

__all__ = ["ModelConfig", "RopeScaling", "Transformer", "KVCache", "CheckpointError",
           "from_pretrained", "save_pretrained", "save_hf", "save_peft", "load_hf", "load_gguf", "LoRAConfig",
           "add_lora", "merge_lora"]
