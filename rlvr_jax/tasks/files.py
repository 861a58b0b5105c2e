"""Tasks read from the user's files: JSON lines, Parquet, a `datasets` folder, a Hub dataset, or rows
handed over in Python.

Files are opened with Hugging Face `datasets`: they become memory-mapped Arrow tables in a cache under
the run's data folder (built once per host), so a large file is neither held in memory nor parsed
again per step, and `source[i]` is random access. The prompt order is the pipeline's keyed
permutation, exactly as for the built-in tasks.

Rows need no conversion for the two common layouts:
  verl (parquet):      prompt = [{role, content}, ...], reward_model.ground_truth, data_source, extra_info
  TRL conversational:  prompt = [{role, content}, ...], plus any answer column (e.g. solution)
and plain string prompts are formatted with `data.template` (columns as {names}) when one is given.
Every column of a row reaches the reward functions; `data.answer_key` names the gold answer of the
built-in verifiers.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import string
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.config import Config, DataConfig, DataSource
from rlvr_jax.data import DataError
from rlvr_jax.storage import download_files
from rlvr_jax.tasks.base import Task, TaskError

ANSWER_KEYS = ("answer", "reward_model.ground_truth", "ground_truth", "solution")


def records_name(data: DataConfig) -> str:
    """The name a file run's records use (evaluation reports, default row ids): `data.task` when the user
    set it, else the files' name (a split-named file such as train.jsonl, or a glob, by its folder), as
    data.task's default names a registered task the files have nothing to do with."""
    if data.task != DataConfig.model_fields["task"].default:
        return data.task
    if not data.path:
        return "rows"
    folder, _, name = data.path.rstrip("/").rpartition("/")
    stem = name.split(".")[0]
    if any(c in name for c in "*?[") or stem in ("train", "training"):
        return folder.rpartition("/")[2] or stem
    return stem


@dataclasses.dataclass(frozen=True)
class FileTask(Task):
    """A task whose train split is `data.path` and whose held-out split is `eval.path` (or a split of
    the same `datasets` folder); `rows` holds in-memory datasets by split (the Python API)."""

    data: DataConfig = DataConfig()
    eval_path: str | None = None
    eval_split: str = "test"
    rows: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: Config, rows: Mapping[str, Any] | None = None) -> FileTask:
        return cls(
            name=records_name(cfg.data),
            verifier=cfg.reward.verifier,
            data=cfg.data,
            eval_path=cfg.eval.path,
            eval_split=cfg.eval.split,
            rows=rows,
        )

    def source(
        self, split: str, data_dir: str | Path | None = None, manual_dir: str | Path | None = None, **params: Any
    ) -> Sequence[Mapping[str, Any]]:
        if params:
            raise TaskError(f"files take no dataset parameters (got {sorted(params)})")
        if self.rows is not None and split in self.rows:
            return _as_source(self.rows[split], f"the {split} rows")
        if self.rows is not None and self.data.path is None:
            raise TaskError(f"no {split} rows were given (have: {sorted(self.rows)})")
        path, hf_split = self._where(split)
        return open_source(self.data.source, path, hf_split, data_dir)

    def _where(self, split: str) -> tuple[str, str]:
        """(path, split of a datasets folder) of `split`."""
        if split == self.data.split:
            return self.data.path, split
        if split == self.eval_split and self.eval_path:
            return self.eval_path, "train"  # an eval file is a split of its own
        if self.data.source == DataSource.hf:
            return self.data.path, split
        raise TaskError(
            f"no files for the {split!r} split: set eval.path to the held-out file(s) (read with the same "
            "data.* column settings), or use an hf datasets folder that has that split"
        )

    def example(self, record: Mapping[str, Any], index: int) -> dict[str, Any]:
        """A row as the pipeline and the rewards see it: id, messages to render, prompt text, gold, subset,
        and every column."""
        columns = dict(record)
        row_id = str(_lookup(columns, self.data.id_key)) if self.data.id_key else f"{self.name}/{index}"
        messages = self._messages(columns, row_id)
        answer = _lookup(columns, self.answer_key(columns))
        subset = str(_lookup(columns, self.data.subset_key)) if self.data.subset_key else ""
        user = [m["content"] for m in messages if m["role"] == "user"]
        return {
            "id": row_id,
            "prompt": user[-1] if user else messages[-1]["content"],
            "messages": messages,
            # TRL's convention: reward functions see chat messages only when the dataset's prompts are chats
            "chat": not isinstance(_lookup(columns, self.data.prompt_key), str),
            "answer": "" if answer is None else str(answer),
            "subset": subset,
            "columns": columns,
        }

    def answer_key(self, columns: Mapping[str, Any]) -> str:
        if self.data.answer_key:
            return self.data.answer_key
        found = next((k for k in ANSWER_KEYS if _has(columns, k)), None)
        if found is None:
            raise DataError(
                f"no answer column: set data.answer_key (looked for {', '.join(ANSWER_KEYS)}; "
                f"the rows have {', '.join(sorted(columns))})"
            )
        return found

    def _messages(self, columns: Mapping[str, Any], row_id: str) -> list[dict[str, str]]:
        value = _lookup(columns, self.data.prompt_key)
        system = [{"role": "system", "content": self.data.system_prompt}] if self.data.system_prompt else []
        if isinstance(value, str):
            text = _format(self.data.template, columns, row_id) if self.data.template else value
            if not text.strip():
                raise DataError(f"row {row_id}: the prompt ({self.data.prompt_key}) is empty")
            return system + [{"role": "user", "content": text}]
        if _is_chat(value):
            if self.data.template:
                raise DataError(
                    f"row {row_id}: data.template formats string prompts; {self.data.prompt_key} holds "
                    "chat messages (drop data.template)"
                )
            if not any(m["content"].strip() for m in value):
                raise DataError(f"row {row_id}: the prompt's messages are all empty")
            has_system = value and value[0]["role"] == "system"
            return ([] if has_system else system) + [{"role": m["role"], "content": m["content"]} for m in value]
        raise DataError(
            f"row {row_id}: {self.data.prompt_key} must be a string or chat messages [{{role, content}}, ...], "
            f"got {type(value).__name__}"
        )

    def check(self, source: Sequence[Mapping[str, Any]], what: str) -> None:
        """Cheap checks before any expensive work: rows exist, the columns named by data.* exist, and the
        first row turns into an example (its template formats)."""
        if len(source) == 0:
            raise DataError(f"{what} has no rows")
        first = dict(source[0])
        for key, field in (
            (self.data.prompt_key, "prompt_key"),
            (self.data.id_key, "id_key"),
            (self.data.subset_key, "subset_key"),
            (self.data.answer_key, "answer_key"),
        ):
            if key and not _has(first, key):
                raise DataError(f"{what}: no column {key!r} (data.{field}); the rows have {', '.join(sorted(first))}")
        self.example(first, 0)


def open_source(source: DataSource, path: str, split: str, cache_dir: str | Path | None) -> Any:
    """A random-access `datasets.Dataset` of `path` (memory-mapped Arrow; cached under `cache_dir`)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)  # its errors reach the user as our one line
    cache = None if cache_dir is None else str(Path(cache_dir) / "files")
    try:
        if source in (DataSource.jsonl, DataSource.parquet):
            files = _files(path, cache)
            local = [files] if isinstance(files, str) else files
            if all(Path(f).stat().st_size == 0 for f in local):
                raise DataError(f"data: {path} has no rows (empty file)")
            builder = "json" if source == DataSource.jsonl else "parquet"
            return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache)
        return _open_hf(path, split, cache)
    except DataError:
        raise
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(f"data: cannot read {path}: {_first_line(err)}") from None
    except datasets.exceptions.DatasetGenerationError as err:  # a row that does not parse, mixed types
        cause = err.__cause__ or err
        raise DataError(f"data: {path} is not valid {source.value}: {_first_line(cause)}") from None
    except (ValueError, TypeError) as err:  # malformed JSON / Parquet, mixed column types
        raise DataError(f"data: {path} is not valid {source.value}: {_first_line(err)}") from None


def _files(path: str, cache: str | None) -> str | list[str]:
    """A file, a glob (sorted, so every host reads the rows in one order), or a bucket URL (gs://, glob
    allowed), downloaded once into the local cache (the Hub's offline switch must not block a bucket)."""
    if "://" in path:
        into = Path(cache or tempfile.gettempdir()) / "remote"
        return [str(p) for p in download_files(path, into)]
    if not any(ch in path for ch in "*?["):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    matches = sorted(glob.glob(path))
    if not matches:
        raise FileNotFoundError(f"no file matches {path}")
    return matches


def _open_hf(path: str, split: str, cache: str | None) -> Any:
    import datasets

    if Path(path).is_dir():
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"data: {path} has no split {split!r}; its splits: {', '.join(loaded)}")
            return loaded[split]
        return loaded
    if "/" not in path or Path(path).suffix:
        raise FileNotFoundError(f"{path} is neither a datasets folder (save_to_disk) nor a Hub dataset id (owner/name)")
    try:
        return datasets.load_dataset(path, split=split, cache_dir=cache)
    except ConnectionError as err:
        raise DataError(
            f"data: the Hub dataset {path} is not reachable ({_first_line(err)}): download it elsewhere, "
            "save_to_disk, and pass that folder as data.path"
        ) from None


def _as_source(rows: Any, what: str) -> Any:
    """In-memory rows (a list of dicts, or a datasets.Dataset) as a random-access source."""
    if hasattr(rows, "__getitem__") and hasattr(rows, "__len__") and not isinstance(rows, (str, bytes, Mapping)):
        return rows
    raise TaskError(f"{what} must be a list of dicts or a datasets.Dataset, got {type(rows).__name__}")


def _lookup(columns: Mapping[str, Any], dotted: str) -> Any:
    value: Any = columns
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _has(columns: Mapping[str, Any], dotted: str) -> bool:
    value: Any = columns
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _format(template: str, columns: Mapping[str, Any], row_id: str) -> str:
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    missing = sorted(n for n in names if n.split(".")[0].split("[")[0] not in columns)
    if missing:
        raise DataError(
            f"row {row_id}: data.template names {missing}, not columns of the rows ({', '.join(sorted(columns))})"
        )
    return template.format_map(columns)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
