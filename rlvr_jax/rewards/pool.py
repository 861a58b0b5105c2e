"""RewardPool: verifiers or reward functions run in persistent worker processes under a hard per-sample time limit.

Why processes: math-verify's own timeout is `signal.alarm` (main thread only, and a C-level sympy
loop can ignore it), and sympy may hang or eat memory on adversarial answers; user reward functions
may do anything. A worker that overruns its sample's deadline is SIGKILLed and replaced; the rest of
its chunk goes back to the queue. Results depend only on (completion, sample, program) -- never on
worker count or scheduling -- except that a timeout is by nature a wall-clock verdict. The program
(the verifier, or the reward functions of rlvr_jax/rewards/functions.py) goes to each worker once, at
its start; chunks carry only samples.

Why forkserver: the trainer holds JAX threads, so it must never fork itself; the fork server is a
fresh single-threaded process that imports math-verify (and the main module) once, so every worker,
including a replacement after a kill, starts as a cheap fork of it instead of a ~1 s re-import.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import wait as wait_any
from typing import Any

from rlvr_jax.config import RewardConfig
from rlvr_jax.rewards import worker as worker_module
from rlvr_jax.rewards.batch import Batch, Plan, RewardResult
from rlvr_jax.rewards.functions import RewardFunction, RewardSpecError, check_columns, load_reward_functions
from rlvr_jax.rewards.sample import Sample
from rlvr_jax.rewards.verifiers import VERIFIERS
from rlvr_jax.rewards.worker import VerifierSpec

# "__main__" keeps the stdlib default: with it the fork server imports the main module once, without
# it every worker would re-import it (for the trainer that is all of jax) on start.
_PRELOAD = ["__main__", "rlvr_jax.rewards.worker", "math_verify"]
_START_TIMEOUT_S = 120.0  # a worker not READY by then is killed and replaced
_START_FAILURES = 3  # consecutive workers dying before READY: the environment is broken, raise
_CHUNKS_PER_WORKER = 4  # enough chunks to balance uneven samples, few enough to amortise messages
_MAX_CHUNK = 32  # bounds the work requeued after a kill
_JOIN_S = 5.0  # grace for a worker to exit on its own in close()


class _Worker:
    """One worker process, its pipe, and the samples of its current chunk not yet answered."""

    def __init__(self, ctx: mp.context.BaseContext, program: Any):
        self.conn, child_end = ctx.Pipe()
        args = (child_end, program)  # the program travels once, with the process
        self.proc = ctx.Process(target=worker_module.main, args=args, name="reward-worker", daemon=True)
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


def check_verifier(name: str) -> None:
    if name not in VERIFIERS and name not in worker_module.HOOKS:
        raise ValueError(f"unknown verifier {name!r}; valid verifiers: {', '.join(sorted(VERIFIERS))}")


def _as_sample(item: Sample | str) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, str):  # the older call: a gold answer alone
        return Sample("", item)
    raise TypeError(f"samples must be Sample objects or gold strings, got {type(item).__name__}")


def _check_batch_columns(functions: Sequence[RewardFunction], samples: Sequence[Sample]) -> None:
    """Every function gets the keywords it requires: checked once per distinct column set, before any work."""
    seen: set[frozenset[str]] = set()
    for i, sample in enumerate(samples):
        columns = frozenset(sample.columns)
        if columns not in seen:
            seen.add(columns)
            row_id = sample.columns.get("id")
            check_columns(functions, columns, f"row {i}" + (f" (id {row_id!r})" if row_id is not None else ""))


class RewardPool:
    """Scores completions in `cfg.workers` killable worker processes: the reward functions (cfg.functions,
    then the Python callables `functions`) when there are any, else the built-in cfg.verifier.

    with RewardPool(cfg.reward, correct_threshold=cfg.advantage.correct_threshold) as pool:
        future = pool.submit(completions, samples)   # returns at once; overlap with device work
        result = future.result()                     # RewardResult
    """

    def __init__(
        self, cfg: RewardConfig | None = None, functions: Sequence[Callable] = (), correct_threshold: float = 1.0
    ):
        self.cfg = cfg or RewardConfig()
        self.functions = load_reward_functions(self.cfg, functions)  # a bad one raises here, in the caller
        self._threshold = correct_threshold
        if self.functions:
            self._program: Any = tuple(self.functions)
            self._plan = Plan.of_functions(self.functions, self.cfg.correct_from, correct_threshold, self.cfg.on_error)
        else:
            check_verifier(self.cfg.verifier)
            self._program = VerifierSpec(self.cfg.verifier, self.cfg.format_weight)
            self._plan = Plan.of_verifier(self._program, None, correct_threshold)
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)  # no effect if a fork server already runs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-pool")
        self._start_failures = 0
        self._closed = False
        self._workers = [_Worker(self._ctx, self._program) for _ in range(self.cfg.workers)]
        try:
            self._await_ready()  # pay start-up and warm-up here, not in the first training step
        except BaseException:
            self.close()
            raise

    # --- public API -----------------------------------------------------------------------------

    def submit(
        self, completions: Sequence[str], samples: Sequence[Sample | str], verifier: str | None = None
    ) -> Future:
        """Queue a scoring job; `.result()` gives a RewardResult or raises RewardFunctionError.

        `samples`: one per completion; a plain string is a gold answer (a Sample without prompt or
        columns). `verifier`: score with that built-in verifier instead of the pool's own program.
        """
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} gold answers (samples)")
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        samples = [_as_sample(s) for s in samples]
        plan = self._plan
        if verifier is not None:  # the workers build and keep this program on its first chunk
            check_verifier(verifier)
            spec = VerifierSpec(verifier, self.cfg.format_weight)
            plan = Plan.of_verifier(spec, key=spec, threshold=self._threshold)
        elif self.functions:
            _check_batch_columns(self.functions, samples)
        n = len(completions)
        chunk = max(1, min(_MAX_CHUNK, math.ceil(n / (self.cfg.workers * _CHUNKS_PER_WORKER))))
        return self._executor.submit(self._score, Batch(list(completions), samples, plan, chunk))

    def score(
        self, completions: Sequence[str], samples: Sequence[Sample | str], verifier: str | None = None
    ) -> RewardResult:
        return self.submit(completions, samples, verifier).result()

    @property
    def names(self) -> tuple[str, ...]:
        """The keys of RewardResult.per_function: the functions' names, or the verifier's (and "format")."""
        return self._plan.names

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

    def _score(self, batch: Batch) -> RewardResult:
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
                    self._workers[k] = _Worker(self._ctx, self._program)
            raise
        return batch.result(time.perf_counter() - start)

    def _await_ready(self) -> None:
        while not all(w.ready for w in self._workers):
            self._wait()
            for k in range(len(self._workers)):
                self._check(k, None)

    def _dispatch(self, batch: Batch) -> None:
        for w in self._workers:
            if not batch.pending:
                return
            if not w.ready or w.todo:
                continue
            indices = batch.pending.popleft()
            try:
                w.conn.send(batch.message(indices, self.cfg.timeout_s))
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

    def _drain(self, w: _Worker, batch: Batch | None) -> None:
        """Read every reply already in the pipe; each one restarts the clock for the next sample."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg == worker_module.READY:
                    w.ready, self._start_failures = True, 0
                    continue
                if msg[0] == worker_module.FAILED:  # the program does not load there (it did here)
                    raise RewardSpecError(msg[1])
                index, status, values, problems = msg
                assert batch is not None and w.todo and w.todo[0] == index, "reply out of chunk order"
                w.todo.popleft()
                batch.record(index, status, values, problems)
                w.deadline = time.monotonic() + self.cfg.timeout_s if w.todo else math.inf
        except (EOFError, OSError):  # the worker died; _check replaces it
            w.eof = True

    def _check(self, k: int, batch: Batch | None) -> None:
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
        self._workers[k] = _Worker(self._ctx, self._program)
