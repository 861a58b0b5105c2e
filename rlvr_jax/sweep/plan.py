"""Each run's overrides, the base policies the runs share and the datasets they read, all resolved up front.

Every run's config is loaded and validated here, so a misspelt override stops the sweep before any work.
A run whose config warm-starts (warmstart.enabled and no model.path) gets a prebuilt base policy instead:
`model.path=<OUT/base_policy/KEY/policy> warmstart.enabled=false`, exactly how the tests start runs
from a prebuilt policy. KEY is the warm-start fingerprint (rlvr_jax/warmstart.py: settings, arch, seed,
lengths) with the task, so runs whose warm-start settings agree share one folder. Its seed is
`warmstart.seed` (else the config's run.seed) for every seed of the study, or 2k for seed k with
vary_base (vary_base_seed: the warm start draws two trace streams, seeds s and s + 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import yaml

from rlvr_jax.config import BOOKKEEPING, Config, ConfigChanges, ConfigError, load_config
from rlvr_jax.sweep.spec import Combo, Study
from rlvr_jax.warmstart import fingerprint


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A dataset or base policy, built by one `python -m rlvr_jax.sweep.prepare` process before the runs."""

    key: str
    overrides: tuple[str, ...]  # load_config(study.config, overrides) is the config it is built from
    folder: Path  # the base policy's folder, or the data dir
    data_dir: Path


@dataclasses.dataclass(frozen=True)
class RunPlan:
    combo: Combo
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]  # everything after `rlvr-jax train --config C --run-dir D`
    steps: int
    base: Prepared | None
    data: Prepared
    source: Path | None = None  # with study.extends: the finished run this one starts from (a copy of it)


@dataclasses.dataclass(frozen=True)
class Plan:
    study: Study
    runs: tuple[RunPlan, ...]
    bases: tuple[Prepared, ...]
    datasets: tuple[Prepared, ...]


def make_plan(study: Study) -> Plan:
    """Runs in seed-major order (every combination of seed 0, then of seed 1, ...), so a sweep stopped
    half-way has the same number of seeds in every combination."""
    out = study.out.absolute()
    for flag, folder in (("--extends", study.extends), ("--bases-from", study.bases_from)):
        if folder is not None and not (folder / "study.json").is_file():
            raise ConfigError(f"{flag} {folder}: not a study folder (no study.json); name the --out of a sweep")
    load_config(study.config, study.overrides)  # the study's own overrides first: their error names no combination
    runs, bases, datasets = [], {}, {}
    for seed in study.seeds:
        for combo in study.combos:
            try:
                run = _plan_run(study, out, combo, seed)
            except ConfigError as err:
                if not combo.overrides:
                    raise
                raise ConfigError(f"combination {combo.name!r} ({' '.join(combo.overrides)}): {err}") from None
            if run.base is not None:
                bases.setdefault(run.base.key, run.base)
            datasets.setdefault(run.data.key, run.data)
            runs.append(run)
    return Plan(study, tuple(runs), tuple(bases.values()), tuple(datasets.values()))


def _plan_run(study: Study, out: Path, combo: Combo, seed: int) -> RunPlan:
    # The progress bar goes first so a user override can bring it back; the seed and the base go last.
    chosen = ("logging.progress_bar=false", *study.overrides, *combo.overrides)
    cfg = load_config(study.config, chosen)
    extra = [f"run.seed={seed}"]
    base = None
    home = (study.extends or study.bases_from or out).absolute()  # where base policies and datasets live
    if cfg.warmstart.enabled and not cfg.model.path:
        base = _base(study, home, chosen, cfg, seed)
        extra += [f"warmstart.seed={_base_seed(study, cfg, seed)}", "warmstart.enabled=false", "model.arch={}"]
        extra += [f"model.path={base.folder}"]
    if cfg.data.data_dir is None:
        extra.append(f"data.data_dir={home / 'datasets'}")
    if cfg.eval.cache_dir is None:  # the runs of one seed share a base evaluation: computed by the first
        extra.append(f"eval.cache_dir={home / 'eval_cache'}")
    overrides = (*chosen, *extra)
    final = load_config(study.config, overrides)  # validates every run before any work starts
    data = _data(out, final, overrides)
    folder = Path("runs") / combo.folder / f"seed{seed}"
    source = None if study.extends is None else home / folder
    return RunPlan(combo, seed, out / folder, overrides, final.run.steps, base, data, source)


def vary_base_seed(seed: int) -> int:
    """The warm-start seed of study seed k with vary_base: 2k. The toy's warm start draws its choice traces
    with seed s and its execution traces with seed s + 1 (rlvr_jax/warmstart.py), so warm-start seeds k and
    k + 1 would share a trace stream; 2k and 2k + 2 share none, and the base policies are independent."""
    return 2 * seed


def _base_seed(study: Study, cfg: Config, seed: int) -> int:
    if study.vary_base:
        return vary_base_seed(seed)
    return cfg.run.seed if cfg.warmstart.seed is None else cfg.warmstart.seed


def _base(study: Study, out: Path, chosen: tuple[str, ...], cfg: Config, seed: int) -> Prepared:
    overrides = (*chosen, f"warmstart.seed={_base_seed(study, cfg, seed)}")
    cfg = load_config(study.config, overrides)
    key = f"seed{_base_seed(study, cfg, seed)}-{_digest({'task': cfg.data.task, **fingerprint(cfg)})}"
    # Each base builds its warm-start traces into a data dir of its own: TFDS cannot build one
    # dataset from two processes at once, and bases are built in parallel.
    return Prepared(key, overrides, out / "base_policy" / key / "policy", out / "base_policy" / key / "datasets")


def _data(out: Path, cfg: Config, overrides: tuple[str, ...]) -> Prepared:
    """The datasets a run reads (train and evaluation splits), built once before runs start in parallel."""
    what = {"data": cfg.data.model_dump(mode="json"), "eval": [cfg.eval.split, cfg.eval.path]}
    data_dir = Path(cfg.data.data_dir)
    return Prepared(_digest(what), overrides, data_dir, data_dir)


def _digest(value: object) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


# Settings that do not change a run's numbers in the table: a finished run with other values still counts.
NOT_IN_THE_RESULT = BOOKKEEPING


def stale(study: Study, run: RunPlan) -> list[str]:
    """How the config a run folder was trained with differs from the planned one (`key: old -> new`);
    empty when it matches or the folder holds no run. A sweep whose combination or overrides changed
    under the same --out would otherwise count old runs as new results (or fail to resume them)."""
    saved_path = run.run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        return [f"{saved_path} does not read ({err})"]
    changes = ConfigChanges.between(saved, load_config(study.config, run.overrides))
    lines = changes.state + changes.trajectory + changes.harmless
    return sorted(line for line in lines if not line.split(":", 1)[0].startswith(NOT_IN_THE_RESULT))


def is_done(run: RunPlan) -> bool:
    """A run is done when its summary.json says it trained run.steps steps."""
    return finished_steps(run.run_dir) == run.steps


def finished_steps(run_dir: Path) -> int | None:
    """The steps a finished run trained (its summary.json), or None when it has not finished."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("steps")
    except (OSError, ValueError):
        return None


def start_from_source(run: RunPlan) -> str | None:
    """With study.extends: make the run folder a copy of the finished run it continues (once; the source is
    left as it is). Returns why it cannot start, or None."""
    if run.source is None or (run.run_dir / "config.yaml").is_file():
        return None  # not extending, or copied (or started) already
    steps = finished_steps(run.source)
    if steps is None:
        return f"the run it extends, {run.source}, has not finished: complete that study first"
    if steps > run.steps:
        return f"the run it extends, {run.source}, trained {steps} steps, more than this study's run.steps={run.steps}"
    partial = run.run_dir.with_name(run.run_dir.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)  # a copy cut short by a kill
    shutil.copytree(run.source, partial, ignore=shutil.ignore_patterns(FAILED, "train.log"))
    shutil.rmtree(run.run_dir, ignore_errors=True)  # no run started here: at most an earlier failure record
    partial.rename(run.run_dir)  # whole or not at all: a half copy is never resumed
    return None


FAILED = "sweep_failed.json"  # in a run folder: the last attempt failed (why, exit status, log)


def mark_failed(run: RunPlan, why: str, log_path: Path, code: int | None = None) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    record = {"why": why, "exit_status": code, "log": str(log_path)}
    (run.run_dir / FAILED).write_text(json.dumps(record) + "\n")


def failure(run: RunPlan) -> dict | None:
    """The failure record of a run's last attempt (None: it did not fail, or was not run)."""
    try:
        return json.loads((run.run_dir / FAILED).read_text())
    except (OSError, ValueError):
        return None
