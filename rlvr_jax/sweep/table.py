"""The study table: per-run numbers read back from the run folders, aggregated per combination.

Everything comes from each run's summary.json (its final evaluation and probe, and the stage report;
the end-of-run detector is re-run on metrics.jsonl, see `end_of_run_stage`), so the table can be recomputed at any time from whatever runs are complete. Missing numbers stay
missing ("n/a"); nothing is derived from a stand-in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.stages import detect_transition, probe_rest, probe_series
from rlvr_jax.sweep.plan import Plan, RunPlan, failure, is_done
from rlvr_jax.sweep.spec import _ranges
from rlvr_jax.sweep.stats import mean_sd, median_range, wilson
from rlvr_jax.writers import read_jsonl

# --- reaching stage 2 ----------------------------------------------------------------------------

STAGE2_SOURCES = {
    "transition": "summary.json `stages.transition` (the end-of-run detector, rlvr_jax/stages.py: a class "
    "rare under the base policy leads from some probe step to the end); onset = `stages.step`",
    "onset_step": "summary.json `stages.onset_step` (the online detector; null: not reached); onset = its value",
}


def stage2(summary: dict[str, Any], source: str) -> tuple[bool, int | None] | None:
    """(reached stage 2, onset step) by one detector's output; None when the summary lacks that output."""
    stages = summary.get("stages") or {}
    if source == "onset_step":
        if "onset_step" not in stages:
            return None
        return stages["onset_step"] is not None, stages["onset_step"]
    if source == "transition":
        if "transition" not in stages:
            return None
        reached = bool(stages["transition"])
        return reached, stages.get("step") if reached else None
    raise ValueError(f"unknown stage-2 source {source!r}; known: {sorted(STAGE2_SOURCES)}")


def choose_source(summaries: Sequence[dict[str, Any]], wanted: str = "auto") -> str:
    """`auto`: the online detector's onset when every complete run has it, else the end-of-run transition
    (never a mix of the two within one table)."""
    if wanted != "auto":
        if wanted not in STAGE2_SOURCES:
            raise ValueError(f"unknown stage-2 source {wanted!r}; known: auto, {', '.join(STAGE2_SOURCES)}")
        return wanted
    online = summaries and all(stage2(s, "onset_step") is not None for s in summaries)
    return "onset_step" if online else "transition"


# --- one run -------------------------------------------------------------------------------------


def end_of_run_stage(run_dir: Path) -> dict[str, Any]:
    """`transition`, `step` and `rare_classes` of rlvr_jax/stages.py's end-of-run detector on the run's
    metrics.jsonl, with the probe's rest mass (a reading where it exceeds every class has no leader:
    summaries written before that rule counted a collapse onto other tokens as a takeover). Empty
    when the probe logged no rest mass: then the summary's own report is this rule's."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps, probs = probe_series(rows)
    rest = probe_rest(rows, steps)
    if rest is None:
        return {}
    report = detect_transition(steps, probs, rest=rest)
    if report.get("reason") == "no probe data":
        return {}
    return {"transition": report["transition"], "step": report.get("step"), "rare_classes": report["rare_classes"]}


def final_subsets(final: dict[str, Any]) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for k in final if re.fullmatch(r"eval/correct_frac/[^/]+", k))


def largest_k(final: dict[str, Any]) -> int | None:
    ks = [int(m[1]) for k in final if (m := re.fullmatch(r"eval/pass@(\d+)", k))]
    return max(ks) if ks else None


def run_record(run: RunPlan, subsets: Sequence[str] | None) -> dict[str, Any]:
    """A run's numbers (complete runs only; an incomplete one is listed as missing)."""
    record: dict[str, Any] = {"combo": run.combo.name, "seed": run.seed, "run_dir": str(run.run_dir)}
    if not is_done(run):
        return {**record, "complete": False, "failed": failure(run)}
    summary = json.loads((run.run_dir / "summary.json").read_text())
    # The end-of-run detector is re-run on the run's probe readings, so every run in a table is judged by
    # the same (current) rule, whatever version wrote its summary.json.
    summary["stages"] = {**(summary.get("stages") or {}), **end_of_run_stage(run.run_dir)}
    final = summary.get("final", {})
    k = largest_k(final)
    names = final_subsets(final) if subsets is None else list(subsets)
    stages = summary.get("stages") or {}
    return {
        **record,
        "complete": True,
        "failed": None,
        "steps": summary.get("steps"),
        "seconds": summary.get("seconds_this_session"),
        "stages": {
            key: stages.get(key) for key in ("transition", "step", "onset_step", "rare_classes") if key in stages
        },
        # The rising rare class's probability when the online detector fired: an onset from 1e-4 is noise
        # the detector cannot tell from a start; the table shows the level beside the rate.
        "onset_level": (stages.get("online") or {}).get("rare_to"),
        "reward": final.get("eval/reward_mean"),
        "train_reward_last_10": summary.get("train_reward_last_10"),
        "accuracy": {s: final.get(f"eval/correct_frac/{s}") for s in names},
        "k": k,
        "pass_at_k": final.get(f"eval/pass@{k}"),
        "pass_at_k_subsets": {s: final.get(f"eval/pass@{k}/{s}") for s in names},
        "entropy": final.get("probe/entropy"),
        "probe_final": {key[len("probe/pi_") :]: v for key, v in final.items() if key.startswith("probe/pi_")},
        "_summary": summary,
    }


# --- the table -----------------------------------------------------------------------------------


def summarize(plan: Plan, subsets: Sequence[str] | None = None, source: str = "auto") -> dict[str, Any]:
    """table.json: the study, the stage-2 source used, one row per combination and every run's numbers."""
    records = [run_record(r, subsets) for r in plan.runs]
    complete = [r for r in records if r["complete"]]
    source = choose_source([r["_summary"] for r in complete], source)
    for r in complete:
        # None: the run's summary lacks this detector's output (no probe, or an older run): unknown, not "no".
        summary = r.pop("_summary")
        reached, step = stage2(summary, source) or (None, None)
        r["stage2"] = {"reached": reached, "onset_step": step}
        # The onset (rare class rising while the leader falls) does not mean the rare class wins: whether
        # it leads at the end is the end-of-run detector's answer, reported beside it.
        leads, since = stage2(summary, "transition") or (None, None)
        r["takeover"] = {"reached": leads, "step": since}
    names = subsets if subsets is not None else sorted({s for r in complete for s in r["accuracy"]})
    rows = [
        _combo_row(c.name, c.overrides, [r for r in records if r["combo"] == c.name], names) for c in plan.study.combos
    ]
    return {
        "study": _study_fields(plan),
        "stage2_source": source,
        "stage2_rule": STAGE2_SOURCES[source],
        "subsets": list(names),
        "complete": len(complete),
        "planned": len(records),
        "missing": [f"{r['combo']} seed {r['seed']}" for r in records if not r["complete"]],
        "failed": [
            {"run": f"{r['combo']} seed {r['seed']}", **r["failed"]} for r in records if r["failed"] is not None
        ],
        "combos": rows,
        "runs": records,
    }


def _combo_row(name: str, overrides: Sequence[str], records: list[dict], subsets: Sequence[str]) -> dict[str, Any]:
    done = [r for r in records if r["complete"]]
    reached = [r for r in done if r["stage2"]["reached"]]
    ks = {r["k"] for r in done if r["k"] is not None}
    return {
        "combo": name,
        "overrides": list(overrides),
        "planned": len(records),
        "complete": len(done),
        "failed": sum(r["failed"] is not None for r in records),
        "stage2": _rate(done, "stage2"),
        "takeover": _rate(done, "takeover"),
        "onset_step": median_range(
            [r["stage2"]["onset_step"] for r in reached if r["stage2"]["onset_step"] is not None]
        ),
        "onset_level": median_range([r["onset_level"] for r in reached if r.get("onset_level") is not None]),
        "takeover_step": median_range([r["takeover"]["step"] for r in done if r["takeover"].get("step") is not None]),
        "reward": _stat(done, lambda r: r["reward"]),
        "accuracy": {s: _stat(done, lambda r, s=s: r["accuracy"].get(s)) for s in subsets},
        "k": min(ks) if len(ks) == 1 else None,  # None: the runs' largest k differ (then no pass@k)
        "pass_at_k": _stat(done, lambda r: r["pass_at_k"]) if len(ks) == 1 else mean_sd([]),
        "pass_at_k_subsets": {
            s: _stat(done, lambda r, s=s: r["pass_at_k_subsets"].get(s)) if len(ks) == 1 else mean_sd([])
            for s in subsets
        },
        "entropy": _stat(done, lambda r: r["entropy"]),
        # Where the probe ends, per class: in the tie case no class is better, so this (a rare class kept or
        # lost) is the outcome, not a takeover.
        "probe_final": {
            c: median_range([r["probe_final"][c] for r in done if c in r["probe_final"]])
            for c in sorted({c for r in done for c in r["probe_final"] if "/" not in c})  # not per subset
        },
    }


def _rate(done: list[dict], key: str) -> dict[str, Any]:
    """How many complete runs reached `key` (of those whose summary says: n), with a Wilson 95 % interval."""
    known = [r for r in done if r[key]["reached"] is not None]
    hits = sum(bool(r[key]["reached"]) for r in known)
    interval = wilson(hits, len(known))
    return {
        "reached": hits,
        "n": len(known),
        "fraction": hits / len(known) if known else None,
        "wilson95": list(interval) if interval else None,
    }


def _stat(records: list[dict], get: Any) -> dict[str, Any]:
    """mean ± sd over the runs that have the number (n says how many)."""
    return mean_sd([v for v in map(get, records) if isinstance(v, (int, float))])


def _study_fields(plan: Plan) -> dict[str, Any]:
    study = plan.study
    return {
        "name": study.name,
        "config": study.config,
        "overrides": list(study.overrides),
        "seeds": list(study.seeds),
        "vary_base": study.vary_base,
        "base_policies": [b.key for b in plan.bases],
        "out": str(study.out),
    }


# --- Markdown ------------------------------------------------------------------------------------


def seed_ranges(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3, 8'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in _ranges(seeds))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean_sd(stat: dict[str, Any], total: int) -> str:
    if not stat["n"]:
        return "n/a"
    text = _num(stat["mean"]) + ("" if stat["sd"] is None else f" ± {_num(stat['sd'])}")
    return text + ("" if stat["n"] == total else f" (n={stat['n']})")


def _fraction(s2: dict[str, Any], complete: int) -> str:
    if not s2["n"]:
        return "n/a"
    lo, hi = s2["wilson95"]
    unknown = complete - s2["n"]
    return f"{s2['fraction']:.2f} [{lo:.2f}, {hi:.2f}] ({s2['reached']}/{s2['n']})" + (
        f" ({unknown} unknown)" if unknown else ""
    )


def _onset(onset: dict[str, Any], digits: int | None = None) -> str:
    if not onset["n"]:
        return "n/a"
    fmt = "g" if digits is None else f".{digits}g"
    return f"{onset['median']:{fmt}} [{onset['min']:{fmt}}, {onset['max']:{fmt}}]"


def _probe_medians(classes: dict[str, dict[str, Any]]) -> str:
    """`S1 0.0012, S2 1, S3 0.00031`: each class's median final probe probability over the runs."""
    cells = [f"{c} {m['median']:.2g}" for c, m in classes.items() if m["n"]]
    return ", ".join(cells) or "n/a"


def _missing(table: dict[str, Any], shown: int = 8) -> str:
    failed = {f["run"] for f in table["failed"]}
    missing = [m for m in table["missing"] if m not in failed]
    if not missing:
        return ""
    return f" (not run or not finished: {', '.join(missing[:shown])}{', ...' if len(missing) > shown else ''})"


def failed_lines(table: dict[str, Any]) -> list[str]:
    """One line per failed run: what failed and the log to read (they are not in the statistics)."""
    return [f"- **failed**: {f['run']}: {f['why']}; see `{f['log']}`" for f in table["failed"]]


def _base_line(study: dict[str, Any]) -> str:
    bases = study["base_policies"]
    if not bases:
        return "Base policy: the config's model.path (no warm start), the same for every run."
    if study["vary_base"]:
        return (
            f"Base policy: one warm start per seed (warmstart.seed = 2 x run.seed; {len(bases)} base policies): the "
            "spread over seeds is whole-pipeline variance (warm start and RL)."
        )
    return (
        f"Base policy: shared ({', '.join(f'`{b}`' for b in bases)}; one per warm-start setting, the same "
        "for every seed): the spread over seeds is RL-seed variance (data order, sampling), not warm-start variance."
    )


def to_markdown(table: dict[str, Any], command: str | None = None) -> str:
    study, subsets = table["study"], table["subsets"]
    ks = {row["k"] for row in table["combos"] if row["k"] is not None}
    k = f"pass@{ks.pop()}" if len(ks) == 1 else "pass@k (largest)"
    overrides = f" + `{' '.join(study['overrides'])}`" if study["overrides"] else ""
    lines = [
        f"## Study `{study['name']}`",
        "",
        f"Config `{study['config']}`{overrides}; seeds {seed_ranges(study['seeds'])} ({len(study['seeds'])}); "
        f"{len(table['combos'])} combinations; {table['complete']} of {table['planned']} runs complete"
        + (f", {len(table['failed'])} failed" if table["failed"] else "")
        + f"{_missing(table)}.",
        *(["", "Failed runs are not in the statistics below:", *failed_lines(table)] if table["failed"] else []),
        "",
        _base_line(study),
        "",
        f"Stage 2: {table['stage2_rule']}. Fraction of complete runs reaching it with a Wilson 95 % interval "
        "(runs whose summary lacks the detector's output count as unknown, not as not reached); "
        "onset step median [min, max] over the runs that reached it; the other columns are the final evaluation "
        "(held-out) as mean ± sd (sample sd) over the complete runs; entropy: the probe's `probe/entropy` at the end; "
        "probe at end: each class's final probe probability, median over the runs.",
    ]
    takeover = table["stage2_source"] != "transition"
    if takeover:
        lines += [
            "",
            f"Rare class leads at the end: {STAGE2_SOURCES['transition']}; fraction with a Wilson 95 % interval, "
            "and the probe step from which it leads (median [min, max]). An onset that does not end in this is a "
            "stage 2 that began and stalled. Rare class at onset: the rising rare class's probe probability when "
            "the online detector fired (median [min, max]).",
        ]
    if command:
        lines += ["", f"Regenerate: `{command}`"]
    header = ["combination", "runs", "stage 2 [95 % CI]", "onset step"]
    header += ["rare class at onset", "rare class leads at end [95 % CI]", "leads from step"] if takeover else []
    header += ["reward"]
    header += [f"accuracy {s}" for s in subsets] + [k] + [f"{k} {s}" for s in subsets] + ["entropy"]
    header += ["probe at end (median)"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["combos"]:
        n = row["complete"]
        runs = f"{n}/{row['planned']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [row["combo"], runs, _fraction(row["stage2"], n), _onset(row["onset_step"])]
        if takeover:
            cells += [_onset(row["onset_level"], 2), _fraction(row["takeover"], n), _onset(row["takeover_step"])]
        cells += [_mean_sd(row["reward"], n)] + [_mean_sd(row["accuracy"][s], n) for s in subsets]
        cells += [_mean_sd(row["pass_at_k"], n)] + [_mean_sd(row["pass_at_k_subsets"][s], n) for s in subsets]
        cells += [_mean_sd(row["entropy"], n), _probe_medians(row["probe_final"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
