"""Orbax checkpoints of the whole RL state, and Hugging Face export of a checkpoint's policy.

A checkpoint at step k holds everything step k+1 reads:
  params/  the policy (sharded arrays)
  train/   optimizer state, update counter, skipped-step counter
  meta/    JSON: format, step, resolved config, data position, fingerprint of the reference
           (initial) policy, the base-policy evaluation, the architecture as HF config.json fields,
           and `integrity`: exact fingerprints of every array of params/ and train/ and a digest
           of the record itself, checked when the checkpoint is read back (see `content_fingerprints`)
Nothing else feeds the maths: every random draw is keyed by (seed, purpose, step) and the data order
is a keyed permutation, so the step is the data position. Arrays restore into an abstract target
built for the *current* mesh, so a run saved on one mesh resumes on another.

Saves are atomic: on a disk Orbax writes `<step>.orbax-checkpoint-tmp` and renames it only when
complete; in a bucket (gs://), where renames are copies, it writes `<step>/commit_success.txt` last.
Either way a leftover from a killed save is never listed as a checkpoint and is removed on the next start.

Resume precedence (`rlvr-jax train --run-dir DIR`):
  1. `--restart`: existing checkpoints are moved aside (checkpoints.replaced-<time>), start at step 0;
  2. else the latest checkpoint that reads back and matches its fingerprints; one that does not
     (truncated, corrupted, or bits changed on disk while the files still parse) is named in a
     warning, moved to checkpoints.corrupt/, and the previous one is tried. A checkpoint written
     before fingerprints existed restores unverified, with a notice;
  3. no usable checkpoint: start at step 0.
"""

from __future__ import annotations

import hashlib
import json
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
from rlvr_jax.distributed import allgather_objects
from rlvr_jax.mesh import Rules, tree_shardings
from rlvr_jax.model import Arch, abstract_model
from rlvr_jax.storage import as_path, ensure_writable, write_hint
from rlvr_jax.types import TrainState

log = logging.getLogger(__name__)

FORMAT = 1
# Fault injection for the kill -9 test: SIGKILL this process right after the save of this step starts.
KILL_IN_SAVE_ENV = "RLVR_JAX_FAULT_KILL_IN_SAVE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used by this run (wrong shapes, wrong reference, unreadable)."""


class _Unreadable(RuntimeError):
    """A checkpoint whose files do not give back what was saved: moved aside by `restore_latest`."""


# --- fingerprints -------------------------------------------------------------------------------


def _words(x: jax.Array) -> jax.Array:
    """A leaf's exact bits as uint32 words: 8- and 16-bit elements widened, 64-bit ones split in two."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # a trailing axis of 2
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def _leaf_bit_sums(params: Any) -> list[jax.Array]:
    """Per leaf, the sum of its bit patterns mod 2^32: exact and independent of sharding and order."""
    return [jnp.sum(_words(x), dtype=jnp.uint32) for x in jax.tree.leaves(params)]


def fingerprint(params: Any) -> str:
    """A short digest of a parameter tree's exact bits (used to verify the KL reference on resume)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    sums = jax.device_get(jax.jit(_leaf_bit_sums)(params))
    text = ";".join(
        f"{p}:{x.shape if hasattr(x, 'shape') else ''}:{int(s)}"
        for p, x, s in zip(paths, jax.tree.leaves(params), sums)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Content fingerprints of a checkpoint's arrays. Per leaf, two exact sums mod 2^32 over the leaf's
# uint32 words w_i (i = the element's global row-major position):
#   plain = sum_i w_i                       (what `fingerprint` sums for the KL reference)
#   mixed = sum_i mix32(w_i + i * GOLDEN)   (mix32: murmur3's finaliser)
# Why this is strong enough for storage corruption:
# - A change confined to one word (any number of flipped bits in one element, so every single-bit
#   flip) changes both sums, always: `plain` by w' - w, which is not 0 mod 2^32 since w' != w, and
#   `mixed` because w -> mix32(w + c) is a bijection on uint32.
# - A change spread over several words escapes `plain` only when the deltas cancel exactly, which
#   structured damage does (two words swapped, a block written at the wrong offset, a bit set in one
#   word and cleared in another). `mixed` hashes each word together with its position through a
#   full-avalanche bijection, so its deltas behave like independent uniform 32-bit numbers: a miss
#   has a probability of about 2^-32 per leaf, and swaps and shifts are seen because positions differ.
# - The sums are integer additions mod 2^32: exact, and the same whatever the sharding, device count
#   or reduction order, so a checkpoint saved on one mesh verifies on another.
# Computed on device by one jitted pass per item (fused elementwise work, no copy of the arrays),
# only at save and restore time: the training step never waits on it.
FINGERPRINT_SCHEME = "rlvr-jax/sum32+mix32/1"
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio; odd, so i * _GOLDEN differs for every position i < 2^32


def _mix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection in which every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_checks(x: jax.Array) -> jax.Array:
    """uint32[2]: the plain and the position-mixed sum of one leaf's words (see above)."""
    words = _words(x)
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        step = jnp.uint32(stride % (1 << 32))
        position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * step
        stride *= words.shape[axis]
    mixed = _mix32(words + position * jnp.uint32(_GOLDEN))
    # Both sums in one variadic reduction: one pass over the leaf (on XLA:CPU about 8x faster than
    # two jnp.sum calls, which it runs as unvectorised integer loops).
    zero = jnp.uint32(0)
    plain, mixed = jax.lax.reduce(
        (words, mixed), (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), tuple(range(words.ndim))
    )
    return jnp.stack([plain, mixed])


def _tree_checks(tree: Any) -> jax.Array:
    return jnp.stack([_leaf_checks(x) for x in jax.tree.leaves(tree)])


def content_fingerprints(tree: Any) -> dict[str, list[int]]:
    """Leaf path -> [plain, mixed] sums of its exact bits (one small device-to-host transfer)."""
    paths = _leaf_paths(tree)
    if not paths:
        return {}
    sums = np.asarray(jax.device_get(jax.jit(_tree_checks)(tree)))  # jitted here, at the save/restore boundary
    return {path: [int(a), int(b)] for path, (a, b) in zip(paths, sums)}


def _leaf_paths(tree: Any) -> list[str]:
    """Readable leaf paths (`layers/0/mlp/up`), the same for a live tree and its restored copy."""
    seen: dict[str, int] = {}
    out = []
    for p, _ in jax.tree_util.tree_leaves_with_path(tree):
        name = _path_name(p)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")  # never two leaves under one name
    return out


def _path_name(p: Any) -> str:
    return "/".join(w for w in re.findall(r"\w+", jax.tree_util.keystr(p)) if w != "value")


def _record_digest(record: dict[str, Any]) -> str:
    """sha256 of the meta record as its JSON file gives it back (keys sorted), less the digest itself."""
    body = json.loads(json.dumps(record))  # tuples -> lists, keys -> strings, as the file reads back
    integrity = body.get("integrity")
    if isinstance(integrity, dict):
        integrity.pop("meta_sha256", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _integrity(record: dict[str, Any], items: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"scheme": FINGERPRINT_SCHEME, **{k: content_fingerprints(v) for k, v in items.items()}}
    out["meta_sha256"] = _record_digest({**record, "integrity": out})
    return out


class _Corrupt(_Unreadable):
    """Restored arrays whose bits differ from the fingerprints saved with them."""


def _saved_fingerprints(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The record's fingerprints when this version can check them (None: an older, unverified checkpoint)."""
    integrity = meta.get("integrity")
    return integrity if isinstance(integrity, dict) and integrity.get("scheme") == FINGERPRINT_SCHEME else None


def verify_items(meta: dict[str, Any], items: dict[str, Any]) -> None:
    """Raise `_Corrupt` naming the first leaf (in saved order) whose bits differ from its fingerprint."""
    saved = _saved_fingerprints(meta)
    if saved is None:
        return
    for item, tree in items.items():
        want, have = saved.get(item), content_fingerprints(tree)
        if not isinstance(want, dict):
            raise _Corrupt(f"{item}: no fingerprints in the meta record")
        for path in [*want, *(p for p in have if p not in want)]:
            if want.get(path) != have.get(path):
                raise _Corrupt(f"{item} leaf {path} does not match the fingerprint saved with it")


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
        if not read_only:  # before any work, and before Orbax cleans up leftovers in it
            ensure_writable(self.directory, "checkpoint folder")
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
        """Start saving step `step` (returns once the arrays are copied off the device when async).
        The record carries the fingerprints of what is saved, computed now, on device."""
        train = _train_item(state)
        record = {"format": FORMAT, "step": step, **meta}
        record["integrity"] = _integrity(record, {"params": state.params, "train": train})
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(train),
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
        integrity = meta.get("integrity")
        if integrity is not None and (
            not isinstance(integrity, dict) or integrity.get("meta_sha256") != _record_digest(meta)
        ):
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)}: the meta record does not match its digest "
                "(changed after it was written)"
            )
        return meta

    def restore_params(self, step: int, target: Any, meta: dict[str, Any] | None = None) -> Any:
        """Only the policy of `step` (for export / evaluation), in the target's layout; checked
        against the fingerprints of `meta` (the step's record) when given."""
        where = self.directory / str(step)
        try:
            self._check_shapes(step, "params", target)
            args = ocp.args.Composite(params=ocp.args.StandardRestore(target))
            params = self.manager.restore(step, args=args).params
        except (_Unreadable, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {where} cannot be read: {_first_line(err)}") from err
        if meta is None:
            return params
        if _saved_fingerprints(meta) is None:
            log.warning("%s", _unverified_notice(where, meta))
            return params
        try:
            verify_items(meta, {"params": params})
        except _Corrupt as err:
            raise CheckpointError(
                f"checkpoint {where} failed its content check ({err}: its files changed after they were "
                "written); use another checkpoint (--step) or an intact copy of the run"
            ) from None
        return params

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
        # Files that still parse can hold other bits than were saved (a flipped byte in an array's
        # data file reads back without an error): compare with the fingerprints saved with them.
        verify_items(meta, {"params": out.params, "train": out.train})
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
                state = self.restore_state(step, target, meta)
            except _Unreadable as err:
                self._quarantine(step, err.__cause__ or err, warn)
                continue
            if _saved_fingerprints(meta) is None:
                warn(_unverified_notice(self.directory / str(step), meta))
            return state, meta
        return None

    def _quarantine(self, step: int, err: BaseException, warn: Callable[[str], None]) -> None:
        """Move an unusable checkpoint out of the way (never delete it) and re-list."""
        src = self.directory / str(step)
        dest = self.directory.with_name(self.directory.name + ".corrupt") / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        reason = str(err) if isinstance(err, _Corrupt) else f"{type(err).__name__}: {_first_line(err)}"
        failure = _move(src, dest)
        if failure:  # e.g. a read-only checkpoints/: resuming from an older step would need it gone
            fix = write_hint(self.directory, dest.parent.parent)
            raise CheckpointError(
                f"checkpoint {src} cannot be restored ({reason}) and cannot be moved aside to {dest} "
                f"({failure}): {fix}, or move {src} out of {self.directory} yourself, then run again"
            )
        warn(f"checkpoint {src} cannot be restored ({reason}); moved to {dest}, trying the previous one")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shape_table(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """path -> (shape, dtype), with paths spelt the same for live pytrees and Orbax's saved metadata
    (which stores NNX Variables and optax named tuples as nested dicts)."""
    return {_path_name(p): (tuple(x.shape), np.dtype(x.dtype)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def _unverified_notice(where: Any, meta: dict[str, Any]) -> str:
    integrity = meta.get("integrity")
    why = (
        f"its fingerprints are of a scheme this version does not know ({integrity.get('scheme')!r:.60})"
        if isinstance(integrity, dict)
        else "it has no content fingerprints (saved by an rlvr-jax without them)"
    )
    return f"checkpoint {where}: {why}; restored unverified"


def _move(src: Any, dest: Any) -> str | None:
    """Rename `src` to `dest` on process 0 (a bucket copies the objects, then deletes them). Every
    process gets the outcome: None, or what went wrong in one line."""
    failure = None
    if jax.process_index() == 0:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dest)
        except Exception as err:  # - OSError on a disk; gcsfs / google-auth errors in a bucket
            failure = f"{type(err).__name__}: {_first_line(err)}"
    return allgather_objects(failure)[0]  # a collective, so also the barrier after the move


def move_aside(directory: Any) -> Any:
    """--restart: keep the old checkpoints under a new name instead of deleting them."""
    if not directory.exists():
        return None
    dest = directory.with_name(f"{directory.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    failure = _move(directory, dest)
    if failure:
        raise CheckpointError(
            f"--restart: cannot move {directory} aside to {dest} ({failure}): "
            f"{write_hint(directory.parent)}, then run again (nothing was deleted)"
        )
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
        params = ckpt.restore_params(step, target, meta)
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
