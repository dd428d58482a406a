"""A progress line on standard error for long runs (``mllint: checked 120/450 files``).

Shown only when standard error is a terminal and the run has lasted ``delay`` seconds; it is
redrawn in place (carriage return) at most every ``interval`` seconds and erased at the end, so
piped or redirected output never contains it. ``MLLINT_PROGRESS_DELAY`` (seconds) overrides the
delay, for tests.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO


class Progress:
    def __init__(self, total: int, stream: Optional[TextIO] = None, *, delay: Optional[float] = None,
                 interval: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 enabled: Optional[bool] = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        if delay is None:
            try:
                delay = float(os.environ.get("MLLINT_PROGRESS_DELAY", "1"))
            except ValueError:
                delay = 1.0
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self._last = float("-inf")
        self._width = 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self.start < self.delay or (now - self._last < self.interval and done < self.total):
            return
        self._last = now
        line = f"mllint: checked {done}/{self.total} files"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def finish(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
