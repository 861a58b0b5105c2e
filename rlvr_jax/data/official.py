"""GSM8K and MATH from the user's local copies of the official files (TFDS `manual_dir`; no downloads).

Layout, under `manual_dir/<task>/` or directly in `manual_dir`:
  gsm8k: `train.jsonl`, `test.jsonl` (github.com/openai/grade-school-math, grade_school_math/data),
         one JSON object a line with `question` and `answer`; gold = the text after `####`, commas removed.
  math:  the official Hendrycks tree `train/<subject>/<n>.json`, `test/<subject>/<n>.json`, each with
         `problem`, `solution`, `level`, `type`; gold = the content of the LAST `\\boxed` in the solution.
Bad input is an error that names the file and line (or file) and what is wrong: a silently shrunken
benchmark would corrupt every number computed on it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rlvr_jax.data import common

GSM8K_HELP = (
    "put the official GSM8K files train.jsonl and test.jsonl (github.com/openai/grade-school-math, "
    "folder grade_school_math/data) in <manual_dir>/gsm8k/"
)
MATH_HELP = (
    "put the official MATH folders train/ and test/ (Hendrycks et al., MATH.tar: "
    "<split>/<subject>/<n>.json) in <manual_dir>/math/"
)


@dataclasses.dataclass(eq=False)
class OfficialConfig(tfds.core.BuilderConfig):
    instruction: str = common.BOXED_INSTRUCTION
    """Appended to each problem on its own line ("" for none): the verifier reads the boxed answer."""


def task_folder(manual_dir: Any, task: str) -> Path:
    """`manual_dir/<task>` when it exists, else `manual_dir` itself."""
    root = Path(str(manual_dir))
    return root / task if (root / task).is_dir() else root


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces, `\\{` escapes skipped) or `\\boxed x`; else None.

    `\\fbox{...}` counts when there is no `\\boxed` (a few MATH solutions use it).
    """
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        if start >= 0:
            return _argument(text, start + len(command))
    return None


def _argument(text: str, pos: int) -> str | None:
    if text.startswith("{", pos):
        depth = 0
        i = pos
        while i < len(text):
            ch = text[i]
            if ch == "\\":  # \{ and \} are literal braces, not grouping
                i += 2
                continue
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                return text[pos + 1 : i].strip()
            i += 1
        return None  # unbalanced
    if text.startswith(" ", pos):  # `\boxed 5$`: the argument runs to the next space or `$`
        rest = text[pos:].lstrip(" ")
        end = min([i for i in (rest.find(" "), rest.find("$")) if i >= 0], default=len(rest))
        return rest[:end].strip() or None
    return None


def gsm8k_gold(answer: str) -> str | None:
    if "####" not in answer:
        return None
    return answer.split("####")[-1].strip().replace(",", "") or None


def _with_instruction(problem: str, instruction: str) -> str:
    return f"{problem}\n{instruction}" if instruction else problem


def _read_json(path: Path, where: str, text: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise common.DataError(f"{path}{where}: not valid JSON ({err})") from err
    if not isinstance(row, dict):
        raise common.DataError(f"{path}{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _require(row: dict[str, Any], fields: tuple[str, ...], path: Path, where: str) -> None:
    missing = [f for f in fields if not isinstance(row.get(f), str)]
    if missing:
        raise common.DataError(f"{path}{where}: missing text field(s) {missing}")


class _Official(common.TaskBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = OfficialConfig
    BUILDER_CONFIGS = [OfficialConfig(name="default")]  # noqa: RUF012 (the TFDS API)
    SPLITS = ("train", "test")

    def _info(self) -> tfds.core.DatasetInfo:
        return common.dataset_info(self, __doc__)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        folder = task_folder(dl_manager.manual_dir, self.name)
        paths = {split: self._split_path(folder, split) for split in self.SPLITS}
        return {split: self._generate_examples(split, path) for split, path in paths.items()}

    def _split_path(self, folder: Path, split: str) -> Path:
        raise NotImplementedError


class Gsm8k(_Official, skip_registration=True):
    name = "gsm8k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = GSM8K_HELP

    def _split_path(self, folder: Path, split: str) -> Path:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise common.DataError(f"GSM8K file {path} not found: {GSM8K_HELP}")
        return path

    def _generate_examples(self, split: str, path: Path) -> Iterator[tuple[str, dict[str, str]]]:
        count = 0
        with open(path, encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f" line {line_no}"
                row = _read_json(path, where, line)
                _require(row, ("question", "answer"), path, where)
                gold = gsm8k_gold(row["answer"])
                if gold is None:
                    raise common.DataError(f"{path}{where}: the answer has no final value after '####'")
                count += 1
                yield (
                    str(line_no),
                    {
                        "id": f"gsm8k/{split}/{line_no}",
                        "answer": gold,
                        "subset": "",
                        "prompt": _with_instruction(row["question"], self.builder_config.instruction),
                    },
                )
        if count == 0:
            raise common.DataError(f"{path} holds no examples: {GSM8K_HELP}")


def _math_files(split_dir: Path) -> list[Path]:
    # Order by subject, then by the number in the file name (2.json before 10.json).
    def key(p: Path) -> tuple[str, int, str]:
        return (p.parent.name, int(p.stem) if p.stem.isdigit() else -1, p.stem)

    return sorted(split_dir.glob("*/*.json"), key=key)


class Math(_Official, skip_registration=True):
    name = "math"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MATH_HELP

    def _split_path(self, folder: Path, split: str) -> Path:
        path = folder / split
        if not path.is_dir() or not _math_files(path):
            raise common.DataError(f"MATH folder {path} not found or without <subject>/<n>.json files: {MATH_HELP}")
        return path

    def _generate_examples(self, split: str, path: Path) -> Iterator[tuple[str, dict[str, str]]]:
        for file in _math_files(path):
            row = _read_json(file, "", file.read_text(encoding="utf-8"))
            _require(row, ("problem", "solution", "level", "type"), file, "")
            gold = last_boxed(row["solution"])
            if gold is None:
                raise common.DataError(f"{file}: the solution has no complete \\boxed{{...}} answer")
            key = f"{file.parent.name}/{file.stem}"
            yield (
                key,
                {
                    "id": f"math/{split}/{key}",
                    "answer": gold,
                    "subset": row["level"],
                    "prompt": _with_instruction(row["problem"], self.builder_config.instruction),
                },
            )
