"""SIGTERM and SIGINT as requests to stop training cleanly.

Inside `StopRequests()`, the first SIGTERM (a preempted TPU VM or a cluster scheduler) or SIGINT
(Ctrl-C) only sets `requested`: the train loop finishes its step, saves a checkpoint at that step
and exits 0. A second one aborts at once. Outside the block the previous handlers are back.
Signals reach Python's main thread only, so elsewhere nothing is installed.
"""

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    def __init__(self):
        self.requested: str | None = None  # The name of the first signal received.
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # The second one: abort now.
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
