"""The `rlvr-jax` command; each subcommand's parser and runner live in the module of its group.

run.py       train, plot, export, plan
evaluate.py  eval
model.py     generate
bandit.py    bandit
sweep.py     sweep
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rlvr_jax.cli import bandit, evaluate, model, run, sweep
from rlvr_jax.cli.run import DEFAULT_CONFIG

# name -> (add its parser, run it)
COMMANDS = {
    "train": (run.add_train_parser, run.run_train),
    "eval": (evaluate.add_eval_parser, evaluate.run_eval_command),
    "generate": (model.add_generate_parser, model.run_generate),
    "export": (run.add_export_parser, run.run_export),
    "plot": (run.add_plot_parser, run.run_plot),
    "plan": (run.add_plan_parser, run.run_plan),
    "import-gguf": (model.add_import_gguf_parser, model.run_import_gguf),
    "bandit": (bandit.add_bandit_parser, bandit.run_bandit),
    "sweep": (sweep.add_sweep_parser, sweep.run_sweep),
}

__all__ = ["COMMANDS", "DEFAULT_CONFIG", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr-jax", description="RLVR training for LLMs in JAX/Flax NNX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    args = parser.parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
