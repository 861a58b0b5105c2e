"""The Python API: train, evaluate and export from a script or a notebook.

    from rlvr_jax import Trainer, load_config

    def correct(prompts, completions, answer, **columns):         # TRL's reward signature
        return [float(c.strip().endswith(a)) for c, a in zip(completions, answer)]

    trainer = Trainer(load_config("toy_strategy", ["run.steps=20"]),   # or a YAML path, or None
                      train_dataset=train_rows, eval_dataset=test_rows, reward_funcs=[correct])
    summary = trainer.train()                   # the same run as `rlvr-jax train` (summary.json)
    report = trainer.evaluate(n=64)             # pass@k of the latest checkpoint on the eval rows
    trainer.export("exported/run")              # a Hugging Face folder

Datasets are lists of dicts or `datasets.Dataset`s with the columns `data.*` names (the prompt and
answer columns, optional id and subset columns); without them the config's own data source is used
(a registered task or data.path). Reward functions may be callables (shipped to the reward workers
by pickle, by value when they live in a notebook) or "module:function" strings in the config.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.config import Config, load_config, validate
from rlvr_jax.tasks import Task, task_for

__all__ = ["Trainer", "export_checkpoint"]


class Trainer:
    """One run directory's training, evaluation and export, configured like `rlvr-jax train`."""

    def __init__(
        self,
        config: Config | str | Path | None = None,
        *,
        overrides: Sequence[str] = (),
        train_dataset: Any = None,
        eval_dataset: Any = None,
        reward_funcs: Sequence[Callable[..., Any]] = (),
        log: Callable[[str], None] = print,
    ):
        cfg = config if isinstance(config, Config) else load_config(config, overrides)
        if isinstance(config, Config) and overrides:
            cfg = _with_overrides(cfg, overrides)
        rows = None
        if train_dataset is not None or eval_dataset is not None:
            if train_dataset is None or eval_dataset is None:
                raise ValueError(
                    "Trainer: give both train_dataset and eval_dataset (held-out rows for pass@k), or neither "
                    "(then the config's data source is used)"
                )
            cfg = _with_overrides(cfg, ["data.source=python", "data.path=null", "eval.path=null"])
            rows = {cfg.data.split: train_dataset, cfg.eval.split: eval_dataset}
        self.cfg: Config = cfg
        self.task: Task = task_for(cfg, rows)
        self.reward_funcs = list(reward_funcs)
        self.log = log
        from rlvr_jax.rewards import load_reward_functions

        load_reward_functions(cfg.reward, self.reward_funcs)  # a bad function is an error now, not after setup

    @property
    def run_dir(self) -> Any:
        return self.cfg.run_dir

    def train(self, *, restart: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Train (or resume) as configured; returns the run summary (summary.json)."""
        from rlvr_jax.loop import train

        return train(
            self.cfg, self.log, restart=restart, stop_at=stop_at, task=self.task, reward_funcs=self.reward_funcs
        )

    def evaluate(self, n: int | None = None, step: int | None = None, **eval_settings: Any) -> dict[str, Any]:
        """pass@k of a checkpoint (default: the latest) on the eval rows: the report `rlvr-jax eval` writes.

        `n` and other `eval.*` settings (temperature, top_p, max_problems, ...) override the config's."""
        from rlvr_jax.checkpoint import restore_policy
        from rlvr_jax.evaluate import Evaluator
        from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
        from rlvr_jax.rewards import RewardPool
        from rlvr_jax.tokenizer import load_tokenizer

        settings = {**({"n": n} if n is not None else {}), **eval_settings}
        cfg = self.cfg.model_copy(update={"eval": self.cfg.eval.model_copy(update=settings)})
        cfg = validate(cfg.model_dump(mode="json"))
        mesh = make_mesh()
        tok = load_tokenizer(self.run_dir / "tokenizer")
        arch, graphdef, params, meta = restore_policy(self.run_dir, step, mesh, ROLLOUT_RULES)
        with RewardPool(cfg.reward, self.reward_funcs, cfg.advantage.correct_threshold) as pool:
            evaluator = Evaluator(cfg, self.task, tok, arch, graphdef, params, mesh, pool)
            report = evaluator.run(params)
        return {"run_dir": str(self.run_dir), "step": meta["step"], **report}

    def export(self, out: str | Path, step: int | None = None) -> Path:
        """The checkpoint's policy (default: the latest) as a Hugging Face folder at `out`."""
        export_checkpoint(self.run_dir, Path(out), step)
        return Path(out)


def export_checkpoint(run_dir: Any, out: Path, step: int | None = None) -> int:
    """Write a checkpoint's policy as a Hugging Face folder (safetensors, config.json, tokenizer); the
    folder appears under its name only once complete. Returns the exported step."""
    from rlvr_jax.checkpoint import restore_policy
    from rlvr_jax.mesh import TRAIN_RULES, make_mesh
    from rlvr_jax.model import save_pretrained
    from rlvr_jax.tokenizer import load_tokenizer

    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder")
    tok = load_tokenizer(run_dir / "tokenizer")
    arch, _, params, meta = restore_policy(run_dir, step, make_mesh(), TRAIN_RULES)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp, arch, params, tok)
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # a failed export never leaves a half-written folder under the requested name
    return meta["step"]


def _with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    from rlvr_jax.config import apply_override

    tree = cfg.model_dump(mode="json")
    for override in overrides:
        tree = apply_override(tree, override)
    return validate(tree)
