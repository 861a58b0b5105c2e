"""Our trainer on the fixed GRPO peer workload, through the user path, in the peers' round.

    OURS="python benchmarks/peer_workload.py" bash ../shared/bench/peers/run_all.sh
    python benchmarks/peer_workload.py --workload /tmp/peers/workload --size small [--json-out results.jsonl]

Runs `rlvr-jax train --config benchmarks/peer_workload.yaml` on <workload>/<size> and the workload's
prompts.jsonl with the reward in benchmarks/peer_reward.py, first checking that the loaded model gives the
workload's reference logits; then reads metrics.jsonl and appends one JSON line in the peers' format:
step time = time/interval_s (wall time per step: rollout, reward, update with the params ready, and the
step's bookkeeping; logging.block_each_step makes the update finish inside its step), generation =
time/rollout_s, median over steps 3..12. The line also carries this machine's f32 matmul peak (jax, 2048^3,
best of 5), measured in the same process right before training: the anchor the README reads the step against.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import matmul_peak_gflops  # noqa: E402


def check_logits(model_dir: Path) -> float:
    """Max |logit difference| between the loaded model and the workload's HF torch reference."""
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
    from rlvr_jax.model import forward, from_pretrained

    ref = json.loads((model_dir / "reference_logits.json").read_text())
    _, graphdef, params = from_pretrained(model_dir, make_mesh(), ROLLOUT_RULES)
    ids = jnp.asarray([ref["input_ids"]], jnp.int32)
    logits = np.asarray(forward(graphdef, params, ids, jnp.ones_like(ids)))[0]
    return float(np.max(np.abs(logits - np.asarray(ref["logits"]))))


def train(workload: Path, size: str, run_dir: Path) -> list[dict]:
    command = [
        sys.executable, "-m", "rlvr_jax.cli", "train", "--config", str(ROOT / "benchmarks" / "peer_workload.yaml"),
        "--run-dir", str(run_dir), f"model.path={workload / size}", f"data.path={workload / 'prompts.jsonl'}",
        f"eval.path={workload / 'prompts.jsonl'}",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] >= 1]


def result(size: str, rows: list[dict], logits_diff: float) -> dict:
    steps = [r["time/interval_s"] for r in rows]
    gens = [r["time/rollout_s"] for r in rows]
    timed = slice(2, 12)  # steps 3..12 (1-based): steps 1-2 absorb compilation
    median, gen = statistics.median(steps[timed]), statistics.median(gens[timed])
    return {
        "peer": "rlvr-jax", "version": version("rlvr-jax"), "size": size, "median_step_s": round(median, 4),
        "min_step_s": round(min(steps[timed]), 4), "max_step_s": round(max(steps[timed]), 4),
        "gen_s": round(gen, 4), "update_s": round(median - gen, 4), "tokens_per_s": round(64 * 64 / median, 1),
        "steps_s": [round(s, 4) for s in steps], "gen_steps_s": [round(s, 4) for s in gens],
        "completion_len_mean": round(statistics.mean(r["rollout/length_mean"] for r in rows), 2),
        "reward_mean": round(statistics.mean(r["reward/mean"] for r in rows), 4), "logits_max_diff": logits_diff,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", type=Path, default=Path("/tmp/peers/workload"))
    parser.add_argument("--size", choices=["tiny", "small"], required=True)
    parser.add_argument("--json-out", type=Path, help="also append the JSON line to this file")
    parser.add_argument("--run-dir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    if not (args.workload / "manifest.json").is_file():
        sys.exit(f"{args.workload} holds no workload: python ../shared/bench/make_workload.py {args.workload}")
    diff = check_logits(args.workload / args.size)
    if diff > 1e-3:
        sys.exit(f"the loaded {args.size} model's logits differ from the reference by {diff:.2e}")
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory(prefix="rlvr-jax-peer-") as tmp:
        rows = train(args.workload, args.size, args.run_dir or Path(tmp) / "run")
    line = json.dumps({**result(args.size, rows, diff), "matmul_peak_gflops": round(peak, 1)})
    print(line)
    if args.json_out:
        with args.json_out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
