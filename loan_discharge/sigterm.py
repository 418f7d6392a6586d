"""SIGTERM handled as Ctrl-C is: the run saves what it finished, releases its locks and says so.

systemd stopping a unit, ``timeout`` and ``kill`` send SIGTERM; without a handler Python dies on
the spot, with the journal still complete but the items file not rewritten and no last line.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

__all__ = ["TERMINATED_STATUS", "SigtermAsCtrlC", "Terminated", "interrupted_status", "interruption"]

TERMINATED_STATUS = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM

_T = TypeVar("_T")


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping the unit, `timeout`, `kill`): handled as Ctrl-C is."""


class SigtermAsCtrlC:
    """The SIGTERM handler: what asyncio.run does for Ctrl-C, for SIGTERM.

    While a discharge runs, the first SIGTERM cancels its task, so the engine's clean-up saves
    every finished item and closes the journal, and ``run`` raises Terminated once it has ended.
    At any other time (or at a second SIGTERM) Terminated is raised where the program is, as a
    Ctrl-C raises KeyboardInterrupt; the ``with`` blocks on the way out release the locks.
    """

    def __init__(self) -> None:
        self.received = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        first = not self.received
        self.received = True
        if first and self._task is not None and self._loop is not None and not self._task.done():
            self._task.cancel()
            self._loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()
            return
        raise Terminated

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """asyncio.run(main), cancelled by SIGTERM; Terminated once the cancelled *main* has cleaned up."""

        async def attached() -> _T:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            try:
                return await main
            finally:
                self._task = self._loop = None

        try:
            return asyncio.run(attached())
        except asyncio.CancelledError:
            if self.received:
                raise Terminated from None
            raise


def interruption(exc: KeyboardInterrupt) -> str:
    """How a message names the interruption."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """Ctrl-C: 1, as any run that stopped early with its progress saved; SIGTERM: 143."""
    return TERMINATED_STATUS if isinstance(exc, Terminated) else 1
