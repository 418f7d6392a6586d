"""Small helpers shared by the vendor simulators: sliding-window rate counting, latency, ports."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


class SlidingWindowCounter:
    """Counts events admitted in the last `window` seconds and refuses those over `limit`."""

    def __init__(
        self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._starts: deque[float] = deque()

    def admit(self) -> bool:
        """Record one event now and return True, or return False (not recorded) if over the limit."""
        now = self.clock()
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        if len(self._starts) >= self.limit:
            return False
        self._starts.append(now)
        return True


async def sleep_latency(
    rng: random.Random,
    latency: tuple[float, float],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Sleep a uniform random time within the (min, max) latency, if any."""
    low, high = latency
    if high > 0:
        await sleep(rng.uniform(low, high))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def parse_latency(text: str) -> tuple[float, float]:
    """Parse "0.3-0.8" (or a single "0.5") into a (min, max) pair of seconds."""
    low, _, high = text.partition("-")
    low_s = float(low)
    high_s = float(high) if high else low_s
    if low_s < 0 or high_s < low_s:
        raise ValueError(f"latency must be MIN-MAX seconds with 0 <= MIN <= MAX, got {text!r}")
    return low_s, high_s


def latency_argument(text: str) -> tuple[float, float]:
    """``parse_latency`` for argparse ``type=``: a bad value is a usage error with an example."""
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"latency must look like 0.2-0.5, got {text!r}") from exc


async def serve(app: web.Application, host: str, port: int, describe: Callable[[int], str]) -> None:
    """Listen on host:port (0 = a free port), print ``describe(port)``, serve until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(describe(runner.addresses[0][1]), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_entry(request: web.Request, now: float) -> dict[str, Any]:
    """The request-log entry of *request*; its ``status`` is filled in once it is answered.

    ``query`` maps each parameter to its first value (handy for lookups); ``params`` keeps every
    decoded ``(name, value)`` pair in the order sent, repeats included, and ``raw_query`` is the
    query string exactly as it arrived, so a client's test can assert precisely what was sent.
    """
    return {
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "params": list(request.query.items()),
        "raw_query": request.rel_url.raw_query_string,
        "status": None,
        "time": now,
    }


def repeated_parameters(request: web.Request) -> list[str]:
    """Names that occur more than once in the query string, in order of first appearance."""
    names = [name for name, _ in request.query.items()]  # keys() lists each name once
    return [name for index, name in enumerate(names) if names.count(name) > 1 and names.index(name) == index]

async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer; the client sees a disconnect."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp discards whatever is written to a closed transport; this only ends the handler.
    return web.Response(status=500)
