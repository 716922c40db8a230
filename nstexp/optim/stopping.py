"""Stopping a run cleanly: Ctrl-C, SIGTERM, or a stop file that a sweep writes for all its jobs."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps; a second signal aborts.

    `stop_file`, when given, also stops the run once it exists: how a sweep tells its jobs
    in other processes (or on other machines) that it was interrupted.
    """

    def __init__(self, stop_file: str | os.PathLike | None = None) -> None:
        self.signal: int | None = None
        self.stop_file = stop_file

    def __call__(self) -> bool:
        return self.signal is not None or (self.stop_file is not None and os.path.exists(self.stop_file))

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
