"""Pieces every task builder shares: the example features, configs named by their parameters, errors.

Every task is a TFDS `GeneratorBasedBuilder` written to array_record (random access, no TensorFlow).
A builder's parameters live in its `BuilderConfig`; the config's name is "default" for the defaults and
a digest of the parameters otherwise, so a changed parameter is a different dataset on disk, never a
stale cache hit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

# Every split of every task has these string features (a task may add more, e.g. `response`).
BASE_FEATURES = ("id", "prompt", "answer", "subset")
# Fields of tfds.core.BuilderConfig itself; everything else on a config subclass is a task parameter.
_TFDS_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class DataError(ValueError):
    """Bad task input (missing file, malformed row, unknown task or parameter); the message says the fix."""


class TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of our builders: array_record, generated offline, not in TFDS's global registry."""

    # TFDS looks for a checksums file next to the builder's code; for a class inside an installed
    # package that probe needs the `importlib_resources` backport (absent on Python >= 3.9) and
    # crashes. Our builders download nothing, so there is no checksums file to find.
    code_path = None


def text_features(names: tuple[str, ...] = BASE_FEATURES) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({name: tfds.features.Text() for name in names})


def dataset_info(
    builder: tfds.core.GeneratorBasedBuilder, description: str, names: tuple[str, ...] = BASE_FEATURES
) -> tfds.core.DatasetInfo:
    # builder=self, not dataset_info_from_configs: the latter looks for a builder package on disk.
    # disable_shuffling keeps the generation order in the file, so global index i is the i-th example
    # generated; the pipeline shuffles with its own keyed permutation anyway.
    return tfds.core.DatasetInfo(
        builder=builder, description=description, features=text_features(names), disable_shuffling=True
    )


def task_params(config: tfds.core.BuilderConfig) -> dict[str, Any]:
    """The task parameters of a config (its own dataclass fields, not TFDS's)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _TFDS_FIELDS}


def make_config(builder_cls: type[tfds.core.DatasetBuilder], **params: Any) -> tfds.core.BuilderConfig:
    """The config of `builder_cls` holding `params`: its own "default" instance for the defaults, else
    a new config named by the parameters' digest."""
    default = builder_cls.BUILDER_CONFIGS[0]  # TFDS wants this very object for the name "default"
    config_cls = type(default)
    known = {f.name for f in dataclasses.fields(config_cls)} - _TFDS_FIELDS
    unknown = sorted(set(params) - known)
    if unknown:
        raise DataError(f"unknown {config_cls.__name__} parameter(s) {unknown}; valid: {sorted(known)}")
    params = {name: _typed(builder_cls.name, name, value, getattr(default, name)) for name, value in params.items()}
    config = config_cls(name="default", **params)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    values = _jsonable(task_params(config))
    if values == _jsonable(task_params(default)):
        return default
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return config_cls(name=f"custom_{digest}", description=json.dumps(values, sort_keys=True), **params)


def _typed(task: str, name: str, value: Any, default: Any) -> Any:
    """`value` of the parameter `name` whose default is `default`, in the default's type.

    Strict, as the run config is (parameters arrive from YAML through data.task_args): a number is not
    a string, a bool is not a number. Widening only: an int for a float (YAML reads `0` as an int), a
    list for a tuple. The result has the default's type, so `0` and `0.0` name the same dataset.
    """
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = is_number, "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    elif isinstance(default, tuple):
        ok, kind = isinstance(value, (list, tuple)) and len(value) == len(default), f"a list of {len(default)}"
        if ok:
            return tuple(_typed(task, f"{name}[{i}]", v, d) for i, (v, d) in enumerate(zip(value, default)))
    else:
        return value
    if not ok:
        raise DataError(f"{task} parameter {name} must be {kind}, got {value!r} ({type(value).__name__})")
    return float(value) if isinstance(default, float) else value


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    # Tuples and lists must compare (and hash) the same: (0.3, 0.02, 0.68) == [0.3, 0.02, 0.68].
    return json.loads(json.dumps(dict(values), sort_keys=True))


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record with text features as str (TFDS hands text back as bytes)."""
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}


def builtin_example(record: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """A built-in task's record as the pipeline and the rewards see it (see Task.example): its text
    fields, no chat messages of its own (the prompt is rendered as one user message), every field as
    a column."""
    ex = decode_record(record)
    return {
        "id": ex["id"],
        "prompt": ex["prompt"],
        "messages": None,
        "chat": False,
        "answer": ex["answer"],
        "subset": ex["subset"],
        "columns": ex,
    }
