"""Build what a sweep's runs share (its datasets and base policies) before the runs, with every CPU.

    python benchmarks/device_study_prebuild.py SWEEP ARGS (the same as `rlvr-jax sweep`'s)

`rlvr-jax sweep` builds these itself, but as processes in one of its `--jobs` CPU slots (one CPU each
at --jobs 12 on 16 CPUs, with XLA's CPU thread pool single-threaded). Built here first, by the sweep's
own code (rlvr_jax/sweep/runner.py: prepare_data, build_bases) with one slot holding all CPUs, they
land in the folders the sweep's plan names, and the sweep that follows finds and reuses them. Exit
status 0 when every dataset and base policy is built, 1 otherwise (see the logs it names); a SIGTERM
stops the builds (timeout) with status 130.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str]) -> int:
    from rlvr_jax.cli.sweep import add_sweep_parser, check_not_stale, study_from_args
    from rlvr_jax.sweep.plan import make_plan
    from rlvr_jax.sweep.runner import Runner, Stopped, build_bases, prepare_data, stop_children_on_signal

    parser = argparse.ArgumentParser(prog="device_study_prebuild")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *argv])
    plan = make_plan(study_from_args(args))
    check_not_stale(plan)
    out = plan.study.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(1, out)
    start = time.perf_counter()
    try:
        with stop_children_on_signal(runner):
            outcomes = prepare_data(runner, plan)
            if all(o.status == "done" for o in outcomes):
                outcomes += build_bases(runner, plan)
    except (KeyboardInterrupt, Stopped):
        print("prebuild stopped", flush=True)
        return 130
    bad = [o for o in outcomes if o.status != "done"]
    for o in bad:
        print(f"prebuild: {o.label} {o.status} (exit {o.code}); see {o.log}", flush=True)
    built = [b.key for b in plan.bases if (b.folder / "warmstart.json").is_file()]
    print(
        f"prebuild: {len(outcomes) - len(bad)} built, {len(bad)} not, in {time.perf_counter() - start:.0f} s; "
        f"base policies ready: {len(built)} of {len(plan.bases)}",
        flush=True,
    )
    return 1 if bad or len(built) < len(plan.bases) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
