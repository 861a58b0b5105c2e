"""The task registry: build a task's dataset offline (once) and open a split as a random-access source.

Builders are not registered in TFDS's global registry (a name such as `math` or `gsm8k` could clash
with another package's); this module is the one place that maps task names to builder classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rlvr_jax.data import arithmetic, common, official, toy_strategy
from rlvr_jax.distributed import folder_is_shared, sync

TASKS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "toy_strategy": toy_strategy.ToyStrategy,
    "arithmetic": arithmetic.Arithmetic,
    "gsm8k": official.Gsm8k,
    "math": official.Math,
}
MANUAL_HELP = {"gsm8k": official.GSM8K_HELP, "math": official.MATH_HELP}
# Without a data_dir, TFDS's own default (~/tensorflow_datasets or $TFDS_DATA_DIR) is used.


def task_builder(task: str, data_dir: str | Path | None = None, **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `task` whose config holds `builder_kwargs` (not built yet)."""
    if task not in TASKS:
        raise common.DataError(f"unknown task {task!r}; valid tasks: {sorted(TASKS)}")
    builder_cls = TASKS[task]
    config = common.make_config(builder_cls, **builder_kwargs)
    return builder_cls(config=config, data_dir=None if data_dir is None else str(data_dir), file_format="array_record")


def build_task(
    task: str, data_dir: str | Path | None = None, manual_dir: str | Path | None = None, **builder_kwargs: Any
) -> tfds.core.DatasetBuilder:
    """Build `task` into `data_dir` unless it is already there (offline: generators and manual files only)."""
    import jax

    builder = task_builder(task, data_dir, **builder_kwargs)
    multi = jax.process_count() > 1
    if _is_built(builder) and not multi:
        return builder  # reading a built dataset needs neither the manual files nor a generator run
    if task in MANUAL_HELP and manual_dir is None and not _is_built(builder):
        raise common.DataError(f"task {task!r} is built from local files: set data.manual_dir and {MANUAL_HELP[task]}")
    if task in MANUAL_HELP and not _is_built(builder) and not Path(manual_dir).is_dir():
        raise common.DataError(f"data.manual_dir {manual_dir} does not exist: {MANUAL_HELP[task]}")
    # Multi-host: every process calls this in the same order. Into a shared data_dir process 0 builds
    # while the others wait at the barrier (always taken: whether the folder exists yet may differ
    # between hosts), then they read what it wrote; into host-local ones every host builds its own
    # (the builders are deterministic, so all hosts read the same data).
    shared = not multi or folder_is_shared(builder.data_path.parent.parent.parent, "data")  # a collective: all call it
    builds_here = jax.process_index() == 0 or not shared
    if builds_here and not _is_built(builder):
        config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else str(manual_dir))
        # A build takes seconds; TFDS's progress bars (a process-wide switch) would bury the run's log.
        tfds.display_progress_bar(False)
        builder.download_and_prepare(download_config=config)
    if multi:
        sync("rlvr_jax_build_" + "/".join(builder.data_path.parts[-3:]))  # name/config/version: the same on every host
        builder = task_builder(task, data_dir, **builder_kwargs)
    return builder


def _is_built(builder: tfds.core.DatasetBuilder) -> bool:
    return builder.data_path.joinpath("dataset_info.json").exists()


def load_task_source(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    manual_dir: str | Path | None = None,
    **builder_kwargs: Any,
) -> Sequence[dict[str, Any]]:
    """Random-access source of one split (TFDS slicing such as `train[:100]` works); text values are bytes.

    Builds the dataset first when `data_dir` does not hold it yet.
    """
    builder = build_task(task, data_dir, manual_dir, **builder_kwargs)
    splits = sorted(builder.info.splits)
    if split.split("[", 1)[0] not in splits:
        raise common.DataError(f"task {task!r} has no split {split!r}; valid splits: {splits}")
    return builder.as_data_source(split=split)


def warmstart_examples(data_dir: str | Path | None = None, **builder_kwargs: Any) -> list[dict[str, str]]:
    """All toy_strategy warm-start traces in file order: dicts with id, prompt, answer, subset, response."""
    source = load_task_source("toy_strategy", "warmstart", data_dir, **builder_kwargs)
    return [common.decode_record(source[i]) for i in range(len(source))]


def verification_target(task: str, example: dict) -> str:
    """The gold string the task's verifier scores against (the toy adds the subset: strategy-faithful)."""
    if task == "toy_strategy":
        return f"{example['answer']}|{example['subset']}"
    return example["answer"]
