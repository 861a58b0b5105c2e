"""The base-policy evaluation, computed once for runs that share it (`eval.cache_dir`).

Runs of a study that start from one policy with one seed draw the very same step-0 evaluation: the
evaluation's random streams depend only on `run.seed` (evaluate.py), not on the advantage estimator or
any other RL setting. With pass@k to large k (n = 256) that evaluation costs as much as a short
training run, so the first run stores its report under a digest of everything the report depends on
and the others read it:
- the policy's weights (their bytes, dtype and shape, leaf by leaf) and the model settings (dtype,
  architecture; not the folder it was read from);
- the evaluation settings, the held-out prompts as tokenized and their examples (answers, subsets);
- the rollout settings (max_new_tokens, stop tokens), the reward functions (with their source files'
  contents) and the seed;
- the software (the rlvr-jax and jax versions: an edit to the code within one version is not seen,
  so clear the folder after changing the sampler or the evaluation) and the machine's backend and
  mesh, whose numerics the samples depend on.
A change to any of them is a different digest, so a stale report is never read. A report in the cache
that is not valid JSON is evaluated again and replaced (a writer that was killed leaves none: the
file is renamed into place whole).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.rewards.functions import RewardFunction, is_file_target
from rlvr_jax.storage import write_text_atomic

log = logging.getLogger(__name__)


def base_evaluation(
    evaluate: Any, params: Any, cache_dir: str | None, mesh_shape: dict[str, int], say: Callable[[str], None]
) -> dict[str, Any]:
    """`evaluate(params, 0)`'s metrics, read from `cache_dir` when an identical evaluation is stored
    there (the run's evals/step_000000.json is written either way); `say` tells which."""
    if cache_dir is None or jax.process_count() > 1:  # several hosts: the weights are not all local to hash
        return evaluate(params, 0)
    path = Path(cache_dir) / f"{evaluation_digest(evaluate, params, mesh_shape)}.json"
    report = _read(path)
    if report is None:
        report = evaluate.run(params)
        write_text_atomic(path, json.dumps(report))
        say(f"base evaluation stored in {path} for the runs that share it")
    else:
        say(f"base evaluation read from {path} (the same policy, settings and seed)")
    return evaluate.record(report, 0)


def evaluation_digest(evaluate: Any, params: Any, mesh_shape: dict[str, int]) -> str:
    """The hex digest of what the evaluation of `params` by `evaluate` depends on (module docstring)."""
    cfg = evaluate.cfg
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        array = np.asarray(leaf)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    settings = {
        # No path or folder: the prompts, the weights and the reward code are hashed by content, so a
        # study moved to another folder (or a checkout elsewhere) finds its entries.
        "eval": cfg.eval.model_dump(mode="json", exclude={"every", "cache_dir", "path"}),
        "rollout": cfg.rollout.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json", exclude={"path", "tokenizer"}),
        "reward": cfg.reward.model_dump(mode="json", exclude={"workers"}),
        "template": cfg.data.model_dump(mode="json", exclude={"path", "data_dir", "manual_dir"}),
        "seed": cfg.run.seed,
        "stop": sorted(int(t) for t in evaluate.stop),
        "software": [_version(), jax.__version__, jax.default_backend(), jax.devices()[0].device_kind],
        "mesh": mesh_shape,
        "rewards": [_reward_identity(f) for f in evaluate.pool.functions],
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for (arrays, examples), valid in evaluate.batches:
        for name, array in sorted(arrays.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(array)).tobytes())
        h.update(json.dumps([examples, valid], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _version() -> str:
    try:
        return importlib.metadata.version("rlvr-jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _reward_identity(function: RewardFunction) -> list[str]:
    """The function's name, weight and target, with the digest of the code it runs. A file target is
    named by its file's name, not its absolute path (made absolute at load), which moves with the checkout."""
    code, target = function.pickled, function.target
    if function.target:
        module, _, attr = function.target.rpartition(":")
        in_file = is_file_target(module)
        source = module if in_file else _module_file(module)
        if source and os.path.isfile(source):
            code = Path(source).read_bytes()
        if in_file:
            target = f"{Path(module).name}:{attr}"
    return [function.name, str(function.weight), target, hashlib.sha256(code).hexdigest()]


def _module_file(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as err:
        log.warning("%s: not valid JSON (%s); evaluating again", path, err)
        return None
    return report if isinstance(report, dict) and "pass_at_k" in report else None
