"""The experiment modules on real (tiny, random) Llama and Qwen2 checkpoints saved by transformers.

Each module's smoke setting (`runlocal`) runs its whole recipe and writes summary.json; GRPO
with the checkpoint's own chat template samples from exactly the ids transformers renders; a
GRPO-trained export loads in transformers with its tokenizer and chat template and generates
greedily what r1jax generates.
"""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import experiments.distill_qwen2_5_1_5b as distill_experiment
import experiments.grpo_smollm2 as smollm2_experiment
import experiments.grpo_smollm2_code as smollm2_code_experiment
import experiments.r1_zero_countdown_qwen2_5_3b as countdown_experiment
import experiments.r1_zero_math_qwen2_5_math_1_5b as math_experiment
from r1jax import pipelines
from r1jax.models import from_pretrained
from r1jax.rewards import RewardEvaluator, register_reward
from r1jax.rollout import PromptRenderer, rollout
from r1jax.sharding import make_mesh
from r1jax.tasks import get_task
from r1jax.tokenizers import load_tokenizer
from r1jax.train import grpo as grpo_module
from r1jax.train.grpo import GRPO, GRPOSettings
from r1jax.train.state import train_state_from_model
from tests.support import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MATH_ROWS = [{"problem": f"What is ${a} + {b}$?", "solution": f"It is $\\boxed{{{a + b}}}$.", "level": 1,
              "subject": "Algebra"} for a in range(1, 7) for b in (2, 5)]


@pytest.fixture(scope="module")
def qwen2(hf_checkpoint):
    return hf_checkpoint("qwen2", seed=1)


@pytest.fixture(scope="module")
def math_copy(tmp_path_factory):
    """A local MATH copy in the jsonl layout `HendrycksMath` reads (train and test)."""
    manual = tmp_path_factory.mktemp("math")
    for split, rows in (("train", MATH_ROWS[:8]), ("test", MATH_ROWS[8:])):
        (manual / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return manual


EXPERIMENTS = {
    "grpo_smollm2": (smollm2_experiment, pipelines.r1_zero),
    "grpo_smollm2_code": (smollm2_code_experiment, pipelines.r1_zero),
    "r1_zero_countdown_qwen2_5_3b": (countdown_experiment, pipelines.r1_zero),
    "r1_zero_math_qwen2_5_math_1_5b": (math_experiment, pipelines.r1_zero),
    "distill_qwen2_5_1_5b": (distill_experiment, pipelines.distill),
}


def run_local(name, init, workdir, math_copy, **overrides):
    module, pipeline = EXPERIMENTS[name]
    config = module.runlocal(module.get_config())
    config.workdir, config.init = str(workdir), str(init)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    if config.task.name == "math":
        config.task.manual_dir = str(math_copy)
    return pipeline(config)


# every recipe on both architectures; the default suite runs each recipe on one of them (and
# grpo_smollm2 on qwen2 through the command line, below), the other runs are marked slow
DEFAULT_RUNS = {("llama", "r1_zero_countdown_qwen2_5_3b"), ("llama", "distill_qwen2_5_1_5b"),
                ("qwen2", "r1_zero_math_qwen2_5_math_1_5b"), ("llama", "grpo_smollm2_code")}
RUNS = [pytest.param(architecture, name, id=f"{architecture}-{name}",
                     marks=() if (architecture, name) in DEFAULT_RUNS else pytest.mark.slow)
        for architecture in ("llama", "qwen2") for name in sorted(EXPERIMENTS)]


@pytest.mark.parametrize("architecture,name", RUNS)
def test_runlocal_runs_the_recipe_on_a_real_checkpoint(architecture, name, hf_checkpoint, math_copy, tmp_path):
    checkpoint = hf_checkpoint(architecture)
    summary = run_local(name, checkpoint, tmp_path, math_copy)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert 0.0 <= summary["base_pass_at_1"] <= 1.0
    model_dir = pathlib.Path(summary["model"])
    assert 0.0 <= summary["final_pass_at_1"] <= 1.0 and (model_dir / "config.json").exists()
    # the trained model carries its tokenizer: it loads, with the chat template, from its own directory
    assert load_tokenizer(model_dir).chat_template == load_tokenizer(checkpoint).chat_template
    if name == "distill_qwen2_5_1_5b":
        assert summary["distilled"] and summary["traces_kept"] > 0
    if name == "grpo_smollm2_code":  # HumanEval before and after, from its own evaluations
        for when, model in (("base", "base"), ("final", "grpo")):
            stored = json.loads((tmp_path / "evals" / f"{model}_humaneval.json").read_text())
            assert summary[f"{when}_humaneval_pass_at_1"] == stored["pass_at_1"]
            assert 0.0 <= summary[f"{when}_humaneval_pass_at_1_se"] <= 0.5
            # keep_problems: the completions and verdicts the figure comes from, in the evaluation's file only
            problems = stored["problems"]
            assert [p["id"] for p in problems] == ["HumanEval/0", "HumanEval/1"]
            assert stored["pass_at_1"] == sum(p["num_correct"] / p["num_samples"] for p in problems) / 2
            assert all(isinstance(s["completion"], str) for p in problems for s in p["samples"])
        assert not any("problems" in key for key in summary)


@pytest.mark.slow  # 30 s: runlocal is run in-process below; the command line's parsing in tests of bad_config
def test_runlocal_from_the_command_line(qwen2, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.grpo_smollm2", f"--config.init={qwen2}", "--config.runlocal=True",
         f"--config.workdir={tmp_path}", "--config.grpo.steps=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["init"] == str(qwen2)
    assert len((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()) == 1  # the override applied on top


def test_a_missing_checkpoint_is_refused_before_anything_is_written(tmp_path):
    config = smollm2_experiment.get_config()
    config.workdir, config.init = str(tmp_path / "run"), str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.init=.*nowhere.*name the starting checkpoint"):
        pipelines.r1_zero(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("system_prompt", [None, "Answer with one number."])
def test_grpo_samples_from_the_ids_transformers_renders(qwen2, monkeypatch, system_prompt):
    tokenizer = load_tokenizer(qwen2)
    reference = transformers.AutoTokenizer.from_pretrained(qwen2)
    task = get_task("arithmetic")
    examples = [{"expression": "3 + 4", "answer": "7"}, {"expression": "12 * 5", "answer": "60"}]
    seen = []

    def recording_rollout(*args, **kwargs):
        out = rollout(*args, **kwargs)
        seen.append((args[3], np.asarray(out.samples.prompt_tokens), np.asarray(out.samples.prompt_mask)))
        return out

    rollout = grpo_module.rollout
    monkeypatch.setattr(grpo_module, "rollout", recording_rollout)
    mesh = make_mesh({"data": -1})
    settings = GRPOSettings(num_generations=2, max_new_tokens=4, beta=0.0, template="chat",
                            system_prompt=system_prompt)
    model = from_pretrained(qwen2)
    with RewardEvaluator({"arithmetic": 1.0}, num_workers=0) as rewards:
        stage = GRPO(settings, tokenizer=tokenizer, rewards=rewards, task=task, mesh=mesh)
        state = train_state_from_model(model, optax.identity(), mesh)
        stage.set_reference(state)
        stage.make_batches(state, examples, jax.random.key(0))
    (prompts, prompt_tokens, prompt_mask), = seen
    for i, example in enumerate(examples):
        messages = [{"role": "user", "content": task.question(example)}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        expected = list(reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        assert prompts[i] == expected
        for row in (2 * i, 2 * i + 1):  # what the device sampled from: the unpadded part of each group row
            assert prompt_tokens[row][prompt_mask[row] == 1].tolist() == expected
    default_system = "You are a helpful assistant." if system_prompt is None else system_prompt
    assert reference.decode(prompts[0]).startswith(f"<|im_start|>system\n{default_system}<|im_end|>")


@register_reward("test_length")
def length_reward(completion, **_):
    return float(len(completion))


def test_a_grpo_trained_export_chats_in_transformers_as_in_r1jax(qwen2, math_copy, tmp_path):
    # a reward that a random model's completions earn unevenly (so advantages are not all 0), scored in
    # this process (where the test registered it), and a step size that shows
    summary = run_local("grpo_smollm2", qwen2, tmp_path, math_copy, rewards={"test_length": 1.0}, reward_workers=0,
                        **{"grpo.learning_rate": 1e-2})
    out = pathlib.Path(summary["model"])
    ours, tokenizer = from_pretrained(out), load_tokenizer(out)
    trained = np.asarray(jax.tree.leaves(ours)[0])
    assert not np.array_equal(trained, np.asarray(jax.tree.leaves(from_pretrained(qwen2))[0])), "not trained"
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    renderer = PromptRenderer(tokenizer, "chat")
    prompts = [renderer.encode(renderer(question)) for question in ("What is 2 + 3?", "Name a colour.")]
    greedy = rollout(*nnx.split(ours), tokenizer, prompts, jax.random.key(0), repeat=1, max_prompt_length=256,
                     max_new_tokens=8, temperature=0.0, top_p=1.0,
                     mesh=make_mesh({"data": 1}, devices=jax.devices()[:1])).samples
    for row, (question, prompt) in enumerate(zip(("What is 2 + 3?", "Name a colour."), prompts)):
        messages = [{"role": "user", "content": question}]
        assert list(reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False)) == prompt
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
        length = int(greedy.lengths[row])
        assert theirs[:length] == np.asarray(greedy.tokens[row, :length]).tolist()


@pytest.mark.slow  # an end-to-end run; adapters-only training and the base as reference are checked in test_lora_training.py
def test_runlocal_trains_a_lora_policy(hf_checkpoint, math_copy, tmp_path):
    """`--config.lora.rank`: the GRPO stage trains adapters on the frozen checkpoint and exports the merged
    model beside the adapters alone (PEFT's layout, naming the checkpoint as their base)."""
    checkpoint = hf_checkpoint("llama")
    summary = run_local("r1_zero_countdown_qwen2_5_3b", checkpoint, tmp_path, math_copy,
                        **{"lora.rank": 4, "lora.targets": ("q", "v", "down"), "grpo.steps": 2})
    assert (pathlib.Path(summary["model"]) / "config.json").exists()
    adapter = json.loads((tmp_path / "grpo" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(checkpoint)
    assert sorted(adapter["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    from safetensors.numpy import load_file

    layers = json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"]
    tensors = load_file(tmp_path / "grpo" / "adapter" / "adapter_model.safetensors")
    assert len(tensors) == 2 * 3 * layers
    assert all(value.shape[0] == 4 for name, value in tensors.items() if name.endswith("lora_A.weight"))


@pytest.mark.slow  # an end-to-end run; LoRA SFT steps are checked in tests/train/test_lora_training.py
def test_runlocal_distills_into_a_lora_student(hf_checkpoint, math_copy, tmp_path):
    """The distillation recipe's `lora` section: the student's SFT trains adapters and exports them too."""
    checkpoint = hf_checkpoint("qwen2")
    summary = run_local("distill_qwen2_5_1_5b", checkpoint, tmp_path, math_copy, **{"lora.rank": 2})
    assert summary["distilled"]
    adapter = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and len(adapter["target_modules"]) == 7
    from safetensors.numpy import load_file

    tensors = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    assert any(np.abs(value).max() > 0 for name, value in tensors.items() if name.endswith("lora_B.weight"))
