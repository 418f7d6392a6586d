"""The Alma simulator in a background thread with its own event loop (tests, demo, benchmark).

The tool under test then runs as a subprocess or with ``asyncio.run`` in the main thread, and the
simulator's state (``state.scans``, ``state.requests``) stays readable in this process.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from simulators.alma import AlmaState, create_app

__all__ = ["SimulatorThread"]


class SimulatorThread:
    """Serve ``create_app(state)`` on 127.0.0.1 (a free port) until ``stop()``."""

    def __init__(self, state: AlmaState, host: str = "127.0.0.1") -> None:
        self.state = state
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="alma-simulator", daemon=True)
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimulatorThread:
        """Start serving; return once the port is bound."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("the Alma simulator did not start") from self._error
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
        self._runner = web.AppRunner(create_app(self.state), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def call(self, function: Any, *args: Any) -> Any:
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
