"""Watching a run: W&B (a recording fake module here; the real package offline when installed),
sampled completions in rollouts.jsonl, TensorBoard text and W&B tables, at the rollout cadence."""

import dataclasses
import struct
import sys
import types

import numpy as np
import pytest

from rlvr_jax import cli
from rlvr_jax.config import ConfigError, load_config
from rlvr_jax.wandb_log import MISSING, RUN_ID_FILE, WandbRun, check_logging, wandb_run
from rlvr_jax.writers import MetricWriter, RolloutLog, markdown_table, read_jsonl, sample_table
from tests.test_resume import run_args

# --- a fake wandb module ------------------------------------------------------------------------


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


@dataclasses.dataclass
class FakeRun:
    calls: list
    id: str

    def log(self, data, step):
        self.calls.append(("log", step, data))

    def finish(self, exit_code):
        self.calls.append(("finish", exit_code))


class FakeWandb(types.ModuleType):
    """Stands in for `wandb` in sys.modules and records every call: no network, no install."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []
        self.Table = FakeTable

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return FakeRun(self.calls, kwargs["id"] or "fake1234")


def logged_rows(calls):
    """(step, data) of the metrics rows sent to W&B (the table logs left out)."""
    return [(c[1], c[2]) for c in calls if c[0] == "log" and "rollouts" not in c[2]]


def logged_tables(calls):
    return [(c[1], c[2]["rollouts"]) for c in calls if c[0] == "log" and "rollouts" in c[2]]


def tb_texts(folder):
    """{(tag, step): text} of the text summaries in a TensorBoard folder (TFRecord frames: length,
    its CRC, an Event proto, its CRC), read with tensorboardX's own protos."""
    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    out[(value.tag, event.step)] = value.tensor.string_val[0].decode()
    return out


# --- a short training run with logging.wandb, stopped at step 2 and resumed -----------------------

WATCH = [
    "checkpoint.every=2",
    "eval.every=0",
    "logging.probe_every=2",
    "logging.tensorboard=true",
    "logging.rollouts_every=2",
    "logging.rollouts_per_step=2",
    "logging.wandb.project=watch",
    "logging.wandb.tags=[rl, toy]",
]


@pytest.fixture(scope="module")
def watched(toy_base, tmp_path_factory):
    """(run dir, W&B calls of the first invocation (steps 1-2), calls of the resumed one (3-4))."""
    run_dir = tmp_path_factory.mktemp("watched")
    fake = FakeWandb()
    args = ["train", "--run-dir", str(run_dir), *run_args(toy_base, *WATCH)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", fake)
        assert cli.main([*args, "--stop-at", "2"]) == 0
        first = list(fake.calls)
        fake.calls.clear()
        assert cli.main(args) == 0
    return run_dir, first, list(fake.calls)


@pytest.mark.slow
def test_wandb_gets_the_config_rows_tables_and_finish(watched):
    run_dir, calls, _ = watched
    cfg = load_config(run_dir / "config.yaml")
    (kind, init), *rest = calls
    assert kind == "init" and not any(c[0] == "init" for c in rest)
    assert init["project"] == "watch" and init["name"] == cfg.run.name == "toy_strategy"
    assert init["tags"] == ["rl", "toy"] and init["mode"] == "online" and init["dir"] == str(run_dir)
    assert init["config"] == cfg.model_dump(mode="json") and init["id"] is None and init["resume"] is None
    assert (run_dir / RUN_ID_FILE).read_text().strip() == "fake1234"
    rows = read_jsonl(run_dir / "metrics.jsonl")[:3]  # this invocation's rows (steps 0-2)
    sent = logged_rows(calls)
    assert [step for step, _ in sent] == [r["step"] for r in rows] == [0, 1, 2]
    for (_, data), row in zip(sent, rows):
        scalars = {k for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        assert data.keys() == scalars
        assert all(data[k] == row[k] for k in data)
    assert any(isinstance(v, list) for v in rows[1].values())  # histograms: in metrics.jsonl, not W&B
    ((step, table),) = logged_tables(calls)
    logged = read_jsonl(run_dir / "rollouts.jsonl")[0]
    assert step == 2 and table.columns == ["step", "prompt_index", "prompt", "completion", "reward"]
    assert table.data == [[2, *row] for row in sample_table(logged)[1]] and len(table.data) == 2
    steps = [c[1] for c in calls if c[0] == "log"]
    assert steps == sorted(steps)  # W&B drops a step below its last one
    assert calls[-1] == ("finish", 0)


@pytest.mark.slow
def test_resumed_run_continues_the_same_wandb_run(watched):
    run_dir, _, calls = watched
    (kind, init), *rest = calls
    assert kind == "init" and init["id"] == "fake1234" and init["resume"] == "allow"
    assert not any(c[0] == "init" for c in rest) and (run_dir / RUN_ID_FILE).read_text().strip() == "fake1234"
    assert [step for step, _ in logged_rows(calls)] == [3, 4]
    assert [step for step, _ in logged_tables(calls)] == [4]
    assert calls[-1] == ("finish", 0)


@pytest.mark.slow
def test_rollouts_are_logged_at_the_cadence_with_the_selected_rows(watched):
    run_dir, _, _ = watched
    rows = read_jsonl(run_dir / "rollouts.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert all(len(row[k]) == 2 for k in ("prompt_index", "tokens", "text", "reward"))
        assert len(set(row["prompt_index"])) == 2  # two prompts' first samples, not one prompt's group
    texts = tb_texts(run_dir / "tensorboard")
    assert sorted(texts) == [("rollouts/text_summary", 2), ("rollouts/text_summary", 4)]
    for row in rows:
        assert texts[("rollouts/text_summary", row["step"])] == markdown_table(*sample_table(row))


def test_missing_wandb_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--run-dir", str(run_dir), "logging.wandb.project=p"])
    assert str(err.value) == f"rlvr-jax train: {MISSING}" and "\n" not in MISSING
    assert not run_dir.exists()  # no warm start, dataset or checkpoint directory was begun
    check_logging(load_config(None, ["logging.wandb.project=p", "logging.wandb.mode=disabled"]))


# --- the pieces -----------------------------------------------------------------------------------


def fake_rollouts(prompts=3, group=2):
    rows = prompts * group
    rollout = types.SimpleNamespace(tokens=np.arange(rows * 4).reshape(rows, 4), lengths=np.arange(rows) % 4 + 1)
    index = np.repeat([7, 3, 9][:prompts], group)
    texts = [f"t{i}" for i in range(rows)]
    return index, rollout, texts, np.linspace(0.0, 1.0, rows), [f"p{i}" for i in index]


@pytest.mark.parametrize(("per_step", "kept"), [(2, [0, 2]), (5, [0, 2, 4]), (0, [0, 1, 2, 3, 4, 5])])
def test_rollout_log_keeps_each_prompts_first_sample(tmp_path, per_step, kept):
    shown = []
    log = RolloutLog(tmp_path, True, group_size=2, per_step=per_step, show=lambda *a: shown.append(a))
    index, rollout, texts, rewards, prompts = fake_rollouts()
    log.write(5, index, rollout, texts, rewards, prompts)
    log.close()
    (row,) = read_jsonl(tmp_path / "rollouts.jsonl")
    assert list(row) == ["step", "prompt_index", "prompt", "tokens", "text", "reward"] and row["step"] == 5
    assert row["prompt_index"] == index[kept].tolist() and row["text"] == [texts[i] for i in kept]
    assert row["prompt"] == [f"p{i}" for i in index[kept]] and row["reward"] == rewards[kept].tolist()
    assert row["tokens"] == [rollout.tokens[i][: rollout.lengths[i]].tolist() for i in kept]
    columns = ["prompt_index", "prompt", "completion", "reward"]
    assert shown == [(5, columns, [[int(index[i]), f"p{index[i]}", texts[i], rewards[i]] for i in kept])]


def test_rollout_log_without_prompt_text_keeps_the_old_columns(tmp_path):
    log = RolloutLog(tmp_path, True, group_size=2, per_step=1)
    index, rollout, texts, rewards, _ = fake_rollouts()
    log.write(1, index, rollout, texts, rewards)
    log.close()
    (row,) = read_jsonl(tmp_path / "rollouts.jsonl")
    assert list(row) == ["step", "prompt_index", "tokens", "text", "reward"] and row["text"] == ["t0"]


def test_markdown_table_shows_the_text_as_sampled():
    table = markdown_table(["prompt_index", "completion", "reward"], [[3, "a|b\n<S2> *x*", 1 / 3]])
    assert table.splitlines() == [
        "| prompt_index | completion | reward |",
        "|---|---|---|",
        r"| 3 | a\|b<br>&lt;S2&gt; \*x\* | 0.3333 |",
    ]


def test_metric_writer_sends_scalars_and_samples_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    calls = []
    writer = MetricWriter(tmp_path, tensorboard=True, enabled=True, wandb=WandbRun(FakeRun(calls, "x")))
    writer.write(3, {"loss": 0.5, "n": 2, "dyn/hist/pos": [0.5, 0.5], "kl": None})
    writer.write_samples(3, ["prompt_index", "completion", "reward"], [[1, "hi", 0.0]])
    writer.close()
    assert calls[0] == ("log", 3, {"loss": 0.5, "n": 2})
    ((step, table),) = logged_tables(calls)
    assert step == 3 and table.data == [[3, 1, "hi", 0.0]]
    table_md = markdown_table(["prompt_index", "completion", "reward"], [[1, "hi", 0.0]])
    assert tb_texts(tmp_path / "tensorboard") == {("rollouts/text_summary", 3): table_md}


def test_wandb_config_is_strict():
    cfg = load_config(None, ["logging.wandb.project=p"])
    assert cfg.logging.wandb.mode.value == "online" and cfg.logging.wandb.tags == [] and cfg.logging.wandb.name is None
    assert (cfg.logging.rollouts_every, cfg.logging.rollouts_per_step) == (10, 4)
    assert load_config(None).logging.wandb is None
    with pytest.raises(ConfigError, match=r"'logging.wandb.project': Field required"):
        load_config(None, ["logging.wandb.name=x"])
    with pytest.raises(ConfigError, match=r"logging.wandb.mode"):
        load_config(None, ["logging.wandb.project=p", "logging.wandb.mode=sometimes"])
    with pytest.raises(ConfigError, match=r"did you mean 'logging.wandb.project'"):
        load_config(None, ["logging.wandb.projct=p"])


def test_real_wandb_offline_run_resumes_by_id(tmp_path, monkeypatch):
    """The real package (the `wandb` extra), offline: the calls above are the ones it accepts."""
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, ["logging.wandb.project=p", "logging.wandb.mode=offline", "logging.wandb.tags=[a]"])
    for resumed, steps in ((False, (0, 1)), (True, (2, 3))):
        with wandb_run(cfg, tmp_path, resumed) as run:
            for step in steps:
                run.log(step, {"loss": 1.0 / (step + 1), "dyn/hist/pos": [1.0], "kl": None})
            run.log_samples(steps[-1], ["prompt_index", "completion", "reward"], [[0, "a|b", 1.0]])
            ids = run.run.id
        assert (tmp_path / RUN_ID_FILE).read_text().strip() == ids
    folders = list((tmp_path / "wandb").glob("offline-run-*"))
    assert folders and {f.name.rsplit("-", 1)[1] for f in folders} == {ids}  # both sessions: one W&B run
