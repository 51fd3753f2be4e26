"""Exports that serve: a policy saved with its tokenizer chats in `transformers` as it did in r1jax."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax import assets
from r1jax.models import from_pretrained, save_pretrained
from r1jax.rollout import rollout
from r1jax.sharding import make_mesh
from r1jax.tokenizers import (HFTokenizer, SentencePieceTokenizer, load_tokenizer,
                              save_tokenizer, train_sentencepiece)
from tests.support.hf_checkpoints import CORPUS, QWEN_TEMPLATE, chatml_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "Speed of a train?"}],
]

TEXTS = ["What is 12 plus 30?", "  spaces\tand\nnewlines ", "héllo 🙂", "<|im_start|>user\nhi<|im_end|>\n", ""]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Qwen2 chat checkpoint, loaded by r1jax, changed, and exported with its tokenizer."""
    original = tmp_path_factory.mktemp("original")
    vocab_size = chatml_tokenizer(original)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128, eos_token_id=0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(original)
    model, tokenizer = from_pretrained(original), load_tokenizer(original)
    # Not the original weights: the export must carry what r1jax holds. Noise this large also spreads
    # the logits (top-2 gaps > 0.1 here), so no greedy choice is a near tie that float error could
    # flip, and the tiny model writes varied tokens instead of repeating one.
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [leaf + jax.random.normal(key, leaf.shape)
                                                   for leaf, key in zip(leaves, keys)]))
    out = tmp_path_factory.mktemp("export")
    save_pretrained(model, out, tokenizer=tokenizer)
    return model, tokenizer, out


def chat_ids(reference, messages):
    return list(reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def until_stop(ids, stop_ids):
    ids = [int(i) for i in ids]
    ends = [i for i, token in enumerate(ids) if token in stop_ids]
    return ids[:ends[0] + 1] if ends else ids


def test_transformers_tokenizer_renders_and_encodes_chats_as_r1jax(exported):
    _, tokenizer, out = exported
    reference = transformers.AutoTokenizer.from_pretrained(out)
    assert reference.chat_template == QWEN_TEMPLATE
    for messages in CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(messages)
        assert chat_ids(reference, messages) == tokenizer.encode(prompt)
        assert reference.decode(tokenizer.encode(prompt)) == prompt
    assert tokenizer.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>system\nYou are a helpful")
    for text in TEXTS:
        assert reference(text)["input_ids"] == tokenizer.encode(text), text


def test_transformers_greedy_generation_matches_r1jax(exported):
    model, tokenizer, out = exported
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(messages)) for messages in CONVERSATIONS]
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    ours = rollout(*nnx.split(model), tokenizer, prompts, jax.random.key(0), repeat=1, max_prompt_length=120,
                   max_new_tokens=8, temperature=0.0, top_p=1.0, mesh=mesh).samples
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert set(reference.generation_config.eos_token_id) == tokenizer.stop_ids  # what generate stops at
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        max_new_tokens=8, do_sample=False)
        expected = until_stop(np.asarray(ours.tokens[row]), tokenizer.stop_ids)
        assert until_stop(theirs[0, len(prompt):].tolist(), tokenizer.stop_ids) == expected
        assert len(expected) == int(ours.lengths[row]) and len(set(expected)) > 2


def test_generation_config_stops_at_end_of_turn(exported):
    _, tokenizer, out = exported
    generation = json.loads((out / "generation_config.json").read_text())
    im_end, endoftext = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    assert generation == {"eos_token_id": [endoftext, im_end], "pad_token_id": endoftext}
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 128


def test_exported_tokenizer_round_trips(exported):
    _, tokenizer, out = exported
    loaded = load_tokenizer(out)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.chat_template == tokenizer.chat_template
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.stop_ids, loaded.vocab_size) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.stop_ids, tokenizer.vocab_size)
    for text in TEXTS:
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))


def test_existing_files_are_refused_before_anything_is_written(exported, tmp_path):
    model, tokenizer, _ = exported
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileExistsError, match="tokenizer.json"):
        save_pretrained(model, tmp_path, tokenizer=tokenizer)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer.json"]
    save_tokenizer(tokenizer, tmp_path / "twice")
    with pytest.raises(FileExistsError, match="generation_config.json, special_tokens_map.json, tokenizer.json"):
        save_tokenizer(tokenizer, tmp_path / "twice")


def test_export_without_tokenizer_writes_the_config_ids(exported, tmp_path):
    model, _, _ = exported
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": 0}
    assert not (tmp_path / "tokenizer.json").exists()


def test_gguf_tokenizer_saves_as_transformers_reads_it(tmp_path):
    try:
        path = assets.smollm2_gguf_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    ours = HFTokenizer.from_gguf(path)
    ours.save_pretrained(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    question = [{"role": "user", "content": "A train travels 120 km in 1.5 hours. What is its speed? 🙂"}]
    for messages in (question, [{"role": "system", "content": "Think, then answer."}, *question]):
        assert chat_ids(reference, messages) == ours.encode(ours.apply_chat_template(messages))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.stop_ids, loaded.bos_id, loaded.pad_id, loaded.chat_template) == (
        ours.stop_ids, ours.bos_id, ours.pad_id, ours.chat_template)


def test_gguf_add_bos_token_reaches_transformers(tmp_path):
    """A GGUF that says "add BOS" (Llama 3) makes transformers add it to a plain prompt, as llama.cpp
    does; r1jax's `encode` still adds it only when asked."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "h", "i", "hi"])
    writer.add_token_merges(["h i"])
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * 3)
    writer.add_bos_token_id(0)
    writer.add_add_bos_token(True)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    ours = HFTokenizer.from_gguf(path)
    assert ours.encode("hi") == [3] and ours.encode("hi", add_bos=True) == [0, 3]
    ours.save_pretrained(tmp_path / "saved")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert reference("hi")["input_ids"] == [0, 3] and reference("hi", add_special_tokens=False)["input_ids"] == [3]


@pytest.mark.parametrize("model_type, tokenizer_class", [("bpe", "LlamaTokenizer"),
                                                       ("unigram", "PreTrainedTokenizerFast")])
def test_sentencepiece_saves_as_transformers_reads_it(tmp_path, model_type, tokenizer_class):
    pytest.importorskip("sentencepiece")
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}assistant:{% endif %}"
    ours = train_sentencepiece(CORPUS, tmp_path / "sp.model", vocab_size=340, hard_vocab_limit=False,
                               model_type=model_type, chat_template=template)
    save_tokenizer(ours, tmp_path / "saved")
    assert (tmp_path / "saved/tokenizer.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    assert json.loads((tmp_path / "saved/tokenizer_config.json").read_text())["tokenizer_class"] == tokenizer_class
    loaded = load_tokenizer(tmp_path / "saved")
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.chat_template == template
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.stop_ids) == (
        ours.bos_id, ours.eos_id, ours.pad_id, ours.stop_ids)
    if tokenizer_class != "LlamaTokenizer" and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("only transformers 5 converts a tokenizer.model without a LlamaTokenizer")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    # transformers matches control pieces written in text ("<s>"), SentencePiece does not: left out.
    for text in [*TEXTS[:3], "<think>2+2=4</think> <answer>4</answer>", "What is 1234 plus 5?", ""]:
        ids = ours.encode(text)
        assert loaded.encode(text) == reference(text, add_special_tokens=False)["input_ids"] == ids, text
        assert reference(text)["input_ids"] == ours.encode(text, add_bos=True)
        assert reference.decode(ids) == ours.decode(ids, skip_special_tokens=False)
    messages = CONVERSATIONS[1]
    assert chat_ids(reference, messages) == ours.encode(ours.apply_chat_template(messages))
