"""Run a plan: datasets (one at a time), base policies, then the runs, each a subprocess, up to `jobs` at once.

Resumable by construction: a built dataset or base policy is found by its key and reused, a run whose
summary.json has run.steps steps is skipped, and any other run is started with the same command, which
resumes from its latest checkpoint by itself (`rlvr-jax train`). Stopping the sweep (Ctrl-C, SIGTERM)
asks every running run to save a checkpoint and exit, then writes the table of what is complete.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rlvr_jax.sweep.plan import FAILED, Plan, Prepared, RunPlan, is_done, mark_failed, start_from_source

# XLA's CPU backend has no "N threads" flag: single-threaded Eigen is the one switch it has.
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


def cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where the OS has no masks)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_count() -> int:
    return len(cpus())


def default_jobs() -> int:
    return cpu_count()


def cpu_slots(jobs: int, available: Sequence[int] | None = None) -> list[list[int]]:
    """The CPUs of each of `jobs` slots: disjoint blocks of cpus() // jobs CPUs (one CPU per slot, shared
    round-robin, when there are more jobs than CPUs). A process started in a slot is pinned to its CPUs."""
    available = list(cpus() if available is None else available)
    if jobs >= len(available):
        return [[available[i % len(available)]] for i in range(jobs)]
    width = len(available) // jobs
    return [available[i * width : (i + 1) * width] for i in range(jobs)]


def child_env(jobs: int, cache_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of each run: thread pools sized to its slot's CPUs, so `jobs` processes do not
    fight for the cores (the slot's affinity mask bounds them anyway: XLA and the BLAS libraries size
    their pools by it), and one persistent XLA cache, so the runs after the first load the compiled
    steps (all runs of a study compile the same programs)."""
    env = dict(os.environ if base is None else base)
    if "JAX_COMPILATION_CACHE_DIR" not in env:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    threads = max(1, cpu_count() // jobs)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    if threads == 1 and SINGLE_THREAD_XLA not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    return env


def pinned(command: Sequence[str], cpu_list: Sequence[int]) -> list[str]:
    """`command` (a `python -m MODULE ...` line) started under an affinity mask of `cpu_list`, set before
    the module is imported, so every thread it starts (XLA's pools, reward workers) inherits it."""
    if not hasattr(os, "sched_setaffinity") or command[:2] != [sys.executable, "-m"]:
        return list(command)
    return [sys.executable, "-m", "rlvr_jax.sweep.pin", ",".join(map(str, cpu_list)), *command[2:]]


@dataclasses.dataclass
class Outcome:
    label: str
    status: str  # done | stopped | failed
    seconds: float
    cpu_seconds: float  # the process's user + system time, its reaped children (reward workers) included
    log: Path | None = None
    code: int | None = None  # the exit status (negative: the signal that ended it)


class Runner:
    """Starts the subprocesses, remembers the live ones, and stops them all when the sweep is stopped."""

    def __init__(self, jobs: int, out: Path, log: Callable[[str], None] = print):
        self.jobs = jobs
        self.env = child_env(jobs, out / "xla_cache")
        self.slots: queue.SimpleQueue[list[int]] = queue.SimpleQueue()  # at most `jobs` processes hold one
        for slot in cpu_slots(jobs):
            self.slots.put(slot)
        self.timings = out / "timings.jsonl"  # every process's wall and CPU time, with the jobs it ran among
        self.log = log
        self.live: set[subprocess.Popen] = set()
        self.stopping = False
        self.changed = threading.Condition()

    def call(self, command: Sequence[str], log_path: Path) -> tuple[int, float]:
        """(exit status, CPU seconds) of `command`, its output appended to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        slot = self.slots.get()  # never waits: `map` runs at most `jobs` calls at once
        with log_path.open("ab") as sink:
            sink.write(f"\n$ {shlex.join(command)}\n".encode())
            sink.flush()
            with self.changed:
                if self.stopping:
                    self.slots.put(slot)
                    return -signal.SIGTERM, 0.0
                proc = subprocess.Popen(pinned(command, slot), stdout=sink, stderr=subprocess.STDOUT, env=self.env)
                self.live.add(proc)
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's CPU time, which Popen.wait drops
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_utime + usage.ru_stime
            finally:
                self.slots.put(slot)
                with self.changed:
                    self.live.discard(proc)
                    self.changed.notify_all()

    def stop(self) -> None:
        """SIGTERM to every live child (`rlvr-jax train` finishes its step, saves a checkpoint and exits), then
        wait until their threads have reaped them all."""
        with self.changed:
            self.stopping = True
            if self.live:
                self.log(f"sweep stopped: asking {len(self.live)} running process(es) to save a checkpoint and exit")
            for proc in self.live:
                proc.send_signal(signal.SIGTERM)
            self.changed.wait_for(lambda: not self.live)

    def record(self, outcome: Outcome) -> None:
        row = {"label": outcome.label, "status": outcome.status, "jobs": self.jobs}
        row |= {"seconds": round(outcome.seconds, 1), "cpu_seconds": round(outcome.cpu_seconds, 1)}
        with self.changed, self.timings.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def map(self, tasks: Sequence[tuple[str, Callable[[], Outcome]]], jobs: int | None = None) -> list[Outcome]:
        """Run `tasks` up to `jobs` (default: the runner's) at once, in worker threads (the main thread only
        waits, so a signal there never interrupts a wait on a child); outcomes in the order of `tasks`."""
        outcomes, start = {}, time.perf_counter()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs or self.jobs)
        try:
            futures = {pool.submit(fn): i for i, (_, fn) in enumerate(tasks)}
            for number, future in enumerate(concurrent.futures.as_completed(futures), 1):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                self.record(outcome)
                where = f"; see {outcome.log}" if outcome.status == "failed" else ""
                self.log(
                    f"[{number}/{len(tasks)}] {outcome.label}: {outcome.status} in {outcome.seconds:.0f} s "
                    f"(CPU {outcome.cpu_seconds:.0f} s{where})"
                )
        finally:
            # Stopped half-way: queued tasks never start; the live ones are stopped by `stop`.
            pool.shutdown(wait=False, cancel_futures=True)
        if tasks:
            self.log(f"{len(tasks)} finished in {time.perf_counter() - start:.0f} s, {jobs or self.jobs} at once")
        return [outcomes[i] for i in sorted(outcomes)]


def last_line(log_path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (a failed command's one-line error, or its exception)."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def prepare_data(runner: Runner, plan: Plan) -> list[Outcome]:
    """Datasets one at a time (two builds into one data dir must not overlap), each marked when built."""
    marks = plan.study.out.absolute() / "prepared"
    todo = [d for d in plan.datasets if not (marks / f"data-{d.key}").is_file()]
    outcomes = runner.map([(f"datasets {d.key}", lambda d=d: _build_data(runner, plan, d, marks)) for d in todo], 1)
    for data, outcome in zip(todo, outcomes):
        if outcome.status == "done":
            (marks / f"data-{data.key}").write_text(str(data.folder))
    return outcomes


def _build_data(runner: Runner, plan: Plan, data: Prepared, marks: Path) -> Outcome:
    command = python_module("rlvr_jax.sweep.prepare", "data", "--config", plan.study.config, *data.overrides)
    log_path = marks / f"data-{data.key}.log"
    return dataclasses.replace(_timed(f"datasets {data.key}", lambda: runner.call(command, log_path)), log=log_path)


def build_bases(runner: Runner, plan: Plan) -> list[Outcome]:
    """Every base policy not built yet, in parallel (each reuses its folder when its fingerprint matches)."""
    todo = [b for b in plan.bases if not (b.folder / "warmstart.json").is_file()]
    return runner.map([(f"base policy {b.key}", lambda b=b: _build_base(runner, plan, b)) for b in todo])


def _build_base(runner: Runner, plan: Plan, base: Prepared) -> Outcome:
    command = python_module(
        "rlvr_jax.sweep.prepare", "base", "--config", plan.study.config,
        "--out", str(base.folder), "--data-dir", str(base.data_dir), *base.overrides,
    )  # fmt: skip
    log_path = base.folder.parent / "build.log"
    return dataclasses.replace(_timed(f"base policy {base.key}", lambda: runner.call(command, log_path)), log=log_path)


def run_all(runner: Runner, plan: Plan) -> list[Outcome]:
    """Every run not done yet. A run whose base policy failed to build is not started: it is marked
    failed, naming the base policy's log, so the table and the exit status count it."""
    failed_bases = {b.key for b in plan.bases if not (b.folder / "warmstart.json").is_file()}
    todo, outcomes = [], []
    for run in plan.runs:
        cannot_start = start_from_source(run)
        if cannot_start:
            mark_failed(run, cannot_start, run.run_dir / FAILED)
            outcomes.append(Outcome(label(run), "failed", 0.0, 0.0, run.run_dir / FAILED))
            continue
        if is_done(run):
            continue
        if run.base is not None and run.base.key in failed_bases:
            log_path = run.base.folder.parent / "build.log"
            mark_failed(run, f"its base policy {run.base.key} did not build", log_path)
            outcomes.append(Outcome(label(run), "failed", 0.0, 0.0, log_path))
        else:
            todo.append(run)
    done = len(plan.runs) - len(todo) - len(outcomes)
    runner.log(
        f"runs: {done} of {len(plan.runs)} already done, {len(todo)} to run"
        + (f", {len(outcomes)} without a base policy (failed)" if outcomes else "")
    )
    return outcomes + runner.map([(label(r), lambda r=r: _train(runner, plan, r)) for r in todo])


def label(run: RunPlan) -> str:
    return f"{run.combo.name} seed {run.seed}"


def train_command(plan: Plan, run: RunPlan) -> list[str]:
    return python_module(
        "rlvr_jax.cli", "train", "--config", plan.study.config, "--run-dir", str(run.run_dir), *run.overrides
    )


def _train(runner: Runner, plan: Plan, run: RunPlan) -> Outcome:
    log_path = run.run_dir / "train.log"
    (run.run_dir / FAILED).unlink(missing_ok=True)  # a new attempt
    outcome = _timed(label(run), lambda: runner.call(train_command(plan, run), log_path))
    if outcome.status == "done" and not is_done(run):
        outcome.status = "stopped"  # exited 0 after saving a checkpoint: the next sweep resumes it
    if outcome.status == "failed":
        why = f"rlvr-jax train exited with status {outcome.code}"
        mark_failed(run, why + (f" ({last})" if (last := last_line(log_path)) else ""), log_path, outcome.code)
    return dataclasses.replace(outcome, log=log_path)


def _timed(name: str, fn: Callable[[], tuple[int, float]]) -> Outcome:
    start = time.perf_counter()
    code, cpu = fn()
    status = "done" if code == 0 else "stopped" if code in (-signal.SIGTERM, -signal.SIGINT) else "failed"
    return Outcome(name, status, time.perf_counter() - start, cpu, code=code)


class Stopped(Exception):
    """SIGTERM reached the sweep."""


@contextlib.contextmanager
def stop_children_on_signal(runner: Runner) -> Iterator[None]:
    """Ctrl-C or SIGTERM: the runs save and exit (a rerun of the sweep resumes them), then re-raise."""

    def on_term(signum: int, frame: object) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except (KeyboardInterrupt, Stopped):
        runner.stop()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
