"""Helpers the vendor simulators share: rate window, latency, request log, tokens, standalone runner.

The request pipeline (failure injection, latency, logging) is in ``simulators._pipeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

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


async def start_site(
    app: web.Application, host: str, port: int, shutdown_timeout: float = 1.0
) -> tuple[web.AppRunner, int]:
    """Listen on host:port (0 = a free port); return the runner and the port it got."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]


async def serve(app: web.Application, host: str, port: int, describe: Callable[[int], str]) -> None:
    """Listen on host:port (0 = a free port), print ``describe(port)``, serve until SIGTERM/SIGINT."""
    runner, bound = await start_site(app, host, port)
    print(describe(bound), flush=True)
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


def drop_connection(request: web.Request) -> NoReturn:
    """Close the connection without a byte of answer; the client sees a disconnect.

    Raising CancelledError is how aiohttp ends a request it must not answer: nothing is written,
    and middlewares further out (the request log, Alma's headers) see no response.
    """
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


class TokenBook:
    """The tokens a simulator issued, each with its expiry; ``revoke_all`` plays a server reset."""

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}  # token -> when it stops working (the state's clock)
        self.revoked: set[str] = set()

    def issue(self, token: str, expires_at: float) -> str:
        """Record ``token`` as valid until ``expires_at`` and return it."""
        self.expiry[token] = expires_at
        self.revoked.discard(token)
        return token

    def problem(self, token: str | None, now: float) -> str | None:
        """Why ``token`` is refused at ``now``: "missing", "unknown" or "expired"; None if valid."""
        if not token:
            return "missing"
        if token not in self.expiry:
            return "unknown"
        if token in self.revoked or now >= self.expiry[token]:
            return "expired"
        return None

    def revoke_all(self) -> None:
        """Make every token issued so far expired."""
        self.revoked.update(self.expiry)


# --- standalone -----------------------------------------------------------------------------

State = TypeVar("State")


def standalone_parser(module: str, description: str, port: int) -> argparse.ArgumentParser:
    """The options every simulator takes standalone: --host, --port, --latency and --seed."""
    parser = argparse.ArgumentParser(prog=f"python -m simulators.{module}", description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"default {port}; 0 picks a free port")
    parser.add_argument(
        "--latency", type=latency_argument, default=(0.0, 0.0), help="MIN-MAX seconds per request"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (latencies, ids)")
    return parser


def run_standalone(
    name: str,
    args: argparse.Namespace,
    build_state: Callable[[argparse.Namespace], State],
    create_app: Callable[[State], web.Application],
    summary: Callable[[State], str] = lambda state: "",
) -> int:
    """Build the state from the options and serve it until SIGTERM/SIGINT (exit 0).

    A seed file that cannot be read is a usage error: a message on stderr, exit 2.
    """
    try:
        state = build_state(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{name.lower()} simulator: cannot load seed files: {exc}", file=sys.stderr)
        return 2

    def describe(port: int) -> str:
        return f"{name} simulator listening on http://{args.host}:{port}{summary(state)}"

    try:
        asyncio.run(serve(create_app(state), args.host, args.port, describe))
    except KeyboardInterrupt:
        pass
    return 0


def load_json_list(path: str, noun: str, add: Callable[[dict[str, Any]], object]) -> int:
    """Call ``add`` with each object of a JSON list file; return how many there were.

    A bad entry raises ValueError naming the file and the entry's number.
    """
    with open(path, encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {noun}s, got {type(entries).__name__}")
    for number, entry in enumerate(entries, start=1):
        try:
            add(entry)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: {noun} #{number}: {exc}") from exc
    return len(entries)
