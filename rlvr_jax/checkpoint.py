"""Orbax checkpoints of the whole RL state, and Hugging Face export of a checkpoint's policy.

A checkpoint at step k holds everything step k+1 reads:
  params/  the policy (sharded arrays)
  train/   optimizer state, update counter, skipped-step counter
  meta/    JSON: format, step, resolved config, data position, fingerprint of the reference
           (initial) policy, the base-policy evaluation, the architecture as HF config.json fields
Nothing else feeds the maths: every random draw is keyed by (seed, purpose, step) and the data order
is a keyed permutation, so the step is the data position. Arrays restore into an abstract target
built for the *current* mesh, so a run saved on one mesh resumes on another.

Saves are atomic: on a disk Orbax writes `<step>.orbax-checkpoint-tmp` and renames it only when
complete; in a bucket (gs://), where renames are copies, it writes `<step>/commit_success.txt` last.
Either way a leftover from a killed save is never listed as a checkpoint and is removed on the next start.

Resume precedence (`rlvr-jax train --run-dir DIR`):
  1. `--restart`: existing checkpoints are moved aside (checkpoints.replaced-<time>), start at step 0;
  2. else the latest checkpoint that reads back; one that does not (truncated, corrupted) is named in
     a warning, moved to checkpoints.corrupt/, and the previous one is tried;
  3. no usable checkpoint: start at step 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rlvr_jax.config import BestMode, CheckpointConfig
from rlvr_jax.distributed import sync
from rlvr_jax.mesh import Rules, tree_shardings
from rlvr_jax.model import Arch, abstract_model
from rlvr_jax.storage import as_path
from rlvr_jax.types import TrainState

log = logging.getLogger(__name__)

FORMAT = 1
# Fault injection for the kill -9 test: SIGKILL this process right after the save of this step starts.
KILL_IN_SAVE_ENV = "RLVR_JAX_FAULT_KILL_IN_SAVE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used by this run (wrong shapes, wrong reference, unreadable)."""


# --- fingerprints -------------------------------------------------------------------------------


def _leaf_bit_sums(params: Any) -> list[jax.Array]:
    """Per leaf, the sum of its bit patterns mod 2^32: exact and independent of sharding and order."""

    def bits(x: jax.Array) -> jax.Array:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        return jnp.sum(jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32), dtype=jnp.uint32)

    return [bits(x) for x in jax.tree.leaves(params)]


def fingerprint(params: Any) -> str:
    """A short digest of a parameter tree's exact bits (used to verify the KL reference on resume)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    sums = jax.device_get(jax.jit(_leaf_bit_sums)(params))
    text = ";".join(
        f"{p}:{x.shape if hasattr(x, 'shape') else ''}:{int(s)}"
        for p, x, s in zip(paths, jax.tree.leaves(params), sums)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the state <-> items mapping ----------------------------------------------------------------


def _train_item(state: TrainState) -> dict[str, Any]:
    return {"opt_state": state.opt_state, "step": state.step, "skipped": state.skipped}


def _abstract(tree: Any) -> Any:
    """Concrete-sharded ShapeDtypeStructs: Orbax restores each array straight into this layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def abstract_items(target: TrainState) -> tuple[Any, dict[str, Any]]:
    """(params, train) restore targets from an abstract TrainState whose leaves carry shardings."""
    return _abstract(target.params), _abstract(_train_item(target))


# --- the manager --------------------------------------------------------------------------------


class Checkpointer:
    """Save / restore / list the checkpoints of one run directory (`<run_dir>/checkpoints`)."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig = CheckpointConfig(), read_only: bool = False):
        self.directory = as_path(directory)
        self.cfg = cfg
        self.manager = self._open(read_only)

    def _open(self, read_only: bool) -> ocp.CheckpointManager:
        keep: list[Any] = [policies.LatestN(self.cfg.keep)]
        best_fn = None
        if self.cfg.best_metric:
            name = self.cfg.best_metric
            best_fn = lambda metrics: metrics[name]  # noqa: E731  (Orbax writes metrics only with best_fn)
            keep.append(
                policies.BestN(
                    get_metric_fn=best_fn,
                    reverse=self.cfg.best_mode == BestMode.min,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=self.cfg.async_save and not read_only,
            cleanup_tmp_directories=not read_only,
            best_fn=best_fn,
            best_mode=self.cfg.best_mode.value,
            preservation_policy=policies.AnyPreservationPolicy(keep),
            read_only=read_only,
            create=not read_only,
        )
        handlers = {
            "params": ocp.StandardCheckpointHandler(),
            "train": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }  # registered up front, so metadata reads work before any save
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Start saving step `step` (returns once the arrays are copied off the device when async)."""
        record = {"format": FORMAT, "step": step, **meta}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(_train_item(state)),
            meta=ocp.args.JsonSave(record),
        )
        best = self.cfg.best_metric
        tracked = {best: metrics[best]} if best and metrics and metrics.get(best) is not None else None
        self.manager.save(step, args=args, metrics=tracked, force=True)
        if os.environ.get(KILL_IN_SAVE_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)

    def read_meta(self, step: int) -> dict[str, Any]:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("step") != step:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)}: meta is not an rlvr-jax format-{FORMAT} record"
            )
        return meta

    def restore_params(self, step: int, target: Any) -> Any:
        """Only the policy of `step` (for export / evaluation), in the target's layout."""
        try:
            self._check_shapes(step, "params", target)
            args = ocp.args.Composite(params=ocp.args.StandardRestore(target))
            return self.manager.restore(step, args=args).params
        except (_Unreadable, OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read: {_first_line(err)}"
            ) from err

    def restore_state(self, step: int, target: TrainState, meta: dict[str, Any]) -> TrainState:
        """Arrays of `step` in the target's layout; read failures raise `_Unreadable`."""
        params_target, train_target = abstract_items(target)
        train_target = self._with_legacy_key(step, train_target)
        self._check_shapes(step, "params", params_target)
        self._check_shapes(step, "train", train_target)
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), train=ocp.args.StandardRestore(train_target)
        )
        try:
            out = self.manager.restore(step, args=args)
        except Exception as err:  # - tensorstore / file errors: the checkpoint is unreadable
            raise _Unreadable(str(err)) from err
        train = out.train
        return TrainState(params=out.params, opt_state=train["opt_state"], step=train["step"], skipped=train["skipped"])

    def _with_legacy_key(self, step: int, train_target: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints written before the unused train key left TrainState still hold it: read it, drop it."""
        try:
            saved = _shape_table(self.manager.item_metadata(step)["train"])
        except Exception:  # unreadable metadata: _check_shapes reports it
            return train_target
        if "key" not in saved:
            return train_target
        shape, dtype = saved["key"]
        return {**train_target, "key": jax.ShapeDtypeStruct(shape, dtype, sharding=train_target["step"].sharding)}

    def _check_shapes(self, step: int, item: str, target: Any) -> None:
        """A config that changed the state's shapes is a user error, not a corrupted checkpoint."""
        try:
            saved = self.manager.item_metadata(step)[item]
        except Exception as err:  # - unreadable metadata is corruption, reported by the caller
            raise _Unreadable(f"{item} metadata: {err}") from err
        if saved is None:
            return  # nothing to compare against; the restore itself will tell
        want, have = _shape_table(target), _shape_table(saved)
        diff = [
            f"{k}: checkpoint {have.get(k)} vs this run {want.get(k)}"
            for k in sorted(want.keys() | have.keys())
            if want.get(k) != have.get(k)
        ]
        if diff:
            shown = "\n  ".join(diff[:12]) + (f"\n  ... and {len(diff) - 12} more" if len(diff) > 12 else "")
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} does not fit this run's {item} "
                f"(the model or optimizer changed):\n  {shown}"
            )

    def restore_latest(
        self, target: TrainState, check: Callable[[dict[str, Any]], None], warn: Callable[[str], None]
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest checkpoint that reads back, after `check(meta)` accepts it (see the precedence above).
        Only read failures move a checkpoint aside; a config mismatch raises (the user's to fix)."""
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as err:  # - any failure to read the JSON record means unusable
                self._quarantine(step, err, warn)
                continue
            check(meta)
            try:
                return self.restore_state(step, target, meta), meta
            except _Unreadable as err:
                self._quarantine(step, err.__cause__ or err, warn)
        return None

    def _quarantine(self, step: int, err: BaseException, warn: Callable[[str], None]) -> None:
        """Move an unreadable checkpoint out of the way (never delete it) and re-list."""
        src = self.directory / str(step)
        dest = self.directory.with_name(self.directory.name + ".corrupt") / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        warn(
            f"checkpoint {src} cannot be restored ({type(err).__name__}: {_first_line(err)}); "
            f"moved to {dest}, trying the previous one"
        )
        if jax.process_index() == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dest)  # a bucket copies the objects, then deletes them
        sync("rlvr_jax_quarantine")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shape_table(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """path -> (shape, dtype), with paths spelt the same for live pytrees and Orbax's saved metadata
    (which stores NNX Variables and optax named tuples as nested dicts)."""

    def path(p: Any) -> str:
        return "/".join(w for w in re.findall(r"\w+", jax.tree_util.keystr(p)) if w != "value")

    return {path(p): (tuple(x.shape), np.dtype(x.dtype)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


class _Unreadable(RuntimeError):
    pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def move_aside(directory: Any) -> Any:
    """--restart: keep the old checkpoints under a new name instead of deleting them."""
    if not directory.exists():
        return None
    dest = directory.with_name(f"{directory.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    if jax.process_index() == 0:
        directory.rename(dest)
    sync("rlvr_jax_move_aside")
    return dest


def restore_policy(
    run_dir: str | Path, step: int | None, mesh: jax.sharding.Mesh, rules: Rules
) -> tuple[Arch, Any, Any, dict[str, Any]]:
    """(arch, graphdef, params, meta) of a run's checkpoint (the latest when step is None), read-only."""
    directory = as_path(run_dir) / "checkpoints"
    ckpt = Checkpointer(directory, read_only=True) if directory.is_dir() else None
    steps = ckpt.steps() if ckpt else []
    if not steps:
        raise CheckpointError(
            f"{directory} holds no complete checkpoint (a run saves one at its end, every "
            "checkpoint.every steps, and when stopped by SIGTERM/SIGINT)"
        )
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"{directory} has no checkpoint for step {step}; available: {steps}")
    meta = ckpt.read_meta(step)
    arch = Arch.from_hf(meta["arch"], source=f"{directory / str(step)} meta")
    graphdef, abstract = abstract_model(arch, param_dtype=meta["config"]["model"]["param_dtype"])
    shardings = tree_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    try:
        params = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    return arch, graphdef, params, meta


def read_arrays(run_dir: str | Path, step: int, item: str = "params") -> Any:
    """One item of a checkpoint as nested dicts of numpy arrays, on any number of devices (inspection, tests)."""
    path = as_path(run_dir) / "checkpoints" / str(step) / item
    reader = ocp.PyTreeCheckpointer()
    tree = reader.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
