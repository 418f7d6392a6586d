"""Progress output: a bar on a terminal, a log line every tenth otherwise; then each phase by name."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("m2_code_store")


class Progress:
    """Counts rows sent; draws to *stream* (stderr by default)."""

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.bar = None
        self._next_line = 0.1
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=total, unit="rows", unit_scale=True, file=self.stream, desc="loading")

    def update(self, done: int) -> None:
        """Record that *done* rows (cumulative) have been sent."""
        step, self.done = done - self.done, done
        if not self.enabled or step == 0:  # repeated counts (one per primary on a cluster) say nothing new
            return
        if self.bar is not None:
            self.bar.update(step)
        elif done / self.total >= self._next_line or done == self.total:
            log.info("loading: %s of %s rows sent (%s)", f"{done:,}", f"{self.total:,}", f"{done / self.total:.0%}")
            while self._next_line <= done / self.total:
                self._next_line += 0.1

    def phase(self, name: str) -> None:
        """A step after the rows are sent (comparing, switching, cleaning up): said, not left at 100%."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(name)
            self.bar.refresh()
        else:
            log.info("loading: %s", name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
