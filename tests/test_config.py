"""Config loading: YAML + dotted overrides, strict validation with errors that name the key."""

from pathlib import Path

import pydantic
import pytest

from rlvr_jax.config import (
    PACKAGED,
    Aggregation,
    Config,
    ConfigChanges,
    ConfigError,
    DistributedInit,
    DType,
    Estimator,
    KLEstimator,
    LongPrompt,
    MeshConfig,
    PolicyObjective,
    Schedule,
    SignFilter,
    StdMode,
    apply_override,
    load_config,
    packaged_names,
    parse_yaml_value,
    resolve_config,
    save_config,
    validate,
)

CONFIGS_DIR = PACKAGED  # package data: rlvr_jax/configs
# Run configs; probes/ holds probe files (tested in test_probe.py).
CONFIG_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in CONFIGS_DIR.rglob(ext) if "probes" not in p.parts)


def _error(overrides=(), path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- valid configs ------------------------------------------------------------------------------


def test_defaults_validate():
    cfg = load_config()
    assert cfg == Config() == validate({})
    assert cfg.rollout.temperature == 1.0 and cfg.optim.lr == 1e-5
    assert cfg.advantage.sign is SignFilter.full
    assert cfg.mesh.distributed.init is DistributedInit.auto
    assert cfg.run_dir == Path("runs/run").absolute()


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = _write(
        tmp_path,
        """
run:
  name: exp1
  steps: 7
rollout:
  group_size: 4
  temperature: 0.9
optim:
  lr: 3e-6            # YAML 1.1 would read this as a string
  schedule: cosine
advantage:
  estimator: rloo
""",
    )
    cfg = load_config(
        path,
        [
            "rollout.temperature=0.7",
            "optim.lr=1e-5",
            "advantage.sign=negative_only",
            "mesh.distributed.init=never",
            "mesh.data=2",
            "data.long_prompt=truncate",
        ],
    )
    assert cfg.run.name == "exp1" and cfg.run.steps == 7
    assert cfg.rollout.group_size == 4  # from the file, untouched by the overrides
    assert cfg.rollout.temperature == 0.7
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-5
    assert cfg.optim.schedule is Schedule.cosine
    assert cfg.advantage.estimator is Estimator.rloo
    assert cfg.advantage.sign is SignFilter.negative_only
    assert cfg.mesh.distributed.init is DistributedInit.never
    assert cfg.mesh.data == 2 and cfg.mesh.fsdp == -1
    assert cfg.data.long_prompt is LongPrompt.truncate
    assert cfg.run_dir == Path("runs/exp1").absolute()


def test_yaml_exponent_floats_from_file(tmp_path):
    cfg = load_config(_write(tmp_path, "optim:\n  lr: 1e-5\n  eps: 1E-8\nloss:\n  kl_beta: .5\n"))
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-5
    assert isinstance(cfg.optim.eps, float) and cfg.optim.eps == 1e-8
    assert cfg.loss.kl_beta == 0.5


def test_parse_yaml_value_types():
    assert parse_yaml_value("1e-5") == 1e-5 and isinstance(parse_yaml_value("1e-5"), float)
    assert parse_yaml_value("3") == 3 and isinstance(parse_yaml_value("3"), int)
    assert parse_yaml_value("-2") == -2 and isinstance(parse_yaml_value("-2"), int)
    assert parse_yaml_value("true") is True
    assert parse_yaml_value("null") is None
    assert parse_yaml_value("abc") == "abc"


def test_int_accepted_for_float_field():
    assert load_config(None, ["rollout.temperature=1"]).rollout.temperature == 1.0


def test_override_order_later_wins(tmp_path):
    path = _write(tmp_path, "rollout:\n  temperature: 0.9\n")
    assert load_config(path).rollout.temperature == 0.9
    assert load_config(path, ["rollout.temperature=0.7"]).rollout.temperature == 0.7
    cfg = load_config(path, ["rollout.temperature=0.7", "rollout.temperature=0.3", "optim.lr=1e-4"])
    assert cfg.rollout.temperature == 0.3
    assert load_config(None, ["rollout.temperature=0.3", "rollout.temperature=0.7"]).rollout.temperature == 0.7


def test_apply_override_does_not_mutate_input():
    tree = {"rollout": {"temperature": 0.9}}
    out = apply_override(tree, "rollout.top_k=5")
    assert tree == {"rollout": {"temperature": 0.9}}
    assert out == {"rollout": {"temperature": 0.9, "top_k": 5}}


def test_override_value_with_equals_sign():
    # Only the first '=' separates key and value.
    assert load_config(None, ["data.plain_template=Q={prompt}"]).data.plain_template == "Q={prompt}"


def test_malformed_overrides():
    assert "section.key=value" in _error(["rollout.temperature"])
    assert "section.key=value" in _error(["=0.7"])
    message = _error(["run.name=abc", "run.name.x=1"])
    assert "'name'" in message and "not a section" in message


# --- errors name the key ------------------------------------------------------------------------


def test_unknown_key_names_key_suggests_and_lists_valid():
    message = _error(["rollout.temprature=0.7"])
    assert "'rollout.temprature'" in message
    assert "did you mean 'rollout.temperature'" in message
    for key in ("group_size", "max_new_tokens", "temperature", "top_p", "top_k", "stop_on_eos"):
        assert key in message.split("valid keys here:")[1]


def test_unknown_nested_key():
    message = _error(["mesh.distributed.int=never"])
    assert "'mesh.distributed.int'" in message and "did you mean 'mesh.distributed.init'" in message
    assert "coordinator_address" in message


def test_unknown_section_in_yaml(tmp_path):
    message = _error(path=_write(tmp_path, "rolout:\n  temperature: 0.7\n"))
    assert "'rolout'" in message and "did you mean 'rollout'" in message
    for section in ("run", "model", "mesh", "rollout", "optim", "eval"):
        assert section in message.split("valid keys here:")[1]


def test_unknown_key_without_close_match_lists_valid_keys():
    message = _error(["optim.zzzzzz=1"])
    assert "'optim.zzzzzz'" in message and "did you mean" not in message
    assert "lr" in message and "warmup_steps" in message


@pytest.mark.parametrize(
    "override", ["rollout.max_new_tokens=abc", "rollout.max_new_tokens=1.5", "rollout.max_new_tokens=true"]
)
def test_wrong_type_names_key(override):
    message = _error([override])
    assert "'rollout.max_new_tokens'" in message
    assert "integer" in message


def test_string_for_int_in_yaml_is_rejected(tmp_path):
    message = _error(path=_write(tmp_path, 'rollout:\n  max_new_tokens: "3"\n'))
    assert "'rollout.max_new_tokens'" in message and "'3'" in message
    # ...while an unquoted 3 is fine.
    assert load_config(_write(tmp_path, "rollout:\n  max_new_tokens: 3\n", "ok.yaml")).rollout.max_new_tokens == 3


def test_constraint_violation_names_key():
    message = _error(["rollout.top_p=0"])
    assert "'rollout.top_p'" in message
    assert "'rollout.group_size'" in _error(["rollout.group_size=0"])


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_group_relative_estimators_refuse_group_size_one_at_load(estimator):
    message = _error([f"advantage.estimator={estimator}", "rollout.group_size=1"])
    assert f"advantage.estimator={estimator}" in message and "rollout.group_size >= 2, got 1" in message
    assert "G - 1 = 0" in _error(["advantage.std=unbiased", "rollout.group_size=1"])
    for absolute in ("nsr", "psr", "w_reinforce"):  # one rollout per prompt is fine for them
        assert load_config(None, [f"advantage.estimator={absolute}", "rollout.group_size=1"]).rollout.group_size == 1


def test_task_args_are_for_registered_tasks_and_change_the_trajectory(tmp_path):
    cfg = load_config(None, ["data.task_args.reward=graded", "data.task_args.hard_fraction=0.0"])
    assert cfg.data.task_args == {"reward": "graded", "hard_fraction": 0.0}
    assert validate(cfg.model_dump(mode="json")) == cfg
    message = _error(["data.source=jsonl", f"data.path={tmp_path}/x.jsonl", "data.task_args.hard_fraction=0.0"])
    assert "data.task_args are a registered task's dataset parameters" in message
    # Resuming with other dataset parameters changes the data: a trajectory change, never harmless.
    changes = ConfigChanges.between(load_config(None).model_dump(mode="json"), cfg)
    assert changes.trajectory and not changes.harmless and not changes.state
    assert all(line.startswith("data.task_args") for line in changes.trajectory)


def test_every_error_is_reported():
    message = _error(["rollout.max_new_tokens=abc", "optim.lrr=1e-5"])
    assert "'rollout.max_new_tokens'" in message and "'optim.lrr'" in message


@pytest.mark.parametrize(
    "key,enum_type",
    [
        ("advantage.sign", SignFilter),
        ("advantage.estimator", Estimator),
        ("advantage.std", StdMode),
        ("loss.objective", PolicyObjective),
        ("loss.kl_estimator", KLEstimator),
        ("loss.aggregation", Aggregation),
        ("model.dtype", DType),
        ("mesh.distributed.init", DistributedInit),
    ],
)
def test_bad_enum_lists_choices(key, enum_type):
    message = _error([f"{key}=bogus"])
    assert f"'{key}'" in message and "'bogus'" in message
    for member in enum_type:
        assert f"'{member.value}'" in message


def test_every_enum_value_is_accepted():
    for member in Estimator:
        assert load_config(None, [f"advantage.estimator={member.value}"]).advantage.estimator is member
    for member in SignFilter:
        assert load_config(None, [f"advantage.sign={member.value}"]).advantage.sign is member


# --- files --------------------------------------------------------------------------------------


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = _error(path=path)
    assert str(path) in message and "does not exist" in message


def test_non_mapping_yaml(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    message = _error(path=path)
    assert str(path) in message and "mapping" in message and "list" in message


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "rollout:\n  temperature: [0.7\n")
    message = _error(path=path)
    assert str(path) in message and "not valid YAML" in message


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "run.name=round_trip",
            "run.seed=7",
            "run.run_dir=/tmp/somewhere",
            "model.path=/models/qwen",
            "model.param_dtype=bfloat16",
            "model.remat=true",
            "model.arch.hidden_size=64",
            "model.arch.rope_scaling.factor=8.0",
            "mesh.data=2",
            "mesh.fsdp=2",
            "mesh.tensor=2",
            "mesh.distributed.init=never",
            "mesh.distributed.coordinator_address=10.0.0.1:1234",
            "advantage.sign=negative_only",
            "advantage.estimator=w_reinforce",
            "advantage.w_lambda=0.25",
            "loss.dual_clip=3.0",
            "loss.kl_beta=0.01",
            "loss.aggregation=seq_mean_token_sum_norm",
            "optim.lr=3e-6",
            "optim.schedule=cosine",
            "eval.max_problems=10",
            "data.plain_template='Q: {prompt} A:'",
        ],
    )
    assert cfg != Config()
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.model.arch == {"hidden_size": 64, "rope_scaling": {"factor": 8.0}}
    assert loaded.model.param_dtype is DType.bfloat16 and loaded.loss.dual_clip == 3.0
    assert loaded.data.plain_template == "Q: {prompt} A:" and loaded.optim.lr == 3e-6
    # Saving the defaults round-trips too, and saving twice gives the same text.
    save_config(Config(), tmp_path / "defaults.yaml")
    assert load_config(tmp_path / "defaults.yaml") == Config()
    save_config(loaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_configs_are_frozen():
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.rollout.temperature = 0.5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.rollout = cfg.rollout  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        MeshConfig().data = 4  # type: ignore[misc]
    assert cfg.rollout.temperature == 1.0
    # Changed copies are explicit and leave the original alone.
    changed = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"temperature": 0.5})})
    assert changed.rollout.temperature == 0.5 and cfg.rollout.temperature == 1.0


def test_packaged_configs_exist():
    assert {"toy_strategy", "toy_strategy_negative_only"} <= set(packaged_names())
    assert len(CONFIG_FILES) >= 12  # the two toy runs and ten recipes


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # Saving and reloading a shipped config changes nothing.
    assert validate(cfg.model_dump(mode="json")) == cfg
    if cfg.model.arch:  # a random model's architecture must be one the decoder builds
        from rlvr_jax.model.arch import Arch

        # vocab_size may be left to the warm start (the toy tokenizer's size)
        Arch.from_hf({"vocab_size": 512, **cfg.model.arch}, source=f"{path}: model.arch")


def test_packaged_configs_resolve_by_name_and_by_their_old_repository_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: only package data can answer
    toy = PACKAGED / "toy_strategy.yaml"
    assert resolve_config("toy_strategy") == toy
    assert resolve_config("configs/toy_strategy.yaml") == toy  # paths from before configs became package data
    assert (
        resolve_config("recipes/qwen2.5-math-1.5b_math_grpo")
        == PACKAGED / "recipes" / "qwen2.5-math-1.5b_math_grpo.yaml"
    )
    assert resolve_config("configs/probes/toy_strategy.yaml", "probes") == PACKAGED / "probes" / "toy_strategy.yaml"
    assert load_config("toy_strategy_negative_only").advantage.sign == SignFilter.negative_only
    (tmp_path / "toy_strategy.yaml").write_text("run: {steps: 7}\n")
    assert load_config("toy_strategy.yaml").run.steps == 7  # an existing file wins over the packaged name
    with pytest.raises(
        ConfigError, match=r"does not exist \(packaged configs: (\w+, )*toy_strategy, toy_strategy_gspo"
    ):
        load_config("toy_stratgy")


def test_a_removed_key_names_what_replaced_it():
    with pytest.raises(ConfigError, match="'logging.every' was removed: metrics.jsonl has a row every step"):
        load_config(None, ["logging.every=5"])


def test_resume_comparison_of_a_non_empty_mapping_whose_default_is_empty():
    """model.arch defaults to {} and the toy config fills it: resuming the toy run with the same
    settings changes nothing (it used to read as model.arch: {} -> '<unset>', a state change)."""
    from rlvr_jax.config import ConfigChanges

    saved = load_config("toy_strategy", ["run.steps=3"]).model_dump(mode="json")
    changes = ConfigChanges.between(saved, load_config("toy_strategy", ["run.steps=1"]))
    assert changes == ConfigChanges(harmless=["run.steps: 3 -> 1"], trajectory=[], state=[])
    changed = ConfigChanges.between(saved, load_config("toy_strategy", ["model.arch.hidden_size=32"]))
    assert changed.state == ["model.arch.hidden_size: 64 -> 32"]
