"""Tiny random Llama and Qwen2 chat checkpoints saved by transformers, with a tokenizer.json and a chat
template: real checkpoints in everything but size, made here because nothing is downloaded."""
from r1jax.tokenizers.hf import _byte_level_pre_tokenizer

# Qwen2.5's template, tools left out: a default system turn when the messages bring none.
QWEN_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'system' and loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}"""

CORPUS = ["What is 12 plus 30? The answer is 42.", "Think step by step, then answer.",
          "A train travels 120 km in 1.5 hours; its speed is 80 km/h.", "<think>2+2=4</think><answer>4</answer>",
          "Compute the value of 3 * 4. Using the numbers [1, 2], create an equation that equals 3. \\boxed{12}"] * 4


def chatml_tokenizer(directory):
    """A byte-level BPE with Qwen2's text splitting, special tokens and template, saved by transformers.

    transformers 5 loads the tokenizer of any `qwen2` model as `Qwen2Tokenizer`, which splits text
    its own way whatever tokenizer.json says, so only a Qwen2-like tokenizer serves with a Qwen2 model.
    Returns the vocabulary size.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _byte_level_pre_tokenizer("qwen2")  # as llama.cpp reads a Qwen2 GGUF
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                         chat_template=QWEN_TEMPLATE).save_pretrained(directory)
    return backend.get_vocab_size()


def tiny_checkpoint(directory, architecture: str = "qwen2", seed: int = 0):
    """A random 2-layer `architecture` ("llama" or "qwen2") chat model and its tokenizer in `directory`."""
    import torch
    import transformers

    vocab_size = chatml_tokenizer(directory)
    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024,
                 eos_token_id=0)
    if architecture == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape))
    elif architecture == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, bos_token_id=1))
    else:
        raise ValueError(f"architecture {architecture!r}: llama or qwen2")
    model.save_pretrained(directory)
    return directory
