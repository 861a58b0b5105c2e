"""Host-side metric sinks: metrics.jsonl always, TensorBoard optionally; one-step-late device fetch.

Metrics arrive as flat dicts of device scalars. `LateWriter.push(step, metrics)` keeps step k's
arrays and fetches them only when step k+1 is pushed, so the host never waits for the device in the
middle of a step (maxtext's metric_logger does the same). Only process 0 writes.

Run directories may be in a bucket, where an object cannot be appended to: there `JsonlSink` keeps
the file's lines and uploads the whole object every `REMOTE_FLUSH_S` and before each checkpoint
(`persist`), so the rows a resume keeps (those up to its checkpoint) are always in the bucket.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.distributed import allgather_objects
from rlvr_jax.storage import as_path, is_remote, write_text_atomic

log = logging.getLogger(__name__)


def to_host(metrics: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Device scalars -> JSON-safe Python numbers; non-finite values become None with a warning."""
    fetched = jax.device_get(dict(metrics))
    out: dict[str, float | int | None] = {}
    for key, value in fetched.items():
        value = np.asarray(value)
        if value.ndim == 1 and value.size > 1:  # histograms: a JSON list in metrics.jsonl, not a TB scalar
            out[key] = [float(v) if math.isfinite(v) else None for v in value.tolist()]
            continue
        if value.size != 1:
            continue
        number = value.item()
        if isinstance(number, float) and not math.isfinite(number):
            log.warning("metric %s is %s", key, number)
            out[key] = None
        else:
            out[key] = number
    return out


REMOTE_FLUSH_S = 60.0


class JsonlSink:
    """Lines added to one JSONL file: flushed per line on a disk; in a bucket, the whole object is
    uploaded again every REMOTE_FLUSH_S seconds and at `persist` / `close`."""

    def __init__(self, path: Any, append: bool):
        self.path = as_path(path)
        self.remote = is_remote(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.remote:
            self._lines = self.path.read_text().splitlines(keepends=True) if append and self.path.exists() else []
            self._dirty, self._uploaded = not append, time.monotonic()
        else:
            self._file = self.path.open("a" if append else "w")  # append: a resumed run continues the file

    def add(self, line: str) -> None:
        if not self.remote:
            self._file.write(line + "\n")
            self._file.flush()
            return
        self._lines.append(line + "\n")
        self._dirty = True
        if time.monotonic() - self._uploaded > REMOTE_FLUSH_S:
            self.persist()

    def persist(self) -> None:
        if self.remote and self._dirty:
            write_text_atomic(self.path, "".join(self._lines))
            self._dirty, self._uploaded = False, time.monotonic()

    def close(self) -> None:
        if self.remote:
            self.persist()
        else:
            self._file.close()


class MetricWriter:
    """Append-only metrics.jsonl (+ TensorBoard events, which tensorboardX writes to gs:// itself, and
    the W&B run when one is open: rlvr_jax/wandb_log.py). Also shows the sampled completions the
    RolloutLog passes on as TensorBoard text and a W&B table."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        enabled: bool | None = None,
        append: bool = False,
        wandb: Any = None,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        run_dir = as_path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        self._wandb = wandb  # a wandb_log.WandbRun (process 0 only), or None
        if not self.enabled:
            return
        self._sink = JsonlSink(self.path, append)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, row: Mapping[str, float | int | None]) -> None:
        if not self.enabled:
            return
        self._sink.add(json.dumps({"step": step, **row}))
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(step, row)

    def write_samples(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        """Sampled completions of `step` as a TensorBoard text table and a W&B table."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_text("rollouts", markdown_table(columns, rows), step)
        if self._wandb is not None:
            self._wandb.log_samples(step, columns, rows)

    def persist(self) -> None:
        """Everything written so far is in the run directory (called before each checkpoint)."""
        if self.enabled:
            self._sink.persist()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._sink.close()
        if self._tb is not None:
            self._tb.close()


# Bad lines reported one by one per read; past this many, one line says how many more were skipped.
MAX_LINE_WARNINGS = 5


def read_jsonl(path: str | Path, step_log: bool = True) -> list[dict[str, Any]]:
    """The rows of a JSONL file ([] when it does not exist). A line that is not a JSON object (torn by
    a kill, damaged on disk) or, in a step log (metrics.jsonl, rollouts.jsonl), has no integer
    `step` is skipped with a warning naming the file and line: plots and the run summary go on."""
    path = as_path(path)
    if not path.is_file():
        return []
    rows = []
    with _LineWarnings(path, "skipped") as warn:
        for number, _, row, problem in _parse_lines(path.read_bytes(), step_log):
            if problem:
                warn(number, problem)
            else:
                rows.append(row)
    return rows


def trim_jsonl(path: str | Path, last_step: int) -> None:
    """Make a step log continue from `last_step`, the step a run resumes from: keep only rows with
    step <= last_step in increasing step order. Rows after it (written after the checkpoint; the
    resumed run writes them again) are dropped quietly; unreadable lines, repeated steps and steps
    out of order are dropped with a warning naming the file, line and reason. Atomic replace, so a
    crash here leaves the old file intact."""
    path = as_path(path)
    if jax.process_index() != 0 or not path.is_file():
        return
    data = path.read_bytes()
    kept: list[str] = []
    seen: dict[int, int] = {}  # step -> line it was kept from
    last: tuple[int, int] | None = None  # (step, line) of the last kept row
    later = 0
    with _LineWarnings(path, "dropped") as warn:
        for number, text, row, problem in _parse_lines(data, step_log=True):
            if problem:
                warn(number, problem)
                continue
            step = row["step"]
            if step > last_step:
                later += 1
            elif step in seen:
                warn(number, f"step {step} again (first on line {seen[step]})")
            elif last is not None and step < last[0]:
                warn(number, f"step {step} out of order (after step {last[0]} on line {last[1]})")
            else:
                kept.append(text)
                seen[step] = number
                last = (step, number)
    text = "".join(line + "\n" for line in kept)
    if text.encode() == data:
        return
    write_text_atomic(path, text)  # also ends the file with a newline, so appended rows stay lines
    if later:
        log.info("%s: dropped %d rows after step %d", path, later, last_step)


def _parse_lines(data: bytes, step_log: bool) -> Iterator[tuple[int, str, dict[str, Any] | None, str | None]]:
    """(line number, text, row or None, why it is unusable or None) per non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            yield number, "", None, "not UTF-8 text"
            continue
        try:
            row = json.loads(text)
        except ValueError as err:
            yield number, text, None, f"not valid JSON ({err})"
            continue
        if not isinstance(row, dict):
            yield number, text, None, f"not a JSON object ({_JSON_KINDS.get(type(row), 'a number')})"
        elif step_log and (type(row.get("step")) is not int):  # bool is an int subclass: not a step
            yield number, text, None, f"no integer step (step = {row.get('step')!r:.40})"
        else:
            yield number, text, row, None


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class _LineWarnings:
    """One warning per bad line of `path`, up to MAX_LINE_WARNINGS, then one with the count of the rest."""

    def __init__(self, path: Any, action: str):
        self.path, self.action, self.count = path, action, 0

    def __enter__(self) -> Callable[[int, str], None]:
        return self.warn

    def warn(self, number: int, problem: str) -> None:
        self.count += 1
        if self.count <= MAX_LINE_WARNINGS:
            log.warning("%s line %d: %s; %s", self.path, number, problem, self.action)

    def __exit__(self, *exc: Any) -> None:
        if self.count > MAX_LINE_WARNINGS:
            log.warning("%s: %d more bad lines %s", self.path, self.count - MAX_LINE_WARNINGS, self.action)


class RolloutLog:
    """rollouts.jsonl: sampled completions (prompt index, prompt text when given, token ids, text,
    reward), one line per logged step (the loop's rollout hook decides which).

    `per_step` > 0 keeps the first sample of each of the step's first `per_step` prompts (global rows
    b * group_size): deterministic, spread over prompts, and the same rows for any number of processes,
    since process p holds the step's p-th contiguous share of prompts. Each process passes its own
    rollouts and sends its first rows of that kind; process 0 writes them all, in process order, and
    passes them to `show(step, columns, rows)` (TensorBoard text, W&B table)."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool,
        append: bool = False,
        group_size: int = 1,
        per_step: int = 0,
        show: Callable[[int, list[str], list[list[Any]]], None] | None = None,
    ):
        first = jax.process_index() == 0
        self._sink = JsonlSink(as_path(run_dir) / "rollouts.jsonl", append) if enabled and first else None
        self.group_size, self.per_step, self._show = group_size, per_step, show

    def rows(self, count: int) -> list[int]:
        """The local rows to log out of `count`: every one (per_step 0), else each group's first, up to per_step."""
        if not self.per_step:
            return list(range(count))
        return list(range(0, count, self.group_size))[: self.per_step]

    def write(
        self,
        step: int,
        prompt_index: np.ndarray,
        rollout: Any,
        texts: list[str],
        rewards: np.ndarray,
        prompts: list[str] | None = None,
    ) -> None:
        """`prompts`: the prompt text of each rollout row (like `texts`), when the caller has it."""
        keep = self.rows(len(texts))
        row: dict[str, list[Any]] = {"prompt_index": np.asarray(prompt_index)[keep].tolist()}
        if prompts is not None:
            row["prompt"] = [prompts[i] for i in keep]
        row["tokens"] = [np.asarray(rollout.tokens[i][: rollout.lengths[i]]).tolist() for i in keep]
        row["text"] = [texts[i] for i in keep]
        row["reward"] = np.asarray(rewards, dtype=float)[keep].tolist()
        parts = allgather_objects(row)  # a collective: every process takes this branch at the same steps
        if self._sink is None:
            return
        merged = {key: [v for part in parts for v in part[key]][: self.per_step or None] for key in row}
        self._sink.add(json.dumps({"step": step, **merged}))
        if self._show is not None:
            self._show(step, *sample_table(merged))

    def persist(self) -> None:
        if self._sink is not None:
            self._sink.persist()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


# rollouts.jsonl key -> table column, in column order ("prompt" only when the caller gave prompts)
SAMPLE_COLUMNS = {"prompt_index": "prompt_index", "prompt": "prompt", "text": "completion", "reward": "reward"}


def sample_table(logged: Mapping[str, list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of a rollouts.jsonl line's completions, one row per completion."""
    keys = [key for key in SAMPLE_COLUMNS if key in logged]
    return [SAMPLE_COLUMNS[k] for k in keys], [list(values) for values in zip(*(logged[k] for k in keys))]


# Markdown and HTML that would change how a completion shows (TensorBoard renders Markdown and drops
# unknown tags such as a task's <S2> tokens); escaped so the cell shows the text as sampled.
_MARKDOWN = re.compile(r"([\\`*_\[\]|])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table for TensorBoard's text plugin, one line per row (line breaks become <br>)."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        text = _MARKDOWN.sub(r"\\\1", "".join(_HTML.get(c, c) for c in text))
        return text.replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class LateWriter:
    """Writes step k's device metrics when step k+1 arrives (or at flush)."""

    def __init__(self, writer: MetricWriter):
        self.writer = writer
        self._pending: tuple[int, dict[str, Any], dict[str, Any]] | None = None
        self.last: dict[str, Any] = {}

    def push(self, step: int, device_metrics: Mapping[str, Any], host_metrics: Mapping[str, Any]) -> None:
        self.flush()
        self._pending = (step, dict(device_metrics), dict(host_metrics))

    def flush(self) -> None:
        if self._pending is None:
            return
        step, device_metrics, host_metrics = self._pending
        self._pending = None
        row = {**to_host(device_metrics), **to_host(host_metrics)}
        self.last = {"step": step, **row}
        self.writer.write(step, row)

    def write_now(self, step: int, host_metrics: Mapping[str, Any]) -> None:
        """Write a row of host values at once (the base evaluation of step 0)."""
        self.flush()
        self.writer.write(step, to_host(host_metrics))

    def persist(self) -> None:
        """Write the pending row and make every row so far durable in the run directory."""
        self.flush()
        self.writer.persist()

    def close(self) -> None:
        self.flush()
        self.writer.close()
