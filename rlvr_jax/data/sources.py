"""TFDS builders as prompt sources: build a builder's dataset offline (once), open a split for random access.

Builders are not registered in TFDS's global registry (a name such as `math` or `gsm8k` could clash
with another package's); tasks (rlvr_jax/tasks) hold their builder class and call in here.
Without a data_dir, TFDS's own default (~/tensorflow_datasets or $TFDS_DATA_DIR) is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rlvr_jax.data import common
from rlvr_jax.distributed import folder_is_shared, sync


def make_builder(builder_cls: type, data_dir: str | Path | None = None, **params: Any) -> tfds.core.DatasetBuilder:
    """The builder whose config holds `params` (not built yet)."""
    config = common.make_config(builder_cls, **params)
    return builder_cls(config=config, data_dir=None if data_dir is None else str(data_dir), file_format="array_record")


def build(
    builder_cls: type,
    data_dir: str | Path | None = None,
    manual_dir: str | Path | None = None,
    manual_help: str | None = None,
    **params: Any,
) -> tfds.core.DatasetBuilder:
    """Build into `data_dir` unless it is already there (offline: generators and manual files only).

    `manual_help` (builders that read the user's local files) says where those files go.
    """
    import jax

    builder = make_builder(builder_cls, data_dir, **params)
    multi = jax.process_count() > 1
    if _is_built(builder) and not multi:
        return builder  # reading a built dataset needs neither the manual files nor a generator run
    name = builder_cls.name
    if manual_help and manual_dir is None and not _is_built(builder):
        raise common.DataError(f"task {name!r} is built from local files: set data.manual_dir and {manual_help}")
    if manual_help and not _is_built(builder) and not Path(manual_dir).is_dir():
        raise common.DataError(f"data.manual_dir {manual_dir} does not exist: {manual_help}")
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
        builder = make_builder(builder_cls, data_dir, **params)
    return builder


def _is_built(builder: tfds.core.DatasetBuilder) -> bool:
    return builder.data_path.joinpath("dataset_info.json").exists()


def load_split(
    builder_cls: type,
    split: str,
    data_dir: str | Path | None = None,
    manual_dir: str | Path | None = None,
    manual_help: str | None = None,
    **params: Any,
) -> Sequence[dict[str, Any]]:
    """Random-access source of one split (TFDS slicing such as `train[:100]` works); text values are bytes.

    Builds the dataset first when `data_dir` does not hold it yet.
    """
    builder = build(builder_cls, data_dir, manual_dir, manual_help, **params)
    splits = sorted(builder.info.splits)
    if split.split("[", 1)[0] not in splits:
        raise common.DataError(f"task {builder_cls.name!r} has no split {split!r}; valid splits: {splits}")
    return builder.as_data_source(split=split)
