"""RewardPool: verifiers run in persistent worker processes under a hard per-sample time limit.

Why processes: math-verify's own timeout is `signal.alarm` (main thread only, and a C-level sympy
loop can ignore it), and sympy may hang or eat memory on adversarial answers. A worker that
overruns its sample's deadline is SIGKILLed and replaced; the rest of its chunk goes back to the
queue. Results depend only on (completion, gold, verifier) -- never on worker count or scheduling
-- except that a timeout is by nature a wall-clock verdict.

Why forkserver: the trainer holds JAX threads, so it must never fork itself; the fork server is a
fresh single-threaded process that imports math-verify (and the main module) once, so every worker,
including a replacement after a kill, starts as a cheap fork of it instead of a ~1 s re-import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import wait as wait_any

import numpy as np

from rlvr_jax.config import RewardConfig
from rlvr_jax.rewards import worker as worker_module
from rlvr_jax.rewards.verifiers import VERIFIERS

# "__main__" keeps the stdlib default: with it the fork server imports the main module once, without
# it every worker would re-import it (for the trainer that is all of jax) on start.
_PRELOAD = ["__main__", "rlvr_jax.rewards.worker", "math_verify"]
_START_TIMEOUT_S = 120.0  # a worker not READY by then is killed and replaced
_START_FAILURES = 3  # consecutive workers dying before READY: the environment is broken, raise
_CHUNKS_PER_WORKER = 4  # enough chunks to balance uneven samples, few enough to amortise messages
_MAX_CHUNK = 32  # bounds the work requeued after a kill
_JOIN_S = 5.0  # grace for a worker to exit on its own in close()


@dataclasses.dataclass(frozen=True)
class RewardResult:
    rewards: np.ndarray  # f32[N]: verifier score + format reward; 0 on a timeout or an error
    correct: np.ndarray  # bool[N]: the verifier scored the sample 1
    timeouts: int  # samples cut at the deadline (their worker was killed)
    errors: int  # samples whose verifier raised or whose worker died
    seconds: float  # wall time of the whole call

    def metrics(self) -> dict[str, float]:
        return {
            "reward/timeouts": float(self.timeouts),
            "reward/errors": float(self.errors),
            "time/reward_s": self.seconds,
        }


class _Worker:
    """One worker process, its pipe, and the samples of its current chunk not yet answered."""

    def __init__(self, ctx: mp.context.BaseContext):
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=worker_module.main, args=(child_end,), name="reward-worker", daemon=True)
        self.proc.start()
        child_end.close()  # only the worker holds its end, so its death reads as EOF here
        self.ready = False
        self.eof = False  # its pipe hit EOF: it exited or is exiting
        self.started = time.monotonic()
        self.todo: deque[int] = deque()  # todo[0] is the sample running now
        self.deadline = math.inf  # of todo[0]

    def stop(self, kill: bool) -> None:
        if kill:
            self.proc.kill()
        self.proc.join(None if kill else _JOIN_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.proc.close()


class _Batch:
    """One score() call: the inputs, results so far, and chunks waiting for a worker."""

    def __init__(self, completions: list[str], golds: list[str], verifier: str, chunk: int):
        n = len(completions)
        self.completions, self.golds, self.verifier = completions, golds, verifier
        self.rewards = np.zeros(n, np.float32)
        self.correct = np.zeros(n, bool)
        self.left, self.timeouts, self.errors = n, 0, 0
        self.pending = deque(list(range(i, min(i + chunk, n))) for i in range(0, n, chunk))

    def message(self, indices: list[int], format_weight: float, timeout_s: float) -> tuple:
        return self.verifier, format_weight, timeout_s, [(i, self.completions[i], self.golds[i]) for i in indices]

    def record(self, index: int, status: int, reward: float, correct: bool) -> None:
        self.rewards[index], self.correct[index] = reward, correct
        self.errors += status == worker_module.ERROR
        self.left -= 1

    def fail(self, index: int, timed_out: bool) -> None:
        self.timeouts += timed_out
        self.errors += not timed_out
        self.left -= 1


def check_verifier(name: str) -> None:
    if name not in VERIFIERS and name not in worker_module.HOOKS:
        raise ValueError(f"unknown verifier {name!r}; valid verifiers: {', '.join(sorted(VERIFIERS))}")


class RewardPool:
    """Scores completions against gold answers in `cfg.workers` killable worker processes.

    with RewardPool(cfg.reward) as pool:
        future = pool.submit(completions, golds)   # returns at once; overlap with device work
        result = future.result()                   # RewardResult
    """

    def __init__(self, cfg: RewardConfig | None = None):
        self.cfg = cfg or RewardConfig()
        check_verifier(self.cfg.verifier)
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)  # no effect if a fork server already runs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-pool")
        self._start_failures = 0
        self._closed = False
        self._workers = [_Worker(self._ctx) for _ in range(self.cfg.workers)]
        try:
            self._await_ready()  # pay start-up and warm-up here, not in the first training step
        except BaseException:
            self.close()
            raise

    # --- public API -----------------------------------------------------------------------------

    def submit(self, completions: Sequence[str], golds: Sequence[str], verifier: str | None = None) -> Future:
        """Queue a scoring job (default verifier: cfg.verifier); `.result()` gives a RewardResult."""
        verifier = verifier or self.cfg.verifier
        check_verifier(verifier)
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        n = len(completions)
        chunk = max(1, min(_MAX_CHUNK, math.ceil(n / (self.cfg.workers * _CHUNKS_PER_WORKER))))
        batch = _Batch(list(completions), list(golds), verifier, chunk)
        return self._executor.submit(self._score, batch)

    def score(self, completions: Sequence[str], golds: Sequence[str], verifier: str | None = None) -> RewardResult:
        return self.submit(completions, golds, verifier).result()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        """Finish queued jobs, then stop every worker (killing any that does not exit in time)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        for w in self._workers:
            with contextlib.suppress(OSError):  # already dead
                w.conn.send(None)
        for w in self._workers:
            w.stop(kill=False)
        self._workers = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scheduling (runs on the executor thread only) ------------------------------------------

    def _score(self, batch: _Batch) -> RewardResult:
        start = time.perf_counter()
        try:
            while batch.left:
                self._dispatch(batch)
                self._wait()
                for k in range(len(self._workers)):
                    self._check(k, batch)
        except BaseException:
            # Busy workers would send this batch's replies into the next one: replace them.
            for k, w in enumerate(self._workers):
                if w.todo:
                    w.stop(kill=True)
                    self._workers[k] = _Worker(self._ctx)
            raise
        return RewardResult(batch.rewards, batch.correct, batch.timeouts, batch.errors, time.perf_counter() - start)

    def _await_ready(self) -> None:
        while not all(w.ready for w in self._workers):
            self._wait()
            for k in range(len(self._workers)):
                self._check(k, None)

    def _dispatch(self, batch: _Batch) -> None:
        for w in self._workers:
            if not batch.pending:
                return
            if not w.ready or w.todo:
                continue
            indices = batch.pending.popleft()
            try:
                w.conn.send(batch.message(indices, self.cfg.format_weight, self.cfg.timeout_s))
            except OSError:  # died while idle: _check replaces it; the chunk waits for another
                batch.pending.appendleft(indices)
                continue
            w.todo = deque(indices)
            w.deadline = time.monotonic() + self.cfg.timeout_s

    def _wait(self) -> None:
        """Block until a worker replies or dies, or the earliest deadline passes."""
        deadlines = [w.deadline for w in self._workers if w.todo]
        deadlines += [w.started + _START_TIMEOUT_S for w in self._workers if not w.ready]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        # A pipe at EOF stays readable; leave it out so a dying worker cannot make this spin.
        conns = [w.conn for w in self._workers if not w.eof]
        wait_any(conns + [w.proc.sentinel for w in self._workers], timeout)

    def _drain(self, w: _Worker, batch: _Batch | None) -> None:
        """Read every reply already in the pipe; each one restarts the clock for the next sample."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg == worker_module.READY:
                    w.ready, self._start_failures = True, 0
                    continue
                index, status, reward, correct = msg
                assert batch is not None and w.todo and w.todo[0] == index, "reply out of chunk order"
                w.todo.popleft()
                batch.record(index, status, reward, correct)
                w.deadline = time.monotonic() + self.cfg.timeout_s if w.todo else math.inf
        except (EOFError, OSError):  # the worker died; _check replaces it
            w.eof = True

    def _check(self, k: int, batch: _Batch | None) -> None:
        """Read worker k's replies; replace it if it died, overran a deadline or never got ready."""
        w = self._workers[k]
        dead = not w.proc.is_alive()  # before draining: then every reply it sent is already readable
        self._drain(w, batch)
        dead = dead or w.eof
        now = time.monotonic()
        late = bool(w.todo) and now > w.deadline
        stuck = not w.ready and now > w.started + _START_TIMEOUT_S
        if not (dead or late or stuck):
            return
        if w.todo and batch is not None:
            batch.fail(w.todo.popleft(), timed_out=not dead)
            if w.todo:
                batch.pending.appendleft(list(w.todo))
        w.stop(kill=True)
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES:
                del self._workers[k]
                raise RuntimeError(
                    f"{self._start_failures} reward workers in a row died before starting; see their tracebacks above"
                )
        self._workers[k] = _Worker(self._ctx)
