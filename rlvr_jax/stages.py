"""Exploitation -> exploration stage detectors, on the probe's class probabilities over steps.

RLVR's two-stage dynamic (docs/algorithms.md section 1): first the mass of already-likely rewarded
tokens saturates (exploitation), then a token that was rare under the base policy takes over
(exploration). Two detectors answer two questions:

- `OnlineDetector`: when does stage 2 *begin*, on the paper's definition (the rare class's
  probability rises while the leader's falls)? It runs during training, one probe reading at a
  time, so a schedule can act on it (`advantage.schedule`, `at: onset`); its rule is in its docstring.
- `detect_transition` (offline, after the run): did the rare class *take over*? Its rule, stated so
  a reader can check it against the figure:

  * rare classes: those whose base-policy probability (first probe point) is below
    `rare_ratio` (default 0.1) times the base policy's largest class probability;
  * the transition happened at the first probe step from which a rare class is the leading class
    (largest probability among the named classes) at every later probe point, including the last;
    where the probe's mass outside the named classes (`rest`) exceeds every class, no class leads
    (a policy collapsed onto other tokens has not been taken over by a rare strategy);
  * the exploitation stage is the span before it; its peak is the largest probability that a
    non-rare class reaches before the transition.

Without a transition the report says so and gives the best rare class's peak, so "the rare class
never took over" is a measured statement, not a missing one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def probe_series(rows: list[dict[str, Any]]) -> tuple[list[int], dict[str, list[float]]]:
    """Steps with a probe reading and each named class's probability (rest excluded)."""
    # probe/pi_<class> only: per-subset keys (probe/pi_<class>/<subset>) are not classes of their own
    keys = {k for r in rows for k in r if k.startswith("probe/pi_") and k.count("/") == 1}
    names = sorted({k[len("probe/pi_") :] for k in keys} - {"rest"})
    probed = [r for r in rows if all(isinstance(r.get(f"probe/pi_{n}"), (int, float)) for n in names)] if names else []
    return [r["step"] for r in probed], {n: [r[f"probe/pi_{n}"] for r in probed] for n in names}


def probe_rest(rows: list[dict[str, Any]], steps: Sequence[int]) -> list[float] | None:
    """probe/pi_rest (the mass outside the named classes) at the probe steps; None when not logged."""
    by_step = {r["step"]: r["probe/pi_rest"] for r in rows if isinstance(r.get("probe/pi_rest"), (int, float))}
    values = [by_step.get(s) for s in steps]
    return values if values and all(v is not None for v in values) else None


REST = -1  # the leader index of a reading where `rest` holds more than every named class


def detect_transition(
    steps: Sequence[int],
    probs: Mapping[str, Sequence[float]],
    rare_ratio: float = 0.1,
    rest: Sequence[float] | None = None,
) -> dict[str, Any]:
    """steps[T] and per-class probabilities [T] (probe order), and optionally the rest mass [T] -> the
    stage report described above."""
    names = list(probs)
    if not names or len(steps) == 0:
        return {"transition": False, "reason": "no probe data"}
    table = np.asarray([probs[n] for n in names], dtype=float)  # [C, T]
    if table.shape[1] != len(steps) or (rest is not None and len(rest) != len(steps)):
        raise ValueError(f"{len(steps)} steps but {table.shape[1]} probe values per class")
    base = table[:, 0]
    rare = [i for i in range(len(names)) if base[i] < rare_ratio * base.max()]
    leader = table.argmax(axis=0)
    if rest is not None:
        leader = np.where(np.asarray(rest, dtype=float) > table.max(axis=0), REST, leader)
    names_rest = [*names, "rest"]  # names_rest[REST] == "rest"
    report: dict[str, Any] = {
        "rule": f"a class with base probability < {rare_ratio} x the base leader's leads "
        "from some probe step to the end",
        "rare_classes": [names[i] for i in rare],
        "base": dict(zip(names, base.round(4).tolist())),
        "final": dict(zip(names, table[:, -1].round(4).tolist())),
    }
    start = _first_persistent(leader, set(rare))
    if start is None:
        best = max(rare, key=lambda i: table[i].max()) if rare else None
        report.update(transition=False, leader_at_end=names_rest[int(leader[-1])])
        if best is not None:
            peak = int(table[best].argmax())
            report.update(
                best_rare_class=names[best],
                best_rare_peak=float(table[best, peak]),
                best_rare_peak_step=int(steps[peak]),
            )
        return report
    before = table[:, :start]
    common = [i for i in range(len(names)) if i not in rare]
    report.update(
        transition=True,
        step=int(steps[start]),
        new_leader=names[int(leader[start])],
        previous_leader=names_rest[int(leader[start - 1])] if start else None,
    )
    if start and common:
        i = max(common, key=lambda c: before[c].max())
        peak = int(before[i].argmax())
        report.update(
            exploitation_peak_class=names[i],
            exploitation_peak=float(before[i, peak]),
            exploitation_peak_step=int(steps[peak]),
        )
    return report


def _first_persistent(leader: np.ndarray, rare: set[int]) -> int | None:
    """First index t such that leader[t:] are all rare classes (and t is not the base point)."""
    t = len(leader)
    while t > 0 and int(leader[t - 1]) in rare:
        t -= 1
    return t if 0 < t < len(leader) else None


def describe(report: Mapping[str, Any]) -> str:
    if report.get("transition"):
        text = f"exploitation -> exploration at step {report['step']}: {report['new_leader']} (rare at the start) leads from then on"
        if "exploitation_peak" in report:
            text += (
                f"; exploitation peak {report['exploitation_peak_class']}={report['exploitation_peak']:.3f} "
                f"at step {report['exploitation_peak_step']}"
            )
        return text
    if "best_rare_class" in report:
        return (
            f"no exploitation -> exploration transition: {report['leader_at_end']} leads at the end; the best rare "
            f"class {report['best_rare_class']} peaked at {report['best_rare_peak']:.4f} (step {report['best_rare_peak_step']})"
        )
    return "no exploitation -> exploration transition" + (f" ({report['reason']})" if "reason" in report else "")


# --- the online detector ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OnlineDetector:
    """The onset of stage 2 on the paper's definition, decided one probe reading at a time.

    Immutable: `observe(step, probs)` returns the detector after that reading, so its state is a
    plain value, saved in every checkpoint's meta record (`to_json` / `from_json`) and restored on
    resume. Readings are the probe's named classes (rest excluded), in probe order. The rule, with W
    = `window` (logging.stage_window) probe points:

      * rare classes: base probability (the first reading) below `rare_ratio` x the base's largest
        (logging.stage_rare_ratio; the offline detector's definition);
      * the leader at a reading: the non-rare class with the largest probability at that reading;
      * the onset is the first reading t (at least W readings after the first) at which
          1. some rare class r rose at each of the last W probe intervals (p_r strictly increasing
             over readings t-W, ..., t) and by at least a factor 1 + `min_rise` over the window
             (logging.stage_min_rise), and
          2. the leader L fell over the window: p_L(t) < p_L(t-W), and
          3. L has peaked after the base: its highest probability so far was reached at a reading
             after the first, so exploitation first raised it and it has now turned down.
        If several rare classes qualify, the one with the largest relative rise is reported.

    Condition 3 keeps the start of training out: there the base leader (the toy's S3) falls while
    the rewarded class rises, and a rare class may tick up, but the falling class only ever fell.
    The rare class is read on a relative scale (it starts near 0.01) and must rise W times in a row,
    which noise in the exploitation stage, where it drifts down, seldom does; the leader, near
    saturation, moves by thousandths, so its fall is read over the window as a whole.

    The onset latches: once it fires, `stage/onset` stays 1 and a schedule switched on it stays
    switched. Whether the rise lasted is in `report()` (`sustained`: the rare class is above its
    onset value at the last reading), and the offline detector says whether it took over.
    """

    window: int = 2
    rare_ratio: float = 0.1
    min_rise: float = 0.1
    names: tuple[str, ...] = ()
    first_step: int | None = None
    base: tuple[float, ...] = ()
    peak: tuple[float, ...] = ()  # each class's highest probability so far ...
    peak_step: tuple[int, ...] = ()  # ... and the step of its first occurrence
    recent: tuple[tuple[int, tuple[float, ...]], ...] = ()  # the last W + 1 readings (step, probabilities)
    last: tuple[float, ...] = ()  # the latest reading (for `sustained`)
    onset: dict[str, Any] | None = None  # set once, when the rule fires

    @classmethod
    def from_config(cls, logging_cfg: Any) -> OnlineDetector:
        return cls(logging_cfg.stage_window, logging_cfg.stage_rare_ratio, logging_cfg.stage_min_rise)

    @property
    def rare(self) -> tuple[int, ...]:
        top = max(self.base, default=0.0)
        return tuple(i for i, p in enumerate(self.base) if p < self.rare_ratio * top)

    @property
    def onset_step(self) -> int | None:
        return None if self.onset is None else int(self.onset["step"])

    def observe(self, step: int, probs: Mapping[str, float]) -> OnlineDetector:
        """The detector after the probe reading of `step` (probe order of the class names)."""
        if not self.names:  # the first reading is the base
            names = tuple(probs)
            values = tuple(float(probs[n]) for n in names)
            return dataclasses.replace(
                self,
                names=names,
                first_step=step,
                base=values,
                peak=values,
                peak_step=(step,) * len(values),
                recent=((step, values),),
                last=values,
            )
        values = tuple(float(probs[n]) for n in self.names)
        higher = [v > p for v, p in zip(values, self.peak)]
        state = dataclasses.replace(
            self,
            peak=tuple(v if h else p for v, p, h in zip(values, self.peak, higher)),
            peak_step=tuple(step if h else s for s, h in zip(self.peak_step, higher)),
            recent=(self.recent + ((step, values),))[-(self.window + 1) :],
            last=values,
        )
        if state.onset is None:
            onset = state._rule()
            if onset is not None:
                state = dataclasses.replace(state, onset=onset)
        return state

    def _rule(self) -> dict[str, Any] | None:
        if len(self.recent) < self.window + 1:
            return None
        rare = self.rare
        common = [i for i in range(len(self.names)) if i not in rare]
        if not rare or not common:
            return None
        steps = [s for s, _ in self.recent]
        series = list(zip(*(v for _, v in self.recent)))  # per class, the window's readings
        leader = max(common, key=lambda i: series[i][-1])
        falling = series[leader][-1] < series[leader][0]
        peaked = self.peak_step[leader] != self.first_step
        if not (falling and peaked):
            return None
        rising = [
            i
            for i in rare
            if all(b > a for a, b in itertools.pairwise(series[i]))
            and series[i][-1] >= (1.0 + self.min_rise) * series[i][0]
        ]
        if not rising:
            return None
        r = max(rising, key=lambda i: series[i][-1] / max(series[i][0], 1e-30))
        return {
            "step": steps[-1],
            "rise_start_step": steps[0],
            "rare_class": self.names[r],
            "rare_from": series[r][0],
            "rare_to": series[r][-1],
            "leader": self.names[leader],
            "leader_from": series[leader][0],
            "leader_to": series[leader][-1],
            "leader_peak": self.peak[leader],
            "leader_peak_step": self.peak_step[leader],
        }

    def metrics(self, step: int) -> dict[str, float]:
        """stage/onset (1 from the onset on, else 0) and, at the reading that fired, stage/onset_step."""
        out = {"stage/onset": float(self.onset is not None)}
        if self.onset_step == step:
            out["stage/onset_step"] = float(step)
        return out

    def report(self) -> dict[str, Any]:
        """For summary.json: the rule's parameters and the onset (or that there was none)."""
        out: dict[str, Any] = {
            "rule": f"a rare class (base < {self.rare_ratio} x the base leader) rises at each of the last "
            f"{self.window} probe points and by >= {self.min_rise:.0%} while the leader, which peaked after "
            "the base, is lower than W points earlier",
            "rare_classes": [self.names[i] for i in self.rare],
            "onset_step": self.onset_step,
        }
        if self.onset is not None:
            r = self.names.index(self.onset["rare_class"])
            out.update(self.onset, sustained=self.last[r] > self.onset["rare_to"])
            del out["step"]
        return out

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OnlineDetector:
        """The inverse of `to_json` after a JSON round trip (lists back to tuples; floats are exact)."""
        return cls(
            window=int(data["window"]),
            rare_ratio=float(data["rare_ratio"]),
            min_rise=float(data["min_rise"]),
            names=tuple(data["names"]),
            first_step=data["first_step"],
            base=tuple(data["base"]),
            peak=tuple(data["peak"]),
            peak_step=tuple(data["peak_step"]),
            recent=tuple((int(s), tuple(v)) for s, v in data["recent"]),
            last=tuple(data["last"]),
            onset=data["onset"],
        )


def describe_onset(report: Mapping[str, Any]) -> str:
    if report.get("onset_step") is None:
        return "online detector: no stage-2 onset"
    return (
        f"online detector: stage-2 onset at step {report['onset_step']} ({report['rare_class']} rose "
        f"{report['rare_from']:.4f} -> {report['rare_to']:.4f} from step {report['rise_start_step']} while "
        f"{report['leader']} fell {report['leader_from']:.4f} -> {report['leader_to']:.4f})"
    )
