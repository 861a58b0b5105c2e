"""Run directories in a bucket (gs://), against a local GCS emulator: a run killed in the middle of a
save resumes and equals a local run bit for bit; the model loads from the bucket; eval, plot and
export read a bucket run; JSONL rows reach the bucket by `persist`, without appends.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from rlvr_jax import cli
from rlvr_jax.checkpoint import KILL_IN_SAVE_ENV, move_aside
from rlvr_jax.storage import as_path, local_cache, upload_dir, write_text_atomic
from rlvr_jax.writers import JsonlSink, read_jsonl, trim_jsonl
from tests.test_resume import STEPS, assert_same_run, run_args, run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BUCKET = "rlvr-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """An emulated bucket; this process and its children reach it through the emulator variables."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), BUCKET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the GCS emulator did not start"
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        "GOOGLE_CLOUD_PROJECT": "test",
        "RLVR_JAX_LOCAL_CACHE": str(tmp_path_factory.mktemp("local_cache")),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def local_run(toy_base, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local_run")
    done = run_cli(run_dir, run_args(toy_base, "checkpoint.every=1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def bucket_run(gcs, toy_base, local_run, tmp_path_factory):
    """A run killed while saving step 3 into the bucket, its step 2 torn, then restarted (the model is read
    from the bucket too)."""
    folder, _data = toy_base
    model = epath.Path(f"gs://{BUCKET}/models/toy")
    upload_dir(Path(folder), model)
    run_dir = epath.Path(f"gs://{BUCKET}/runs/killed")
    args = run_args(toy_base, "checkpoint.every=1", f"model.path={model}", "logging.tensorboard=true")
    cwd = tmp_path_factory.mktemp("cwd")  # where a path mistaken for a local one ("gs:/...") would appear
    killed = run_cli(run_dir, args, extra_env={**gcs, KILL_IN_SAVE_ENV: "3"}, cwd=cwd)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    steps_left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # In a bucket Orbax writes a step's commit_success.txt last. Removing step 2's makes it a save torn
    # after its data and before its commit: the restart must not take it for a checkpoint.
    (run_dir / "checkpoints" / "2" / "commit_success.txt").unlink()
    again = run_cli(run_dir, args, extra_env=gcs, cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    return run_dir, steps_left, again.stdout


def test_bucket_run_killed_mid_save_resumes_and_equals_a_local_run(bucket_run, local_run):
    run_dir, steps_left, out = bucket_run
    assert steps_left[:2] == ["1", "2"], steps_left  # and whatever of step 3 the kill left
    assert "resuming from checkpoint step 1" in out
    assert_same_run(local_run, run_dir)  # params, optimizer state, metrics rows, sampled tokens
    for name in (
        "config.yaml",
        "summary.json",
        "tokenizer/tokenizer_config.json",
        f"evals/step_{STEPS:06d}.json",
        "figures/training.png",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())


def test_eval_plot_and_export_read_a_bucket_run(gcs, bucket_run, tmp_path, capsys):
    run_dir = bucket_run[0]
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--run-dir", str(run_dir), "--max-problems", "4", "--n", "2", "--out", str(out)]) == 0
    assert '"step": 4' in out.read_text()
    assert cli.main(["plot", str(run_dir)]) == 0
    assert f"gs://{BUCKET}/runs/killed/figures/training.png" in capsys.readouterr().out
    assert cli.main(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    from safetensors.numpy import load_file

    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert exported and all(np.isfinite(a).all() for a in exported.values())
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()


def test_jsonl_rows_reach_the_bucket_at_persist_and_trim_there(gcs):
    path = epath.Path(f"gs://{BUCKET}/sink/metrics.jsonl")
    sink = JsonlSink(path, append=False)
    for step in range(4):
        sink.add(f'{{"step": {step}}}')
    assert not path.exists()  # uploads wait for persist (or REMOTE_FLUSH_S): no object rewrite per row
    sink.persist()
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2, 3]
    trim_jsonl(path, 1)
    assert [r["step"] for r in read_jsonl(path)] == [0, 1]
    resumed = JsonlSink(path, append=True)  # a resumed run continues the trimmed file
    resumed.add('{"step": 2}')
    resumed.close()
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2]


def test_paths_keep_bucket_urls_and_local_paths_become_absolute(gcs, tmp_path, monkeypatch):
    assert str(as_path(f"gs://{BUCKET}/a/b")) == f"gs://{BUCKET}/a/b"  # pathlib would give gs:/...
    monkeypatch.chdir(tmp_path)
    assert as_path("runs/x") == tmp_path / "runs" / "x"
    assert local_cache(as_path("runs/x"), "datasets") == tmp_path / "runs" / "x" / "datasets"
    remote = local_cache(as_path(f"gs://{BUCKET}/runs/x"), "datasets")
    assert remote.is_relative_to(os.environ["RLVR_JAX_LOCAL_CACHE"]) and remote.name == "datasets"
    write_text_atomic(tmp_path / "new" / "file.txt", "one")
    write_text_atomic(tmp_path / "new" / "file.txt", "two")
    assert (tmp_path / "new" / "file.txt").read_text() == "two" and os.listdir(tmp_path / "new") == ["file.txt"]


def test_restart_moves_bucket_checkpoints_aside(gcs):
    """--restart renames checkpoints/ (in a bucket: copies, then deletes, every object); nothing is lost."""
    checkpoints = epath.Path(f"gs://{BUCKET}/moved/checkpoints")
    for name in ("1/meta/x.json", "2/params/y.bin"):
        write_text_atomic(checkpoints / name, name)
    moved = move_aside(checkpoints)
    assert moved.name.startswith("checkpoints.replaced-") and not checkpoints.exists()
    assert (moved / "2" / "params" / "y.bin").read_text() == "2/params/y.bin"


def test_two_hosts_with_their_own_local_disks_train_into_a_bucket(gcs, tmp_path):
    """Two processes as two hosts: the run directory is in the bucket, and each host has its own local
    cache (RLVR_JAX_LOCAL_CACHE differs), so each builds its own dataset and warm start instead of
    reading what process 0 wrote; Orbax writes the checkpoints to the bucket cooperatively."""
    from tests.test_multihost import MESH, free_port
    from tests.test_resume import command, subprocess_env

    run_dir = epath.Path(f"gs://{BUCKET}/runs/two-hosts")
    port = free_port()
    args = [
        "warmstart.steps=10",
        "warmstart.traces=256",
        "run.steps=2",
        "data.prompts_per_step=4",
        "rollout.group_size=4",
        "eval.every=2",
        "eval.max_problems=8",
        "eval.n=2",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "reward.workers=1",
        "checkpoint.every=1",
        *MESH,
        f"mesh.distributed.coordinator_address=localhost:{port}",
        "mesh.distributed.num_processes=2",
    ]
    caches = [tmp_path / f"host{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            command(run_dir, [*args, f"mesh.distributed.process_id={i}"]),
            env={**subprocess_env(4), **gcs, "RLVR_JAX_LOCAL_CACHE": str(caches[i])},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    for cache in caches:  # each host built its own copy
        assert len(list(cache.glob("*/base_policy/warmstart.json"))) == 1
        assert (
            len(list(cache.glob("*/datasets/toy_strategy/*/*/dataset_info.json"))) == 3
        )  # every toy build the run uses
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]
    from rlvr_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    assert ckpt.steps() == [1, 2] and ckpt.read_meta(2)["process_count"] == 2
    ckpt.close()


def test_a_missing_bucket_stops_train_at_once_with_the_fix(gcs):
    with pytest.raises(
        SystemExit,
        match=r"cannot write to the run directory gs://no-such-bucket/runs/a .*"
        r"check that the bucket exists",
    ):
        cli.main(["train", "--run-dir", "gs://no-such-bucket/runs/a", "run.steps=1"])


def test_a_missing_model_folder_is_named_local_or_in_a_bucket(gcs, tmp_path):
    for path in (tmp_path / "no-model", f"gs://{BUCKET}/models/absent"):
        with pytest.raises(SystemExit, match=rf"rlvr-jax train: {path}/config.json not found"):
            cli.main(["train", "--run-dir", str(tmp_path / "run"), f"model.path={path}", "run.steps=1"])


def test_jsonl_data_files_in_a_bucket(gcs, tmp_path):
    """data.path may be a gs:// URL (read through fsspec / gcsfs, cached locally as Arrow)."""
    import json

    from rlvr_jax.config import load_config
    from rlvr_jax.tasks import task_for

    path = epath.Path(f"gs://{BUCKET}/data/train.jsonl")
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": i}) + "\n" for i in range(5)))
    task = task_for(load_config(None, ["data.source=jsonl", f"data.path={path}"]))
    source = task.source("train", tmp_path / "cache")
    assert [task.example(source[i], i)["answer"] for i in range(len(source))] == ["0", "1", "2", "3", "4"]
