"""advantage.schedule: which advantage setting is in force at each step (docs/algorithms.md section 2).

    advantage:
      sign: full
      schedule:
        - {at: 50, estimator: nsr}                  # from step 50 on (after 50 steps are done)
        - {at: onset, sign: negative_only}          # from the online detector's onset on
        - {at: onset, delay: 100, sign: full}       # 100 steps after the onset

Phase i (1-based) holds the settings of the advantage section overridden by every phase up to i; phase
0 is the section's own. Phases start in order: each at its own start step, or at the first step after
the previous one started, whichever is later; an onset phase waits until the detector has fired. The
advantage stage is jitted with its settings closed over, so the step context holds one jitted
function per phase (`phase_settings` gives them; identical settings share one) and the loop picks
one per step on the host. The phase in force and the step it started (`PhaseState`) are saved in
every checkpoint's meta record, so a resumed run switches exactly where the uninterrupted one did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr_jax.config import ONSET, AdvantageConfig, SchedulePhase


@dataclasses.dataclass(frozen=True)
class PhaseState:
    phase: int = 0  # phases started so far: 0 = the advantage section's own settings
    since: int = 0  # the step count from which it has been in force

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseState:
        return cls(int(data["phase"]), int(data["since"]))


def phase_settings(cfg: AdvantageConfig) -> list[AdvantageConfig]:
    """settings[i]: the advantage settings in force in phase i (without the schedule itself)."""
    out = [cfg.model_copy(update={"schedule": ()})]
    for phase in cfg.schedule:
        update = {k: v for k, v in (("sign", phase.sign), ("estimator", phase.estimator)) if v is not None}
        out.append(out[-1].model_copy(update=update))
    return out


def start_step(phase: SchedulePhase, onset: int | None) -> int | None:
    """The step count from which `phase` may start (None: an onset phase before the onset)."""
    if phase.at == ONSET:
        return None if onset is None else onset + phase.delay
    return int(phase.at)


def advance(state: PhaseState, schedule: Sequence[SchedulePhase], step: int, onset: int | None) -> PhaseState:
    """The phase in force for the update that follows `step` done steps (`onset`: the detector's onset
    step, or None). Called before every step, so a phase starts at the first step it may."""
    while state.phase < len(schedule):
        start = start_step(schedule[state.phase], onset)
        if start is None or start > step:
            break
        state = PhaseState(state.phase + 1, step)
    return state


def describe(cfg: AdvantageConfig, state: PhaseState) -> dict[str, Any]:
    """For summary.json: every phase's settings and the phase in force at the end."""
    settings = phase_settings(cfg)
    return {
        "phases": [
            {"at": "start" if i == 0 else cfg.schedule[i - 1].at, "estimator": s.estimator.value, "sign": s.sign.value}
            | ({"delay": cfg.schedule[i - 1].delay} if i and cfg.schedule[i - 1].at == ONSET else {})
            for i, s in enumerate(settings)
        ],
        "final_phase": state.phase,
        "final_phase_since": state.since,
    }
