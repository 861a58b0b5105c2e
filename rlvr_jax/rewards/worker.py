"""The worker process: scores chunks of samples sent by the pool, one reply per sample.

Protocol over one duplex pipe (parent <-> worker):
  worker -> parent  READY, once warmed up
  parent -> worker  (verifier, format_weight, timeout_s, [(index, completion, gold), ...]) | None (exit)
  worker -> parent  (index, status, reward, correct) per sample, in chunk order
Replies in chunk order let the parent know which sample is running (the one after the last
reply) and so give each sample its own deadline without a "started" message.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from typing import Any

from rlvr_jax.rewards.verifiers import VERIFIERS, Verifier

READY = "ready"
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


def score_sample(verifier: str, format_weight: float, completion: str, gold: str) -> tuple[int, float, bool]:
    """(status, reward, correct) of one sample; any exception scores 0 with status ERROR."""
    try:
        v = lookup(verifier)
        score = float(v.score(completion, gold))
        bonus = format_weight * float(v.has_format(completion)) if format_weight else 0.0
        return OK, score + bonus, score >= 1.0
    except Exception:  # - a bad sample must never stop the run
        return ERROR, 0.0, False


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
    score_sample("math", 0.0, "\\boxed{\\frac{1}{2}}", "0.5")


def main(conn: Any) -> None:
    _setup()
    try:
        conn.send(READY)
        while (msg := conn.recv()) is not None:
            verifier, format_weight, timeout_s, items = msg
            for index, completion, gold in items:
                _cap_cpu(timeout_s)
                conn.send((index, *score_sample(verifier, format_weight, completion, gold)))
    except (EOFError, OSError):  # the parent is gone: exit instead of lingering as an orphan
        return
