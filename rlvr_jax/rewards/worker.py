"""The worker process: runs the reward program on chunks of samples sent by the pool, one reply per sample.

Protocol over one duplex pipe (parent <-> worker):
  at start          the pool's program (a VerifierSpec, or a tuple of RewardFunction) as a process
                    argument; the worker loads it once (imports user modules, unpickles callables)
  worker -> parent  READY once loaded and warmed up, or (FAILED, one-line message) if loading failed
  parent -> worker  (program key, timeout_s, [(index, completion, Sample), ...]) | None (exit);
                    key None is the pool's program, a VerifierSpec a verifier named per call
  worker -> parent  (index, status, values, problems) per sample, in chunk order: values one float
                    or None per term, problems one line or None per term (a misbehaving function)
Replies in chunk order let the parent know which sample is running (the one after the last
reply) and so give each sample its own deadline without a "started" message.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from collections.abc import Sequence
from typing import Any, NamedTuple

from rlvr_jax.rewards.calling import Problem, make_call
from rlvr_jax.rewards.functions import RewardFunction, RewardSpecError
from rlvr_jax.rewards.sample import Sample
from rlvr_jax.rewards.verifiers import VERIFIERS, Verifier

READY, FAILED = "ready", "failed"
OK, ERROR = 0, 1

# Cap on each worker's address space: a verification that builds a giant integer then fails with
# MemoryError (scored as an error) instead of pushing the machine into the OOM killer before the
# parent's deadline. Generous, because a worker forked from a trainer's main module maps jax too.
ADDRESS_SPACE_BYTES = 8 << 30


def _raise(completion: str, gold: str) -> float:
    raise RuntimeError("test hook: the verifier raised")


def _exit(completion: str, gold: str) -> float:
    os._exit(3)  # a worker dying mid-sample, as a segfault or the OOM killer would look


# Test hooks for the failure paths; the pool accepts these names but never advertises them.
HOOKS: dict[str, Verifier] = {
    "_raise": Verifier(_raise, lambda c: False),
    "_exit": Verifier(_exit, lambda c: False),
}


def lookup(name: str) -> Verifier:
    return VERIFIERS[name] if name in VERIFIERS else HOOKS[name]


class VerifierSpec(NamedTuple):
    verifier: str
    format_weight: float


Reply = tuple[int, tuple[float | None, ...], tuple[str | None, ...]]  # (status, values, problems)


class VerifierProgram:
    """A built-in verifier (and its format check when weighted): terms (score,) or (score, has_format).

    Any exception scores the whole sample 0 with status ERROR: it runs on untrusted model output, where
    a verifier raising on garbage is normal, and a bad sample must never stop the run.
    """

    def __init__(self, spec: VerifierSpec):
        self.verifier, self.with_format = lookup(spec.verifier), bool(spec.format_weight)

    def __call__(self, completion: str, sample: Sample) -> Reply:
        try:
            score = float(self.verifier.score(completion, sample.gold))
            if not self.with_format:
                return OK, (score,), ()
            return OK, (score, float(self.verifier.has_format(completion))), ()
        except Exception:
            return ERROR, (), ()


class FunctionProgram:
    """Reward functions, each called on every sample; one that misbehaves is reported, not fatal here."""

    def __init__(self, functions: Sequence[RewardFunction]):
        self.calls = [make_call(f) for f in functions]  # imports / unpickles each once

    def __call__(self, completion: str, sample: Sample) -> Reply:
        values: list[float | None] = []
        problems: list[str | None] = []
        for call in self.calls:
            try:
                values.append(call(completion, sample))
                problems.append(None)
            except Problem as problem:
                values.append(None)
                problems.append(str(problem))
        return OK, tuple(values), tuple(problems)


def build_program(spec: VerifierSpec | Sequence[RewardFunction]) -> VerifierProgram | FunctionProgram:
    return VerifierProgram(spec) if isinstance(spec, VerifierSpec) else FunctionProgram(spec)


def _cap_cpu(timeout_s: float) -> None:
    """Let the kernel end this process (SIGXCPU) once the coming sample burns 2 * timeout_s + 1 CPU s.

    The parent's wall-clock kill always fires first (a single-threaded sample uses no more CPU
    than wall time); this cap matters only when the parent is gone: an orphan stuck in sympy never
    reads the EOF on its pipe, may hold the GIL in C code, and would otherwise spin forever.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + 2 * timeout_s) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _setup() -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # math-verify warns once that its own timeout is off; that is deliberate (the parent kills).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker ended by SIGXCPU dumps no core
    except (ValueError, OSError):  # a lower hard limit is already in place: keep it
        pass
    # Warm up: the first math-verify call builds its parsers (~0.1 s); do it before READY so the
    # first training step does not pay it.
    VerifierProgram(VerifierSpec("math", 0.0))("\\boxed{\\frac{1}{2}}", Sample("", "0.5"))


def main(conn: Any, program: VerifierSpec | Sequence[RewardFunction]) -> None:
    _setup()
    try:
        try:
            programs: dict[Any, Any] = {None: build_program(program)}
        except RewardSpecError as err:
            conn.send((FAILED, str(err)))
            return
        conn.send(READY)
        while (msg := conn.recv()) is not None:
            key, timeout_s, items = msg
            if key not in programs:
                programs[key] = build_program(key)
            for index, completion, sample in items:
                _cap_cpu(timeout_s)
                conn.send((index, *programs[key](completion, sample)))
    except (EOFError, OSError):  # the parent is gone: exit instead of lingering as an orphan
        return
