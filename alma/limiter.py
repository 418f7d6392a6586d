"""The rate limiter every Alma caller passes in: at most N request starts in any sliding second.

Alma counts calls per institution in a sliding second (alma.md: 25/s, all tools and keys together;
over it, HTTP 429). Callers enter the limiter right before each request (``async with limiter:``),
retries included; the client itself never waits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["SlidingWindowLimiter"]

Sleep = Callable[[float], Awaitable[None]]


class SlidingWindowLimiter:
    """At most ``rate`` acquisitions in any window of ``period + margin`` s, and none closer than period/rate.

    aiolimiter's AsyncLimiter(rate, 1) is a leaky bucket: from empty it lets ``rate`` through at
    once and then one every 1/rate s, so the first second can see almost 2 x rate starts, and so can
    any second after a pause (a 429 backoff empties the bucket). Alma counts a sliding second, so
    this limiter remembers the last ``rate`` start times instead. Starts are also spaced evenly
    (``smooth``): a burst of ``rate`` requests leaves together but reaches Alma spread out, and the
    next second's requests could then land in the same window. ``margin`` absorbs the remaining
    jitter between our start time and Alma's arrival time.
    """

    def __init__(
        self,
        rate: int,
        period: float = 1.0,
        *,
        margin: float = 0.01,
        smooth: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1")
        self.rate = rate
        self.window = period + margin
        self.interval = period / rate if smooth else 0.0
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._next_start = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def per_second(cls, calls: float, **options: Any) -> SlidingWindowLimiter:
        """A limiter for a configured rate that may be fractional: never more than *calls* starts in
        any one second (12.5 -> 12 a second; 0.5 -> one every 2 s)."""
        if not calls > 0:
            raise ValueError("calls per second must be more than 0")
        if calls >= 1:
            return cls(math.floor(calls), 1.0, **options)
        return cls(1, 1.0 / calls, **options)

    async def acquire(self) -> None:
        """Wait until one more start fits in the window, then record it."""
        async with self._lock:  # FIFO: waiters start in the order they asked
            while True:
                now = self._clock()
                while self._starts and self._starts[0] <= now - self.window:
                    self._starts.popleft()
                wait = self._next_start - now if self._starts else 0.0
                if len(self._starts) >= self.rate:
                    wait = max(wait, self._starts[0] + self.window - now)
                if wait <= 0:
                    # Pace from the schedule, not from the last actual start: a sleep that
                    # overshoots by a millisecond must not slow every later start down.
                    base = max(self._next_start, now - self.interval / 2) if self._starts else now
                    self._next_start = base + self.interval
                    self._starts.append(now)
                    return
                await self._sleep(wait)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        return None
