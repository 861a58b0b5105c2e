"""Stop requests: SIGTERM / SIGINT become "finish this step, save, exit 0".

One process: our own handlers set a flag the loop reads after each step; a second SIGINT
interrupts at once (the usual Ctrl-C twice). Several processes (TPU pods, GPU clusters): the
signal reaches hosts at different moments, so each host asks JAX's preemption sync point, which
the coordination service answers with the same step on every host; JAX installs its own SIGTERM
notifier there, so we leave SIGTERM alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopRequest:
    """Context manager; `should_stop(step)` is True once a stop was requested (the same step on every host)."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import jax

        self._multi = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        wanted = [signal.SIGINT] if self._multi else [signal.SIGTERM, signal.SIGINT]
        # A signal the parent set to be ignored (nohup, a background job's SIGINT) stays ignored.
        wanted = [sig for sig in wanted if signal.getsignal(sig) is not signal.SIG_IGN]
        for sig in wanted:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
        self.reason = name
        self.log(
            f"{name} received: finishing the current step, then saving a checkpoint and exiting "
            "(Ctrl-C again to abort without saving)"
        )

    def should_stop(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.reason = self.reason or "preemption notice"
                    return True
            except RuntimeError:  # preemption service disabled in this cluster
                pass
            return False  # a local SIGINT alone must not desynchronise the hosts
        return self.reason is not None

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
