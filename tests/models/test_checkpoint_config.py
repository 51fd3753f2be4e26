"""A checkpoint's config is checked before anything is allocated from it.

Each test writes a tiny real checkpoint, corrupts its config (config.json, or a GGUF's metadata)
and expects `from_pretrained` to refuse it at once, naming the file, the field and the bad value,
without the memory growth that building a model from the bad sizes would cause.
"""
import json
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest

from r1jax.models import CheckpointError, from_pretrained
from r1jax.models import weights
from r1jax.sharding import make_mesh
from tests.support import ROOT

# what loading may take before the refusal: the tiny model itself is 0.4 MB
MAX_SECONDS, MAX_PEAK_MB = 5.0, 20.0


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoint):
    """A 2-layer Llama saved by transformers: hidden 64, MLP 128, 4 query and 2 key/value heads of 16."""
    return hf_checkpoint("llama")


def _corrupted(checkpoint: Path, tmp_path: Path, drop=(), **fields) -> Path:
    directory = tmp_path / "corrupted"
    shutil.copytree(checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(fields)
    for key in drop:
        del config[key]
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _refusal(path: Path, **kwargs) -> str:
    """The message `from_pretrained(path)` refuses with, asserting that it came quickly and cheaply."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as refused:
            from_pretrained(path, **kwargs)
        seconds = time.perf_counter() - start
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert seconds < MAX_SECONDS, (seconds, refused.value)
    assert peak_mb < MAX_PEAK_MB, (peak_mb, refused.value)
    return str(refused.value)


# ---- a field that no model has -------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("hidden_size", -8, "hidden_size=-8; expected a positive integer"),
    ("intermediate_size", 12.5, "intermediate_size=12.5; expected a positive integer"),
    ("hidden_size", "64", "hidden_size='64'; expected a positive integer"),
    ("num_attention_heads", 0, "num_attention_heads=0; expected a positive integer"),
    ("vocab_size", True, "vocab_size=True; expected a positive integer"),
    ("num_hidden_layers", -1, "num_hidden_layers=-1; expected a positive integer"),
    ("num_key_value_heads", 0, "num_key_value_heads=0; expected a positive integer"),
    ("max_position_embeddings", None, "max_position_embeddings=None; expected a positive integer"),
    ("eos_token_id", -2, "eos_token_id=-2; expected a token id"),
    ("rms_norm_eps", "1e-6", "rms_norm_eps='1e-6'; expected a positive number"),
])
def test_a_bad_size_is_refused_naming_the_file_and_field(checkpoint, tmp_path, field, value, expected):
    path = _corrupted(checkpoint, tmp_path, **{field: value})
    message = _refusal(path)
    assert message.startswith(str(path / "config.json")) and expected in message, message


def test_a_missing_size_is_refused(checkpoint, tmp_path):
    message = _refusal(_corrupted(checkpoint, tmp_path, drop=["intermediate_size"]))
    assert "config.json: intermediate_size missing; each must be a positive integer" in message


def test_key_value_heads_must_divide_query_heads(checkpoint, tmp_path):
    message = _refusal(_corrupted(checkpoint, tmp_path, num_key_value_heads=3))
    assert "num_attention_heads=4 is not a multiple of num_key_value_heads=3" in message


def test_heads_must_divide_the_width_when_head_dim_is_not_given(checkpoint, tmp_path):
    message = _refusal(_corrupted(checkpoint, tmp_path, drop=["head_dim"], num_attention_heads=6,
                                  num_key_value_heads=2))
    assert "hidden_size=64 is not a multiple of num_attention_heads=6" in message


def test_head_dim_must_be_even_for_rotary_embeddings(checkpoint, tmp_path):
    assert "head_dim=15 is odd" in _refusal(_corrupted(checkpoint, tmp_path, head_dim=15))


# ---- sizes against the weights the files hold --------------------------------------

def test_a_billion_layers_are_refused_before_allocating(checkpoint, tmp_path):
    """In a fresh process with a time limit, so that a regression fails instead of filling memory."""
    path = _corrupted(checkpoint, tmp_path, num_hidden_layers=10**9)
    message, seconds, growth_mb = _refusal_in_fresh_process(path)
    assert f"{path / 'config.json'}: num_hidden_layers=1000000000 asks for more layers than the weights " \
           "hold: 2 (layers 0 to 1)" in message, message
    assert seconds < MAX_SECONDS and growth_mb < 100, (seconds, growth_mb)


def test_more_layers_than_the_weights_hold_are_refused_on_a_mesh_too(checkpoint, tmp_path):
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    message = _refusal(_corrupted(checkpoint, tmp_path, num_hidden_layers=3), mesh=mesh)
    assert "num_hidden_layers=3 asks for more layers than the weights hold: 2" in message


def test_a_width_that_disagrees_with_the_weights_is_refused_before_reading(checkpoint, tmp_path):
    """A valid but wrong size (10^12: terabytes, were it allocated) is caught from the file header."""
    message = _refusal(_corrupted(checkpoint, tmp_path, intermediate_size=10**12))
    assert "tensor 'model.layers.0.mlp.down_proj.weight' has shape (64, 128), which does not fit" in message


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the host-memory branch of the check")
def test_a_model_larger_than_memory_is_refused(checkpoint, monkeypatch):
    monkeypatch.setattr(weights, "_host_memory", lambda: 100_000)
    message = _refusal(checkpoint)
    assert message.startswith(f"{checkpoint}: 93,248 parameters"), message
    assert "need at least 0.4 MiB in float32, more than the 0.1 MiB of this host's memory" in message


def _refusal_in_fresh_process(path: Path) -> tuple[str, float, float]:
    """(message, seconds, peak resident MB gained) of `from_pretrained(path)` in a new Python."""
    script = textwrap.dedent(f"""
        import json, resource, time
        from r1jax.models import CheckpointError, from_pretrained
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            from_pretrained({str(path)!r})
            message = "loaded"
        except CheckpointError as err:
            message = str(err)
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps([message, time.perf_counter() - start, growth]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


# ---- GGUF: its metadata goes through the same checks ---------------------------------

def _tiny_gguf(path: Path, **metadata) -> Path:
    """A random 2-layer Llama GGUF with the tiny checkpoint's sizes; `metadata` replaces uint32 keys."""
    gguf = pytest.importorskip("gguf")
    vocab, hidden, mlp, heads, kv_heads, head_dim = 300, 64, 128, 4, 2, 16
    keys = {"llama.block_count": 2, "llama.embedding_length": hidden, "llama.feed_forward_length": mlp,
            "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
            "llama.context_length": 1024, **metadata}
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in keys.items():
        (writer.add_int32 if value < 0 else writer.add_uint32)(key, value)
    writer.add_layer_norm_rms_eps(1e-6)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(2):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (heads * head_dim, hidden),
                       f"blk.{i}.attn_k.weight": (kv_heads * head_dim, hidden),
                       f"blk.{i}.attn_v.weight": (kv_heads * head_dim, hidden),
                       f"blk.{i}.attn_output.weight": (hidden, heads * head_dim),
                       f"blk.{i}.ffn_gate.weight": (mlp, hidden), f"blk.{i}.ffn_up.weight": (mlp, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, mlp)})
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    return path


def test_a_consistent_gguf_loads(tmp_path):
    model = from_pretrained(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert (model.config.num_layers, model.config.head_dim, model.config.vocab_size) == (2, 16, 300)


def test_a_gguf_with_a_billion_blocks_is_refused_before_allocating(tmp_path):
    message, seconds, growth_mb = _refusal_in_fresh_process(_tiny_gguf(tmp_path / "huge.gguf",
                                                                       **{"llama.block_count": 10**9}))
    assert "huge.gguf: llama.block_count=1000000000 asks for more layers than the weights hold: 2" in message, \
        message
    assert seconds < MAX_SECONDS and growth_mb < 100, (seconds, growth_mb)


@pytest.mark.parametrize("key, value", [("llama.attention.head_count", 0), ("llama.embedding_length", -8)])
def test_a_bad_gguf_size_is_refused_naming_the_key(tmp_path, key, value):
    path = _tiny_gguf(tmp_path / "bad.gguf", **{key: value})
    assert f"bad.gguf: {key}={value}; expected a positive integer" in _refusal(path)
