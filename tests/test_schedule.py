"""advantage.schedule: validation at load, the phases' settings, when each phase starts, one jitted
advantage stage per distinct setting, and which resume changes it makes unsafe."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.config import ConfigChanges, ConfigError, Estimator, SignFilter, load_config, save_config
from rlvr_jax.schedule import PhaseState, advance, describe, phase_settings
from rlvr_jax.step import make_phase_advantages

SCHEDULE = (
    "advantage.schedule=[{at: 0, sign: full}, {at: 10, estimator: nsr}, "
    "{at: onset, sign: negative_only}, {at: onset, delay: 5, estimator: grpo}]"
)


def test_a_schedule_loads_saves_and_stays_hashable(tmp_path):
    cfg = load_config("toy_strategy", [SCHEDULE])
    assert [p.at for p in cfg.advantage.schedule] == [0, 10, "onset", "onset"]
    assert cfg.advantage.uses_onset and hash(cfg.advantage)  # jit's static arguments need a hash
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert not load_config("toy_strategy").advantage.uses_onset


def test_each_phase_overrides_what_it_names_and_keeps_the_rest():
    cfg = load_config("toy_strategy", [SCHEDULE, "advantage.std=unbiased"])
    got = [(s.estimator, s.sign, s.std.value, s.schedule) for s in phase_settings(cfg.advantage)]
    assert got == [
        (Estimator.grpo, SignFilter.full, "unbiased", ()),  # phase 0: the section's own settings
        (Estimator.grpo, SignFilter.full, "unbiased", ()),
        (Estimator.nsr, SignFilter.full, "unbiased", ()),
        (Estimator.nsr, SignFilter.negative_only, "unbiased", ()),
        (Estimator.grpo, SignFilter.negative_only, "unbiased", ()),
    ]


def test_phases_start_in_order_at_their_step_or_the_onset():
    schedule = load_config("toy_strategy", [SCHEDULE]).advantage.schedule
    state, seen = PhaseState(), []
    for step in range(40):
        onset = 25 if step >= 25 else None  # the detector fires at probe step 25
        state = advance(state, schedule, step, onset)
        seen.append((state.phase, state.since))
    assert seen[0] == (1, 0) and seen[9] == (1, 0) and seen[10] == (2, 10) and seen[24] == (2, 10)
    assert seen[25] == (3, 25) and seen[29] == (3, 25) and seen[30] == (4, 30) and seen[39] == (4, 30)
    # An onset phase waits for a later step phase before it (phases start in order), and two phases
    # due at once both start.
    late = load_config("toy_strategy", ["advantage.schedule=[{at: 30, sign: full}, {at: onset, estimator: nsr}]"])
    assert advance(PhaseState(), late.advantage.schedule, 29, onset=5) == PhaseState(0, 0)
    assert advance(PhaseState(), late.advantage.schedule, 30, onset=5) == PhaseState(2, 30)
    assert describe(late.advantage, PhaseState(2, 30)) == {
        "phases": [
            {"at": "start", "estimator": "grpo", "sign": "full"},
            {"at": 30, "estimator": "grpo", "sign": "full"},
            {"at": "onset", "estimator": "nsr", "sign": "full", "delay": 0},
        ],
        "final_phase": 2,
        "final_phase_since": 30,
    }


@pytest.mark.parametrize(
    "schedule, message",
    [
        (
            "[{at: 5, sgn: full}]",
            r"advantage.schedule.0: unknown phase key\(s\) 'sgn'; valid: at, delay, sign, estimator",
        ),
        ("[{at: 5}]", "the phase at 5 changes nothing: give sign and/or estimator"),
        ("[{at: 5, delay: 2, sign: full}]", "delay is for at: onset"),
        ("[{at: 10, sign: full}, {at: 10, estimator: nsr}]", r"the step phases' `at` must increase, got \[10, 10\]"),
        ("[{at: onset, sign: full}, {at: 5, estimator: nsr}]", "step phases come before the onset phases"),
        ("[{at: onset, delay: 5, sign: full}, {at: onset, estimator: nsr}]", r"`delay` must increase, got \[5, 0\]"),
        ("[{at: -1, sign: full}]", "at must be a step number >= 0 or 'onset', got -1"),
        ("[{at: later, sign: full}]", "at must be a step number >= 0 or 'onset', got 'later'"),
        ("[{at: 5, sign: nope}]", "advantage.schedule.0.sign"),
        ("[5]", "a phase is a mapping"),
    ],
)
def test_bad_schedules_are_errors_at_load(schedule, message):
    with pytest.raises(ConfigError, match=message):
        load_config("toy_strategy", [f"advantage.schedule={schedule}"])


def test_an_onset_phase_needs_a_probe_with_file_data(tmp_path):
    files = ["data.source=jsonl", f"data.path={tmp_path / 'rows.jsonl'}"]
    onset = "advantage.schedule=[{at: onset, sign: negative_only}]"
    with pytest.raises(ConfigError, match="at: onset needs the probe .* set logging.probe_file"):
        load_config(None, [*files, onset])
    assert load_config(None, [*files, onset, "logging.probe_file=toy_strategy"]).advantage.uses_onset
    assert load_config(None, [*files, "advantage.schedule=[{at: 3, sign: negative_only}]"])  # steps need no probe


def test_an_onset_phase_needs_a_probe_with_a_registered_task_without_one():
    from rlvr_jax.loop import preflight
    from rlvr_jax.tasks import get_task

    onset = [
        "data.task=arithmetic",
        "model.arch.vocab_size=512",
        "advantage.schedule=[{at: onset, sign: negative_only}]",
    ]
    with pytest.raises(ConfigError, match="at: onset needs the probe .* task 'arithmetic' has none"):
        preflight(load_config("toy_strategy", onset), get_task("arithmetic"))
    preflight(load_config("toy_strategy", [*onset, "logging.probe_file=toy_strategy"]), get_task("arithmetic"))
    preflight(load_config("toy_strategy", onset[2:]), get_task("toy_strategy"))  # the toy task has its own


def test_detector_settings_change_the_maths_only_when_an_onset_phase_reads_them():
    plain = load_config("toy_strategy")
    saved = plain.model_dump(mode="json")
    changed = load_config("toy_strategy", ["logging.stage_window=5", "logging.probe_every=2"])
    assert ConfigChanges.between(saved, changed).trajectory == []
    onset = ["advantage.schedule=[{at: onset, sign: negative_only}]"]
    saved = load_config("toy_strategy", onset).model_dump(mode="json")
    changes = ConfigChanges.between(saved, load_config("toy_strategy", [*onset, "logging.stage_window=5"]))
    assert changes.trajectory == ["logging.stage_window: 2 -> 5"] and changes.harmless == []


REWARDS = jnp.asarray([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_one_jitted_stage_per_distinct_setting_and_each_computes_its_phase():
    cfg = load_config(
        "toy_strategy",
        ["advantage.schedule=[{at: 2, sign: full}, {at: 4, sign: negative_only}, {at: 6, sign: full}]"],
    )
    fns = make_phase_advantages(cfg)
    assert len(fns) == 4 and fns[0] is fns[1] is fns[3] and fns[2] is not fns[0]
    adv, weight, unfiltered = (np.asarray(x) for x in fns[0](REWARDS, None))
    np.testing.assert_allclose(adv[0], [np.sqrt(3), -np.sqrt(1 / 3), -np.sqrt(1 / 3), -np.sqrt(1 / 3)], rtol=1e-5)
    assert np.all(adv[1] == 0) and np.all(weight == 1) and np.array_equal(unfiltered, adv)
    neg, _, neg_unfiltered = (np.asarray(x) for x in fns[2](REWARDS, None))
    np.testing.assert_allclose(neg[0], [0.0, *adv[0, 1:]], rtol=1e-6)
    np.testing.assert_array_equal(neg_unfiltered, unfiltered)  # the dynamics statistics' split is unchanged
    # Without a schedule: one stage, the one the run always had.
    assert len(make_phase_advantages(load_config("toy_strategy"))) == 1


def test_a_phase_that_cannot_run_is_refused_at_load():
    args = ["rollout.group_size=1", "advantage.estimator=nsr"]
    assert load_config("toy_strategy", [*args, "advantage.schedule=[{at: 50, sign: negative_only}]"])
    with pytest.raises(
        ConfigError, match=r"rollout.group_size=1 with advantage.schedule.1.estimator=rloo: the estimator compares"
    ):
        load_config("toy_strategy", [*args, "advantage.schedule=[{at: 5, estimator: psr}, {at: 50, estimator: rloo}]"])


def test_steering_state_fresh_saved_and_replayed_for_an_older_checkpoint(tmp_path):
    """setup's detector and phase: fresh (the base reading seen), from a checkpoint's meta record, or,
    for a checkpoint written before they were saved, the detector replayed from metrics.jsonl."""
    from rlvr_jax.loop import steering_state
    from rlvr_jax.probe import Probe, ProbeArrays
    from rlvr_jax.stages import OnlineDetector
    from tests.test_stages import ONLINE_STEPS, TWO_STAGE

    onset = "advantage.schedule=[{at: onset, sign: negative_only}]"
    cfg = load_config("toy_strategy", [f"run.run_dir={tmp_path}", "logging.stage_window=3", onset])
    names = ["S1", "S2", "S3"]
    probe = Probe(lambda params: None, ProbeArrays(None, names, None, np.zeros((1, 3)), None, [], np.zeros((0, 1))))
    rows = [{"step": s, **{f"probe/pi_{n}": TWO_STAGE[n][i] for n in names}} for i, s in enumerate(ONLINE_STEPS)]
    base = rows[0]
    logged = []
    stages, phase = steering_state(cfg, probe, None, base, 0, logged.append)
    assert stages == OnlineDetector(window=3).observe(0, {n: base[f"probe/pi_{n}"] for n in names})
    assert phase == PhaseState() and logged == []
    uninterrupted = OnlineDetector(window=3)
    for row in rows:
        uninterrupted = uninterrupted.observe(row["step"], {n: row[f"probe/pi_{n}"] for n in names})
    assert uninterrupted.onset_step == 40
    saved = {
        "config": cfg.model_dump(mode="json"),
        "base_eval": base,
        "stages": json.loads(json.dumps(uninterrupted.to_json())),
        "schedule": {"phase": 1, "since": 40},
    }
    stages, phase = steering_state(cfg, probe, saved, base, 55, logged.append)
    assert stages == uninterrupted and phase == PhaseState(1, 40)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    older = {"config": saved["config"], "base_eval": base}
    stages, phase = steering_state(cfg, probe, older, base, 55, logged.append)
    assert stages == uninterrupted and phase == PhaseState(1, 55)  # the phase's start is not on record: now
    # Resumed under other detector settings (--allow-config-change): the detector is replayed with the
    # new ones, not restored with the old. W = 2 fires at 35 on this series (tests/test_stages.py).
    window2 = load_config("toy_strategy", [f"run.run_dir={tmp_path}", "logging.stage_window=2", onset])
    stages, phase = steering_state(window2, probe, saved, base, 55, logged.append)
    assert stages.window == 2 and stages.onset_step == 35 and phase == PhaseState(1, 40)  # the phase as saved
    # Resumed under another schedule: the saved phase belongs to the old one; recomputed from the onset.
    two = load_config(
        "toy_strategy",
        [
            f"run.run_dir={tmp_path}",
            "logging.stage_window=3",
            "advantage.schedule=[{at: 10, sign: negative_only}, {at: onset, delay: 30, sign: full}]",
        ],
    )
    stages, phase = steering_state(two, probe, saved, base, 55, logged.append)
    assert stages == uninterrupted and phase == PhaseState(1, 55)  # the onset phase is due at 40 + 30 = 70
    stages, phase = steering_state(two, probe, saved, base, 70, logged.append)
    assert phase == PhaseState(2, 70)
    assert logged == []
    # A probe without a rare class: the onset phase can never start, and the run says so.
    flat = {"step": 0, "probe/pi_S1": 0.3, "probe/pi_S2": 0.3, "probe/pi_S3": 0.4}
    steering_state(cfg, probe, None, flat, 0, logged.append)
    assert logged and "the onset phases will not start" in logged[-1]
