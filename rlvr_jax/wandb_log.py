"""Weights & Biases logging, optional (`pip install 'rlvr-jax[wandb]'`, then set `logging.wandb`).

Process 0 opens one W&B run for the run directory and logs the metrics rows (`run.log(row, step=)`),
the sampled completions as a table at the rollout cadence, and the resolved config. The W&B run id
is kept in the run directory (RUN_ID_FILE), so a resumed run continues the same W&B run
(`resume="allow"`); a run that starts at step 0 (a new run, `--restart`) opens a new one.

W&B ignores rows logged at a step below the last one it holds: after a crash between checkpoints,
the steps a resumed run repeats keep the values W&B first received (its "rewind" is a private
preview). A stop by signal or `--stop-at` checkpoints the last logged step, so nothing repeats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from rlvr_jax.config import Config, ConfigError, WandbMode
from rlvr_jax.storage import as_path, local_cache, write_text_atomic

RUN_ID_FILE = "wandb_run_id.txt"
MISSING = (
    "logging.wandb is set but the wandb package is not installed: pip install 'rlvr-jax[wandb]' "
    "(or remove logging.wandb)"
)


def wanted(cfg: Config) -> bool:
    wandb_cfg = cfg.logging.wandb
    return wandb_cfg is not None and wandb_cfg.mode != WandbMode.disabled


def check_logging(cfg: Config) -> None:
    """Stop at once, before any expensive work, when logging.wandb needs a package that is missing.
    Every process checks (not only process 0, which logs): all stop at the same point, none waits
    in a collective for a process that has already exited."""
    if not wanted(cfg):
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None


class WandbRun:
    """The open W&B run: metrics rows and completion tables."""

    def __init__(self, run: Any):
        self.run = run

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        # Lists (the dyn/hist/* bin fractions) and None (non-finite values) stay in metrics.jsonl only,
        # as in TensorBoard: a W&B Histogram would take the fractions for samples.
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        self.run.log(scalars, step=step)

    def log_samples(self, step: int, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import wandb

        # W&B wants steps in order: the loop's metrics hook, which logs the row of the step before,
        # runs before its rollouts hook; the row of this step follows with the same step.
        table = wandb.Table(columns=["step", *columns], data=[[step, *row] for row in rows])
        self.run.log({"rollouts": table}, step=step)


@contextlib.contextmanager
def wandb_run(cfg: Config, run_dir: Any, resumed: bool) -> Iterator[WandbRun | None]:
    """The W&B run while the block runs: None unless logging.wandb is set (and not disabled) and this
    is process 0. Finished when the block ends; marked failed (exit code 1) when it raises."""
    if not wanted(cfg) or jax.process_index() != 0:
        yield None
        return
    run = WandbRun(init_run(cfg, run_dir, resumed))
    try:
        yield run
    except BaseException:
        run.run.finish(exit_code=1)
        raise
    run.run.finish(exit_code=0)


def init_run(cfg: Config, run_dir: Any, resumed: bool) -> Any:
    """wandb.init for this run directory: the stored run id when resuming, else a new run (its id stored)."""
    import wandb

    wandb_cfg = cfg.logging.wandb
    id_file = as_path(run_dir) / RUN_ID_FILE
    run_id = id_file.read_text().strip() if resumed and id_file.is_file() else None
    folder = Path(wandb_cfg.dir) if wandb_cfg.dir else local_cache(as_path(run_dir), "wandb").parent
    folder.mkdir(parents=True, exist_ok=True)  # W&B writes under <folder>/wandb
    run = wandb.init(
        project=wandb_cfg.project,
        name=wandb_cfg.name or cfg.run.name,
        entity=wandb_cfg.entity,
        group=wandb_cfg.group,
        tags=list(wandb_cfg.tags),
        mode=wandb_cfg.mode.value,
        dir=str(folder),
        config=cfg.model_dump(mode="json"),
        allow_val_change=True,  # a resume may change harmless keys (run.steps, logging.*)
        id=run_id,
        resume="allow" if run_id else None,
    )
    if run_id is None:
        write_text_atomic(id_file, run.id + "\n")
    return run
