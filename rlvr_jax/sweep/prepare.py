"""`python -m rlvr_jax.sweep.prepare {data,base}`: what the runs of a sweep share, built once in a process of its own.

data: the train and evaluation splits of a config, into its data.data_dir (runs started in parallel
      would otherwise build the same TFDS dataset at once, which TFDS does not allow).
base: the task's warm-started base policy (Task.warm_start), into --out, its traces into --data-dir.
The sweep runs these before the training runs, as subprocesses like them (one JAX process each).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr_jax.sweep.prepare")
    parser.add_argument("what", choices=["data", "base"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, help="base: the policy folder")
    parser.add_argument("--data-dir", type=Path, help="base: where its warm-start traces are built")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # the overrides follow the options

    from rlvr_jax.config import load_config
    from rlvr_jax.tasks import task_for

    cfg = load_config(args.config, args.overrides)
    task = task_for(cfg)
    if args.what == "data":
        from rlvr_jax.loop import open_sources

        open_sources(cfg, task)
        return 0
    if args.out is None or args.data_dir is None:
        parser.error("base needs --out and --data-dir")
    from rlvr_jax.mesh import make_mesh

    task.warm_start(cfg, args.out, args.data_dir, make_mesh(cfg.mesh), print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
