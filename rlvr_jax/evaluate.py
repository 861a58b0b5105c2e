"""pass@k evaluation on held-out problems (during training and for `rlvr-jax eval`), and the
evals/step_<k>.json records it writes.

Besides pass@k the report has, overall and per subset (docs/algorithms.md section 5):
- `entropy`: the mean token entropy (nats) of the sampled completions, token-weighted over all samples.
  At each generated position it is the exact entropy of the policy's un-tempered next-token
  distribution (the definition of the training metric `entropy`), recorded by the sampler from the
  log-softmax it already computes for log pi(y). Chosen over -mean log pi(y) of the sampled tokens
  (a free Monte-Carlo estimate) because that estimates the same quantity only at temperature 1 and
  top-p 1; at the evaluation defaults (0.6, 0.95) it is a cross-entropy between the truncated
  sampling distribution and the policy, which is neither distribution's entropy. The exact value
  also has no sampling noise at the position itself. Cost: one multiply-and-sum over V per decode step.
- `above_1_over_k`: the 1/k boundary diagnostic (rlvr_jax/boundary.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.boundary import summarize
from rlvr_jax.config import Config
from rlvr_jax.data import evaluation_batches
from rlvr_jax.distributed import allgather_objects, global_tree, local_tree
from rlvr_jax.mesh import ROLLOUT_RULES
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rng import purpose_key
from rlvr_jax.rollout import SamplingSpec, make_sampler
from rlvr_jax.step import samples
from rlvr_jax.storage import write_text_atomic
from rlvr_jax.tasks import Task
from rlvr_jax.tokenizer import decode_completions, stop_token_ids
from rlvr_jax.types import PromptBatch

log = logging.getLogger(__name__)


class Evaluator:
    """pass@k (overall and per subset) on a fixed set of held-out problems.

    n samples per problem are drawn in n / samples_per_pass sampler calls. Sample g of pass j of the
    problem with global index i uses the key fold_in(fold_in(fold_in(eval_key, j), i), g), whatever
    the batching: a base and a trained model evaluated with the same seed and settings see the same
    random streams, so their per-problem results differ only through the policy.
    """

    def __init__(
        self,
        cfg: Config,
        task: Task,
        tokenizer: Any,
        arch: Any,
        graphdef: Any,
        abstract_params: Any,
        mesh: Any,
        pool: RewardPool,
        source: Any = None,
    ):
        ev = cfg.eval
        self.group = min(ev.samples_per_pass, ev.n)
        if ev.n % self.group:
            raise ValueError(f"eval.n={ev.n} must be a multiple of eval.samples_per_pass={ev.samples_per_pass}")
        self.passes = ev.n // self.group
        if source is None:
            source = task.open_split(ev.split, cfg.data)
        batch_problems = min(ev.batch_problems, len(source), ev.max_problems or len(source))
        batch_problems = max(jax.process_count(), batch_problems - batch_problems % jax.process_count())
        index, count = jax.process_index(), jax.process_count()
        self.batches = evaluation_batches(
            source, tokenizer, cfg.data, batch_problems, ev.max_problems, index, count, task.example
        )
        self.stop = stop_token_ids(tokenizer, arch.eos_token_ids)
        sampling = SamplingSpec.from_config(
            cfg.rollout.model_copy(update={"group_size": self.group, "temperature": ev.temperature, "top_p": ev.top_p}),
            self.stop,
            int(tokenizer.pad_token_id),
        )
        sampling = dataclasses.replace(sampling, entropy=True)  # eval/entropy
        self.sampler = make_sampler(arch, graphdef, abstract_params, mesh, ROLLOUT_RULES, sampling)
        self.key = purpose_key(cfg.run.seed, "eval")
        self.cfg, self.task, self.tokenizer, self.pool, self.mesh = cfg, task, tokenizer, pool, mesh

    def run(self, params: Any) -> dict[str, Any]:
        """The evaluation report: pass@k overall / per subset, mean reward, and per-problem counts."""
        problems: list[dict[str, Any]] = []
        reward_sum = 0.0
        for (arrays, examples), valid in self.batches:
            prompts = PromptBatch(**global_tree(arrays, self.mesh, ROLLOUT_RULES))
            correct = np.zeros(len(examples), np.int64)
            entropy, tokens = np.zeros(len(examples)), np.zeros(len(examples), np.int64)
            pending = self.sampler(params, prompts, jax.random.fold_in(self.key, 0))
            for j in range(self.passes):
                rollout = local_tree(pending)  # this process's problems
                if j + 1 < self.passes:  # sample the next pass while the host scores this one
                    pending = self.sampler(params, prompts, jax.random.fold_in(self.key, j + 1))
                texts = decode_completions(self.tokenizer, rollout.tokens, rollout.lengths, self.stop)
                draw = ("eval", self.cfg.run.seed, j)  # like the sampling keys: the same for every evaluated policy
                result = self.pool.score(texts, samples(self.task, examples, self.group, draw))
                correct += result.correct.reshape(len(examples), self.group).sum(axis=1)
                mask = rollout.mask.reshape(len(examples), -1)  # a problem's G samples side by side
                entropy += (np.asarray(rollout.entropy, np.float64).reshape(len(examples), -1) * mask).sum(axis=1)
                tokens += mask.sum(axis=1)
                reward_sum += float(result.rewards.reshape(len(examples), self.group)[:valid].sum())
            problems += [
                # entropy: the problem's mean token entropy over its n samples, `tokens` of them
                {
                    "id": e["id"],
                    "subset": e["subset"],
                    "n": self.cfg.eval.n,
                    "c": int(c),
                    "entropy": h / max(t, 1),
                    "tokens": int(t),
                }
                for e, c, h, t in zip(examples[:valid], correct[:valid], entropy[:valid], tokens[:valid])
            ]
        parts = allgather_objects([problems, reward_sum])
        problems, reward_sum = [p for part in parts for p in part[0]], sum(part[1] for part in parts)
        report = summarize(problems, self.cfg.eval.n)
        report.update(mean_reward=reward_sum / (len(problems) * self.cfg.eval.n), problems=problems, **self.settings())
        return report

    def settings(self) -> dict[str, Any]:
        ev = self.cfg.eval
        return {
            "task": self.task.name,  # the files' name for a file run, not data.task's default
            "split": ev.split,
            "n": ev.n,
            "temperature": ev.temperature,
            "top_p": ev.top_p,
            "max_new_tokens": self.cfg.rollout.max_new_tokens,
            "seed": self.cfg.run.seed,
            "samples_per_pass": self.group,
            "verifier": [f.name for f in self.pool.functions] or self.cfg.reward.verifier,  # what scored
        }

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """Flat eval/* metrics for metrics.jsonl; the full report goes to evals/step_<k>.json."""
        return self.record(self.run(params), step)

    def record(self, report: dict[str, Any], step: int) -> dict[str, float]:
        """Write `report` as the run's evals/step_<step>.json; its flat eval/* metrics."""
        if self.cfg.run_dir and jax.process_index() == 0:
            write_text_atomic(
                self.cfg.run_dir / "evals" / f"step_{step:06d}.json", json.dumps({"step": step, **report})
            )
        return eval_metrics(report)


def eval_metrics(report: dict[str, Any]) -> dict[str, float]:
    out = {"eval/reward_mean": report["mean_reward"], "eval/correct_frac": report["pass_at_k"]["1"]}
    out.update({f"eval/pass@{k}": v for k, v in report["pass_at_k"].items()})
    out.update(_measures(report, ""))
    for name, sub in report["subsets"].items():
        out[f"eval/correct_frac/{name}"] = sub["pass_at_k"]["1"]
        out.update({f"eval/pass@{k}/{name}": v for k, v in sub["pass_at_k"].items()})
        out.update(_measures(sub, f"/{name}"))
    return out


def _measures(report: dict[str, Any], suffix: str) -> dict[str, float]:
    """eval/entropy and eval/above_1_over_k@<k> (with a /<subset> suffix) when the report has them."""
    out = {f"eval/above_1_over_k@{k}{suffix}": v for k, v in report.get("above_1_over_k", {}).items()}
    if report.get("entropy") is not None:
        out[f"eval/entropy{suffix}"] = report["entropy"]
    return out


def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations in evals/step_*.json, by step; a damaged file is skipped with a warning."""
    evals = []
    for path in sorted((run_dir / "evals").glob("step_*.json")):
        try:
            report = json.loads(path.read_bytes())
        except ValueError as err:  # JSON and UTF-8 errors alike
            log.warning("%s: not valid JSON (%s); skipped", path, err)
            continue
        missing = [key for key, kind in EVAL_FIELDS.items() if not isinstance(_get(report, key), kind)]
        if missing:
            log.warning("%s: not an evaluation report (missing or wrong %s); skipped", path, ", ".join(missing))
            continue
        evals.append(report)
    return sorted(evals, key=lambda e: e["step"])


# What the figures and the run summary read from each evaluation report.
EVAL_FIELDS = {"step": int, "n": int, "pass_at_k": dict, "subsets": dict, "problems": list}


def _get(report: Any, key: str) -> Any:
    return report.get(key) if isinstance(report, dict) else None
