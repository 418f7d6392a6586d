"""alma.SlidingWindowLimiter under a fake clock: never more than `rate` starts in any second, and no slower."""

from __future__ import annotations

import asyncio

import pytest

from alma import SlidingWindowLimiter


class FakeClock:
    """A monotonic clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def starts_of(limiter: SlidingWindowLimiter, clock: FakeClock, tasks: int, each: int) -> list[float]:
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(each):
            async with limiter:
                starts.append(clock())
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return starts


def max_in_any_second(starts: list[float]) -> int:
    starts = sorted(starts)
    best = 0
    for i, start in enumerate(starts):
        best = max(best, sum(1 for s in starts[i:] if s < start + 1.0))
    return best


@pytest.mark.parametrize(("rate", "tasks"), [(25, 30), (25, 1), (5, 50), (200, 240)])
async def test_never_more_than_rate_in_any_second(rate: int, tasks: int) -> None:
    """Initial burst plus steady flow stays within `rate` per sliding second (AsyncLimiter(rate, 1) does not)."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(rate, clock=clock, sleep=clock.sleep)
    starts = await starts_of(limiter, clock, tasks, each=max(1, rate * 4 // tasks))
    assert max_in_any_second(starts) == rate


@pytest.mark.parametrize(("rate", "tasks"), [(25, 30), (200, 240)])
async def test_starts_are_evenly_spaced(rate: int, tasks: int) -> None:
    """No burst: consecutive starts are at least 1/rate apart, so arrival jitter cannot bunch them."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(rate, clock=clock, sleep=clock.sleep)
    starts = sorted(await starts_of(limiter, clock, tasks, each=2))
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 1 / rate - 1e-9


async def test_sustains_the_rate() -> None:
    """120 starts at 25/s: 25 every 1.01 s of fake time, i.e. 99% of the limit, never less."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(25, clock=clock, sleep=clock.sleep)
    starts = await starts_of(limiter, clock, tasks=30, each=4)
    assert len(starts) == 120
    assert max(starts) - min(starts) == pytest.approx(4 * 1.01 + 19 * 0.04)


async def test_sleep_overshoot_does_not_accumulate() -> None:
    """Real sleeps wake a little late; pacing follows the schedule, so 1 ms late per sleep costs ~1 ms in all."""
    clock = FakeClock()

    async def late_sleep(seconds: float) -> None:
        await clock.sleep(seconds + 0.001)

    limiter = SlidingWindowLimiter(25, margin=0.0, clock=clock, sleep=late_sleep)
    starts = sorted(await starts_of(limiter, clock, tasks=30, each=1))[:25]
    assert max_in_any_second(starts) <= 25
    assert starts[-1] - starts[0] == pytest.approx(24 * 0.04, abs=0.002)


async def test_a_pause_does_not_allow_a_double_burst() -> None:
    """After an idle stretch the window still holds: never more than `rate` in any second."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(10, clock=clock, sleep=clock.sleep)
    first = await starts_of(limiter, clock, tasks=10, each=1)
    clock.now += 0.5
    second = await starts_of(limiter, clock, tasks=10, each=2)
    assert max_in_any_second(first + second) == 10


async def test_unsmoothed_allows_a_burst_of_rate_but_no_more() -> None:
    """smooth=False: `rate` start at once, the next waits for the window (period + margin)."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(10, smooth=False, clock=clock, sleep=clock.sleep)
    starts = sorted(await starts_of(limiter, clock, tasks=11, each=1))
    assert starts[:10] == [1000.0] * 10
    assert starts[10] == pytest.approx(1001.01)


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error, refused at construction."""
    with pytest.raises(ValueError, match="rate must be at least 1"):
        SlidingWindowLimiter(0)


@pytest.mark.parametrize(
    ("calls", "rate", "window"),
    [(25, 25, 1.01), (12.5, 12, 1.01), (1, 1, 1.01), (0.5, 1, 2.01), (0.1, 1, 10.01)],
)
def test_per_second_never_allows_more_than_the_configured_rate(calls: float, rate: int, window: float) -> None:
    """A configured rate may be fractional (libcal_passagepoint's Alma.rate_per_second): it is
    rounded down to whole calls per second, and below one call a second it becomes one call per period."""
    limiter = SlidingWindowLimiter.per_second(calls)
    assert (limiter.rate, limiter.window) == (rate, pytest.approx(window))


async def test_per_second_fractional_rate_under_a_fake_clock() -> None:
    """12.5 calls a second: never 13 starts in any second."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter.per_second(12.5, clock=clock, sleep=clock.sleep)
    starts = await starts_of(limiter, clock, tasks=20, each=3)
    assert max_in_any_second(starts) == 12


@pytest.mark.parametrize("calls", [0, -1])
def test_per_second_must_be_positive(calls: float) -> None:
    """No calls at all is a configuration error the caller refuses first; here it is a ValueError."""
    with pytest.raises(ValueError, match="calls per second must be more than 0"):
        SlidingWindowLimiter.per_second(calls)
