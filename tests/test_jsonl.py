"""Step logs with damaged lines (metrics.jsonl, rollouts.jsonl): reading skips them with a warning
naming the file and line, trimming on resume drops them and repeated / out-of-order steps the same
way, and `rlvr-jax plot` (and the end-of-run summary, which reads through `read_jsonl`) go on."""

import json
import logging
import os

import pytest

from rlvr_jax.evaluate import read_evals
from rlvr_jax.plots import plot_run
from rlvr_jax.writers import MAX_LINE_WARNINGS, read_jsonl, trim_jsonl


def row(step, **values):
    return json.dumps({"step": step, **values})


def write_lines(path, lines, end="\n"):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + end.encode())
    return path


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_read_jsonl_skips_bad_lines_with_one_warning_each(tmp_path, caplog):
    path = write_lines(
        tmp_path / "metrics.jsonl",
        [
            row(0, loss=1.0),
            '{"step": 1, "loss": 0.9',  # torn by a kill
            "[1, 2]",  # JSON, not an object
            '{"loss": 0.8}',  # no step
            '{"step": "3"}',  # not an integer step
            '{"step": true}',
            b'{"step": 4, "loss": \xff\xfe}',  # bytes damaged on disk: not UTF-8
            "",
            row(5, loss=0.5),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.writers"):
        rows = read_jsonl(path)
    assert rows == [{"step": 0, "loss": 1.0}, {"step": 5, "loss": 0.5}]
    warnings = warnings_of(caplog)
    assert warnings[0].startswith(f"{path} line 2: not valid JSON (")
    assert warnings[1:5] == [
        f"{path} line 3: not a JSON object (an array); skipped",
        f"{path} line 4: no integer step (step = None); skipped",
        f"{path} line 5: no integer step (step = '3'); skipped",
        f"{path} line 6: no integer step (step = True); skipped",
    ]
    # the 6th bad line is past MAX_LINE_WARNINGS: counted in one closing line
    assert warnings[5:] == [f"{path}: 1 more bad lines skipped"] and MAX_LINE_WARNINGS == 5


def test_read_jsonl_without_steps_keeps_objects_and_a_clean_file_warns_nothing(tmp_path, caplog):
    path = write_lines(tmp_path / "any.jsonl", ['{"a": 1}', "oops", row(2)])
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.writers"):
        assert read_jsonl(path, step_log=False) == [{"a": 1}, {"step": 2}]
        assert warnings_of(caplog) == [
            f"{path} line 2: not valid JSON (Expecting value: line 1 column 1 (char 0)); skipped"
        ]
        caplog.clear()
        clean = write_lines(tmp_path / "clean.jsonl", [row(0), row(1)])
        assert read_jsonl(clean) == [{"step": 0}, {"step": 1}] and warnings_of(caplog) == []
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_trim_keeps_increasing_steps_up_to_the_restored_one(tmp_path, caplog):
    path = write_lines(
        tmp_path / "metrics.jsonl",
        [
            row(0, loss=1.0),
            row(2, loss=0.9),
            "{garbage",  # line 3
            row(3, loss=0.8),
            row(3, loss=123.0),  # line 5: a repeated step
            row(1, loss=7.0),  # line 6: out of order
            "[2]",  # line 7: not an object
            row(4, loss=0.7),
            row(5, loss=0.6),  # after the restored step: the resumed run writes it again
        ],
    )
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.writers"):
        trim_jsonl(path, 4)
    assert [(r["step"], r["loss"]) for r in read_jsonl(path)] == [(0, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
    warnings = warnings_of(caplog)
    assert len(warnings) == 4 and warnings[0].startswith(f"{path} line 3: not valid JSON (")
    assert warnings[1:] == [
        f"{path} line 5: step 3 again (first on line 4); dropped",
        f"{path} line 6: step 1 out of order (after step 3 on line 4); dropped",
        f"{path} line 7: not a JSON object (an array); dropped",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # atomic: no temp file left


def test_a_resumed_log_continues_in_order(tmp_path):
    """The issue's case: a garbage row with a repeated step was kept, so after the resume step 2
    appeared twice and out of order."""
    from rlvr_jax.writers import JsonlSink

    path = write_lines(tmp_path / "metrics.jsonl", [row(0), row(1), row(2), row(3), row(2, garbage=1), row(4)])
    trim_jsonl(path, 2)
    sink = JsonlSink(path, append=True)
    for step in (3, 4):
        sink.add(row(step))
    sink.close()
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2, 3, 4]


def test_trim_leaves_a_clean_file_alone_and_ends_a_torn_file_with_a_newline(tmp_path, caplog):
    clean = write_lines(tmp_path / "clean.jsonl", [row(0), row(1)])
    before = clean.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.writers"):
        trim_jsonl(clean, 1)
    assert clean.stat().st_mtime_ns == before and warnings_of(caplog) == []
    # a last row written without its newline: kept, and the file ends with one, so the next row
    # appended is a line of its own
    unended = write_lines(tmp_path / "unended.jsonl", [row(0), row(1)], end="")
    trim_jsonl(unended, 1)
    assert unended.read_text() == row(0) + "\n" + row(1) + "\n"


@pytest.fixture
def messy_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = []
    for step in range(12):
        values = {"reward/mean": step / 12, "entropy": 1.0 - step / 20}
        values |= {"probe/pi_S1": 0.5 - step / 30, "probe/pi_S2": 0.2 + step / 30, "probe/pi_rest": 0.3}
        values |= {
            f"dyn/{k}/{s}": 0.1 * step
            for k in ("pi_old", "saturated", "rare", "dlogp", "dtop1")
            for s in ("pos", "neg")
        }
        values |= {"dyn/tokens/pos": 10, "dyn/tokens/neg": "garbage" if step == 4 else 8}  # a damaged value
        rows.append(row(step, **values))
    rows[3:3] = [
        '{"step": 3, "reward/mean',
        row(2, **{"reward/mean": 9.0}),
        "null",
        row(1),
    ]  # bad, repeated, non-object, earlier
    write_lines(run_dir / "metrics.jsonl", rows)
    (run_dir / "evals").mkdir()
    problems = [{"id": i, "c": i % 2, "n": 2} for i in range(4)]
    for step in (0, 12):
        report = {"step": step, "n": 2, "pass_at_k": {"1": 0.5, "2": 0.6}, "subsets": {}, "problems": problems}
        (run_dir / "evals" / f"step_{step:06d}.json").write_text(json.dumps(report))
    (run_dir / "evals" / "step_000006.json").write_text('{"step": 6, "n": 2, "pass_at')  # torn
    (run_dir / "evals" / "step_000008.json").write_text('{"step": 8}')  # not a report
    return run_dir


def test_plot_survives_bad_lines_and_bad_eval_files(messy_run, caplog):
    with caplog.at_level(logging.WARNING):
        made = plot_run(messy_run)
    assert sorted(p.name for p in made) == [
        "boundary.png",
        "dynamics.png",
        "pass_at_k.png",
        "probe.png",
        "training.png",
    ]
    assert all(os.path.getsize(p) > 1000 for p in made)
    warnings = warnings_of(caplog)
    assert any(f"{messy_run / 'metrics.jsonl'} line 4: not valid JSON" in w for w in warnings)
    assert any(f"{messy_run / 'metrics.jsonl'} line 6: not a JSON object (null)" in w for w in warnings)
    assert any(w.startswith(f"{messy_run / 'evals' / 'step_000006.json'}: not valid JSON") for w in warnings)
    assert (
        f"{messy_run / 'evals' / 'step_000008.json'}: not an evaluation report (missing or wrong n, pass_at_k, subsets, problems); skipped"
        in warnings
    )
    assert [e["step"] for e in read_evals(messy_run)] == [0, 12]
