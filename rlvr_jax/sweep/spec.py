"""The study: one config, seeds, and combinations of overrides, from the command line or a sweep YAML file.

A combination is named (`GRPO-N=advantage.estimator=grpo advantage.sign=negative_only`) or one point of
a grid (`--grid advantage.sign=full,negative_only`); named combinations crossed with a grid give each
named one at every grid point. Paths (config, out) are relative to the working directory, as on the
`rlvr-jax train` command line.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class SweepSpecError(ValueError):
    """A sweep file or command line that does not describe a study; the message says what to write."""


@dataclasses.dataclass(frozen=True)
class Combo:
    name: str
    overrides: tuple[str, ...]

    @property
    def folder(self) -> str:
        """The run folder's name: the combination's name with spaces and path characters replaced."""
        return re.sub(r"[^A-Za-z0-9._=+-]", "-", self.name.replace(" ", "_")) or "default"


@dataclasses.dataclass(frozen=True)
class Study:
    config: str
    seeds: tuple[int, ...]
    combos: tuple[Combo, ...]
    out: Path
    overrides: tuple[str, ...] = ()
    vary_base: bool = False
    """False: every seed starts from one base policy per warm-start setting (RL-seed variance);
    True: seed k also warm-starts with seed k (whole-pipeline variance)."""
    name: str = "sweep"
    jobs: int | None = None
    named: tuple[Combo, ...] = ()
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """How the combinations were given (named ones, grid axes): the regenerating command repeats them."""
    extends: Path | None = None
    """Another study's folder whose finished runs this one continues to its own run.steps: each run starts as
    a copy of the run with the same combination and seed there (left untouched), and the base policies and
    datasets are read from there. A longer budget then costs only the added steps, on the same seeds."""
    bases_from: Path | None = None
    """Another study's folder whose base policies and datasets this one reads (none is rebuilt); its runs
    start from step 0. A new setting is then compared with that study's on the very same base policies."""


def parse_seeds(spec: str | int | Sequence[int]) -> tuple[int, ...]:
    """`0-15`, `0,1,2`, `0-3,8`, an int or a list of ints -> the seeds in order, without repeats."""
    if isinstance(spec, bool):
        raise SweepSpecError(f"--seeds / seeds: expected a range such as 0-15 or a list, got {spec!r}")
    if isinstance(spec, int):
        return (spec,)
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    seeds: list[int] = []
    for part in parts:
        seeds += _seed_part(part)
    if not seeds:
        raise SweepSpecError("--seeds / seeds: none given (write e.g. --seeds 0-15 or --seeds 0,1,2)")
    return tuple(dict.fromkeys(seeds))


def _seed_part(part: Any) -> list[int]:
    if isinstance(part, int) and not isinstance(part, bool):
        return [part]
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(part))
    if not match:
        raise SweepSpecError(f"--seeds / seeds: {part!r} is neither a seed nor a range such as 0-15")
    low, high = int(match[1]), int(match[2] or match[1])
    if high < low:
        raise SweepSpecError(f"--seeds / seeds: range {part!r} is empty (write low-high)")
    return list(range(low, high + 1))


def split_values(text: str) -> list[str]:
    """`grpo,nsr` -> ['grpo', 'nsr']; commas inside brackets stay (`[0.3,0.02,0.68],[0.2,0.1,0.7]`)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not v for v in values):
        raise SweepSpecError(f"grid values {text!r}: an empty value (write key=a,b,c)")
    return values


def parse_grid_axis(text: str) -> tuple[str, list[str]]:
    """`advantage.sign=full,negative_only` -> ('advantage.sign', ['full', 'negative_only'])."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or "." not in key:
        raise SweepSpecError(
            f"--grid {text!r}: write section.key=value1,value2 (e.g. advantage.sign=full,negative_only)"
        )
    return key.strip(), split_values(values)


def parse_combo(text: str) -> Combo:
    """`NAME=key=value [key=value ...]` (`NAME=` alone: the config unchanged)."""
    name, sep, rest = text.partition("=")
    overrides = tuple(rest.split())
    looks_like_key = re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", name.strip())  # `--combo advantage.sign=...`: no name
    if not sep or not name.strip() or looks_like_key or any("=" not in o for o in overrides):
        raise SweepSpecError(
            f"--combo {text!r}: write NAME=section.key=value [section.key=value ...], "
            'e.g. --combo "GRPO-N=advantage.estimator=grpo advantage.sign=negative_only"'
        )
    return Combo(name.strip(), overrides)


def grid_combos(axes: Sequence[tuple[str, Sequence[str]]]) -> list[Combo]:
    """Every point of the grid, named by `key=value` (the key's last part unless two axes share it)."""
    if not axes:
        return []
    last = [key.rsplit(".", 1)[-1] for key, _ in axes]
    labels = [short if last.count(short) == 1 else key for short, (key, _) in zip(last, axes)]
    combos = []
    for values in itertools.product(*(vals for _, vals in axes)):
        name = " ".join(f"{label}={v}" for label, v in zip(labels, values))
        combos.append(Combo(name, tuple(f"{key}={v}" for (key, _), v in zip(axes, values))))
    return combos


def cross(named: Sequence[Combo], grid: Sequence[Combo]) -> tuple[Combo, ...]:
    """Named combinations, grid points, or each named one at every grid point; none: the config as is."""
    if named and grid:
        combos = [Combo(f"{n.name} {g.name}", n.overrides + g.overrides) for n in named for g in grid]
    else:
        combos = list(named or grid) or [Combo("default", ())]
    folders = [c.folder for c in combos]
    repeated = sorted({f for f in folders if folders.count(f) > 1})
    if repeated:
        raise SweepSpecError(f"combinations share a folder name: {repeated}; give them distinct names")
    return tuple(combos)


# --- the sweep file ------------------------------------------------------------------------------

FILE_KEYS = (
    "config",
    "seeds",
    "out",
    "name",
    "jobs",
    "vary_base",
    "overrides",
    "grid",
    "combos",
    "extends",
    "bases_from",
)


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep YAML file as the command line's fields: overrides, grid axes and combos as lists of strings."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(
            f"sweep file {path} does not exist (an argument without '=' is read as a sweep file; overrides are key=value)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepSpecError(f"sweep file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SweepSpecError(f"sweep file {path} must hold a mapping ({', '.join(FILE_KEYS)})")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise SweepSpecError(f"sweep file {path}: unknown keys {unknown}; valid keys: {', '.join(FILE_KEYS)}")
    out = {k: v for k, v in data.items() if k not in ("overrides", "grid", "combos")}
    out["overrides"] = _words(data.get("overrides", []), f"{path}: overrides")
    out["grid"] = [f"{key}={_joined(values)}" for key, values in _mapping(data.get("grid", {}), path, "grid").items()]
    combos = _mapping(data.get("combos", {}), path, "combos")
    if any("=" in str(name) for name in combos):
        raise SweepSpecError(f"sweep file {path}: a combination's name cannot hold '=' ({sorted(map(str, combos))})")
    out["combos"] = [f"{name}={' '.join(_words(ovr, f'{path}: combos.{name}'))}" for name, ovr in combos.items()]
    return out


def _mapping(value: Any, path: Path, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SweepSpecError(f"sweep file {path}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _words(value: Any, where: str) -> list[str]:
    """Overrides as a list of `key=value` strings, or one string of them separated by spaces."""
    if value is None:
        return []
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, list) or any(not isinstance(w, str) or "=" not in w for w in words):
        raise SweepSpecError(f"{where}: expected key=value strings, got {value!r}")
    return words


def _joined(values: Any) -> str:
    """A grid axis's values as the command line writes them (a YAML list, or `a,b,c`)."""
    if isinstance(values, list):
        return ",".join(v if isinstance(v, str) else json.dumps(v) for v in values)  # 0.001, true, [0.3, 0.7]
    return str(values)


def make_study(file_fields: Mapping[str, Any], cli: Mapping[str, Any]) -> Study:
    """The sweep file's fields with the command line's over them: scalars replace, lists add."""

    def pick(key: str, default: Any = None) -> Any:
        return cli[key] if cli.get(key) is not None else file_fields.get(key, default)

    missing = [f"--{k}" for k in ("config", "seeds", "out") if pick(k) is None]
    if missing:
        raise SweepSpecError(f"missing {', '.join(missing)} (on the command line or in the sweep file)")
    grid = [parse_grid_axis(t) for t in [*file_fields.get("grid", []), *cli.get("grid", [])]]
    named = [parse_combo(t) for t in [*file_fields.get("combos", []), *cli.get("combos", [])]]
    extends = Path(pick("extends")) if pick("extends") is not None else None
    if extends is not None and extends.absolute() == Path(pick("out")).absolute():
        raise SweepSpecError(f"--extends {extends}: a study cannot extend its own folder; give it another --out")
    bases_from = Path(pick("bases_from")) if pick("bases_from") is not None else None
    if bases_from is not None and extends is not None:
        raise SweepSpecError("--bases-from and --extends: give one (--extends already reads the bases of its study)")
    jobs = pick("jobs")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise SweepSpecError(f"--jobs / jobs must be a positive integer (processes at once), got {jobs!r}")
    return Study(
        config=str(pick("config")),
        seeds=parse_seeds(pick("seeds")),
        combos=cross(named, grid_combos(grid)),
        out=Path(pick("out")),
        overrides=(*file_fields.get("overrides", []), *cli.get("overrides", [])),
        vary_base=bool(cli.get("vary_base") or file_fields.get("vary_base", False)),
        name=str(pick("name", "sweep")),
        jobs=jobs,
        named=tuple(named),
        grid=tuple((key, tuple(values)) for key, values in grid),
        extends=extends,
        bases_from=bases_from,
    )


def command(study: Study, *extra: str) -> str:
    """The one command line that describes `study` (and regenerates its table and figures)."""
    seeds = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in _ranges(study.seeds))
    words = ["rlvr-jax", "sweep", "--config", study.config, "--seeds", seeds, "--out", str(study.out)]
    words += ["--name", study.name] + (["--vary-base"] if study.vary_base else []) + list(extra)
    words += ["--extends", str(study.extends)] if study.extends is not None else []
    words += ["--bases-from", str(study.bases_from)] if study.bases_from is not None else []
    for combo in study.named:
        words += ["--combo", f"{combo.name}={' '.join(combo.overrides)}"]
    for key, values in study.grid:
        words += ["--grid", f"{key}={','.join(values)}"]
    return shlex.join(words + list(study.overrides))


def _ranges(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 3, 8] -> [(0, 3), (8, 8)]."""
    parts: list[list[int]] = []
    for s in sorted(seeds):
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return [(a, b) for a, b in parts]
