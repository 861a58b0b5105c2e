"""Hostile input: every bad config, model folder, prompt or flag is one line naming the key, file, tensor
or flag and the fix, with exit status 2 and no traceback, raised before any expensive work (no dataset
built, no warm start, no weights loaded). Checked through the `rlvr-jax` command (in process, and once as
a real process for the exit status), `load_config` and the Python API.

Not repeated here: the verifier payloads (code in answers, pathological LaTeX, huge numbers, x/0) are in
tests/test_rewards.py; corrupt checkpoints and read-only checkpoint folders in tests/test_integrity.py;
damaged metrics.jsonl / evals files for `rlvr-jax plot` in tests/test_jsonl.py; bad data rows, templates
and reward files in tests/test_files.py and tests/test_reward_functions.py.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import rlvr_jax.loop  # noqa: F401 - imported up front, so the timings below measure checks, not imports
from rlvr_jax import Trainer, cli
from rlvr_jax.config import ConfigError, MeshConfig, ModelConfig, load_config
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import (
    Arch,
    ArchError,
    CheckpointFormatError,
    NonFiniteWeightsError,
    abstract_model,
    from_pretrained,
    load_policy,
)
from rlvr_jax.model.hf_io import hf_shape, name_map
from rlvr_jax.rewards import last_number
from rlvr_jax.rewards.verifiers import has_number, score_math, score_numeric, score_toy_strategy
from rlvr_jax.tokenizer import TokenizerError, encode_left_padded, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FAST_S = 5.0  # a check before any work takes milliseconds; this leaves room for a loaded CI machine
NAN_TENSOR = "model.layers.0.mlp.up_proj.weight"
FULLWIDTH_12 = "\uff11\uff12"  # "12" in fullwidth digits


def fail(capsys, argv: list[str]) -> str:
    """Run `rlvr-jax argv` in process; it must stop with status 2 and print exactly its one line."""
    capsys.readouterr()
    with pytest.raises(cli.UserError) as stop:
        cli.main(argv)
    line = str(stop.value)
    assert stop.value.code == 2
    assert "\n" not in line and line.startswith(f"rlvr-jax {argv[0]}: ")
    assert capsys.readouterr().err == line + "\n"  # nothing else: no traceback, no warnings
    return line


def fail_train(capsys, tmp_path, overrides: list[str]) -> str:
    """`rlvr-jax train` with these overrides: one line, in seconds, and no work begun in the run dir."""
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    line = fail(capsys, ["train", "--run-dir", str(run_dir), *overrides])
    assert time.perf_counter() - start < FAST_S
    made = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert made == [], f"work began before the error: {made}"  # no datasets/, base_policy/, checkpoints/
    return line


# --- config errors: at load, through train / plan / eval and the Python API -----------------------

# (overrides on the default toy config, what the one line must say)
CONFIG_CASES = [
    (
        ["data.prompts_per_step=3", "optim.micro_batches=16"],
        "data.prompts_per_step * rollout.group_size = 3 * 8 = 24 rollouts per step do not split into "
        "optim.mini_batches * optim.micro_batches = 1 * 16 = 16 equal parts; make that product a divisor of 24 "
        "(the nearest: 12 or 24)",
    ),
    (["rollout.group_size=1"], "rollout.group_size=1 with advantage.estimator=grpo"),
    (["rollout.group_size=1", "advantage.estimator=rloo"], "set rollout.group_size >= 2"),
    (["eval.max_problems=-5"], "config key 'eval.max_problems': Input should be greater than or equal to 1 (got -5)"),
    (["eval.n=96"], "eval.n=96 is not a multiple of eval.samples_per_pass=64"),
    (["loss.dual_clip=0.5"], "config key 'loss.dual_clip': Input should be greater than 1 (got 0.5)"),
    (["loss.max_len_norm=0"], "config key 'loss.max_len_norm': Input should be greater than or equal to 1"),
    (["optim.b1=1.0"], "config key 'optim.b1': Input should be less than 1 (got 1.0)"),
    (["optim.b2=-0.1"], "config key 'optim.b2': Input should be greater than or equal to 0 (got -0.1)"),
    (["optim.eps=0"], "config key 'optim.eps': Input should be greater than 0 (got 0)"),
    (["optim.lr=.nan"], "config key 'optim.lr': Input should be a finite number (got nan)"),
    (["rollout.temperature=.inf"], "config key 'rollout.temperature': Input should be a finite number"),
    (["rollout.top_p=1.5"], "config key 'rollout.top_p': Input should be less than or equal to 1"),
    (["rollout.top_k=-1"], "config key 'rollout.top_k'"),
    (["run.seed=-1"], "config key 'run.seed': Input should be greater than or equal to 0"),
    (["checkpoint.keep=0"], "config key 'checkpoint.keep'"),
    (["mesh.data=-1"], "mesh.data=-1 and mesh.fsdp=-1: at most one axis takes the devices left over"),
    (["mesh.tensor=0"], "mesh.tensor=0: a mesh axis size is a positive number of devices, or -1"),
    (
        ["mesh.distributed.num_processes=2", "mesh.distributed.process_id=2"],
        "mesh.distributed.process_id=2 must be below mesh.distributed.num_processes=2",
    ),
    (["mesh.distributed.num_processes=0"], "config key 'mesh.distributed.num_processes'"),
    (["mesh.distributed.coordinator_address=node0"], "mesh.distributed.coordinator_address='node0' must be host:port"),
    (["mesh.distributed.coordinator_address=node0:70000"], "the port must be in 1..65535"),
    (["mesh.distributed.num_processes=3"], "data.prompts_per_step=16 does not divide over"),
    (["warmstart.prior=[0.5, 0.5, 0.5]"], "warmstart.prior=[0.5, 0.5, 0.5] must be three probabilities"),
    (["warmstart.prior=[0.5, 0.5]"], "must be three probabilities (S1, S2, S3)"),
    (["advantage.w_lambda=-1"], "config key 'advantage.w_lambda'"),
    (["data.plain_template=Solve it"], "data.plain_template='Solve it' has no {prompt}"),
    (["mesh.distributed.coordinator_address=[::1]:80"], "the value is not valid YAML"),
]


@pytest.mark.parametrize("overrides, says", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_a_bad_config_is_one_line_from_train_before_any_work(capsys, tmp_path, overrides, says):
    line = fail_train(capsys, tmp_path, overrides)
    assert says in line


def test_a_bad_train_flag_is_one_line(capsys, tmp_path):
    line = fail_train(capsys, tmp_path, ["--stop-at", "0"])
    assert line == "rlvr-jax train: --stop-at 0 must be >= 1 (the step after which to save and exit)"


def test_load_config_and_the_python_api_refuse_it_alike():
    with pytest.raises(ConfigError, match=r"^invalid config: rollout.group_size=1 with advantage.estimator=drgrpo"):
        load_config(None, ["rollout.group_size=1", "advantage.estimator=drgrpo"])
    with pytest.raises(ConfigError, match=r"^invalid config: config key 'loss.dual_clip'"):
        Trainer(None, overrides=["loss.dual_clip=1.0"])
    # The absolute estimators score each sample alone: one sample per prompt is fine for them.
    assert load_config(None, ["rollout.group_size=1", "advantage.estimator=nsr"]).rollout.group_size == 1
    # eval.n at most samples_per_pass is drawn in one pass of n; above it, whole passes.
    assert load_config(None, ["eval.n=8"]).eval.n == 8 and load_config(None, ["eval.n=32"]).eval.n == 32


def test_several_problems_are_one_line_each():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.group_size=1", "data.prompts_per_step=3", "optim.micro_batches=2"])
    lines = str(info.value).split("\n")
    assert lines[0] == "invalid config (2 problems):"
    assert lines[1].startswith("  data.prompts_per_step * rollout.group_size = 3 * 1 = 3 rollouts")
    assert lines[2].startswith("  rollout.group_size=1 with advantage.estimator=grpo")


def test_plan_refuses_what_train_would_refuse(capsys):
    # Before, plan printed "fits" for a config whose first update could not run.
    line = fail(capsys, ["plan", "--devices", "8", "data.prompts_per_step=3", "optim.mini_batches=16"])
    assert "do not split into optim.mini_batches * optim.micro_batches" in line


# (overrides, what the one line says): checks that need the task, the machine or a model folder's
# config.json, made by `loop.preflight` before the dataset is built.
PREFLIGHT_CASES = [
    (["mesh.data=3"], "mesh.data=3 mesh.fsdp=-1 mesh.tensor=1: 8 devices are not divisible"),
    (["model.arch.num_attention_heads=0"], "config model.arch: num_attention_heads must be a positive integer, got 0"),
    (["model.arch.num_attention_heads=3"], "hidden_size (64) is not divisible by num_attention_heads (3)"),
    (["model.arch.num_key_value_heads=3"], "config model.arch: num_attention_heads (4) must be a multiple of"),
    (["model.arch.hidden_size='64'"], "config model.arch: hidden_size must be a positive integer, got '64'"),
    (["rollout.top_k=100000"], "rollout.top_k=100000 is more than the vocabulary (512 tokens)"),
    (["reward.verifier=numerc"], "reward.verifier: unknown verifier 'numerc'; valid verifiers: exact, math,"),
    (["warmstart.enabled=false"], "a random model (model.arch) needs model.tokenizer, or warmstart.enabled=true"),
]


@pytest.mark.parametrize("overrides, says", PREFLIGHT_CASES, ids=[" ".join(c[0]) for c in PREFLIGHT_CASES])
def test_what_the_run_names_is_checked_before_the_data(capsys, tmp_path, overrides, says):
    assert says in fail_train(capsys, tmp_path, overrides)


def test_prompts_that_do_not_divide_over_the_processes_stop_before_the_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    line = fail_train(capsys, tmp_path, [])
    assert "data.prompts_per_step=16 does not divide over the 3 processes of this job" in line


def test_debug_shows_the_traceback_and_still_exits_2(capsys, tmp_path, monkeypatch):
    argv = ["train", "--run-dir", str(tmp_path / "run"), "rollout.group_size=1"]
    for flags, env in ((["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv("RLVR_JAX_DEBUG", env)
        with pytest.raises(cli.UserError) as stop:
            cli.main(flags + argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2
        assert err.startswith("Traceback (most recent call last):") and "rlvr_jax.config.ConfigError" in err
        assert err.endswith(str(stop.value) + "\n")


def test_the_command_exits_2_with_one_line_on_stderr(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(ROOT)}
    argv = ["train", "--run-dir", str(tmp_path / "run"), "rollout.group_size=1"]
    done = subprocess.run(
        [sys.executable, "-m", "rlvr_jax.cli", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("rlvr-jax train: invalid config: rollout.group_size=1 with advantage.estimator=grpo")
    assert done.stderr.count("\n") == 1, done.stderr


# --- model folders: config.json fields, truncated safetensors, NaN weights --------------------------

TINY = dict(
    model_type="qwen2",
    vocab_size=320,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    eos_token_id=0,
    pad_token_id=1,
)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random qwen2 folder (config.json, model.safetensors, the tokenizer's files), written straight
    from the name table: no model is built or compiled for it."""
    arch = Arch.from_hf(TINY)
    _, abstract = abstract_model(arch)
    shapes = {path: var.shape for path, var in nnx.to_flat_state(abstract)}
    rng = np.random.default_rng(0)
    tensors = {
        name: rng.normal(0.0, 0.2, hf_shape(shapes[path], merge)).astype(np.float32)
        for path, (name, merge) in name_map(arch, abstract).items()
    }
    folder = tmp_path_factory.mktemp("models") / "good"
    shutil.copytree(tiny_tokenizer_dir, folder)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(arch.to_hf()))
    return folder


def variant(good: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(good, folder)
    return folder


@pytest.fixture
def truncated_model(good_model, tmp_path) -> Path:
    folder = variant(good_model, tmp_path, "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # an interrupted download
    return folder


@pytest.fixture
def nan_model(good_model, tmp_path) -> Path:
    folder = variant(good_model, tmp_path, "nan")
    tensors = load_file(folder / "model.safetensors")
    tensors[NAN_TENSOR][0, :3] = [np.nan, np.inf, -np.inf]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# (config.json edit, what the one line says after the file's name)
CONFIG_JSON_CASES = [
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"vocab_size": "512"}, "vocab_size must be a positive integer, got '512'"),
    ({"vocab_size": 320.0}, "vocab_size must be a positive integer, got 320.0"),
    ({"hidden_size": True}, "hidden_size must be a positive integer, got True"),
    ({"num_hidden_layers": None}, "required field 'num_hidden_layers' is missing"),
    ({"hidden_size": 17}, "hidden_size (17) is not divisible by num_attention_heads (2); fix one of them, or give"),
    ({"num_key_value_heads": 3, "num_attention_heads": 4, "hidden_size": 16}, "(4) must be a multiple of"),
    ({"head_dim": 3}, "head_dim (3) must be even for RoPE"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a positive number, got '1e-6'"),
    ({"eos_token_id": ["0"]}, "eos_token_id must be a token id or a list of them, got ['0']"),
    (
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": "x",
                "low_freq_factor": 1,
                "high_freq_factor": 4,
                "original_max_position_embeddings": 16,
            },
            "model_type": "llama",
        },
        "factor must be a positive number, got 'x'",
    ),
]


@pytest.mark.parametrize("edit, says", CONFIG_JSON_CASES, ids=[str(c[0]) for c in CONFIG_JSON_CASES])
def test_a_bad_config_json_field_names_the_file_and_the_field(tmp_path, edit, says):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY, **edit}))
    with pytest.raises(ArchError) as info:
        Arch.from_dir(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'config.json'}: ") and says in message and "\n" not in message


@pytest.mark.parametrize("text", [b"[1, 2]", b"{not json", b'{"vocab_size": "\xff"}'])
def test_a_config_json_that_is_not_an_object_is_one_line(tmp_path, text):
    (tmp_path / "config.json").write_bytes(text)
    with pytest.raises(ArchError, match=rf"^{tmp_path / 'config.json'} (is not valid JSON|must hold a JSON object)"):
        Arch.from_dir(tmp_path)


def test_bad_config_json_through_generate_train_and_plan(capsys, tmp_path, good_model):
    folder = variant(good_model, tmp_path, "zero_heads")
    (folder / "config.json").write_text(json.dumps({**TINY, "num_attention_heads": 0}))
    says = f"{folder / 'config.json'}: num_attention_heads must be a positive integer, got 0"
    assert fail(capsys, ["generate", "--model", str(folder), "--prompt", "hi"]).endswith(says)
    assert fail_train(capsys, tmp_path, [f"model.path={folder}", "model.arch={}"]).endswith(says)
    (folder / "config.json").write_text("{")
    assert "config.json is not valid JSON" in fail(
        capsys, ["plan", "--devices", "8", f"model.path={folder}", "model.arch={}"]
    )


def test_a_truncated_safetensors_file_is_one_line_naming_it(capsys, truncated_model):
    line = fail(capsys, ["generate", "--model", str(truncated_model), "--prompt", "hi"])
    weights = truncated_model / "model.safetensors"
    assert line.startswith(f"rlvr-jax generate: {weights} is not a readable safetensors file (")
    assert line.endswith("): it is truncated or damaged; download or export it again")


def test_a_damaged_shard_index_is_one_line(tmp_path, good_model):
    folder = variant(good_model, tmp_path, "index")
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    with pytest.raises(
        CheckpointFormatError, match=r"index.json is not a safetensors index .*KeyError\('weight_map'\)"
    ):
        from_pretrained(folder, mesh, ROLLOUT_RULES)


def test_nan_weights_are_refused_naming_the_tensor_unless_allowed(capsys, nan_model):
    says = (
        f"{nan_model}: tensor {NAN_TENSOR} has 3 of 512 values NaN or inf; the weights are damaged (download or "
        "export them again), or load them anyway with model.allow_nonfinite=true (rlvr-jax generate / eval: "
        "--allow-nonfinite)"
    )
    assert fail(capsys, ["generate", "--model", str(nan_model), "--prompt", "hi"]) == f"rlvr-jax generate: {says}"
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])  # counted shard by shard
    key = jax.random.key(0)
    with pytest.raises(NonFiniteWeightsError, match=f"^{nan_model}: tensor {NAN_TENSOR} has 3 of 512 values"):
        load_policy(ModelConfig(path=str(nan_model)), mesh, TRAIN_RULES, key)  # model.path of a training run
    _, _, params = load_policy(ModelConfig(path=str(nan_model), allow_nonfinite=True), mesh, TRAIN_RULES, key)
    up = np.asarray(params["layers"][0]["mlp"]["up"].get_value())  # HF's [F, D] layout
    assert math.isnan(up[0, 0]) and up[0, 1] == np.inf  # loaded as asked, not repaired


# --- prompts and eval flags ------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--prompt", ""], ["--raw", "--prompt", ""], ["--prompt", "ok", "--prompt", " \n"]])
def test_an_empty_prompt_stops_generate_before_the_model_loads(capsys, truncated_model, flags):
    # The weights are truncated: reaching them would be a different error.
    line = fail(capsys, ["generate", "--model", str(truncated_model), *flags])
    number = 2 if "ok" in flags else 1
    assert line == f"rlvr-jax generate: --prompt number {number} is empty"


def test_a_prompt_of_no_tokens_is_an_error_not_an_index_error(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    with pytest.raises(TokenizerError, match=r"^prompt number 2 encodes to no tokens \(rendered: ''\)$"):
        encode_left_padded(tok, ["hello", ""])


EVAL_FLAG_CASES = [
    (["--n", "0"], "--n 0 must be >= 1 (samples per problem)"),
    (["--n", "-3", "--top-p", "0"], "--n -3 must be >= 1 (samples per problem); --top-p 0.0 must be in (0, 1]"),
    (["--max-problems", "0"], "--max-problems 0 must be >= 1 (problems)"),
    (["--samples-per-pass", "0", "--batch-problems", "0"], "--samples-per-pass 0 must be >= 1"),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0 (0 is greedy)"),
    (["--temperature", "nan"], "--temperature nan must be a finite number >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 must be >= 1 (tokens)"),
    (["--seed", "-1"], "--seed -1 must be >= 0 (a seed)"),
    (
        ["--n", "96", "--samples-per-pass", "64"],
        "invalid config: eval.n=96 is not a multiple of eval.samples_per_pass=64",
    ),
]


@pytest.mark.parametrize("flags, says", EVAL_FLAG_CASES, ids=[" ".join(c[0]) for c in EVAL_FLAG_CASES])
def test_eval_flags_out_of_range_are_one_line_before_any_work(capsys, tmp_path, flags, says):
    # The model folder does not exist: reaching it would be a different error.
    start = time.perf_counter()
    line = fail(capsys, ["eval", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "e.json"), *flags])
    assert says in line and time.perf_counter() - start < FAST_S
    assert not (tmp_path / "e.json").exists()


# --- verifiers: ASCII digits only ---------------------------------------------------------------


def test_fullwidth_and_other_scripts_digits_are_not_numbers():
    arabic_indic_12 = "\u0661\u0662"
    for text in (FULLWIDTH_12, f"The answer is {FULLWIDTH_12}.", arabic_indic_12, "\uff112"):
        assert score_numeric(text, "12") == 0.0 and not has_number(text) and last_number(text) is None, text
    assert score_numeric("The answer is 12.", "12") == 1.0  # the same sentence in ASCII
    assert last_number(f"{FULLWIDTH_12} or 7") == 7  # the ASCII number is the last (and only) one
    # toy_strategy: the first ASCII integer after the strategy token counts.
    assert score_toy_strategy("<S2> \uff14\uff17", "47") == 0.0
    assert score_toy_strategy("<S2> \uff14\uff17 47", "47") == 1.0
    # math: math-verify, which reads text only, scores the fullwidth form wrong as well.
    assert score_math(f"\\boxed{{{FULLWIDTH_12}}}", "12") == 0.0 and score_math("\\boxed{12}", "12") == 1.0
