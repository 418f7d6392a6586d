"""The three service clients against their simulators, and their parsers on the reference's quirks."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alma import AlmaNotFound, AlmaRateLimited, AlmaUnavailable, SlidingWindowLimiter
from libcal_passagepoint.alma_users import (
    AlmaUser,
    AlmaUserHasNoBarcode,
    AlmaUsers,
    user_from_record,
)
from libcal_passagepoint.config import AlmaConfig
from libcal_passagepoint.libcal import (
    PAGE_LIMIT,
    LibCalAuthError,
    LibCalClient,
    LibCalRequestError,
    parse_bookings,
)
from libcal_passagepoint.passagepoint import (
    PassagePointAuthError,
    PassagePointClient,
    PassagePointUnavailable,
    token_expiry,
)
from libcal_passagepoint.runner import alma_limiter
from simulators.alma import USER_EXAMPLE, AlmaState
from simulators.alma import AlmaUser as SimUser
from simulators.alma import create_app as create_alma_app
from simulators.libcal import LibCalState
from simulators.libcal import create_app as create_libcal_app
from simulators.passagepoint import PassagePointState
from simulators.passagepoint import create_app as create_pp_app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP session per test, closed afterwards."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- LibCal ------------------------------------------------------------------------------------

async def _libcal(aiohttp_server: Any, session: aiohttp.ClientSession, state: LibCalState, clock: Any = None) -> LibCalClient:
    server = await aiohttp_server(create_libcal_app(state))
    kwargs = {"clock": clock} if clock else {}
    return LibCalClient(
        session, token_url=str(server.make_url("/1.1/oauth/token")), bookings_url=str(server.make_url("/1.1/space/bookings")),
        client_id="cid", client_secret="secret", timeout=5, **kwargs,
    )


async def test_libcal_pages_of_500_until_a_short_page_with_form_answers(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """501 rows -> page 1 (500) and page 2 (1); every request asks for form answers (formAnswers=1, the
    spelling public production clients use) and cancellations (include_cancel=1); one token for all."""
    state = LibCalState()
    for n in range(PAGE_LIMIT + 1):
        state.add_booking(f"cs_{n:04d}", 8827, "2030-01-15T09:00:00-05:00", "2030-01-15T10:00:00-05:00", primary_id=f"G{n:08d}")
    client = await _libcal(aiohttp_server, session, state)
    rows = await client.fetch_bookings(8827, date="2030-01-15")
    assert len(rows) == PAGE_LIMIT + 1 and rows[0]["q12505"] == "G00000000"
    pages = [r["query"] for r in state.requests if r["path"].endswith("/space/bookings")]
    assert [(q["page"], q["limit"], q["formAnswers"], q["include_cancel"], q["lid"], q["date"]) for q in pages] == [
        ("1", "500", "1", "1", "8827", "2030-01-15"), ("2", "500", "1", "1", "8827", "2030-01-15")]
    assert all("form_answers" not in q for q in pages)
    await client.fetch_bookings(8827, date="2030-01-15")
    assert state.count("/1.1/oauth/token") == 1


async def test_libcal_token_replaced_shortly_before_expires_in(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """The token is reused until 60 s before expires_in, then replaced without waiting for a 401."""
    state = LibCalState(token_lifetime=3600)
    clock = _Clock(1000.0)
    client = await _libcal(aiohttp_server, session, state, clock)
    await client.fetch_bookings(8827)
    clock.now += 3539
    await client.fetch_bookings(8827)
    assert state.count("/1.1/oauth/token") == 1
    clock.now += 2
    await client.fetch_bookings(8827)
    assert state.count("/1.1/oauth/token") == 2
    assert all(r["status"] != 401 for r in state.requests)


@pytest.mark.parametrize("quirk", [False, True], ids=["status-400", "status-200-with-error"])
async def test_libcal_bad_credentials(aiohttp_server: Any, session: aiohttp.ClientSession, quirk: bool) -> None:
    """Refused credentials raise LibCalAuthError, also when the error comes with status 200."""
    state = LibCalState(client_secret="other", invalid_client_quirk=quirk)
    client = await _libcal(aiohttp_server, session, state)
    with pytest.raises(LibCalAuthError) as excinfo:
        await client.fetch_bookings(8827)
    expected = ("HTTP 200: The client credentials are invalid" if quirk else "HTTP 400: The client credentials are invalid")
    assert str(excinfo.value) == f"LibCal refused the client credentials ({expected}): check LibCal.client_id and LibCal.client_secret"


async def test_libcal_text_plain_400(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """A 400 text/plain answer becomes LibCalRequestError with LibCal's text."""
    client = await _libcal(aiohttp_server, session, LibCalState())
    with pytest.raises(LibCalRequestError) as excinfo:
        await client.fetch_bookings(8827, date="2030-13-45")
    assert str(excinfo.value) == 'LibCal bookings request answered HTTP 400: invalid "date" value'
    assert excinfo.value.status == 400


def test_parse_bookings_dedupes_seats_recognises_cancellations_and_reports_bad_rows() -> None:
    """Rows sharing a bookId are one booking; a cancelled row is flagged; unusable rows are explained."""
    base = {"lid": 8827, "fromDate": "2030-01-15T09:00:00-05:00", "toDate": "2030-01-15T10:00:00-05:00",
            "firstName": "Ada", "lastName": "Lovelace", "email": "a@x.edu", "status": "Confirmed"}
    rows = [
        {**base, "bookId": "cs_a", "id": 1, "q12505": " G1 "},
        {**base, "bookId": "cs_a", "id": 2, "q12505": "G1"},
        {**base, "bookId": "cs_c", "id": 3, "status": "Cancelled by User", "cancelled": "2030-01-14T08:00:00-05:00"},
        {**base, "bookId": "cs_d", "id": 4, "fromDate": "2030-01-15 nine"},
        {**base, "bookId": "cs_e", "id": 5, "fromDate": "2030-01-15T09:00:00"},
        {**base, "id": 6},
    ]
    bookings, problems = parse_bookings(rows, "q12505")
    assert [(b.book_id, b.primary_id, b.cancelled) for b in bookings] == [("cs_a", "G1", False), ("cs_c", None, True)]
    assert problems[:2] == [
        "booking cs_d: fromDate '2030-01-15 nine' is not an ISO date-time",
        "booking cs_e: fromDate '2030-01-15T09:00:00' has no UTC offset",
    ]
    assert problems[2].startswith("LibCal returned a booking row without a bookId")


@given(st.lists(st.sampled_from(["cs_1", "cs_2", "cs_3", "cs_4"]), max_size=20))
def test_parse_bookings_keeps_first_row_of_each_book_id_in_order(book_ids: list[str]) -> None:
    """De-duplication keeps one booking per bookId, in first-seen order."""
    rows = [{"bookId": b, "lid": 1, "fromDate": "2030-01-15T09:00:00+00:00", "toDate": "2030-01-15T10:00:00+00:00",
             "status": "Confirmed"} for b in book_ids]
    bookings, problems = parse_bookings(rows, "q1")
    assert [b.book_id for b in bookings] == list(dict.fromkeys(book_ids)) and problems == []


# -- Alma --------------------------------------------------------------------------------------

def test_user_from_the_reference_example_record() -> None:
    """The real user record: the ACTIVE BARCODE identifier and the group code and description."""
    record = json.loads(USER_EXAMPLE)  # shared/reference/examples/alma_user_200.json, as recorded
    assert user_from_record(record, "ID12345") == AlmaUser("ID12345", "22999000883100", "GST", "GST Guest Patron")
    record["user_identifier"][0]["status"] = "INACTIVE"
    with pytest.raises(AlmaUserHasNoBarcode, match="^the Alma user has no active barcode$"):
        user_from_record(record, "ID12345")


async def _alma(aiohttp_server: Any, session: aiohttp.ClientSession, state: AlmaState, **kw: Any) -> tuple[AlmaUsers, list[float]]:
    """The lookup as the tool wires it (one shared Alma client per zone's key), with a recorded sleep."""
    server = await aiohttp_server(create_alma_app(state))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    config = AlmaConfig(apikeys=("k1", "k2"), users_endpt=str(server.make_url("/almaws/v1/users")))
    limiter = kw.pop("limiter", SlidingWindowLimiter(1000))
    return AlmaUsers.configured(config, session, limiter=limiter, timeout=5, sleep=fake_sleep, **kw), sleeps


def _sim_user(n: int, key: str = "k1") -> SimUser:
    return SimUser(primary_id=f"G{n:08d}", barcode=f"2222{n:010d}", user_group="UGRD", user_group_desc="Undergraduate",
                   first_name="A", last_name="B", email="a@b.edu", api_key=key)


async def test_alma_429_backs_off_with_growing_delays_then_succeeds(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """Two PER_SECOND_THRESHOLD 429s: two backoff sleeps, each longer, then the user."""
    state = AlmaState(api_keys={"k1", "k2"})
    state.add_user(_sim_user(1))
    state.inject_failure("429", count=2)
    client, sleeps = await _alma(aiohttp_server, session, state)
    user = await client.lookup_user("G00000001")
    assert user.barcode == "22220000000001"
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


async def test_alma_429_forever_gives_up(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """After max_429_retries the lookup fails with AlmaRateLimited, it does not loop forever: the
    client raises on each 429, the lookup's policy sends it again (through the limiter) and gives up."""
    state = AlmaState(api_keys={"k1", "k2"})
    state.add_user(_sim_user(1))
    state.inject_failure("429", count=10)
    client, sleeps = await _alma(aiohttp_server, session, state, max_429_retries=3)
    with pytest.raises(AlmaRateLimited, match="^Alma kept answering 429 to a user lookup after 3 retries$"):
        await client.lookup_user("G00000001")
    assert len(sleeps) == 3 and len(state.requests) == 4


@pytest.mark.parametrize("shape", ["single_error_object", "errors_exist_string"])
async def test_alma_not_found_in_any_shape_moves_to_the_next_key(aiohttp_server: Any, session: aiohttp.ClientSession, shape: str) -> None:
    """401861 with `error` as one object or `errorsExist` as a string still means: try the next zone."""
    state = AlmaState(api_keys={"k1", "k2"})
    state.add_user(_sim_user(2, key="k2"))
    state.inject_failure(shape)
    client, _ = await _alma(aiohttp_server, session, state)
    assert (await client.lookup_user("G00000002")).barcode == "22220000000002"
    assert [r["api_key"] for r in state.requests] == ["k1", "k2"]
    with pytest.raises(AlmaNotFound, match=r"^no Alma user has this university id \(tried 2 institution zones\)$"):
        await client.lookup_user("G77777777")


async def test_alma_gateway_error_is_retried_once(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """A text/plain 502 is retried once (a GET); two in a row raise AlmaUnavailable (AlmaServerError)."""
    state = AlmaState(api_keys={"k1", "k2"})
    state.add_user(_sim_user(1))
    state.inject_failure("502_text")
    client, _ = await _alma(aiohttp_server, session, state)
    assert (await client.lookup_user("G00000001")).primary_id == "G00000001"
    state.inject_failure("502_text", count=2)
    with pytest.raises(AlmaUnavailable, match="^Alma answered HTTP 502 to a user lookup"):
        await client.lookup_user("G00000001")


async def test_alma_concurrent_lookups_stay_under_the_per_second_limit(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """60 concurrent lookups through the tool's limiter: never more than 25 started in any second.
    The simulator's 25/s gateway counts arrivals, which a loaded machine can bunch by more than the
    limiter's 50 ms of slack: at most one 429, retried after a backoff."""
    state = AlmaState(api_keys={"k1", "k2"}, per_second_limit=25)
    for n in range(60):
        state.add_user(_sim_user(n))
    limiter = alma_limiter(25)
    starts: list[float] = []
    acquire = limiter.acquire

    async def recorded() -> None:
        await acquire()
        starts.append(time.monotonic())

    limiter.acquire = recorded  # type: ignore[method-assign]
    client, sleeps = await _alma(aiohttp_server, session, state, limiter=limiter)
    users = await asyncio.gather(*(client.lookup_user(f"G{n:08d}") for n in range(60)))
    assert len(users) == 60
    rate_limited = [r["status"] for r in state.requests].count(429)
    assert rate_limited <= 1 and len(sleeps) == rate_limited and len(starts) == len(state.requests)
    assert max(sum(1 for t in starts if start <= t < start + 1.0) for start in starts) <= 25


def test_the_tools_alma_limiter_leaves_room_for_arrival_jitter() -> None:
    """Alma.rate_per_second starts in any 1.05 s, evenly spaced: the slack the old leaky bucket
    (drained at rate - 2) gave, now on the shared sliding-window limiter; a fractional rate rounds down."""
    limiter = alma_limiter(25)
    assert (limiter.rate, limiter.window, limiter.interval) == (25, pytest.approx(1.05), pytest.approx(0.04))
    assert alma_limiter(12.5).rate == 12


# -- PassagePoint ------------------------------------------------------------------------------

async def _pp(aiohttp_server: Any, session: aiohttp.ClientSession, state: PassagePointState, **kw: Any) -> PassagePointClient:
    server = await aiohttp_server(create_pp_app(state))
    return PassagePointClient(session, api_root=str(server.make_url("")).rstrip("/"), username="svc", password=kw.pop("password", "pw"),
                              login_endpt="/pp/api/v2/auth/login", uniqueId_endpt="/pp/api/v2/person/byUniqueId",
                              create_visitor_endpt="/pp/api/v2/person/createVisitor", create_prereg_endpt="/pp/api/v2/visit/createPreReg",
                              get_destinations_endpt="/pp/api/v2/visit/getDestinations", timeout=kw.pop("timeout", 5), **kw)


def test_token_expiry_reads_exp_milliseconds() -> None:
    """The token is base64 JSON with exp in milliseconds, not a JWT."""
    token = base64.b64encode(json.dumps({"exp": 1603732500123, "username": "svc"}).encode()).decode()
    assert token_expiry(token) == pytest.approx(1603732500.123)
    assert token_expiry("not a token") is None


async def test_pp_login_reused_and_renewed_before_exp(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """One login serves many calls; near its exp a new login happens before the call (no 401)."""
    state = PassagePointState(token_lifetime=3600)
    clock = _Clock(time.time())
    client = await _pp(aiohttp_server, session, state, clock=clock)
    for _ in range(3):
        await client.get_destinations()
    assert state.count("/pp/api/v2/auth/login") == 1
    clock.now += 3600 - 10
    await client.get_destinations()
    assert state.count("/pp/api/v2/auth/login") == 2
    assert all(r["status"] != 401 for r in state.requests)


async def test_pp_401_logs_in_again_and_uses_the_retry_result(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """After expire_tokens the call gets 401, logs in once more, and the retried call's id is returned."""
    state = PassagePointState()
    client = await _pp(aiohttp_server, session, state)
    await client.get_destinations()
    state.expire_tokens()
    visitor_id = await client.create_visitor(unique_id="22220000000001", first_name="A", last_name="B", email="a@b.edu", category="Student")
    assert visitor_id in state.visitors and len(state.visitors) == 1
    assert [r["status"] for r in state.requests if "createVisitor" in r["path"]] == [401, 200]
    assert state.count("/pp/api/v2/auth/login") == 2


async def test_pp_bad_password(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """A refused login names the keys to check."""
    client = await _pp(aiohttp_server, session, PassagePointState(), password="wrong")
    with pytest.raises(PassagePointAuthError) as excinfo:
        await client.get_destinations()
    assert str(excinfo.value).startswith("PassagePoint refused the login (HTTP 401: ")
    assert str(excinfo.value).endswith("check PassagePoint.username and PassagePoint.password")


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare-array", "data-wrapped"])
async def test_pp_existing_unique_id_is_found_in_either_answer_shape(aiohttp_server: Any, session: aiohttp.ClientSession, wrapped: bool) -> None:
    """ALREADY_EXIST_UNIQUE_ID -> byUniqueId, whose answer may be a bare array or {"data": [...]}."""
    state = PassagePointState(wrap_byuniqueid=wrapped)
    existing = state.add_visitor(unique_id="22220000000001")
    client = await _pp(aiohttp_server, session, state)
    found = await client.find_or_create_visitor(unique_id="22220000000001", first_name="A", last_name="B", email="a@b.edu", category="Student")
    assert found == existing
    assert await client.find_visitor("00000000000000") is None


async def test_pp_prereg_sends_epoch_seconds_as_strings(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """createPreReg's JSON: startTime/endTime/visitorId as strings, the destination name."""
    state = PassagePointState()
    visitor = state.add_visitor(unique_id="1")
    client = await _pp(aiohttp_server, session, state)
    prereg_id = await client.create_prereg(start=1603732500, end=1603739700, visitor_id=visitor, destination="LibCal Gelman")
    assert [p["id"] for p in state.preregs] == [prereg_id]
    assert {k: state.preregs[0][k] for k in ("startTime", "endTime", "visitorId", "destination")} == {
        "startTime": "1603732500", "endTime": "1603739700", "visitorId": str(visitor), "destination": "LibCal Gelman"}


@pytest.mark.parametrize(("kind", "maybe_applied"), [("disconnect", True), ("hang", True), ("500", True)])
async def test_pp_lost_answers_may_have_been_applied(aiohttp_server: Any, session: aiohttp.ClientSession, kind: str, maybe_applied: bool) -> None:
    """A dropped connection, a timeout or a 5xx on createPreReg: PassagePointUnavailable(maybe_applied=True)."""
    state = PassagePointState(hang_seconds=2)
    visitor = state.add_visitor(unique_id="1")
    client = await _pp(aiohttp_server, session, state, timeout=0.5)
    await client.get_destinations()
    state.inject_failure("createPreReg", kind)
    with pytest.raises(PassagePointUnavailable) as excinfo:
        await client.create_prereg(start=1, end=2, visitor_id=visitor, destination="LibCal Gelman")
    assert excinfo.value.maybe_applied is maybe_applied


async def test_pp_unreachable_server_was_not_applied(session: aiohttp.ClientSession) -> None:
    """Connection refused: nothing can have happened, maybe_applied is False."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PassagePointClient(session, api_root=f"http://127.0.0.1:{port}", username="u", password="p", timeout=2)
    with pytest.raises(PassagePointUnavailable) as excinfo:
        await client.get_destinations()
    assert excinfo.value.maybe_applied is False


async def test_pp_connect_timeout_was_not_applied(aiohttp_server: Any) -> None:
    """No connection could be made in time (host unreachable, pool exhausted): createPreReg was never sent,
    so maybe_applied is False (a retry is safe), unlike a timeout waiting for the answer."""
    state = PassagePointState(hang_seconds=3)
    visitor = state.add_visitor(unique_id="1")
    root = str((await aiohttp_server(create_pp_app(state))).make_url("")).rstrip("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_connection:
        paths = {"login_endpt": "/pp/api/v2/auth/login", "create_prereg_endpt": "/pp/api/v2/visit/createPreReg",
                 "get_destinations_endpt": "/pp/api/v2/visit/getDestinations"}
        holder = PassagePointClient(one_connection, api_root=root, username="svc", password="pw", timeout=5, **paths)
        client = PassagePointClient(one_connection, api_root=root, username="svc", password="pw", timeout=1, **paths)
        await client.get_destinations()
        state.inject_failure("getDestinations", "hang")
        hanging = asyncio.ensure_future(holder.get_destinations())  # holds the only connection for 3 s
        await asyncio.sleep(0.2)
        with pytest.raises(PassagePointUnavailable) as excinfo:
            await client.create_prereg(start=1, end=2, visitor_id=visitor, destination="LibCal Gelman")
        hanging.cancel()
    assert excinfo.value.maybe_applied is False
    assert state.preregs == [] and state.count("/pp/api/v2/visit/createPreReg") == 0


async def test_pp_destinations(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """getDestinations' names are read from the answer."""
    client = await _pp(aiohttp_server, session, PassagePointState(destinations=["LibCal Gelman", "LibCal Eckles"]))
    assert await client.get_destinations() == ["LibCal Gelman", "LibCal Eckles"]
