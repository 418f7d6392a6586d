"""A simulator in a background thread with its own event loop (tests, demos, benchmarks).

The tool under test then runs as a subprocess or with ``asyncio.run`` in the main thread, and the
simulator's state (``state.scans``, ``state.requests``, ...) stays readable in this process.
``SimulatorThread(state)`` serves the simulator that state belongs to (Alma, LibCal or
PassagePoint); ``call()`` reads or changes the state safely on the simulator's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from simulators import alma, libcal, passagepoint
from simulators._common import start_site

__all__ = ["SimulatorThread"]

APP_FACTORIES: dict[type, Callable[[Any], web.Application]] = {
    alma.AlmaState: alma.create_app,
    libcal.LibCalState: libcal.create_app,
    passagepoint.PassagePointState: passagepoint.create_app,
}


def app_factory(state: Any) -> Callable[[Any], web.Application]:
    """The ``create_app`` of the simulator ``state`` belongs to; TypeError for anything else."""
    for state_type, create_app in APP_FACTORIES.items():
        if isinstance(state, state_type):
            return create_app
    known = ", ".join(state_type.__name__ for state_type in APP_FACTORIES)
    raise TypeError(f"no simulator for a {type(state).__name__} (known: {known})")


class SimulatorThread:
    """Serve the simulator of ``state`` on ``host`` (a free port) until ``stop()``."""

    def __init__(self, state: Any, host: str = "127.0.0.1") -> None:
        self._create_app = app_factory(state)
        self.state = state
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        name = f"{type(state).__name__}-simulator"
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """http://HOST:PORT"""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimulatorThread:
        """Start serving; return once the port is bound."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"the {type(self.state).__name__} simulator did not start") from self._error
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start_site())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
        self._loop.close()

    async def _start_site(self) -> None:
        app = self._create_app(self.state)
        self._runner, self.port = await start_site(app, self.host, 0, shutdown_timeout=0.5)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the simulator's loop (to read or change state safely)."""

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
