"""`rlvr-jax sweep`: a study (one config x seeds x combinations of overrides), run in parallel processes,
resumable, and reported as a table with intervals plus figures (docs/sweep.md)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlvr_jax.sweep.plan import Plan
    from rlvr_jax.sweep.spec import Study

EPILOG = """examples:
  rlvr-jax sweep --config toy_strategy --seeds 0-15 --out runs/sweeps/signs \\
      --grid advantage.estimator=grpo,nsr --grid advantage.sign=full,negative_only
  rlvr-jax sweep --config toy_strategy --seeds 0-15 --out runs/sweeps/named \\
      --combo "GRPO=advantage.estimator=grpo" \\
      --combo "GRPO-N=advantage.estimator=grpo advantage.sign=negative_only" run.steps=200
  rlvr-jax sweep study.yaml            # config, seeds, out, combos / grid from the file
  rlvr-jax sweep study.yaml --report   # the table and figures of what is complete, nothing run
  rlvr-jax sweep study.yaml --extends runs/sweeps/short --out runs/sweeps/long run.steps=400
                                       # the same runs continued to 400 steps (the short study is kept)
The same command again continues a stopped sweep."""


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="a study: one config x seeds x combinations of overrides, run, resumable, tabulated with intervals",
        description="Runs every (combination, seed) as its own `rlvr-jax train` process (up to --jobs at once), "
        "from one warm-started base policy per warm-start setting, then writes OUT/table.md, OUT/table.json and "
        "OUT/figures/. A rerun continues where a stopped sweep was.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="[SWEEP.yaml] key=value",
        help="a sweep file (keys: config, seeds, out, name, jobs, vary_base, extends, bases_from, overrides, grid, combos) and "
        "dotted overrides for every run (together: all before or all after the flags)",
    )
    p.add_argument("--config", default=None, help="YAML config file or packaged name (as for train)")
    p.add_argument("--seeds", default=None, help="run.seed values: 0-15, 0,1,2 or 0-3,8")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis of a grid (repeatable)")
    p.add_argument(
        "--combo",
        action="append",
        default=[],
        metavar='"NAME=KEY=V [KEY=V ...]"',
        help="a named combination of overrides (repeatable; crossed with --grid when both are given)",
    )
    p.add_argument("--out", default=None, help="the study's folder: runs/, base_policy/, table.md, figures/")
    p.add_argument(
        "--extends",
        default=None,
        metavar="DIR",
        help="continue the finished runs of the study in DIR to this study's run.steps, in copies under --out "
        "(DIR is left as it is; its base policies and datasets are reused)",
    )
    p.add_argument(
        "--bases-from",
        default=None,
        metavar="DIR",
        help="read the base policies and datasets of the study in DIR (nothing is rebuilt; runs start from step 0)",
    )
    p.add_argument("--name", default=None, help="the study's name in the table (default: sweep)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per core, each single-threaded)")
    p.add_argument(
        "--vary-base",
        action="store_true",
        default=None,
        help="warm-start each seed with its own seed (whole-pipeline variance) instead of sharing one base policy",
    )
    p.add_argument(
        "--stage2",
        choices=["auto", "transition", "onset_step"],
        default="auto",
        help="what counts as reaching stage 2 (default auto: stages.onset_step when every run has it, "
        "else stages.transition)",
    )
    p.add_argument("--report", action="store_true", help="only write the table and figures of the complete runs")
    p.add_argument(
        "--dry-run", action="store_true", help="print the base policies and runs (status, command); run nothing"
    )


def study_from_args(args: argparse.Namespace) -> Study:
    """The Study of the command line: the sweep file's fields (if one is given) with the flags over them."""
    from rlvr_jax.sweep.spec import make_study, read_sweep_file

    files = [item for item in args.items if "=" not in item]
    if len(files) > 1:
        raise SystemExit(f"rlvr-jax sweep: one sweep file at most, got {files} (overrides look like key=value)")
    cli = {
        "config": args.config,
        "seeds": args.seeds,
        "out": args.out,
        "name": args.name,
        "jobs": args.jobs,
        "vary_base": args.vary_base,
        "extends": args.extends,
        "bases_from": args.bases_from,
        "grid": args.grid,
        "combos": args.combo,
        "overrides": [item for item in args.items if "=" in item],
    }
    return make_study(read_sweep_file(files[0]) if files else {}, cli)


def run_sweep(args: argparse.Namespace) -> int:
    from rlvr_jax.config import ConfigError
    from rlvr_jax.sweep.plan import make_plan
    from rlvr_jax.sweep.spec import SweepSpecError
    from rlvr_jax.sweep.spec import command as study_command

    try:
        study = study_from_args(args)
        plan = make_plan(study)
    except (SweepSpecError, ConfigError) as err:
        raise SystemExit(f"rlvr-jax sweep: {err}") from None
    check_not_stale(plan)
    command = study_command(study, *(["--stage2", args.stage2] if args.stage2 != "auto" else []))
    write_study_file(plan, command)
    if args.dry_run:
        print_plan(plan)
        return 0
    from rlvr_jax.sweep.runner import Stopped

    try:
        if not args.report and not execute(plan, args.jobs or study.jobs):
            return 1
    except (KeyboardInterrupt, Stopped):
        report(plan, args.stage2, command)
        print("sweep stopped; the same command continues it")
        return 130
    table = report(plan, args.stage2, command)
    return 0 if args.report else outcome_status(table)


def outcome_status(table: dict) -> int:
    """0 when every planned run is complete; else 1, with the failed runs (and their logs) and the count of
    the others named last, so a failure is never only a line scrolled past."""
    if table["complete"] == table["planned"]:
        return 0
    for failed in table["failed"]:
        print(f"failed: {failed['run']}: {failed['why']}; see {failed['log']}")
    others = table["planned"] - table["complete"] - len(table["failed"])
    print(
        f"rlvr-jax sweep: {table['complete']} of {table['planned']} runs complete, {len(table['failed'])} failed"
        + (f", {others} not finished" if others else "")
        + "; the same command retries what is not complete"
    )
    return 1


def check_not_stale(plan: Plan) -> None:
    """Stop before any work when a run folder holds a run trained with another config."""
    from rlvr_jax.sweep.plan import stale

    for run in plan.runs:
        changes = stale(plan.study, run)
        if changes:
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise SystemExit(
                f"rlvr-jax sweep: {run.run_dir} holds a run trained with another config ({changes[0]}{more}); "
                "give the study another --out, or delete that folder to rerun it"
            )


def write_study_file(plan: Plan, command: str) -> None:
    from rlvr_jax.storage import write_text_atomic

    out = plan.study.out.absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(
            f"rlvr-jax sweep: --out {plan.study.out}: cannot create the study folder ({err.strerror or err}); "
            "choose a writable folder"
        ) from None
    record = {
        "command": command,
        "runs": [
            {"combo": r.combo.name, "seed": r.seed, "run_dir": str(r.run_dir), "base": r.base and r.base.key}
            for r in plan.runs
        ],
    }
    write_text_atomic(out / "study.json", json.dumps(record, indent=2))


def print_plan(plan: Plan) -> None:
    from rlvr_jax.sweep.plan import is_done
    from rlvr_jax.sweep.runner import train_command

    for base in plan.bases:
        built = (base.folder / "warmstart.json").is_file()
        print(f"base policy {base.key}: {'built' if built else 'to build'} ({base.folder})")
    for run in plan.runs:
        source = f" (continues {run.source})" if run.source else ""
        print(f"{run.combo.name} seed {run.seed}: {'done' if is_done(run) else 'to run'}{source}")
        print("  " + shlex.join(train_command(plan, run)))


def execute(plan: Plan, jobs: int | None) -> bool:
    """Datasets, base policies, runs (a stop by signal re-raises once the running processes have saved and
    exited). Failures are in the run folders (sweep_failed.json) and reach the table. False: the datasets
    did not build, so nothing ran."""
    from rlvr_jax.sweep.runner import (
        Runner,
        build_bases,
        default_jobs,
        last_line,
        prepare_data,
        run_all,
        stop_children_on_signal,
    )

    runner = Runner(jobs or default_jobs(), plan.study.out.absolute())
    print(f"sweep {plan.study.name}: {len(plan.runs)} runs, {len(plan.bases)} base policies, {runner.jobs} at once")
    with stop_children_on_signal(runner):
        bad = [o for o in prepare_data(runner, plan) if o.status != "done"]
        if bad:
            # Not a one-line user error (status 2): the build's own error is in its log, and may be a fault of ours.
            why = last_line(bad[0].log) if bad[0].log else ""
            print(
                f"rlvr-jax sweep: building the datasets failed ({why or bad[0].status}); see {bad[0].log}",
                file=sys.stderr,
            )
            return False
        build_bases(runner, plan)
        run_all(runner, plan)
    return True


def report(plan: Plan, stage2: str, command: str) -> dict:
    from rlvr_jax.storage import write_text_atomic
    from rlvr_jax.sweep.figures import draw
    from rlvr_jax.sweep.table import summarize, to_markdown

    out = plan.study.out.absolute()
    table = summarize(plan, headline_subsets(plan), stage2)
    table["command"] = command
    markdown = to_markdown(table, command)
    write_text_atomic(out / "table.json", json.dumps(table, indent=2))
    write_text_atomic(out / "table.md", markdown)
    figures = draw(table, out / "figures")
    print(markdown)
    print("\n".join(["written:", str(out / "table.md"), str(out / "table.json"), *map(str, figures)]))
    return table


def headline_subsets(plan: Plan) -> list[str] | None:
    """The task's headline subsets (the toy's hard problems); None: every subset the evaluation reports."""
    from rlvr_jax.config import DataSource, load_config
    from rlvr_jax.tasks import get_task

    cfg = load_config(plan.study.config, plan.runs[0].overrides)
    if cfg.data.source != DataSource.task:
        return None
    return list(get_task(cfg.data.task).headline_subsets) or None
