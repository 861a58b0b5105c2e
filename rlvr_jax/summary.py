"""What a run prints and keeps at its end: the one-line evaluation and summary.json."""

from __future__ import annotations

import numpy as np

from rlvr_jax.boundary import boundary_over_training
from rlvr_jax.config import Config
from rlvr_jax.evaluate import read_evals
from rlvr_jax.schedule import PhaseState
from rlvr_jax.schedule import describe as describe_schedule
from rlvr_jax.stages import describe as describe_stages
from rlvr_jax.stages import describe_onset, detect_transition, probe_rest, probe_series
from rlvr_jax.tasks import Task
from rlvr_jax.writers import read_jsonl


def format_eval(name: str, values: dict[str, float], task: Task) -> str:
    """One line: reward, pass@1 and the largest k overall and on the task's headline subsets, probe classes."""
    found = sorted({k.split("/")[2] for k in values if k.startswith("eval/correct_frac/")})
    subsets = task.headline_subsets or (tuple(found) if len(found) <= 4 else ())  # a few subsets: show them all
    keys = ["eval/reward_mean", "eval/correct_frac"] + [f"eval/correct_frac/{s}" for s in subsets]
    for suffix in ["", *(f"/{s}" for s in subsets)]:
        ks = [
            k for k in values if k.startswith("eval/pass@") and k.endswith(suffix) and k.count("/") == 1 + bool(suffix)
        ]
        keys += [k for k in ks if not k.startswith("eval/pass@1/") and k != "eval/pass@1"][-1:]
    keys += [k for k in values if k.startswith("probe/pi_") and k.count("/") == 1 and k != "probe/pi_rest"]
    shown = ", ".join(f"{k.split('/', 1)[1]}={values[k]:.3f}" for k in keys if k in values)
    return f"{name}: {shown}"


def make_summary(
    cfg: Config,
    first: dict,
    final: dict,
    seconds: float,
    last: dict,
    online: dict | None = None,
    phase: PhaseState | None = None,
) -> dict:
    """summary.json. `stages` holds the offline detector's report as it always was, plus `onset_step`
    and `online` (the online detector's report, `online` given) and `online_summary`."""
    rows = read_jsonl(cfg.run_dir / "metrics.jsonl")
    history = [r["reward/mean"] for r in rows if isinstance(r.get("reward/mean"), (int, float))]
    evals = read_evals(cfg.run_dir)
    steps, probs = probe_series(rows)
    stage = detect_transition(steps, probs, rest=probe_rest(rows, steps))
    stages = {**stage, "summary": describe_stages(stage)}
    if online is not None:
        stages.update(onset_step=online["onset_step"], online=online, online_summary=describe_onset(online))
    out = {
        "run": cfg.run.name,
        "steps": cfg.run.steps,
        "seconds_this_session": round(seconds, 1),
        "advantage": {"estimator": cfg.advantage.estimator.value, "sign": cfg.advantage.sign.value},
        "base": first,
        "final": final,
        "train_reward_first_10": float(np.mean(history[:10])) if history else None,
        "train_reward_last_10": float(np.mean(history[-10:])) if history else None,
        "stages": stages,
        "pass_at_k_over_training": [
            {
                "step": e["step"],
                "pass_at_k": e["pass_at_k"],
                **{f"pass_at_k/{k}": v["pass_at_k"] for k, v in e["subsets"].items()},
            }
            for e in evals
        ],
        "boundary_over_training": boundary_over_training(evals),
        "last_metrics": last,
    }
    if cfg.advantage.schedule:
        out["advantage_schedule"] = describe_schedule(cfg.advantage, phase or PhaseState())
    return out
