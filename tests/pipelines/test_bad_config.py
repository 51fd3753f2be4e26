"""A bad config is refused before any work starts, in seconds, naming the field, and leaving the workdir as it was.

Each case runs a recipe's real entry point on an experiment module's config: in process
(`pipelines.r1_zero_tiny(config)` ...) where that is the same code path, and as the command
`python -m experiments.<name> --config...` where the command line itself is under test.
Every workdir already holds a file, and must hold exactly that afterwards.
"""
import dataclasses
import pathlib
import subprocess
import sys
import time

import pytest

import experiments.distill_qwen2_5_1_5b as distill_experiment
import experiments.grpo_smollm2 as smollm2_experiment
import experiments.grpo_smollm2_code as smollm2_code_experiment
import experiments.r1_pipeline_tiny as pipeline_experiment
import experiments.r1_zero_countdown_qwen2_5_3b as countdown_experiment
import experiments.r1_zero_math_qwen2_5_math_1_5b as math_experiment
import experiments.r1_zero_tiny as zero_experiment
from r1jax import pipelines
from r1jax.pipelines.r1_zero import RunSettings, generic_config
from r1jax.pipelines.settings import (ColdStartSettings, ConfigError, RejectionSettings, ReplaySettings, SettingError,
                                     settings_from, settings_section, training_from)
from r1jax.train.grpo import GRPOSettings
from r1jax.train.sft import SFTSettings
from tests.support import ROOT

SECONDS = 5.0  # the checks are pure Python: a refusal after this long did work first


def _config(name: str, workdir: pathlib.Path, **fields):
    """The config of `experiments.<name>` (its smoke setting where it has one) with `fields` set
    ("grpo.loss_type": ...), as `--config.<field>=<value>` would set them."""
    if name == "r1_zero_tiny":
        config = zero_experiment.get_config()
    elif name == "r1_pipeline_tiny":
        config = pipeline_experiment.get_config()
    else:
        module = {"grpo_smollm2": smollm2_experiment, "grpo_smollm2_code": smollm2_code_experiment,
                  "distill": distill_experiment}[name]
        config = module.runlocal(module.get_config())
        # any existing path passes the checks, which all come before the checkpoint is read
        config.init = str(workdir.parent)
    config.workdir = str(workdir)
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    return config


PIPELINES = {"r1_zero_tiny": pipelines.r1_zero_tiny, "r1_pipeline_tiny": pipelines.r1_pipeline,
             "grpo_smollm2": pipelines.r1_zero, "grpo_smollm2_code": pipelines.r1_zero, "distill": pipelines.distill}


def _snapshot(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture
def workdir(tmp_path):
    """An existing workdir with a file in it."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def _refused(name: str, workdir: pathlib.Path, match: str, **fields) -> str:
    """Run experiment `name` with `fields`; assert a quick ConfigError matching `match` and an untouched workdir."""
    config = _config(name, workdir, **fields)
    before = _snapshot(workdir.parent)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as error:
        PIPELINES[name](config)
    assert time.perf_counter() - started < SECONDS
    assert _snapshot(workdir.parent) == before
    return str(error.value)


@pytest.mark.parametrize("name,field,value", [
    ("r1_zero_tiny", "pretrain.learning_rate", float("nan")),
    ("r1_zero_tiny", "grpo.learning_rate", float("inf")),
    ("r1_pipeline_tiny", "pretrain.learning_rate", -1e-3),
    ("r1_pipeline_tiny", "grpo.learning_rate", float("nan")),
    ("r1_pipeline_tiny", "cold_start.learning_rate", float("nan")),
    ("r1_pipeline_tiny", "sft.learning_rate", float("nan")),
    ("r1_pipeline_tiny", "reward_model.learning_rate", 0.0),
    ("r1_pipeline_tiny", "student.distill.learning_rate", float("nan")),
    ("grpo_smollm2", "grpo.learning_rate", float("nan")),
    ("distill", "sft.learning_rate", float("nan")),
])
def test_a_nan_or_non_positive_learning_rate_is_refused_in_every_section(workdir, name, field, value):
    section, leaf = field.rsplit(".", 1)
    message = _refused(name, workdir, f"config.{section}", **{field: value})
    assert leaf in message


@pytest.mark.parametrize("name,section", [("r1_zero_tiny", "grpo"), ("r1_pipeline_tiny", "grpo"),
                                          ("grpo_smollm2", "grpo")])
def test_one_generation_per_prompt_is_refused(workdir, name, section):
    _refused(name, workdir, f"config.{section}: num_generations=1: .*use 2 or more", **{f"{section}.num_generations": 1})


@pytest.mark.parametrize("name,section", [("r1_zero_tiny", "grpo"), ("r1_pipeline_tiny", "grpo"),
                                          ("grpo_smollm2", "grpo")])
def test_an_unknown_loss_type_is_refused_before_pretraining(workdir, name, section):
    _refused(name, workdir, f"config.{section}: loss_type='bogus'; choose one of", **{f"{section}.loss_type": "bogus"})


@pytest.mark.parametrize("name,field", [("r1_zero_tiny", "pretrain.steps"), ("r1_pipeline_tiny", "pretrain.steps"),
                                        ("r1_pipeline_tiny", "sft.steps"), ("r1_zero_tiny", "grpo.steps")])
def test_a_budget_shorter_than_its_warmup_is_refused(workdir, name, field):
    section = field.split(".")[0]
    _refused(name, workdir, f"config.{section}: warmup_steps=.*lower warmup_steps or raise steps",
             **{field: 1, f"{section}.warmup_steps": 5})


@pytest.mark.parametrize("field", ["cold_start.replay", "sft.replay", "student.distill.replay"])
def test_a_replay_share_outside_zero_to_one_is_refused(workdir, field):
    _refused("r1_pipeline_tiny", workdir, f"config.{field}=1.0: .*must be in \\[0, 1\\)", **{field: 1.0})


@pytest.mark.parametrize("field,value", [("cold_start.prompts", -1), ("rejection.prompts", -5)])
def test_a_sampled_prompt_count_that_is_not_a_count_is_refused(workdir, field, value):
    _refused("r1_pipeline_tiny", workdir, f"config.{field}={value}: the number of training prompts",
             **{field: value})


# every training section of every experiment: the loop's fields, checked with the others
TRAINING_SECTIONS = [("r1_zero_tiny", "grpo"), ("r1_zero_tiny", "pretrain"), ("r1_pipeline_tiny", "grpo"),
                     ("r1_pipeline_tiny", "pretrain"), ("r1_pipeline_tiny", "cold_start"), ("r1_pipeline_tiny", "sft"),
                     ("r1_pipeline_tiny", "reward_model"), ("r1_pipeline_tiny", "student.distill"),
                     ("grpo_smollm2", "grpo"), ("distill", "sft")]


@pytest.mark.parametrize("name,section", TRAINING_SECTIONS)
@pytest.mark.parametrize("field", ["num_microbatches", "keep_checkpoints", "save_every"])
def test_a_loop_count_below_one_is_refused_in_every_training_section(workdir, name, section, field):
    _refused(name, workdir, f"config.{section}: {field}=0: use a whole number >= 1", **{f"{section}.{field}": 0})


@pytest.mark.parametrize("name,section", [("r1_zero_tiny", "grpo"), ("r1_pipeline_tiny", "grpo")])
def test_microbatches_that_split_a_group_are_refused(workdir, name, section):
    # 16 prompts x 8 generations in one update: 16 microbatches of one group each, not 32
    _refused(name, workdir, f"config.{section}: num_microbatches=32 does not split an update's 128 rows .* "
             "whole groups of 8", **{f"{section}.num_microbatches": 32})


def test_a_student_rl_budget_shorter_than_its_warmup_is_refused(workdir):
    _refused("r1_pipeline_tiny", workdir, "config.student: warmup_steps=5.*raise steps", **{"student.rl_steps": 2})


@pytest.mark.parametrize("name", ["r1_zero_tiny", "r1_pipeline_tiny", "distill"])
def test_a_workdir_that_cannot_be_created_is_refused(tmp_path, name):
    (tmp_path / "a_file").write_text("mine")
    before = _snapshot(tmp_path)
    config = _config(name, tmp_path / "a_file" / "run")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="config.workdir=.*cannot be created.*--config.workdir=PATH"):
        PIPELINES[name](config)
    assert time.perf_counter() - started < SECONDS
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name,field", [
    ("r1_zero_tiny", "grpo.beta"), ("r1_zero_tiny", "grpo.temperature"), ("r1_zero_tiny", "eval.top_p"),
    ("r1_pipeline_tiny", "grpo.epsilon_low"), ("r1_pipeline_tiny", "eval.temperature"),
    ("r1_pipeline_tiny", "language_weight"), ("grpo_smollm2", "grpo.top_p"), ("grpo_smollm2", "grpo.beta"),
    ("distill", "eval.top_p"), ("r1_zero_tiny", "pretrain.worked_rate")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_float_setting_that_is_not_finite_is_refused(workdir, name, field, value):
    """NaN passes every range check written as a comparison (nan < 0 is False); before this,
    grpo.beta=nan trained with every update skipped and exported the base as the final model."""
    _refused(name, workdir, f"config.{field}={value}", **{field: value})


@pytest.mark.parametrize("name", ["r1_zero_tiny", "r1_pipeline_tiny", "grpo_smollm2", "distill"])
def test_an_empty_workdir_is_refused_instead_of_writing_into_the_current_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    config = _config(name, tmp_path / "run")
    config.workdir = ""
    with pytest.raises(ConfigError, match="config.workdir='': name the run's directory"):
        PIPELINES[name](config)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name,field,value,message", [
    ("r1_zero_tiny", "reward_workers", -1, r"config.reward_workers=-1: use a whole number >= 0"),
    ("r1_pipeline_tiny", "reward_workers", -1, r"config.reward_workers=-1: use a whole number >= 0"),
    ("grpo_smollm2", "reward_workers", -3, r"config.reward_workers=-3: use a whole number >= 0"),
    ("r1_zero_tiny", "mesh", {"data": 0}, r"config.mesh.data=0: a mesh axis size is a whole number >= 1, or -1"),
    ("r1_pipeline_tiny", "mesh", {"fsdp": -2}, r"config.mesh.fsdp=-2"),
    ("grpo_smollm2", "sampler_mesh", {"tensor": 0}, r"config.sampler_mesh.tensor=0"),
    ("distill", "mesh", {"data": 0}, r"config.mesh.data=0"),
    ("r1_zero_tiny", "model.num_layers", -1, r"config.model: num_layers=-1; expected a positive integer"),
    ("r1_zero_tiny", "model.hidden_size", 0, r"config.model: hidden_size=0; expected a positive integer"),
    ("r1_pipeline_tiny", "model.num_heads", 3, r"config.model: hidden_size=128 is not a multiple of num_heads=3"),
    ("r1_pipeline_tiny", "student.model.num_kv_heads", 3, r"config.student.model: num_heads=4 is not a multiple of num_kv_heads=3"),
    ("r1_zero_tiny", "task.train_size", 0, r"config.task: train_size=0: use a whole number >= 1"),
    ("r1_zero_tiny", "task.max_value", 0, r"config.task: max_value=0: use a whole number >= 1"),
    ("r1_pipeline_tiny", "task.num_operations", -1, r"config.task: num_operations=-1"),
    # a pretrained checkpoint's overrides: how the model computes, each checked, never its sizes
    ("grpo_smollm2", "model.dtype", "float33", r"config.model: .*float33"),
    ("grpo_smollm2", "model.attention", "flash", r"config.model: attention='flash'; choose one of"),
    ("distill", "model.attention_block", 0, r"config.model: attention_block=0; expected a positive integer"),
    ("grpo_smollm2", "model.num_layers", 2, r"config.model.num_layers: a pretrained checkpoint's sizes come from"),
    ("distill", "model.hidden_size", 64, r"config.model.hidden_size: a pretrained checkpoint's sizes come from"),
    ("r1_zero_tiny", "lora.rank", -1, r"config.lora: rank=-1: the adapters' rank, a whole number >= 0"),
    ("r1_pipeline_tiny", "lora.targets", ("q", "lm_head"), r"config.lora: targets=\('q', 'lm_head'\): name one"),
    ("grpo_smollm2", "lora.alpha", 0.0, r"config.lora: alpha=0.0: a finite number > 0"),
    # a benchmark is a task and an evaluation, each checked as the held-out ones are
    ("grpo_smollm2_code", "benchmarks.humaneval.task", {}, r"config.benchmarks.humaneval.task: name the benchmark"),
    ("grpo_smollm2_code", "benchmarks.humaneval.task.name", "humaneva",
     r"config.benchmarks.humaneval.task: .*humaneva"),
    ("grpo_smollm2_code", "benchmarks.humaneval.num_samples", 0, r"config.benchmarks.humaneval: .*num_samples >= 1"),
    ("grpo_smollm2_code", "benchmarks.humaneval.tempo", 0.5, r"config.benchmarks.humaneval.*tempo"),
])
def test_a_setting_that_cannot_run_is_one_line_before_anything_is_written(workdir, name, field, value, message):
    _refused(name, workdir, message, **{field: value})


def test_a_registered_reward_is_switched_on_by_its_weight(workdir):
    config = _config("r1_zero_tiny", workdir)
    config.lock()  # as on the command line: only fields that are there can be set
    config.rewards.language = 0.5
    run = RunSettings(generic_config(config, workdir / "base", workdir / "tokenizer.model"), init_exists=False)
    assert run.rewards == {"arithmetic": 1.0, "format": 1.0, "language": 0.5}  # weight 0: not used


GRPO_EXPERIMENTS = {"r1_zero_tiny": zero_experiment, "r1_pipeline_tiny": pipeline_experiment,
                    "grpo_smollm2": smollm2_experiment, "r1_zero_math_qwen2_5_math_1_5b": math_experiment,
                    "r1_zero_countdown_qwen2_5_3b": countdown_experiment}


@pytest.mark.parametrize("name", sorted(GRPO_EXPERIMENTS))
def test_every_grpo_setting_is_in_every_grpo_section(name):
    """Each GRPOSettings field can be set from the command line; the tiny experiments set the
    template at the top level (`config.template`), so their sections leave it out."""
    section = set(GRPO_EXPERIMENTS[name].get_config().grpo.keys())
    fields = {field.name for field in dataclasses.fields(GRPOSettings)}
    top_level = {"template"} if name.endswith("_tiny") else set()
    assert fields - top_level <= section, sorted(fields - top_level - section)


def test_a_setting_that_defaults_to_none_is_set_with_its_type(workdir):
    config = _config("r1_zero_tiny", workdir)
    config.lock()
    config.grpo.epsilon_high = 0.28  # a None default: a float placeholder, as `--config.grpo.epsilon_high=0.28`
    run = RunSettings(generic_config(config, workdir / "base", workdir / "tokenizer.model"), init_exists=False)
    assert run.grpo.epsilon_high == 0.28
    with pytest.raises(TypeError):
        config.grpo.epsilon_high = "high"


def test_a_section_field_the_recipe_sets_elsewhere_is_refused():
    with pytest.raises(ConfigError, match=r"config.grpo.template='plain' is set by the recipe"):
        settings_from({"template": "plain", "steps": 1}, GRPOSettings, where="grpo", template="r1_zero")
    settings_from({"template": "r1_zero"}, GRPOSettings, where="grpo", template="r1_zero")  # the same: fine


def _command(*flags, workdir):
    before = _snapshot(workdir)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "experiments.r1_zero_tiny", f"--config.workdir={workdir}", *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(f"{flags}: {time.perf_counter() - started:.1f}s")
    assert result.returncode == 2, result.stderr[-3000:]
    assert _snapshot(workdir) == before
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: config."), result.stderr[-3000:]
    return lines[-1]


def test_the_command_line_adds_a_registered_reward_by_name(workdir):
    # a NaN weight gets through the flags to the recipe's check: the field is there to set
    line = _command("--config.rewards.language=nan", workdir=workdir)
    assert line == "error: config.rewards: language=nan: use a finite weight (0: not used)"


def test_the_command_line_names_an_unknown_reward_and_the_registered_ones(workdir):
    line = _command("--config.rewards.acuracy=1.0", workdir=workdir)
    assert "config.rewards has no field 'acuracy' (did you mean 'accuracy'?)" in line
    for registered in ("accuracy", "arithmetic", "format", "language"):
        assert registered in line


def test_the_command_line_shows_a_refusal_as_one_line(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    line = _command("--config.grpo.loss_type=bogus", workdir=tmp_path)
    assert line.startswith("error: config.grpo: loss_type='bogus'")
    line = _command(f"--config.workdir={tmp_path / 'a_file' / 'run'}", workdir=tmp_path)
    assert "config.workdir=" in line and "cannot be created" in line


def test_the_command_line_refuses_a_workdir_holding_a_symlink_loop_in_one_line(tmp_path):
    """Before, the run generated its data and tokenizer, then stopped in the pretraining stage with
    a FileExistsError traceback from Orbax's mkdir (issue 22, item 12)."""
    workdir = tmp_path / "run"
    (workdir / "base").mkdir(parents=True)
    (workdir / "notes.txt").write_text("mine")
    (workdir / "base" / "checkpoints").symlink_to("checkpoints")  # a link to itself
    before = {str(p): (p.is_symlink(), p.readlink() if p.is_symlink() else p.stat().st_mtime_ns)
              for p in sorted(tmp_path.rglob("*"))}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "experiments.r1_zero_tiny", f"--config.workdir={workdir}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(f"refused in {time.perf_counter() - started:.1f}s")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {workdir / 'base' / 'checkpoints'}: a symbolic link loop (Too many levels of symbolic links); "
        "point the link at a real directory or remove it, or choose another workdir"], result.stderr[-3000:]
    after = {str(p): (p.is_symlink(), p.readlink() if p.is_symlink() else p.stat().st_mtime_ns)
             for p in sorted(tmp_path.rglob("*"))}
    assert after == before


# ---- the R1 recipe's sampling sections: cold_start (ColdStartSettings) and rejection (RejectionSettings)

@pytest.mark.parametrize("field,value,message", [
    ("cold_start.temperature", float("nan"), r"config.cold_start.temperature=nan: must be a finite number"),
    ("cold_start.temperature", -0.5, r"config.cold_start.temperature=-0.5: the sampling temperature, a finite "
                                     r"number >= 0 \(0: greedy\)"),
    ("cold_start.top_p", 0.0, r"config.cold_start.top_p=0.0: .* in \(0, 1\]"),
    ("cold_start.top_p", 1.5, r"config.cold_start.top_p=1.5: .* in \(0, 1\]"),
    ("cold_start.samples_per_prompt", 0, r"config.cold_start.samples_per_prompt=0: the samples drawn per prompt, "
                                         r"an integer >= 1"),
    ("cold_start.annotated", -1, r"config.cold_start.annotated=-1: the worked solutions added .* an integer >= 0"),
    ("rejection.samples_per_prompt", 0, r"config.rejection.samples_per_prompt=0: the samples drawn per prompt"),
    ("rejection.temperature", float("inf"), r"config.rejection.temperature=inf: must be a finite number"),
    ("rejection.top_p", float("nan"), r"config.rejection.top_p=nan: must be a finite number"),
    ("rejection.top_p", 0.0, r"config.rejection.top_p=0.0: .* in \(0, 1\]"),
])
def test_a_sampling_setting_out_of_range_is_refused_naming_its_field(workdir, field, value, message):
    _refused("r1_pipeline_tiny", workdir, message, **{field: value})


@pytest.mark.parametrize("section", ["cold_start", "rejection"])
def test_an_unknown_field_of_a_sampling_section_is_refused(workdir, section):
    message = _refused("r1_pipeline_tiny", workdir, f"config.{section} has no field 'temprature'",
                       **{f"{section}.temprature": 0.6})
    assert "'temperature'" in message  # the section's fields are listed


@pytest.mark.parametrize("cls", [ColdStartSettings, RejectionSettings])
@pytest.mark.parametrize("field,value", [("temperature", float("nan")), ("temperature", float("inf")),
                                         ("top_p", float("nan")), ("top_p", 0.0), ("samples_per_prompt", 0),
                                         ("prompts", -1), ("prompts", True)])
def test_sampling_settings_refuse_a_value_out_of_range_on_construction(cls, field, value):
    """Built directly (a notebook, a test), not only from a config: a SettingError naming the field."""
    with pytest.raises(SettingError, match=f"^{field}={value!r}: ") as error:
        cls(**{field: value})
    assert error.value.field == field


def test_the_r1_pipeline_sampling_sections_list_every_field_with_the_values_it_ran_with():
    """Every field can be set from the command line in a locked config, and the experiment's values are
    the ones it had before the sections had dataclasses."""
    config = pipeline_experiment.get_config()
    config.lock()
    assert {f.name for f in dataclasses.fields(RejectionSettings)} == set(config.rejection.keys())
    assert {f.name for f in dataclasses.fields(ColdStartSettings)} <= set(config.cold_start.keys())
    assert settings_from(config.rejection, RejectionSettings, where="rejection") == RejectionSettings(
        prompts=384, samples_per_prompt=4, temperature=0.6, top_p=0.95)
    *_, cold_start = training_from(config.cold_start, SFTSettings, ColdStartSettings, where="cold_start",
                                   other=("replay",))
    assert cold_start == ColdStartSettings(prompts=384, samples_per_prompt=4, temperature=0.6, top_p=0.95, annotated=0)
    with pytest.raises(TypeError, match="RejectionSettings has no field temprature"):
        settings_section(RejectionSettings, temprature=0.6)


@pytest.mark.parametrize("section,share", [("cold_start", 0.0), ("sft", 0.5), ("student.distill", 0.5)])
def test_every_sft_section_of_the_r1_pipeline_has_its_replay_share_from_replay_settings(section, share):
    """`replay` is a field of `ReplaySettings` in each SFT section, at the share the experiment ran with,
    and a share outside [0, 1) is refused by the dataclass itself."""
    section = pipeline_experiment.get_config()[section]
    assert {f.name for f in dataclasses.fields(ReplaySettings)} <= set(section.keys())
    assert settings_from({"replay": section.replay}, ReplaySettings, where="sft") == ReplaySettings(replay=share)
    for value in (1.0, -0.1, float("nan")):
        with pytest.raises(SettingError, match=f"^replay={value!r}: the share of base-corpus pairs"):
            ReplaySettings(replay=value)


def test_the_command_line_names_a_bad_sampling_setting_in_one_line(workdir):
    before = _snapshot(workdir)
    result = subprocess.run([sys.executable, "-m", "experiments.r1_pipeline_tiny", f"--config.workdir={workdir}",
                             "--config.rejection.samples_per_prompt=0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == ("error: config.rejection.samples_per_prompt=0: the samples "
                                                      "drawn per prompt, an integer >= 1")
    assert _snapshot(workdir) == before
