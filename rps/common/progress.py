"""Progress of a long loop: a bar redrawn in place on a terminal, a plain line every ~10% elsewhere.

Keras' progress bar decides it may redraw in place whenever Python runs on a POSIX system, so a
SLURM or CI log got hundreds of carriage-return updates on one line. Here the redrawing is only
for a terminal; a log gets at most ten lines it can read.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional, TextIO

STEPS = 10  # lines in a log: one per tenth done


class Progress:
    """``update(done)`` after each chunk of ``total`` items (``unit`` names one of them)."""

    def __init__(self, total: int, unit: str, log: logging.Logger, stream: Optional[TextIO] = None, width: int = 30):
        self.total, self.unit, self.log, self.width = max(total, 0), unit, log, width
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start, self.logged = time.monotonic(), 0

    def rate(self, done: int) -> float:
        return done / max(time.monotonic() - self.start, 1e-9)

    def update(self, done: int) -> None:
        if self.total <= 0:
            return
        if self.live:
            filled = self.width * done // self.total
            self.stream.write(f"\r{done}/{self.total} {self.unit}s [{'=' * filled}{'.' * (self.width - filled)}] "
                              f"{self.rate(done):.0f} {self.unit}s/s")
            self.stream.flush()
            if done >= self.total:
                self.stream.write("\n")
            return
        tenth = STEPS * done // self.total
        if tenth > self.logged and done < self.total:  # the last line is the caller's summary
            self.logged = tenth
            self.log.info("%d/%d %ss (%d%%), %.0f %ss/s", done, self.total, self.unit, 100 * done // self.total,
                          self.rate(done), self.unit)
