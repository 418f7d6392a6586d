"""The request pipeline the three simulators share: request log, gateway, injected failure, latency.

``simulator_pipeline(...)`` is the one aiohttp middleware every simulator puts in front of its
handlers. Every request goes through it in this order:

1. Appended to ``state.requests`` (``request_entry``: its ``status`` is filled in once answered and
   stays None if the connection was dropped; ``failure`` names the injected failure it took, and
   ``applied_status`` the status of the real call an applied failure ran first).
2. The service's own gateway, if it has one (Alma: per-second threshold, API key, daily quota),
   may refuse it: that answer is final, no failure is taken and no latency slept.
3. It takes the first pending injected failure aimed at it (``FailureQueue``: first in, first out).
4. The gateway admits it: it may answer a failure of its own there (Alma's 429 and redirect, with
   no latency) or count the call (Alma's daily quota).
5. The state's latency: a uniform random sleep within ``state.latency`` (min, max) seconds.
6. The real handler answers, or the injected failure does.

Failure vocabulary (every simulator knows these kinds; each may add kinds of its own):

- ``500``: the service's own server-error answer (its body is the simulator's: Alma's error body,
  LibCal's HTML page, PassagePoint's JSON error).
- ``502_text``: a gateway's 502 with a ``text/plain`` body.
- ``503_html``: a gateway's 503 with an HTML page.
- ``gateway_timeout``: a gateway waits ``state.hang_seconds`` for the service, then answers 504
  ``text/plain``.
- ``hang``: the request is accepted and never answered: after ``state.hang_seconds`` the connection
  is closed without a byte. A client with a shorter timeout sees its own timeout.
- ``slow``: the real answer, sent ``state.hang_seconds`` late (the call always takes effect, at once).
- ``disconnect``: the connection is closed at once, without a byte.

``applied=True`` runs the real call first (its effect stays) and then fails as above: the
realistic case of a service that did the work and whose answer was lost. By default an injected
failure has no effect on the service's data.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from simulators._common import Handler, TokenBook, drop_connection, request_entry, sleep_latency

SHARED_KINDS = ("500", "502_text", "503_html", "gateway_timeout", "hang", "slow", "disconnect")
GATEWAY_502_TEXT = "Bad Gateway: the upstream server did not answer. Please try again later.\n"
HTML_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body>"
    "<center><h1>503 Service Temporarily Unavailable</h1></center></body></html>\n"
)
GATEWAY_TIMEOUT_TEXT = "Gateway Timeout\n"


@dataclass
class Failure:
    """One injected failure: its kind, how many more requests it fails, and what it is aimed at."""

    kind: str
    remaining: int
    target: str | None  # None: any request; else only requests aimed at it (an endpoint, an item)
    applied: bool


class FailureQueue:
    """Injected failures waiting for requests, taken first in, first out.

    ``own_kinds`` are the simulator's kinds beyond ``SHARED_KINDS``; ``never_applied`` those that
    refuse ``applied=True``; ``targets``, if given, the only targets a failure may name (its
    endpoints); ``legacy`` maps old kind names to ``(kind, applied)`` for callers that still use them.
    """

    def __init__(
        self,
        own_kinds: Sequence[str] = (),
        *,
        never_applied: Sequence[str] = (),
        targets: Sequence[str] | None = None,
        legacy: Mapping[str, tuple[str, bool]] | None = None,
    ) -> None:
        self.kinds = (*SHARED_KINDS, *own_kinds)
        self.never_applied = tuple(never_applied)
        self.targets = None if targets is None else tuple(targets)
        self.legacy = dict(legacy or {})
        self.pending: list[Failure] = []

    def add(self, kind: str, count: int = 1, target: str | None = None, applied: bool = False) -> None:
        """Fail the next ``count`` requests aimed at ``target`` (any request if None) with ``kind``."""
        if self.targets is not None and target not in self.targets:
            raise ValueError(f"unknown endpoint {target!r} (known: {', '.join(self.targets)})")
        kind, always_applied = self.legacy.get(kind, (kind, False))
        if kind not in self.kinds:
            raise ValueError(f"unknown failure kind {kind!r} (known: {', '.join(self.kinds)})")
        if applied and kind in self.never_applied:
            raise ValueError(f"a {kind!r} failure is never applied: drop applied=True")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        applied = applied or always_applied or kind == "slow"
        self.pending.append(Failure(kind, count, target, applied))

    def take(self, target: str | None) -> Failure | None:
        """Consume one use of the first pending failure aimed at ``target`` (or at any request)."""
        for failure in self.pending:
            if failure.target is None or failure.target == target:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self.pending.remove(failure)
                return failure
        return None


class SimulatorState:
    """What the pipeline reads and writes on every simulator's state."""

    requests: list[dict[str, Any]]
    failures: FailureQueue
    latency: tuple[float, float]
    hang_seconds: float
    rng: random.Random
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[object]]  # the latency sleep (tests may replace it)

    def count(self, path_prefix: str = "") -> int:
        """Number of requests received whose path starts with ``path_prefix``, whatever their status."""
        return sum(1 for entry in self.requests if entry["path"].startswith(path_prefix))


class TokenService(SimulatorState):
    """A simulator whose calls need a token it issued and whose failures aim at named endpoints.

    LibCal and PassagePoint: ``failures`` is a ``FailureQueue`` with their endpoints as targets.
    """

    tokens: TokenBook

    def expire_tokens(self) -> None:
        """Make every token issued so far answer 401."""
        self.tokens.revoke_all()

    def inject_failure(
        self, endpoint: str, kind: str, count: int = 1, applied: bool = False
    ) -> None:
        """Make the next ``count`` calls of ``endpoint`` fail with ``kind``."""
        self.failures.add(kind, count, endpoint, applied)


class Gateway(Protocol):
    """What stands in front of a service that has limits of its own (Alma's API gateway)."""

    def refuse(self, request: web.Request, entry: dict[str, Any]) -> web.StreamResponse | None:
        """The answer to a request refused before anything else, or None to let it on."""

    def admit(self, request: web.Request, failure: Failure | None) -> web.StreamResponse | None:
        """Answer a failure the gateway itself gives, or None once the call is let through."""


# The service's answer for the kinds only it knows how to give ("500" and its own kinds).
Answer = Callable[[web.Request, str], web.StreamResponse]


def simulator_pipeline(
    state_key: web.AppKey[Any],
    *,
    target: Callable[[web.Request], str | None],
    answers: Mapping[str, Answer],
    gateway: Gateway | None = None,
) -> Middleware:
    """The middleware that logs, gates, delays and fails requests for the state at ``app[state_key]``.

    ``target`` says what a request is aimed at (its endpoint, the item it scans), for failures
    aimed at one; ``answers`` gives the service's own failure answers, ``"500"`` at least.
    """

    @web.middleware
    async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = request.app[state_key]
        entry = request_entry(request, state.clock())
        state.requests.append(entry)
        try:
            response = await _through(state, request, handler, entry)
        except web.HTTPException as exc:  # unknown path or method: aiohttp's own 404/405
            entry["status"] = exc.status
            raise
        entry["status"] = response.status
        return response

    async def _through(
        state: SimulatorState, request: web.Request, handler: Handler, entry: dict[str, Any]
    ) -> web.StreamResponse:
        refusal = gateway.refuse(request, entry) if gateway else None
        if refusal is not None:
            return refusal
        failure = state.failures.take(target(request))
        if failure is not None:
            entry["failure"] = failure.kind
        early = gateway.admit(request, failure) if gateway else None
        if early is not None:
            return early
        await sleep_latency(state.rng, state.latency, state.sleep)
        if failure is None:
            return await handler(request)
        return await _fail(state, request, handler, entry, failure, answers)

    return pipeline


async def _fail(
    state: SimulatorState,
    request: web.Request,
    handler: Handler,
    entry: dict[str, Any],
    failure: Failure,
    answers: Mapping[str, Answer],
) -> web.StreamResponse:
    """Answer with an injected failure, running the real call first if it is ``applied``."""
    real: web.StreamResponse | web.HTTPException | None = None
    if failure.applied:
        try:
            real = await handler(request)
        except web.HTTPException as exc:
            real = exc
        entry["applied_status"] = real.status
    kind = failure.kind
    if kind in ("slow", "hang", "gateway_timeout"):
        await asyncio.sleep(state.hang_seconds)
    if kind == "slow":
        if isinstance(real, web.HTTPException):
            raise real
        assert real is not None  # "slow" is always applied
        return real
    if kind in ("hang", "disconnect"):
        drop_connection(request)
    if kind == "gateway_timeout":
        return web.Response(text=GATEWAY_TIMEOUT_TEXT, status=504, content_type="text/plain")
    if kind == "502_text":
        return web.Response(text=GATEWAY_502_TEXT, status=502, content_type="text/plain")
    if kind == "503_html":
        return web.Response(text=HTML_503, status=503, content_type="text/html")
    return answers[kind](request, kind)
