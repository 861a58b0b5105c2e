"""The `rlvr-jax` command; each subcommand's parser and runner live in the module of its group.

run.py       train, plot, export, plan
evaluate.py  eval
model.py     generate, import-gguf
bandit.py    bandit

Errors: a fault in what the user gave (config, files, flags, model folders, data) ends the command with
one line on stderr, `rlvr-jax <command>: <message>`, and exit status 2 (argparse's status for bad
arguments). The message comes from where the fault is known; commands raise `SystemExit(line)` or let
one of the project's error classes (`user_errors`) reach `main`, which prints it. `--debug` (or
RLVR_JAX_DEBUG=1) prints the Python traceback of the error first. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from rlvr_jax.cli import bandit, evaluate, model, run
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
}
USER_ERROR_STATUS = 2

__all__ = ["COMMANDS", "DEFAULT_CONFIG", "USER_ERROR_STATUS", "UserError", "main", "user_errors"]


class UserError(SystemExit):
    """The exit of a command stopped by bad input: `str()` is the one line printed, the status is 2."""

    def __init__(self, line: str):
        super().__init__(line)
        self.code = USER_ERROR_STATUS


def user_errors() -> tuple[type[BaseException], ...]:
    """The error classes that mean "the input is wrong", never "the code is wrong": the project's own
    (each message names the key, file, row or tensor and the fix), a safetensors file that does not
    parse, and an OS error on a file the user named (its message carries the path)."""
    from safetensors import SafetensorError

    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.config import ConfigError
    from rlvr_jax.data import DataError
    from rlvr_jax.model import ArchError, CheckpointFormatError
    from rlvr_jax.model.gguf_io import GGUFError
    from rlvr_jax.probe import ProbeError
    from rlvr_jax.rewards import RewardFunctionError, RewardSpecError
    from rlvr_jax.storage import ModelSourceError
    from rlvr_jax.tokenizer import TokenizerError

    project = (ConfigError, CheckpointError, DataError, ArchError, CheckpointFormatError, GGUFError, ProbeError)
    project += (RewardFunctionError, RewardSpecError, ModelSourceError, TokenizerError)
    return (*project, SafetensorError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr-jax", description="RLVR training for LLMs in JAX/Flax NNX.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print its Python traceback before the one-line message (also RLVR_JAX_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RLVR_JAX_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command][1](args)
    except UserError:
        raise
    except SystemExit as stop:
        if not isinstance(stop.code, str):  # a status (argparse's 2, a command's 0): not ours to reword
            raise
        # A command's own one line; the error it replaced (`raise SystemExit(...) from None`) is its context.
        _fail(stop.code, stop.__context__ or stop, debug)
    except user_errors() as err:  # raised where the fault is known; the message names it
        _fail(f"rlvr-jax {args.command}: {_message(err)}", err, debug)


def _message(err: BaseException) -> str:
    """The error's message; an OS error without one names its type (e.g. IsADirectoryError)."""
    text = str(err).strip()
    return text or type(err).__name__


def _fail(line: str, cause: BaseException, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exception(cause)
    print(line, file=sys.stderr, flush=True)
    raise UserError(line) from None


if __name__ == "__main__":
    sys.exit(main())
