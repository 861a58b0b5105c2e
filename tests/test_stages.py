"""The stage detector on hand-made probe series."""

import pytest

from rlvr_jax.stages import describe, detect_transition

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
