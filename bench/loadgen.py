"""A small HTTP/1.1 load generator: N connections on loopback, keep-alive when the server allows."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def line(self, name: str) -> str:
        return (f"{name:<44} {self.throughput:8,.0f} req/s  p50 {self.percentile(50) * 1000:6.2f} ms  "
                f"p99 {self.percentile(99) * 1000:6.2f} ms  errors {self.errors}")


async def _connection(host: str, port: int, paths: list[str], deadline: float, result: LoadResult, rng: random.Random) -> None:
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        path = rng.choice(paths)
        started = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            writer = None
            result.errors += 1
            continue
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", 0))
        await reader.readexactly(length)
        result.latencies.append(time.perf_counter() - started)
        if not lines[0].split(" ")[1].startswith("2"):
            result.errors += 1
        result.requests += 1
        if headers.get("connection", "").lower() == "close":
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _run(host: str, port: int, paths: list[str], connections: int, seconds: float) -> LoadResult:
    result = LoadResult()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, paths, deadline, result, random.Random(i)) for i in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(host: str, port: int, paths: list[str], *, connections: int = 32, seconds: float = 10.0) -> LoadResult:
    """Send requests for *paths* (chosen at random) over *connections* for *seconds*."""
    return asyncio.run(_run(host, port, paths, connections, seconds))
