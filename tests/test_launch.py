"""launch/ scripts: --help, --dry-run prints the exact commands, missing settings fail early, shellcheck clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.glob("*.sh") if p.name != "common.sh")


def sh(script, *args):
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60)


def commands(out):
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    done = sh(script, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: launch/")


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    done = subprocess.run(
        [shellcheck, "-x", *map(str, sorted(LAUNCH.glob("*.sh")))], capture_output=True, text=True, cwd=LAUNCH.parent
    )
    assert done.returncode == 0, done.stdout


def test_local_dry_run():
    done = sh("local.sh", "--run-dir", "runs/a", "--dry-run", "--", "run.steps=5", "advantage.sign=negative_only")
    assert done.returncode == 0, done.stderr
    assert commands(done.stdout) == [
        f"{LAUNCH.parent}/.venv/bin/rlvr-jax train --run-dir runs/a run.steps=5 advantage.sign=negative_only"
    ]


TPU = ["--project", "proj", "--zone", "us-west4-a", "--name", "slice1", "--dry-run"]


def test_tpu_vm_lifecycle_dry_run():
    created = commands(sh("tpu_vm.sh", "create", *TPU, "--accelerator", "v5litepod-16", "--spot").stdout)
    assert created[0] == (
        "gcloud compute tpus queued-resources create slice1 --project proj --zone us-west4-a "
        "--node-id slice1 --accelerator-type v5litepod-16 --runtime-version v2-alpha-tpuv5-lite --spot"
    )
    setup = commands(sh("tpu_vm.sh", "setup", *TPU, "--bucket", "my-bucket").stdout)
    assert setup[0].startswith("git -C") and "archive" in setup[0]
    assert setup[1].startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in setup[1]
    assert "--worker=all" in setup[2] and "gcsfuse\\ -o\\ ro\\ --implicit-dirs\\ my-bucket\\ /mnt/gcs" in setup[2]
    train = commands(sh("tpu_vm.sh", "train", *TPU, "--bucket", "my-bucket", "--", "run.steps=50").stdout)
    assert len(train) == 1 and "--worker=all" in train[0]
    assert "rlvr-jax\\ train\\ --config\\ toy_strategy\\ --run-dir\\ gs://my-bucket/runs/slice1" in train[0]
    assert "run.steps=50" in train[0]
    assert "pkill\\ -TERM" in commands(sh("tpu_vm.sh", "stop", *TPU).stdout)[0]
    assert commands(sh("tpu_vm.sh", "delete", *TPU).stdout) == [
        "gcloud compute tpus queued-resources delete slice1 --project proj --zone us-west4-a --force --quiet"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--zone", "z", "--name", "n", "--dry-run"], "missing --project (or $PROJECT)"),
        (["create", "--project", "p", "--zone", "z", "--name", "n", "--dry-run"], "missing --accelerator"),
        (["train", "--project", "p", "--zone", "z", "--name", "n", "--dry-run"], "missing --bucket"),
        (["launch", "--dry-run"], "unknown action 'launch'"),
    ],
)
def test_tpu_vm_fails_early(args, message):
    done = sh("tpu_vm.sh", *args)
    assert done.returncode == 2 and message in done.stderr and not commands(done.stdout)


def test_slurm_dry_run(tmp_path):
    done = sh(
        "slurm.sh",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--run-dir",
        str(tmp_path / "a"),
        "--time",
        "04:00:00",
        "--dry-run",
        "--",
        "run.steps=9",
    )
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "#SBATCH --gpus-per-node=8" in done.stdout
    assert "#SBATCH --signal=TERM@120" in done.stdout and "#SBATCH --time=04:00:00" in done.stdout
    assert f"srun .venv/bin/rlvr-jax train --config toy_strategy --run-dir {tmp_path / 'a'}" in done.stdout
    assert commands(done.stdout) == [f"sbatch {tmp_path / 'a'}.sbatch"]
    assert not (tmp_path / "a.sbatch").exists()  # dry run: nothing written
    missing = sh("slurm.sh", "--nodes", "2", "--dry-run")
    assert missing.returncode == 2 and "missing --gpus-per-node" in missing.stderr


def test_gke_manifest_is_a_valid_jobset():
    done = sh(
        "gke.sh",
        "--image",
        "gcr.io/p/rlvr:1",
        "--accelerator",
        "v5litepod-16",
        "--bucket",
        "b",
        "--run-name",
        "run-1",
        "--dry-run",
        "--",
        "run.steps=5",
    )
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(done.stdout.split("\n---\n")[0])
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    assert manifest["kind"] == "JobSet" and job["parallelism"] == job["completions"] == 4
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "4x4",
    }
    container = pod["containers"][0]
    assert container["args"] == [
        "train",
        "--config",
        "toy_strategy",
        "--run-dir",
        "gs://b/runs/run-1",
        "logging.progress_bar=false",
        "run.steps=5",
    ]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["volumeMounts"][0]["readOnly"] is True  # inputs only: the run dir is written as gs://
    assert commands(done.stdout) == ["kubectl apply -f -"]
    bad = sh("gke.sh", "--image", "i", "--accelerator", "v4-8", "--bucket", "b", "--run-name", "r", "--dry-run")
    assert bad.returncode == 2 and "is not one of" in bad.stderr
