"""The pipeline the simulators share: one failure vocabulary that means the same in all three."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from simulators import alma, libcal, passagepoint
from simulators._common import TokenBook
from simulators._pipeline import SHARED_KINDS, FailureQueue

ITEM = alma.AlmaItem(
    mms_id="991234560001234",
    holding_id="221234560001234",
    item_pid="231234560001234",
    barcode="39000001",
    library="MAIN",
    location="stacks",
)
SCAN = {"op": "scan", "library": "MAIN", "circ_desk": "DESK1"}


@dataclass
class Simulator:
    """One simulator, seen through a call that changes its data and a count of that change."""

    name: str
    make_state: Callable[[float], Any]
    create_app: Callable[[Any], Any]
    inject: Callable[..., None]
    call: Callable[..., Awaitable[aiohttp.ClientResponse]]
    effects: Callable[[Any], int]


def _alma_state(hang_seconds: float) -> alma.AlmaState:
    state = alma.AlmaState(hang_seconds=hang_seconds)
    state.add_item(alma.AlmaItem(**{**ITEM.__dict__, "status": "loan"}))
    return state


SIMULATORS = [
    Simulator(
        "alma",
        _alma_state,
        alma.create_app,
        lambda state, kind, **kw: state.inject_failure(kind, **kw),
        lambda client, **kw: client.post(
            f"/almaws/v1/bibs/{ITEM.mms_id}/holdings/{ITEM.holding_id}/items/{ITEM.item_pid}",
            params=SCAN,
            headers={"Authorization": "apikey test-key", "Accept": "application/json"},
            **kw,
        ),
        lambda state: len(state.scans),
    ),
    Simulator(
        "libcal",
        lambda hang_seconds: libcal.LibCalState(hang_seconds=hang_seconds),
        libcal.create_app,
        lambda state, kind, **kw: state.inject_failure("token", kind, **kw),
        lambda client, **kw: client.post(
            "/1.1/oauth/token",
            data={"client_id": "cid", "client_secret": "secret", "grant_type": "client_credentials"},
            **kw,
        ),
        lambda state: len(state.tokens.expiry),
    ),
    Simulator(
        "passagepoint",
        lambda hang_seconds: passagepoint.PassagePointState(hang_seconds=hang_seconds),
        passagepoint.create_app,
        lambda state, kind, **kw: state.inject_failure("login", kind, **kw),
        lambda client, **kw: client.post(
            "/pp/api/v2/auth/login", json={"username": "svc", "password": "pw"}, **kw
        ),
        lambda state: len(state.tokens.expiry),
    ),
]


@pytest.fixture(params=SIMULATORS, ids=[sim.name for sim in SIMULATORS])
def sim(request: pytest.FixtureRequest) -> Simulator:
    return request.param


async def started(aiohttp_client: Any, sim: Simulator, hang_seconds: float = 0.2) -> tuple[Any, Any]:
    state = sim.make_state(hang_seconds)
    return state, await aiohttp_client(sim.create_app(state))


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [("502_text", 502, "text/plain"), ("503_html", 503, "text/html"), ("500", 500, None)],
)
async def test_an_error_kind_answers_once_and_applies_nothing(aiohttp_client, sim, kind, status, content_type):
    """502_text, 503_html and 500 answer their status once, change nothing, and are logged."""
    state, client = await started(aiohttp_client, sim)
    sim.inject(state, kind)
    response = await sim.call(client)
    assert response.status == status
    if content_type:
        assert response.content_type == content_type
    assert sim.effects(state) == 0
    assert (state.requests[-1]["status"], state.requests[-1]["failure"]) == (status, kind)
    assert (await sim.call(client)).status == 200


@pytest.mark.parametrize("applied", [False, True])
async def test_gateway_timeout_is_a_504_after_hang_seconds(aiohttp_client, sim, applied):
    """gateway_timeout: a 504 text/plain once hang_seconds have passed; applied decides the effect."""
    state, client = await started(aiohttp_client, sim, hang_seconds=0.2)
    sim.inject(state, "gateway_timeout", applied=applied)
    began = time.monotonic()
    response = await sim.call(client)
    assert time.monotonic() - began >= 0.2
    assert (response.status, response.content_type) == (504, "text/plain")
    assert await response.text() == "Gateway Timeout\n"
    assert sim.effects(state) == int(applied)


@pytest.mark.parametrize("applied", [False, True])
async def test_hang_never_answers_and_closes_after_hang_seconds(aiohttp_client, sim, applied):
    """hang: a client that waits longer than hang_seconds gets no answer, only a closed connection."""
    state, client = await started(aiohttp_client, sim, hang_seconds=0.2)
    sim.inject(state, "hang", applied=applied)
    began = time.monotonic()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim.call(client, timeout=aiohttp.ClientTimeout(total=10))
    assert time.monotonic() - began >= 0.2
    assert sim.effects(state) == int(applied)
    entry = state.requests[-1]
    assert (entry["status"], entry["failure"]) == (None, "hang")
    assert entry.get("applied_status") == (200 if applied else None)


async def test_hang_outlasts_a_shorter_client_timeout(aiohttp_client, sim):
    """hang: a client whose timeout is shorter than hang_seconds sees its own timeout."""
    state, client = await started(aiohttp_client, sim, hang_seconds=30)
    sim.inject(state, "hang")
    with pytest.raises(TimeoutError):
        await sim.call(client, timeout=aiohttp.ClientTimeout(total=0.1))
    try:
        answer = await sim.call(client)
    except aiohttp.ServerDisconnectedError:
        # The client's pool may hand out a connection the server is closing after the abandoned
        # request (seen once in a parallel run on a loaded machine): a new connection is what counts.
        answer = await sim.call(client)
    assert answer.status == 200


async def test_slow_takes_effect_at_once_and_answers_late(aiohttp_client, sim):
    """slow: the call takes effect at once; its real answer comes hang_seconds later."""
    state, client = await started(aiohttp_client, sim, hang_seconds=0.3)
    sim.inject(state, "slow")
    began = time.monotonic()
    answer = asyncio.ensure_future(sim.call(client))
    await asyncio.sleep(0.1)
    assert sim.effects(state) == 1 and not answer.done()
    response = await answer
    assert response.status == 200
    assert time.monotonic() - began >= 0.3
    assert sim.effects(state) == 1


@pytest.mark.parametrize("applied", [False, True])
async def test_disconnect_closes_at_once(aiohttp_client, sim, applied):
    """disconnect: the connection closes without an answer; the log has no status."""
    state, client = await started(aiohttp_client, sim, hang_seconds=30)
    sim.inject(state, "disconnect", applied=applied)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim.call(client, timeout=aiohttp.ClientTimeout(total=5))
    assert sim.effects(state) == int(applied)
    assert (state.requests[-1]["status"], state.requests[-1]["failure"]) == (None, "disconnect")


async def test_applied_error_records_the_real_status(aiohttp_client, sim):
    """applied=True: the real call runs (status in applied_status), then the 500 is answered."""
    state, client = await started(aiohttp_client, sim)
    sim.inject(state, "500", applied=True)
    assert (await sim.call(client)).status == 500
    assert sim.effects(state) == 1
    assert state.requests[-1]["applied_status"] == 200


async def test_count_fails_that_many_calls(aiohttp_client, sim):
    """count=2 fails the next two calls and no more."""
    state, client = await started(aiohttp_client, sim)
    sim.inject(state, "503_html", count=2)
    assert [(await sim.call(client)).status for _ in range(3)] == [503, 503, 200]


# -- the queue on its own -----------------------------------------------------------------------


def test_queue_is_first_in_first_out_per_target():
    """A request takes the oldest failure aimed at it or at any request; others wait their turn."""
    queue = FailureQueue()
    queue.add("500", target="a")
    queue.add("hang")
    queue.add("disconnect", target="b")
    assert queue.take("b").kind == "hang"
    assert queue.take("b").kind == "disconnect"
    assert queue.take("b") is None
    assert queue.take("a").kind == "500"
    assert queue.pending == []


@pytest.mark.parametrize(
    ("queue", "kind", "kwargs", "message"),
    [
        (FailureQueue(), "boom", {}, "unknown failure kind 'boom' (known: " + ", ".join(SHARED_KINDS) + ")"),
        (FailureQueue(targets=("login",)), "500", {"target": "logout"}, "unknown endpoint 'logout' (known: login)"),
        (FailureQueue(("429",), never_applied=("429",)), "429", {"applied": True},
         "a '429' failure is never applied: drop applied=True"),
        (FailureQueue(), "500", {"count": 0}, "count must be at least 1, got 0"),
    ],
)
def test_queue_refuses_nonsense(queue, kind, kwargs, message):
    """Typos and impossible combinations fail in the test that made them, naming what is known."""
    with pytest.raises(ValueError) as exc_info:
        queue.add(kind, **kwargs)
    assert str(exc_info.value) == message


@pytest.mark.parametrize(
    ("make", "name", "kind", "applied"),
    [
        (lambda: alma.AlmaState().failures, "timeout", "gateway_timeout", False),
        (lambda: libcal.LibCalState().failures, "timeout", "hang", False),
        (lambda: passagepoint.PassagePointState().failures, "timeout", "hang", False),
        (lambda: passagepoint.PassagePointState().failures, "timeout_after_apply", "hang", True),
    ],
)
def test_old_kind_names_still_mean_what_they_meant(make, name, kind, applied):
    """The old per-simulator "timeout" names map onto the shared vocabulary for their old callers."""
    queue = make()
    target = queue.targets[0] if queue.targets else None  # any target the queue accepts
    queue.add(name, target=target)
    failure = queue.take(target)
    assert (failure.kind, failure.applied) == (kind, applied)


def test_alma_timeout_sleep_is_the_old_name_of_hang_seconds():
    """AlmaState(timeout_sleep=...) still sets how long a gateway_timeout waits."""
    assert alma.AlmaState(timeout_sleep=1.5).hang_seconds == 1.5
    assert alma.AlmaState().hang_seconds == 60.0


def test_token_book():
    """Issued tokens work until their expiry or revoke_all; others are missing or unknown."""
    book = TokenBook()
    book.issue("t1", expires_at=100.0)
    assert [book.problem(token, 50.0) for token in ("t1", "", None, "t2")] == [
        None, "missing", "missing", "unknown"
    ]
    assert book.problem("t1", 100.0) == "expired"
    book.revoke_all()
    book.issue("t2", expires_at=100.0)
    assert (book.problem("t1", 50.0), book.problem("t2", 50.0)) == ("expired", None)
