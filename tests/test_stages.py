"""The stage detectors on hand-made probe series: the offline transition and the online onset."""

import json

import pytest

from rlvr_jax.stages import OnlineDetector, describe, describe_onset, detect_transition

STEPS = [0, 10, 20, 30, 40, 50]


def test_two_stage_run():
    probs = {
        "S1": [0.30, 0.80, 0.95, 0.60, 0.10, 0.01],
        "S2": [0.02, 0.01, 0.03, 0.38, 0.89, 0.99],
        "S3": [0.68, 0.19, 0.02, 0.02, 0.01, 0.00],
    }
    out = detect_transition(STEPS, probs)
    assert out["transition"] and out["step"] == 40 and out["new_leader"] == "S2" and out["previous_leader"] == "S1"
    assert out["rare_classes"] == ["S2"]
    assert (
        out["exploitation_peak_class"] == "S1"
        and out["exploitation_peak"] == 0.95
        and out["exploitation_peak_step"] == 20
    )
    assert "step 40" in describe(out)


def test_a_rare_class_leading_only_briefly_is_not_a_transition():
    probs = {
        "S1": [0.30, 0.40, 0.30, 0.90, 0.95, 0.97],
        "S2": [0.02, 0.50, 0.60, 0.05, 0.03, 0.02],
        "S3": [0.68, 0.10, 0.10, 0.05, 0.02, 0.01],
    }
    out = detect_transition(STEPS, probs)
    assert not out["transition"] and out["leader_at_end"] == "S1"
    assert out["best_rare_class"] == "S2" and out["best_rare_peak"] == 0.6 and out["best_rare_peak_step"] == 20
    assert "no exploitation -> exploration transition" in describe(out)


def test_no_rare_class_and_no_data():
    out = detect_transition([0, 1], {"a": [0.5, 0.2], "b": [0.5, 0.8]})
    assert not out["transition"] and out["rare_classes"] == [] and "best_rare_class" not in out
    assert detect_transition([], {})["reason"] == "no probe data"
    with pytest.raises(ValueError, match="2 steps but 3 probe values"):
        detect_transition([0, 1], {"a": [0.1, 0.2, 0.3]})


# --- the online detector (stage-2 onset on the paper's definition) ---------------------------------

ONLINE_STEPS = list(range(0, 60, 5))
# A noisy two-stage run. S2 ticks up at step 20 and falls back (noise); from step 25 it rises at every
# probe point while S1, which peaked at 0.96 at step 20, is lower than three points earlier.
TWO_STAGE = {
    "S1": [0.30, 0.60, 0.85, 0.95, 0.96, 0.955, 0.958, 0.95, 0.93, 0.90, 0.80, 0.60],
    "S2": [0.020, 0.015, 0.012, 0.010, 0.011, 0.009, 0.010, 0.012, 0.015, 0.020, 0.080, 0.300],
    "S3": [0.68, 0.385, 0.138, 0.04, 0.029, 0.036, 0.032, 0.038, 0.055, 0.08, 0.12, 0.10],
}


def feed(probs, steps=ONLINE_STEPS, detector=None):
    """The detector (by default with a window of W = 3 probe points) after each reading, and the
    metrics it logged at each."""
    detector = detector or OnlineDetector(window=3)
    states, metrics = [], []
    for t, step in enumerate(steps):
        detector = detector.observe(step, {name: values[t] for name, values in probs.items()})
        states.append(detector)
        metrics.append(detector.metrics(step))
    return states, metrics


def test_online_onset_is_where_the_rare_class_rises_while_the_leader_falls():
    states, metrics = feed(TWO_STAGE)
    # At 35 the window 20..35 holds S2 = 0.011, 0.009, 0.010, 0.012: not rising at every point.
    # At 40 it holds 0.009, 0.010, 0.012, 0.015 (x1.67 >= 1.1) and S1 went 0.955 -> 0.93.
    assert [m["stage/onset"] for m in metrics] == [0.0] * 8 + [1.0] * 4
    assert [m.get("stage/onset_step") for m in metrics] == [None] * 8 + [40.0] + [None] * 3
    report = states[-1].report()
    assert report["onset_step"] == 40 and report["rise_start_step"] == 25
    assert report["rare_class"] == "S2" and report["leader"] == "S1" and report["rare_classes"] == ["S2"]
    assert (report["rare_from"], report["rare_to"]) == (0.009, 0.015)
    assert (report["leader_from"], report["leader_to"]) == (0.955, 0.93)
    assert (report["leader_peak"], report["leader_peak_step"]) == (0.96, 20)
    assert report["sustained"] is True  # S2 ends at 0.30 > 0.015
    assert "onset at step 40" in describe_onset(report)
    # The offline detector on the same series: S2 never leads, so no transition (S1 leads at the end).
    assert not detect_transition(ONLINE_STEPS, TWO_STAGE)["transition"]


def test_a_shorter_window_fires_sooner_and_a_larger_minimum_rise_later():
    # W = 2: at 35 the window 25..35 holds S2 = 0.009, 0.010, 0.012 (x1.33) and S1 went 0.955 -> 0.95.
    states, _ = feed(TWO_STAGE, detector=OnlineDetector(window=2))
    assert states[-1].onset_step == 35 and states[-1].onset["rise_start_step"] == 25
    # min_rise 1.5 (x2.5 over the window): x1.67 at 40 and x2.0 at 45 (0.010 -> 0.020) are too small;
    # 0.012 -> 0.080 at 50 is enough, with S1 at 0.80 < 0.95.
    states, _ = feed(TWO_STAGE, detector=OnlineDetector(window=3, min_rise=1.5))
    assert states[-1].onset_step == 50 and states[-1].onset["rise_start_step"] == 35


def test_no_onset_when_the_rare_class_keeps_falling():
    # Negative-only style: S3's mass goes to S1; S2 decays with small upward ticks.
    probs = {
        "S1": [0.30, 0.50, 0.70, 0.85, 0.93, 0.97, 0.98, 0.985, 0.984, 0.986, 0.985, 0.99],
        "S2": [0.020, 0.026, 0.020, 0.014, 0.010, 0.011, 0.007, 0.006, 0.0065, 0.004, 0.0041, 0.003],
        "S3": [0.68, 0.474, 0.28, 0.136, 0.06, 0.019, 0.013, 0.009, 0.0095, 0.01, 0.0109, 0.007],
    }
    states, metrics = feed(probs)
    assert all(m == {"stage/onset": 0.0} for m in metrics)
    assert states[-1].report() == {
        "rule": states[-1].report()["rule"],
        "rare_classes": ["S2"],
        "onset_step": None,
    }


def test_no_onset_at_the_start_when_only_the_base_leader_falls():
    # S2 rises three times in a row at once, while S3 (the base leader) falls: S3 never rose above its
    # base value, so this is the exploitation stage redistributing S3's mass, not an onset.
    probs = {
        "S1": [0.30, 0.33, 0.36, 0.39],
        "S2": [0.020, 0.025, 0.030, 0.035],
        "S3": [0.68, 0.645, 0.61, 0.575],
    }
    states, metrics = feed(probs, steps=[0, 5, 10, 15])
    assert [m["stage/onset"] for m in metrics] == [0.0] * 4 and states[-1].onset is None


def test_onset_then_reversal_latches_and_reports_not_sustained():
    probs = {
        "S1": [0.30, 0.90, 0.97, 0.96, 0.95, 0.94, 0.96, 0.98],
        "S2": [0.02, 0.01, 0.005, 0.006, 0.008, 0.011, 0.007, 0.004],
        "S3": [0.68, 0.09, 0.025, 0.034, 0.042, 0.049, 0.033, 0.016],
    }
    states, metrics = feed(probs, steps=list(range(0, 40, 5)))
    assert [m["stage/onset"] for m in metrics] == [0.0] * 5 + [1.0] * 3  # fires at 25 and stays
    report = states[-1].report()
    assert report["onset_step"] == 25 and report["rare_to"] == 0.011 and report["sustained"] is False


def test_no_rare_class_never_fires():
    probs = {"a": [0.5, 0.7, 0.6, 0.5, 0.4], "b": [0.5, 0.3, 0.4, 0.5, 0.6]}
    # b rises three times in a row while a falls from its peak, but b was never rare (0.5 at the base)
    states, metrics = feed(probs, steps=[0, 1, 2, 3, 4])
    assert states[-1].rare == () and states[-1].report()["rare_classes"] == []
    assert [m["stage/onset"] for m in metrics] == [0.0] * 5


def test_detector_state_survives_a_json_round_trip_and_resumes_identically():
    """What a checkpoint does: save the state in the meta record (JSON), restore it, continue."""
    full, full_metrics = feed(TWO_STAGE)
    for cut in (1, 5, 9):  # before the onset, inside its window, after it
        first = {n: v[:cut] for n, v in TWO_STAGE.items()}
        rest = {n: v[cut:] for n, v in TWO_STAGE.items()}
        head, head_metrics = feed(first, steps=ONLINE_STEPS[:cut])
        restored = OnlineDetector.from_json(json.loads(json.dumps(head[-1].to_json())))
        assert restored == head[-1]
        tail, tail_metrics = feed(rest, steps=ONLINE_STEPS[cut:], detector=restored)
        assert tail[-1] == full[-1] and head_metrics + tail_metrics == full_metrics


def test_detector_defaults_are_the_config_defaults():
    from rlvr_jax.config import LoggingConfig

    assert OnlineDetector.from_config(LoggingConfig()) == OnlineDetector()


def test_a_policy_collapsed_onto_other_tokens_is_not_a_takeover():
    # A graded GRPO-N run did this: by step 20 the decision token's mass left the three strategies
    # (rest 0.9999); S2 (6e-5) edged past S1 (2e-5), which without the rest mass read as S2 leading.
    probs = {"S1": [0.29, 0.3, 1e-4, 2e-5], "S2": [0.017, 0.01, 1e-4, 6e-5], "S3": [0.69, 0.6, 1e-5, 1e-8]}
    rest = [0.0005, 0.09, 0.9998, 0.99992]
    assert detect_transition(STEPS[:4], probs)["transition"]  # the old reading
    out = detect_transition(STEPS[:4], probs, rest=rest)
    assert not out["transition"] and out["leader_at_end"] == "rest"
    # A small rest mass changes nothing: the two-stage run above keeps its transition at step 40.
    two_stage = {
        "S1": [0.30, 0.80, 0.95, 0.60, 0.10, 0.01],
        "S2": [0.02, 0.01, 0.03, 0.38, 0.89, 0.99],
        "S3": [0.68, 0.19, 0.02, 0.02, 0.01, 0.00],
    }
    assert detect_transition(STEPS, two_stage, rest=[0.001] * 6)["step"] == 40
    with pytest.raises(ValueError):
        detect_transition(STEPS, two_stage, rest=[0.0] * 5)
