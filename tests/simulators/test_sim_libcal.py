"""The LibCal simulator answers like LibCal API 1.1 (see /work/shared/reference/libcal.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from simulators._common import latency_argument as parse_latency
from simulators.libcal import LibCalState, create_app, load_bookings

TODAY = date(2026, 11, 22)
CREDENTIALS = {"client_id": "cid", "client_secret": "secret", "grant_type": "client_credentials"}
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """Epoch seconds that only move when told to."""

    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(**kwargs) -> LibCalState:
    kwargs.setdefault("today", TODAY)
    return LibCalState(**kwargs)


def add(state: LibCalState, book_id: str, day: str = "2026-11-22", **kwargs) -> None:
    kwargs.setdefault("lid", 8827)
    state.add_booking(
        book_id=book_id,
        from_date=f"{day}T13:15:00-05:00",
        to_date=f"{day}T15:15:00-05:00",
        **kwargs,
    )


async def bearer(client) -> dict[str, str]:
    response = await client.post("/1.1/oauth/token", data=CREDENTIALS)
    body = await response.json()
    return {"Authorization": f"Bearer {body['access_token']}"}


@pytest.fixture
def state() -> LibCalState:
    return make_state()


@pytest.fixture
async def client(aiohttp_client, state):
    return await aiohttp_client(create_app(state))


# -- token ----------------------------------------------------------------------------------


async def test_token_form_encoded_returns_bearer_token(client):
    """A form-encoded client-credentials request gets the documented token body."""
    response = await client.post("/1.1/oauth/token", data=CREDENTIALS)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "cal_r ev_r ms_r rm_r sp_r sp_w h_r"


async def test_token_json_body_accepted_and_under_api_prefix(client):
    """JSON bodies work too, and /api/1.1 is an alias of /1.1."""
    response = await client.post("/api/1.1/oauth/token", json=CREDENTIALS)
    assert response.status == 200
    assert (await response.json())["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"client_secret": "wrong"}, {"error": "The client credentials are invalid"}),
        ({"client_id": "other"}, {"error": "The client credentials are invalid"}),
        ({"grant_type": "password"}, {"error": "Grant type not supported"}),
        ({"grant_type": ""}, {"error": "Grant type not supported"}),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
async def test_token_errors_are_400_with_exact_body(client, override, expected, as_json):
    """Bad credentials or grant type get 400 and the reference's exact error body."""
    form = {**CREDENTIALS, **override}
    kwargs = {"json": form} if as_json else {"data": form}
    response = await client.post("/1.1/oauth/token", **kwargs)
    assert response.status == 400
    assert await response.json() == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": aiohttp.FormData(CREDENTIALS, default_to_multipart=True)}, id="multipart"),
        pytest.param({"data": json.dumps(CREDENTIALS), "headers": {"Content-Type": "text/plain"}}, id="json-as-text"),
        pytest.param({"params": CREDENTIALS}, id="query-string"),
    ],
)
async def test_token_reads_only_form_encoded_or_json_bodies(client, kwargs):
    """Only the two confirmed body types are read; anything else is as if no grant was sent."""
    response = await client.post("/1.1/oauth/token", **kwargs)
    assert response.status == 400
    assert await response.json() == {"error": "Grant type not supported"}


async def test_invalid_client_quirk_answers_200_with_error_key(aiohttp_client):
    """With the deployment quirk on, bad credentials answer 200 with an ``error`` key."""
    client = await aiohttp_client(create_app(make_state(invalid_client_quirk=True)))
    response = await client.post("/1.1/oauth/token", data={**CREDENTIALS, "client_secret": "x"})
    assert response.status == 200
    assert await response.json() == {
        "error": "invalid_client",
        "error_description": "The client credentials are invalid",
    }


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, {"error": "invalid_request", "error_description": "The access token was not found"}),
        (
            {"Authorization": "Basic abc"},
            {"error": "invalid_request", "error_description": "The access token was not found"},
        ),
        (
            {"Authorization": "Bearer"},
            {"error": "invalid_request", "error_description": "The access token was not found"},
        ),
        (
            {"Authorization": "Bearer nope"},
            {"error": "invalid_token", "error_description": "The access token provided is invalid"},
        ),
    ],
)
async def test_bookings_without_valid_token_get_401(client, headers, expected):
    """Missing or unknown bearer tokens get 401."""
    response = await client.get("/1.1/space/bookings", headers=headers)
    assert response.status == 401
    assert await response.json() == expected


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Token"])
async def test_only_the_bearer_scheme_spelled_as_documented_is_read(client, scheme):
    """``Authorization: Bearer <token>`` works; another spelling of the scheme is unverified: 401."""
    token = (await bearer(client))["Authorization"].split(" ", 1)[1]
    assert (
        await client.get("/1.1/space/bookings", headers={"Authorization": f"Bearer {token}"})
    ).status == 200
    response = await client.get("/1.1/space/bookings", headers={"Authorization": f"{scheme} {token}"})
    assert response.status == 401
    assert await response.json() == {
        "error": "invalid_request",
        "error_description": "The access token was not found",
    }


async def test_expire_tokens_revokes_issued_tokens_only(client, state):
    """expire_tokens() makes earlier tokens 401; a token fetched afterwards works."""
    old = await bearer(client)
    state.expire_tokens()
    response = await client.get("/1.1/space/bookings", headers=old)
    assert response.status == 401
    assert (await response.json())["error_description"] == "The access token provided has expired"
    fresh = await bearer(client)
    assert (await client.get("/1.1/space/bookings", headers=fresh)).status == 200


async def test_token_expires_after_its_lifetime(aiohttp_client):
    """A token works until ``expires_in`` seconds have passed on the clock, then gets 401."""
    clock = FakeClock()
    client = await aiohttp_client(create_app(make_state(token_lifetime=60, clock=clock)))
    headers = await bearer(client)
    clock.now += 59
    assert (await client.get("/1.1/space/bookings", headers=headers)).status == 200
    clock.now += 1
    assert (await client.get("/1.1/space/bookings", headers=headers)).status == 401


# -- bookings -------------------------------------------------------------------------------


async def test_bookings_body_is_bare_array_of_documented_rows(client, state):
    """Rows carry the documented fields, with local-offset dates, in a bare JSON array."""
    add(state, "cs_JnMn5iv", primary_id="G12345678")
    response = await client.get("/1.1/space/bookings", headers=await bearer(client))
    assert response.status == 200
    assert response.content_type == "application/json"
    rows = await response.json()
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert row["bookId"] == "cs_JnMn5iv"
    assert row["fromDate"] == "2026-11-22T13:15:00-05:00"
    assert row["toDate"] == "2026-11-22T15:15:00-05:00"
    assert row["status"] == "Confirmed"
    assert {"id", "eid", "cid", "lid", "created", "firstName", "lastName", "email"} <= set(row)
    assert "q12505" not in row
    assert "cancelled" not in row


@pytest.mark.parametrize(
    ("params", "included"),
    [
        ({}, False),
        ({"formAnswers": "1"}, True),
        ({"formAnswers": "0"}, False),
        # Only formAnswers=1 is confirmed; the rest is ignored, as a strict stand-in.
        ({"form_answers": "1"}, False),
        ({"form_answers": "1", "formAnswers": "0"}, False),
        ({"formAnswers": "true"}, False),
        ({"formAnswers": "yes"}, False),
        ({"formanswers": "1"}, False),
    ],
)
async def test_form_answers_only_for_formAnswers_1(client, state, params, included):  # noqa: N802
    """Custom answers (``q<id>``) appear only with formAnswers=1; form_answers=1 is ignored."""
    add(state, "cs_a", primary_id="G1", answers={"q777": "yes"})
    rows = await (
        await client.get("/1.1/space/bookings", params=params, headers=await bearer(client))
    ).json()
    assert len(rows) == 1 and rows[0]["bookId"] == "cs_a"
    assert ("q12505" in rows[0]) is included
    assert ("q777" in rows[0]) is included
    if included:
        assert rows[0]["q12505"] == "G1"


async def test_form_answer_key_configurable_and_absent_when_no_primary_id(aiohttp_client):
    """The id question key follows ``form_answer_key``; primary_id=None leaves it out."""
    state = make_state(form_answer_key="q99")
    add(state, "cs_with", primary_id="G2")
    add(state, "cs_without", primary_id=None)
    client = await aiohttp_client(create_app(state))
    rows = await (
        await client.get(
            "/1.1/space/bookings", params={"formAnswers": "1"}, headers=await bearer(client)
        )
    ).json()
    by_id = {row["bookId"]: row for row in rows}
    assert by_id["cs_with"]["q99"] == "G2"
    assert "q99" not in by_id["cs_without"]


async def test_paging_by_limit(client, state):
    """Pages hold ``limit`` rows (default 20); the last page is short."""
    for number in range(45):
        add(state, f"cs_{number:03d}")
    headers = await bearer(client)
    sizes = []
    seen = []
    for page in (1, 2, 3, 4):
        rows = await (
            await client.get("/1.1/space/bookings", params={"page": page}, headers=headers)
        ).json()
        sizes.append(len(rows))
        seen += [row["bookId"] for row in rows]
    assert sizes == [20, 20, 5, 0]
    assert seen == [f"cs_{number:03d}" for number in range(45)]
    rows = await (
        await client.get("/1.1/space/bookings", params={"limit": "500"}, headers=headers)
    ).json()
    assert len(rows) == 45


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"date": "2026-13-01"}, 'invalid "date" value'),
        ({"date": "22/11/2026"}, 'invalid "date" value'),
        ({"date": "20261122"}, 'invalid "date" value'),
        ({"date": "tomorrow"}, 'invalid "date" value'),
        ({"page": "0"}, 'invalid "page" value, must be >= 1'),
        ({"page": "-1"}, 'invalid "page" value, must be >= 1'),
        ({"page": "x"}, 'invalid "page" value, must be >= 1'),
        ({"page": ""}, 'invalid "page" value, must be >= 1'),
        ({"limit": "0"}, 'invalid "limit" value'),
        ({"limit": "501"}, 'invalid "limit" value'),
        ({"days": "366"}, 'invalid "days" value'),
        ({"days": "-1"}, 'invalid "days" value'),
        # Strict where Python would be lenient: only YYYY-MM-DD, plain integers, no empty values.
        ({"date": "2026-W48-1"}, 'invalid "date" value'),
        ({"date": "2026-11-2\u0662"}, 'invalid "date" value'),
        ({"date": ""}, 'invalid "date" value'),
        ({"page": "+2"}, 'invalid "page" value, must be >= 1'),
        ({"page": " 2"}, 'invalid "page" value, must be >= 1'),
        ({"limit": "1_0"}, 'invalid "limit" value'),
        ({"limit": ""}, 'invalid "limit" value'),
        ({"days": ""}, 'invalid "days" value'),
        ({"days": "\u0661"}, 'invalid "days" value'),
        ({"lid": "gelman"}, 'invalid "lid" value'),
        ({"lid": "8827,10332"}, 'invalid "lid" value'),
        ({"lid": ""}, 'invalid "lid" value'),
        ({"cid": "1.0"}, 'invalid "cid" value'),
        ({"eid": " 44"}, 'invalid "eid" value'),
        ({"email": ""}, 'invalid "email" value'),
        ({"lid": ["8827", "8827"]}, 'parameter "lid" given more than once'),
        ({"formAnswers": ["1", "1"]}, 'parameter "formAnswers" given more than once'),
    ],
)
async def test_bad_parameters_get_400_text_plain(client, params, message):
    """Bad parameters answer 400 text/plain with the exact message (date/page ones are LibCal's)."""
    query = [(name, value) for name, values in params.items() for value in (values if isinstance(values, list) else [values])]
    response = await client.get("/1.1/space/bookings", params=query, headers=await bearer(client))
    assert response.status == 400
    assert response.content_type == "text/plain"
    assert await response.text() == message


async def test_booking_by_ids_refuses_a_repeated_parameter(client, state):
    """GET /1.1/space/booking/{id} refuses a parameter given twice, like /space/bookings."""
    add(state, "cs_a", primary_id="G1")
    response = await client.get(
        "/1.1/space/booking/cs_a?formAnswers=1&formAnswers=0", headers=await bearer(client)
    )
    assert response.status == 400
    assert await response.text() == 'parameter "formAnswers" given more than once'


async def test_multi_seat_booking_repeats_book_id(client, state):
    """A booking for several seats appears as several rows with the same bookId."""
    add(state, "cs_seats", seats=3)
    add(state, "cs_single")
    rows = await (await client.get("/1.1/space/bookings", headers=await bearer(client))).json()
    assert [row["bookId"] for row in rows].count("cs_seats") == 3
    assert len({row["id"] for row in rows}) == 4


@pytest.mark.parametrize(
    "status", ["Cancelled by User", "Cancelled by System", "Cancelled by Admin", "Cancelled"]
)
async def test_cancelled_rows_carry_status_and_timestamp(client, state, status):
    """cancel() sets a cancelled status and a ``cancelled`` ISO timestamp with offset."""
    add(state, "cs_gone", seats=2)
    state.cancel("cs_gone", status=status)
    rows = await (await client.get("/1.1/space/bookings", headers=await bearer(client))).json()
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == status
        stamp = row["cancelled"]
        assert stamp[-6] in "+-" and stamp[-3] == ":"


async def test_booking_added_cancelled_gets_timestamp(client, state):
    """A booking added with a cancelled status carries a ``cancelled`` timestamp too."""
    add(state, "cs_born_cancelled", status="Cancelled by System")
    add(state, "cs_given", status="Cancelled", cancelled="2026-11-20T09:00:00-05:00")
    rows = await (await client.get("/1.1/space/bookings", headers=await bearer(client))).json()
    assert rows[0]["cancelled"].startswith("20")
    assert rows[1]["cancelled"] == "2026-11-20T09:00:00-05:00"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"cs_ok", "cs_cancel", "cs_tentative"}),
        ({"include_cancel": "0"}, {"cs_ok", "cs_tentative"}),
        ({"include_cancel": "1"}, {"cs_ok", "cs_cancel", "cs_tentative"}),
        ({"include_tentative": "0"}, {"cs_ok", "cs_cancel"}),
        ({"include_denied": "1"}, {"cs_ok", "cs_cancel", "cs_tentative", "cs_denied"}),
        # Values other than 1/0 are not confirmed: ignored, the default applies.
        ({"include_cancel": "false"}, {"cs_ok", "cs_cancel", "cs_tentative"}),
        ({"include_tentative": "no"}, {"cs_ok", "cs_cancel", "cs_tentative"}),
        ({"include_denied": "true"}, {"cs_ok", "cs_cancel", "cs_tentative"}),
    ],
)
async def test_status_inclusion_flags(client, state, params, expected):
    """include_cancel defaults to 1, include_tentative to 1, include_denied to 0; each takes 1/0."""
    add(state, "cs_ok")
    add(state, "cs_cancel")
    state.cancel("cs_cancel")
    add(state, "cs_tentative", status="Mediated Tentative")
    add(state, "cs_denied", status="Mediated Denied")
    rows = await (
        await client.get("/1.1/space/bookings", params=params, headers=await bearer(client))
    ).json()
    assert {row["bookId"] for row in rows} == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["cs_today"]),
        ({"date": "2026-11-23"}, ["cs_tomorrow"]),
        ({"days": "1"}, ["cs_today", "cs_tomorrow"]),
        ({"days": "365"}, ["cs_today", "cs_tomorrow", "cs_later"]),
        ({"date": "2026-11-01", "days": "1"}, ["cs_today", "cs_tomorrow"]),  # past date ignored
        ({"lid": "9999", "days": "365"}, ["cs_other_lid"]),
    ],
)
async def test_date_window_and_filters(client, state, params, expected):
    """date/days select on the row's local date; past dates are ignored; lid filters."""
    add(state, "cs_yesterday", day="2026-11-21")
    add(state, "cs_today")
    add(state, "cs_tomorrow", day="2026-11-23")
    add(state, "cs_later", day="2027-02-01")
    add(state, "cs_other_lid", day="2026-12-01", lid=9999)
    params = {"lid": "8827", **params}
    rows = await (
        await client.get("/1.1/space/bookings", params=params, headers=await bearer(client))
    ).json()
    assert [row["bookId"] for row in rows] == expected


@pytest.mark.parametrize(
    ("default", "params", "cancelled_shown"),
    [
        (True, {}, True),
        (True, {"include_cancel": "1"}, True),
        (True, {"include_cancel": "0"}, False),
        (False, {}, False),
        (False, {"include_cancel": "1"}, True),
        (False, {"include_cancel": "0"}, False),
        (False, {"include_cancel": "true"}, False),
    ],
)
async def test_explicit_include_cancel_does_not_depend_on_the_unverified_default(
    aiohttp_client, default, params, cancelled_shown
):
    """include_cancel=1/0 always include/leave out cancelled rows; only a missing one uses the default."""
    state = make_state(include_cancel_default=default)
    add(state, "cs_ok")
    add(state, "cs_cancel")
    state.cancel("cs_cancel")
    client = await aiohttp_client(create_app(state))
    rows = await (
        await client.get("/1.1/space/bookings", params=params, headers=await bearer(client))
    ).json()
    assert [row["bookId"] for row in rows] == (["cs_ok", "cs_cancel"] if cancelled_shown else ["cs_ok"])


async def test_past_dates_honoured_when_quirk_off(aiohttp_client):
    """ignore_past_dates=False lets a test read bookings from earlier days."""
    state = make_state(ignore_past_dates=False)
    add(state, "cs_old", day="2026-11-01")
    client = await aiohttp_client(create_app(state))
    rows = await (
        await client.get(
            "/1.1/space/bookings", params={"date": "2026-11-01"}, headers=await bearer(client)
        )
    ).json()
    assert [row["bookId"] for row in rows] == ["cs_old"]


@pytest.mark.parametrize(
    ("email", "expected"),
    [("ada@example.edu", ["cs_ada"]), ("ADA@example.edu", []), ("ada", [])],
)
async def test_email_filter_is_exact_and_api_prefix(client, state, email, expected):
    """email matches exactly (case-insensitivity is unverified); /api/1.1 answers the same."""
    add(state, "cs_ada", email="ada@example.edu")
    add(state, "cs_bob", email="bob@example.edu")
    rows = await (
        await client.get(
            "/api/1.1/space/bookings",
            params={"email": email},
            headers=await bearer(client),
        )
    ).json()
    assert [row["bookId"] for row in rows] == expected


async def test_booking_by_ids_skips_cancelled(client, state):
    """GET /1.1/space/booking/{id,id} returns those rows; cancelled bookings return no data."""
    add(state, "cs_a", primary_id="G1")
    add(state, "cs_b", seats=2)
    add(state, "cs_c")
    state.cancel("cs_c")
    response = await client.get(
        "/1.1/space/booking/cs_a,cs_b,cs_c",
        params={"formAnswers": "1"},
        headers=await bearer(client),
    )
    assert response.status == 200
    rows = await response.json()
    assert [row["bookId"] for row in rows] == ["cs_a", "cs_b", "cs_b"]
    assert rows[0]["q12505"] == "G1"


@pytest.mark.parametrize(("params", "included"), [({"formAnswers": "1"}, True), ({"form_answers": "1"}, False), ({}, False)])
async def test_booking_by_ids_form_answers_only_for_formAnswers_1(client, state, params, included):  # noqa: N802
    """GET /1.1/space/booking/{id} shows custom answers for formAnswers=1 only, like /space/bookings."""
    add(state, "cs_a", primary_id="G1")
    rows = await (
        await client.get("/1.1/space/booking/cs_a", params=params, headers=await bearer(client))
    ).json()
    assert [row["bookId"] for row in rows] == ["cs_a"]
    assert ("q12505" in rows[0]) is included


async def test_request_log_and_counts(client, state):
    """Every request is logged with method, path, query and status; count() filters by prefix."""
    headers = await bearer(client)
    await client.get("/1.1/space/bookings", params={"lid": "1"}, headers=headers)
    await client.get("/1.1/space/bookings", params={"page": "0"}, headers=headers)
    assert state.count("/1.1/space/bookings") == 2
    assert state.count("/1.1/oauth") == 1
    assert state.count() == 3
    assert [entry["status"] for entry in state.requests] == [200, 200, 400]
    assert state.requests[1]["query"] == {"lid": "1"}
    assert state.requests[1]["method"] == "GET"


async def test_request_log_keeps_the_exact_query_sent(client, state):
    """The log keeps every parameter pair in order (repeats too) and the raw query string."""
    headers = await bearer(client)
    await client.get(
        "/1.1/space/bookings?lid=8827&form_answers=1&formAnswers=1&email=a%2Bb@x.edu&lid=9",
        headers=headers,
    )
    await client.get("/1.1/space/bookings", headers=headers)
    sent, bare = state.requests[1], state.requests[2]
    assert sent["params"] == [
        ("lid", "8827"),
        ("form_answers", "1"),
        ("formAnswers", "1"),
        ("email", "a+b@x.edu"),
        ("lid", "9"),
    ]
    assert sent["raw_query"] == "lid=8827&form_answers=1&formAnswers=1&email=a%2Bb@x.edu&lid=9"
    assert sent["query"]["lid"] == "8827"
    assert sent["status"] == 400  # lid given twice: logged all the same
    assert (bare["params"], bare["raw_query"], bare["query"]) == ([], "", {})
    assert state.requests[0]["params"] == []  # the token's credentials travel in the body


async def test_latency_is_applied_without_changing_answers(aiohttp_client):
    """A configured latency still answers normally (its speed is a benchmark matter)."""
    state = make_state(latency=(0.01, 0.02))
    add(state, "cs_slow")
    client = await aiohttp_client(create_app(state))
    rows = await (await client.get("/1.1/space/bookings", headers=await bearer(client))).json()
    assert [row["bookId"] for row in rows] == ["cs_slow"]


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("bookings", "/1.1/space/bookings"), ("booking", "/api/1.1/space/booking/cs_a")],
)
async def test_injected_500_is_an_html_page_then_recovers(client, state, endpoint, path):
    """An injected 500 answers a text/html error page once; the next call answers normally."""
    headers = await bearer(client)
    state.inject_failure(endpoint, "500")
    response = await client.get(path, headers=headers)
    assert response.status == 500
    assert response.content_type == "text/html"
    assert await response.text() == "<html><body><h1>500 Internal Server Error</h1></body></html>"
    assert (await client.get(path, headers=headers)).status == 200
    assert state.requests[-2]["failure"] == "500"


async def test_injected_token_failures(client, state):
    """The token endpoint can fail too: a disconnect, then a 500, then a token."""
    state.inject_failure("token", "disconnect")
    state.inject_failure("token", "500")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/1.1/oauth/token", data=CREDENTIALS)
    assert (await client.post("/1.1/oauth/token", data=CREDENTIALS)).status == 500
    assert (await client.post("/1.1/oauth/token", data=CREDENTIALS)).status == 200


@pytest.mark.parametrize("kind", ["hang", "timeout"])  # "timeout": the old name of "hang"
async def test_injected_hang_withholds_the_answer(aiohttp_client, kind):
    """An injected hang answers nothing before the client gives up."""
    state = make_state(hang_seconds=60)
    client = await aiohttp_client(create_app(state))
    headers = await bearer(client)
    state.inject_failure("bookings", kind, count=1)
    with pytest.raises(TimeoutError):
        await client.get(
            "/1.1/space/bookings", headers=headers, timeout=aiohttp.ClientTimeout(total=0.1)
        )
    assert state.requests[-1]["failure"] == "hang"
    assert (await client.get("/1.1/space/bookings", headers=headers)).status == 200


@pytest.mark.parametrize(
    ("endpoint", "kind", "message"),
    [
        ("updates", "500", "unknown endpoint 'updates'"),
        ("token", "429", "unknown failure kind '429'"),
    ],
)
def test_inject_failure_rejects_unknown_names(endpoint, kind, message):
    """inject_failure names what it knows when given something else."""
    with pytest.raises(ValueError, match=message):
        make_state().inject_failure(endpoint, kind)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "Booked"}, "unknown LibCal status 'Booked'"),
        ({"from_date": "not a date"}, "Invalid isoformat string"),
    ],
)
def test_add_booking_rejects_bad_setup(kwargs, message):
    """Test setup errors are caught early with a clear message."""
    state = make_state()
    base = {
        "book_id": "cs_x",
        "lid": 1,
        "from_date": "2026-11-22T13:15:00-05:00",
        "to_date": "2026-11-22T15:15:00-05:00",
    }
    with pytest.raises(ValueError, match=message):
        state.add_booking(**{**base, **kwargs})


def test_cancel_rejects_unknown_booking_and_status():
    """cancel() refuses an unknown bookId or a status that is not a cancelled one."""
    state = make_state()
    add(state, "cs_x")
    with pytest.raises(KeyError, match="no booking 'cs_missing'"):
        state.cancel("cs_missing")
    with pytest.raises(ValueError, match="'Confirmed' is not a cancelled status"):
        state.cancel("cs_x", status="Confirmed")


@pytest.mark.parametrize(
    ("text", "expected"), [("0.2-0.5", (0.2, 0.5)), ("0.3", (0.3, 0.3)), ("0-0", (0.0, 0.0))]
)
def test_parse_latency(text, expected):
    """--latency takes MIN-MAX or a single number of seconds."""
    assert parse_latency(text) == expected


def test_load_bookings_reports_bad_entry(tmp_path):
    """A bookings file with a bad entry names the file and the entry number."""
    path = tmp_path / "bookings.json"
    path.write_text(json.dumps([{"book_id": "a", "lid": 1}]))
    with pytest.raises(ValueError, match=r"bookings.json: booking #1: .*from_date"):
        load_bookings(make_state(), str(path))


# -- standalone -----------------------------------------------------------------------------


def start_standalone(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.libcal", "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    return process, line


async def test_standalone_serves_bookings_from_json(tmp_path):
    """``python -m simulators.libcal`` prints its URL on 127.0.0.1 and serves the given bookings."""
    today = date.today().isoformat()
    path = tmp_path / "bookings.json"
    path.write_text(
        json.dumps(
            [
                {
                    "book_id": "cs_cli",
                    "lid": 8827,
                    "from_date": f"{today}T13:15:00-05:00",
                    "to_date": f"{today}T15:15:00-05:00",
                    "primary_id": "G9",
                    "seats": 2,
                },
                {
                    "book_id": "cs_cli_gone",
                    "lid": 8827,
                    "from_date": f"{today}T16:00:00-05:00",
                    "to_date": f"{today}T17:00:00-05:00",
                    "cancel": "Cancelled by Admin",
                },
            ]
        )
    )
    process, line = start_standalone(
        "--bookings-json", str(path), "--latency", "0-0.01", "--include-cancel-default", "0"
    )
    try:
        assert line.startswith("LibCal simulator listening on http://127.0.0.1:")
        base = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/1.1/oauth/token", data=CREDENTIALS) as response:
                token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(
                f"{base}/1.1/space/bookings",
                params={"date": today, "formAnswers": "1", "include_cancel": "1"},
                headers=headers,
            ) as response:
                rows = await response.json()
            async with session.get(
                f"{base}/1.1/space/bookings", params={"date": today}, headers=headers
            ) as response:
                without_cancelled = await response.json()
        assert [row["bookId"] for row in rows] == ["cs_cli", "cs_cli", "cs_cli_gone"]
        assert [row["bookId"] for row in without_cancelled] == ["cs_cli", "cs_cli"]
        assert rows[0]["q12505"] == "G9"
        assert rows[2]["status"] == "Cancelled by Admin"
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_standalone_bad_bookings_file_exits_2(tmp_path):
    """A missing bookings file is a usage error: exit status 2 and a message on stderr."""
    missing = tmp_path / "missing.json"
    result = subprocess.run(
        [sys.executable, "-m", "simulators.libcal", "--port", "0", "--bookings-json", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"libcal simulator: cannot load seed files: [Errno 2] No such file or directory: '{missing}'\n"
    )


def test_load_bookings_reports_a_bad_cancel_status(tmp_path):
    """A "cancel" that is not a cancelled status names the file and the entry too."""
    path = tmp_path / "bookings.json"
    booking = {"book_id": "a", "lid": 1, "from_date": "2026-11-22T13:15:00-05:00",
               "to_date": "2026-11-22T15:15:00-05:00", "cancel": "Confirmed"}
    path.write_text(json.dumps([booking]))
    with pytest.raises(ValueError, match=r"bookings.json: booking #1: 'Confirmed' is not a cancelled status"):
        load_bookings(make_state(), str(path))
