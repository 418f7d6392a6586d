"""The PassagePoint simulator answers like PassagePoint REST API v2 (see reference/passagepoint.md)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from simulators.passagepoint import (
    DESTINATIONS_SHAPES,
    PassagePointState,
    create_app,
    load_visitors,
)

BASE = "/pp/api/v2"
LOGIN = {"username": "svc", "password": "pw"}
REPO = Path(__file__).resolve().parents[2]
VISITOR = {
    "category": "Student",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.edu",
    "mobilePhoneNo": "G12345678",
    "uniqueId": "22222000012345",
}


class FakeClock:
    """Epoch seconds that only move when told to."""

    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state() -> PassagePointState:
    return PassagePointState(hang_seconds=60)


@pytest.fixture
async def client(aiohttp_client, state):
    return await aiohttp_client(create_app(state))


async def token_header(client) -> dict[str, str]:
    response = await client.post(f"{BASE}/auth/login", json=LOGIN)
    return {"token": (await response.json())["token"]}


def prereg_body(visitor_id: int | str, **override) -> dict:
    body = {
        "startTime": "1795000000",
        "endTime": "1795007200",
        "visitorId": str(visitor_id),
        "destination": "LibCal Gelman",
    }
    body.update(override)
    return body


# -- login and tokens -----------------------------------------------------------------------


async def test_login_token_is_base64_of_exp_ms_and_username(aiohttp_client):
    """The token decodes to {"exp": epoch ms, "username"}: not a JWT."""
    clock = FakeClock()
    client = await aiohttp_client(create_app(PassagePointState(token_lifetime=600, clock=clock)))
    response = await client.post(f"{BASE}/auth/login", json=LOGIN)
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"token"}
    claims = json.loads(base64.b64decode(body["token"]))
    assert claims == {"exp": int((clock.now + 600) * 1000), "username": "svc"}


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            {"username": "svc", "password": "bad"},
            401,
            {"error": "INVALID_CREDENTIALS", "message": "Invalid username or password"},
        ),
        (
            {"username": "other", "password": "pw"},
            401,
            {"error": "INVALID_CREDENTIALS", "message": "Invalid username or password"},
        ),
        (
            ["svc", "pw"],
            400,
            {
                "error": "BAD_REQUEST",
                "message": "Body must be a JSON object with username and password",
            },
        ),
    ],
)
async def test_login_errors(client, body, status, expected):
    """Bad credentials get 401 and a non-object body 400 (both unverified choices)."""
    response = await client.post(f"{BASE}/auth/login", json=body)
    assert response.status == status
    assert await response.json() == expected


def forged_token(exp_ms: int) -> str:
    return base64.b64encode(json.dumps({"exp": exp_ms, "username": "svc"}).encode()).decode()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing token header"),
        ({"token": "not base64!"}, "Invalid token"),
        ({"token": base64.b64encode(b"[1]").decode()}, "Invalid token"),
        ({"token": forged_token(9_999_999_999_999)}, "Invalid token"),
    ],
)
async def test_calls_without_a_valid_token_get_401(client, headers, message):
    """Missing, undecodable or never-issued tokens get 401."""
    response = await client.get(f"{BASE}/visit/getDestinations", headers=headers)
    assert response.status == 401
    assert await response.json() == {"error": "UNAUTHORIZED", "message": message}


async def test_expire_tokens_then_login_again(client, state):
    """expire_tokens() makes issued tokens 401; a new login works."""
    old = await token_header(client)
    state.expire_tokens()
    response = await client.get(f"{BASE}/visit/getDestinations", headers=old)
    assert response.status == 401
    assert await response.json() == {"error": "UNAUTHORIZED", "message": "Token expired"}
    assert (
        await client.get(f"{BASE}/visit/getDestinations", headers=await token_header(client))
    ).status == 200


async def test_token_expires_at_its_exp(aiohttp_client):
    """A token answers 401 once the clock passes its ``exp``."""
    clock = FakeClock()
    client = await aiohttp_client(create_app(PassagePointState(token_lifetime=60, clock=clock)))
    headers = await token_header(client)
    clock.now += 59.9
    assert (await client.get(f"{BASE}/visit/getDestinations", headers=headers)).status == 200
    clock.now += 0.1
    assert (await client.get(f"{BASE}/visit/getDestinations", headers=headers)).status == 401


# -- visitors -------------------------------------------------------------------------------


async def test_create_visitor_from_query_string(client, state):
    """createVisitor reads the query string and answers {"data": [{"id": <15-digit int>}]}."""
    response = await client.post(
        f"{BASE}/person/createVisitor", params=VISITOR, headers=await token_header(client)
    )
    assert response.status == 200
    body = await response.json()
    assert list(body) == ["data"] and len(body["data"]) == 1
    visitor_id = body["data"][0]["id"]
    assert isinstance(visitor_id, int) and len(str(visitor_id)) == 15
    assert state.visitors[visitor_id] == {**VISITOR, "id": visitor_id}


async def test_create_visitor_ignores_json_body_and_defaults_category(client, state):
    """Fields sent in a JSON body are not read; category defaults to Visitor."""
    params = {k: v for k, v in VISITOR.items() if k != "category"}
    response = await client.post(
        f"{BASE}/person/createVisitor",
        params=params,
        json={"category": "Faculty", "uniqueId": "999"},
        headers=await token_header(client),
    )
    visitor = state.visitors[(await response.json())["data"][0]["id"]]
    assert visitor["category"] == "Visitor"
    assert visitor["uniqueId"] == VISITOR["uniqueId"]


@pytest.mark.parametrize("duplicate_status", [400, 409])
async def test_duplicate_unique_id_is_an_error_naming_already_exist(
    aiohttp_client, duplicate_status
):
    """A second visitor with the same uniqueId gets an HTTP error containing ALREADY_EXIST_UNIQUE_ID."""
    state = PassagePointState(duplicate_status=duplicate_status)
    state.add_visitor(unique_id=VISITOR["uniqueId"])
    client = await aiohttp_client(create_app(state))
    response = await client.post(
        f"{BASE}/person/createVisitor", params=VISITOR, headers=await token_header(client)
    )
    assert response.status == duplicate_status
    assert "ALREADY_EXIST_UNIQUE_ID" in await response.text()
    assert len(state.visitors) == 1


@pytest.mark.parametrize("missing", ["firstName", "lastName", "uniqueId"])
async def test_create_visitor_requires_names_and_unique_id(client, missing):
    """firstName, lastName and uniqueId are required (every known call sends them; unverified choice)."""
    params = {k: v for k, v in VISITOR.items() if k != missing}
    response = await client.post(
        f"{BASE}/person/createVisitor", params=params, headers=await token_header(client)
    )
    assert response.status == 400
    assert await response.json() == {
        "error": "MISSING_REQUIRED_FIELD",
        "message": f"{missing} is required",
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {**VISITOR, "category": "Alumni"},
            {"error": "CATEGORY_NOT_FOUND", "message": "No category named 'Alumni'"},
        ),
        (
            {**VISITOR, "category": ""},
            {"error": "CATEGORY_NOT_FOUND", "message": "No category named ''"},
        ),
        (
            {**VISITOR, "category": "student"},
            {"error": "CATEGORY_NOT_FOUND", "message": "No category named 'student'"},
        ),
        (
            {**VISITOR, "mobilePhoneNumber": "G1", "barcode": "2"},
            {"error": "BAD_REQUEST", "message": "Unknown parameter(s): mobilePhoneNumber, barcode"},
        ),
        (
            [*VISITOR.items(), ("uniqueId", "33333")],
            {"error": "BAD_REQUEST", "message": "Parameter uniqueId given more than once"},
        ),
    ],
)
async def test_create_visitor_refuses_what_is_not_confirmed(client, state, params, expected):
    """An unknown category, an unknown or repeated parameter get 400 and create nothing."""
    response = await client.post(
        f"{BASE}/person/createVisitor", params=params, headers=await token_header(client)
    )
    assert response.status == 400
    assert await response.json() == expected
    assert state.visitors == {}


@pytest.mark.parametrize(
    ("categories", "category", "status"),
    [
        (None, "Visitor", 200),
        (None, "Staff", 200),
        (["Visitor", "Alumni"], "Alumni", 200),
        (["Visitor", "Alumni"], "Student", 400),
    ],
)
async def test_create_visitor_categories_are_configurable(aiohttp_client, categories, category, status):
    """The categories that exist default to Student/Faculty/Staff/Visitor and can be set."""
    client = await aiohttp_client(create_app(PassagePointState(categories=categories)))
    response = await client.post(
        f"{BASE}/person/createVisitor",
        params={**VISITOR, "category": category},
        headers=await token_header(client),
    )
    assert response.status == status


async def test_by_unique_id_refuses_a_repeated_parameter(client, state):
    """byUniqueId with uniqueId given twice is a 400, not the first (or last) one silently."""
    state.add_visitor(unique_id="1")
    response = await client.get(
        f"{BASE}/person/byUniqueId?uniqueId=1&uniqueId=2", headers=await token_header(client)
    )
    assert response.status == 400
    assert await response.json() == {
        "error": "BAD_REQUEST",
        "message": "Parameter uniqueId given more than once",
    }


@pytest.mark.parametrize(
    ("wrap", "count"), [(False, 0), (False, 1), (False, 2), (True, 2), (True, 0)]
)
async def test_by_unique_id_array_or_wrapped(aiohttp_client, wrap, count):
    """byUniqueId answers a bare array (or {"data": [...]} when wrapped), possibly with several."""
    state = PassagePointState(wrap_byuniqueid=wrap)
    ids = [state.add_visitor(unique_id="777", first_name=f"N{n}") for n in range(count)]
    state.add_visitor(unique_id="888")
    client = await aiohttp_client(create_app(state))
    response = await client.get(
        f"{BASE}/person/byUniqueId", params={"uniqueId": "777"}, headers=await token_header(client)
    )
    assert response.status == 200
    body = await response.json()
    visitors = body["data"] if wrap else body
    assert isinstance(visitors, list)
    assert [visitor["id"] for visitor in visitors] == ids
    assert all(visitor["uniqueId"] == "777" for visitor in visitors)


async def test_by_unique_id_requires_parameter(client):
    """byUniqueId without uniqueId is a 400 (unverified choice)."""
    response = await client.get(f"{BASE}/person/byUniqueId", headers=await token_header(client))
    assert response.status == 400
    assert await response.json() == {
        "error": "MISSING_REQUIRED_FIELD",
        "message": "uniqueId is required",
    }


# -- pre-registrations and destinations -----------------------------------------------------


async def test_create_prereg_records_and_answers_id(client, state):
    """createPreReg stores the body as received and answers {"data": [{"id": ...}]}."""
    visitor_id = state.add_visitor(unique_id="1")
    body = prereg_body(str(visitor_id))
    response = await client.post(
        f"{BASE}/visit/createPreReg", json=body, headers=await token_header(client)
    )
    assert response.status == 200
    prereg_id = (await response.json())["data"][0]["id"]
    assert isinstance(prereg_id, int) and len(str(prereg_id)) == 15
    assert state.preregs == [{"id": prereg_id, **body}]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"startTime": 1795000000},
            {
                "error": "INVALID_TIME",
                "message": "startTime must be epoch seconds as a string, got 1795000000",
            },
        ),
        (
            {"endTime": "2026-11-22T13:15:00-05:00"},
            {
                "error": "INVALID_TIME",
                "message": "endTime must be epoch seconds as a string, got '2026-11-22T13:15:00-05:00'",
            },
        ),
        (
            {"startTime": "-5"},
            {
                "error": "INVALID_TIME",
                "message": "startTime must be epoch seconds as a string, got '-5'",
            },
        ),
        (
            {"endTime": None},
            {
                "error": "INVALID_TIME",
                "message": "endTime must be epoch seconds as a string, got None",
            },
        ),
        (
            {"endTime": "1795000000"},
            {"error": "INVALID_TIME", "message": "endTime must be after startTime"},
        ),
        (
            {"visitorId": "123456789012345"},
            {"error": "VISITOR_NOT_FOUND", "message": "No visitor with id '123456789012345'"},
        ),
        (
            {"visitorId": "abc"},
            {
                "error": "INVALID_VISITOR_ID",
                "message": "visitorId must be the visitor's id as a string of digits, got 'abc'",
            },
        ),
        (
            {"visitorId": None},
            {
                "error": "INVALID_VISITOR_ID",
                "message": "visitorId must be the visitor's id as a string of digits, got None",
            },
        ),
        (
            {"note": "LibCal cs_1", "bookId": "cs_1"},
            {"error": "BAD_REQUEST", "message": "Unknown field(s): note, bookId"},
        ),
        (
            {"destination": "LibCal Nowhere"},
            {"error": "DESTINATION_NOT_FOUND", "message": "No destination named 'LibCal Nowhere'"},
        ),
    ],
)
async def test_create_prereg_rejections(client, state, override, expected):
    """Non-string/non-numeric times or ids, unknown visitors, destinations or fields get 400."""
    visitor_id = state.add_visitor(unique_id="1")
    response = await client.post(
        f"{BASE}/visit/createPreReg",
        json=prereg_body(visitor_id, **override),
        headers=await token_header(client),
    )
    assert response.status == 400
    assert await response.json() == expected
    assert state.preregs == []


async def test_create_prereg_refuses_an_integer_visitor_id(client, state):
    """visitorId as a JSON integer is refused: the original always sent a string of digits."""
    visitor_id = state.add_visitor(unique_id="1")
    response = await client.post(
        f"{BASE}/visit/createPreReg",
        json={**prereg_body(visitor_id), "visitorId": visitor_id},
        headers=await token_header(client),
    )
    assert response.status == 400
    assert await response.json() == {
        "error": "INVALID_VISITOR_ID",
        "message": f"visitorId must be the visitor's id as a string of digits, got {visitor_id}",
    }
    assert state.preregs == []


async def test_create_prereg_rejects_non_object_body(client):
    """A JSON body that is not an object is a 400 BAD_REQUEST."""
    response = await client.post(
        f"{BASE}/visit/createPreReg", json=["startTime", "1"], headers=await token_header(client)
    )
    assert response.status == 400
    assert await response.json() == {
        "error": "BAD_REQUEST",
        "message": "Body must be a JSON object",
    }


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, "''"),
        ("text/plain", "'text/plain'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
    ],
)
@pytest.mark.parametrize("path", ["/auth/login", "/visit/createPreReg"])
async def test_json_bodies_need_content_type_application_json(client, state, content_type, shown, path):
    """login and createPreReg read their JSON body only when it is declared application/json: else 415."""
    visitor_id = state.add_visitor(unique_id="1")
    body = json.dumps(LOGIN if path == "/auth/login" else prereg_body(visitor_id)).encode()
    headers = await token_header(client)
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post(f"{BASE}{path}", data=body, headers=headers, skip_auto_headers=["Content-Type"])
    assert response.status == 415
    assert await response.json() == {
        "error": "UNSUPPORTED_MEDIA_TYPE",
        "message": f"Content-Type must be application/json, got {shown}",
    }
    assert state.preregs == []
    headers["Content-Type"] = "application/json; charset=utf-8"
    assert (await client.post(f"{BASE}{path}", data=body, headers=headers)).status == 200


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
async def test_calls_without_a_body_ignore_content_type(client, state, content_type):
    """createVisitor and the GETs work with or without Content-Type (the original sent a misspelled one)."""
    headers = await token_header(client)
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post(
        f"{BASE}/person/createVisitor", params=VISITOR, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 200
    response = await client.get(
        f"{BASE}/person/byUniqueId", params={"uniqueId": VISITOR["uniqueId"]}, headers=headers
    )
    assert response.status == 200
    assert (await client.get(f"{BASE}/visit/getDestinations", headers=headers)).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "//pp/api/v2/auth/login"),
        ("POST", "/pp/api/v2/auth/login/"),
        ("GET", "//pp/api/v2/visit/getDestinations"),
        ("GET", "/pp/api/v2/visit/getDestinations/"),
        ("GET", "/pp/api/v2visit/getDestinations"),
        ("GET", "/pp/api/v2/visit/getdestinations"),
    ],
)
async def test_paths_match_exactly(client, method, path):
    """A doubled or trailing slash, a missing slash or another case is 404: paths are matched exactly."""
    headers = await token_header(client)
    url = f"http://{client.host}:{client.port}{path}"  # client.request() reads //pp as a host
    async with client.session.request(method, url, json=LOGIN, headers=headers) as response:
        assert response.url.path == path
        assert response.status == 404


async def test_get_destinations_lists_configured_names(aiohttp_client):
    """getDestinations lists the destinations given to the state (default shape: data-name)."""
    state = PassagePointState(destinations=["LibCal Gelman", "LibCal Eckles", "LibCal VSTC"])
    assert state.destinations_shape == "data-name"
    client = await aiohttp_client(create_app(state))
    response = await client.get(f"{BASE}/visit/getDestinations", headers=await token_header(client))
    assert response.status == 200
    body = await response.json()
    assert [entry["name"] for entry in body["data"]] == [
        "LibCal Gelman",
        "LibCal Eckles",
        "LibCal VSTC",
    ]


GELMAN_ECKLES = ["LibCal Gelman", "LibCal Eckles"]


@pytest.mark.parametrize(
    ("shape", "status", "content_type", "expected"),
    [
        (
            "data-name",
            200,
            "application/json",
            {"data": [{"id": 1, "name": "LibCal Gelman"}, {"id": 2, "name": "LibCal Eckles"}]},
        ),
        (
            "list-name",
            200,
            "application/json",
            [{"id": 1, "name": "LibCal Gelman"}, {"id": 2, "name": "LibCal Eckles"}],
        ),
        (
            "other-keys",
            200,
            "application/json",
            {
                "data": [
                    {"destinationId": 1, "description": "LibCal Gelman"},
                    {"destinationId": 2, "description": "LibCal Eckles"},
                ]
            },
        ),
        (
            "code-name",
            200,
            "application/json",
            {
                "data": [
                    {"id": 1, "name": "DEST0001", "displayName": "LibCal Gelman"},
                    {"id": 2, "name": "DEST0002", "displayName": "LibCal Eckles"},
                ]
            },
        ),
        ("empty", 200, "application/json", {"data": []}),
        (
            "error",
            500,
            "application/json",
            {"error": "INTERNAL_SERVER_ERROR", "message": "Could not list destinations"},
        ),
        (
            "not-found",
            404,
            "application/json",
            {"error": "NOT_FOUND", "message": "No endpoint GET /pp/api/v2/visit/getDestinations"},
        ),
    ],
)
async def test_get_destinations_json_shapes(aiohttp_client, shape, status, content_type, expected):
    """Each guessed getDestinations shape answers exactly as documented in the module docstring."""
    state = PassagePointState(destinations=GELMAN_ECKLES, destinations_shape=shape)
    client = await aiohttp_client(create_app(state))
    response = await client.get(f"{BASE}/visit/getDestinations", headers=await token_header(client))
    assert response.status == status
    assert response.content_type == content_type
    assert await response.json() == expected


async def test_get_destinations_not_json_is_a_200_html_page(aiohttp_client):
    """The not-json shape answers 200 with an HTML page that json() cannot read."""
    state = PassagePointState(destinations_shape="not-json")
    client = await aiohttp_client(create_app(state))
    response = await client.get(f"{BASE}/visit/getDestinations", headers=await token_header(client))
    assert response.status == 200
    assert response.content_type == "text/html"
    text = await response.text()
    assert text.startswith("<!DOCTYPE html><html>") and "PassagePoint" in text
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("shape", DESTINATIONS_SHAPES)
async def test_every_destinations_shape_still_needs_a_token_and_keeps_prereg_working(
    aiohttp_client, shape
):
    """Whatever getDestinations answers, it needs a token first, and createPreReg takes the destinations."""
    state = PassagePointState(destinations=GELMAN_ECKLES, destinations_shape=shape)
    visitor_id = state.add_visitor(unique_id="1")
    client = await aiohttp_client(create_app(state))
    response = await client.get(f"{BASE}/visit/getDestinations")
    assert response.status == 401
    response = await client.post(
        f"{BASE}/visit/createPreReg",
        json=prereg_body(visitor_id, destination="LibCal Eckles"),
        headers=await token_header(client),
    )
    assert response.status == 200
    assert [prereg["destination"] for prereg in state.preregs] == ["LibCal Eckles"]


def test_unknown_destinations_shape_is_refused():
    """A shape the simulator does not know is refused with the list of known ones."""
    with pytest.raises(ValueError, match=r"unknown destinations shape 'xml' \(known: data-name, list-name, "):
        PassagePointState(destinations_shape="xml")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/visit/createPreReg"),
        ("POST", "/visit/deletePreReg"),
        ("POST", "/visit/updatePreReg"),
        ("PUT", "/visit/preReg/1"),
    ],
)
async def test_no_delete_or_update_endpoint(client, method, path):
    """No endpoint deletes or updates a pre-registration."""
    response = await client.request(method, f"{BASE}{path}", headers=await token_header(client))
    assert response.status in (404, 405)


# -- failure injection, log, latency --------------------------------------------------------


async def test_injected_500_applies_nothing_then_recovers(client, state):
    """An injected 500 answers a JSON error without creating the visitor; the next call works."""
    headers = await token_header(client)
    state.inject_failure("createVisitor", "500")
    response = await client.post(f"{BASE}/person/createVisitor", params=VISITOR, headers=headers)
    assert response.status == 500
    assert await response.json() == {
        "error": "INTERNAL_SERVER_ERROR",
        "message": "Unexpected server error",
    }
    assert state.visitors == {}
    response = await client.post(f"{BASE}/person/createVisitor", params=VISITOR, headers=headers)
    assert response.status == 200


async def test_injected_disconnect_closes_connection(client, state):
    """An injected disconnect drops the connection without applying the call."""
    headers = await token_header(client)
    state.inject_failure("createPreReg", "disconnect", count=2)
    visitor_id = state.add_visitor(unique_id="1")
    for _ in range(2):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post(
                f"{BASE}/visit/createPreReg", json=prereg_body(visitor_id), headers=headers
            )
    assert state.preregs == []
    response = await client.post(
        f"{BASE}/visit/createPreReg", json=prereg_body(visitor_id), headers=headers
    )
    assert response.status == 200
    assert len(state.preregs) == 1


@pytest.mark.parametrize(
    ("kind", "options", "applied"),
    [
        ("hang", {}, 0),
        ("hang", {"applied": True}, 1),
        ("timeout", {}, 0),  # the old names of the two above
        ("timeout_after_apply", {}, 1),
    ],
)
async def test_injected_hang(client, state, kind, options, applied):
    """A hang withholds the answer past the client's timeout; applied=True still creates the visitor."""
    headers = await token_header(client)
    state.inject_failure("createVisitor", kind, **options)
    with pytest.raises(TimeoutError):
        await client.post(
            f"{BASE}/person/createVisitor",
            params=VISITOR,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    assert len(state.visitors) == applied


async def test_injected_login_failure(client, state):
    """Login failures can be injected too."""
    state.inject_failure("login", "500")
    assert (await client.post(f"{BASE}/auth/login", json=LOGIN)).status == 500
    assert (await client.post(f"{BASE}/auth/login", json=LOGIN)).status == 200


@pytest.mark.parametrize(
    ("endpoint", "kind", "message"),
    [
        ("deletePreReg", "500", "unknown endpoint 'deletePreReg'"),
        ("login", "404", "unknown failure kind '404'"),
    ],
)
def test_inject_failure_rejects_unknown_names(endpoint, kind, message):
    """inject_failure names what it knows when given something else."""
    with pytest.raises(ValueError, match=message):
        PassagePointState().inject_failure(endpoint, kind)


async def test_request_log_and_counts(client, state):
    """Every request is logged with method, path, query and status; count() filters by prefix."""
    headers = await token_header(client)
    state.inject_failure("byUniqueId", "500")
    await client.get(f"{BASE}/person/byUniqueId", params={"uniqueId": "1"}, headers=headers)
    await client.get(f"{BASE}/person/byUniqueId", params={"uniqueId": "1"}, headers=headers)
    assert state.count(f"{BASE}/person") == 2
    assert state.count(f"{BASE}/auth") == 1
    assert [entry["status"] for entry in state.requests] == [200, 500, 200]
    assert state.requests[1]["query"] == {"uniqueId": "1"}
    assert state.requests[1]["failure"] == "500"


async def test_latency_is_applied_without_changing_answers(aiohttp_client):
    """A configured latency still answers normally (its speed is a benchmark matter)."""
    client = await aiohttp_client(create_app(PassagePointState(latency=(0.01, 0.02))))
    response = await client.get(f"{BASE}/visit/getDestinations", headers=await token_header(client))
    assert response.status == 200


def test_ids_are_unique_and_15_digits():
    """Ids never repeat and always have 15 digits."""
    state = PassagePointState(seed=3)
    ids = [state.new_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(10**14 <= value < 10**15 for value in ids)


# -- standalone -----------------------------------------------------------------------------


async def test_standalone_serves_on_loopback_with_destinations(tmp_path):
    """``python -m simulators.passagepoint`` prints its URL and serves the given destinations."""
    visitors = tmp_path / "visitors.json"
    visitors.write_text(json.dumps([{"unique_id": "5555", "first_name": "Grace"}]))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.passagepoint",
            "--port",
            "0",
            "--destinations",
            "LibCal Gelman, LibCal VSTC",
            "--visitors-json",
            str(visitors),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("PassagePoint simulator listening on http://127.0.0.1:")
        base = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}{BASE}/auth/login", json=LOGIN) as response:
                headers = {"token": (await response.json())["token"]}
            async with session.post(
                f"{base}{BASE}/person/createVisitor", params=VISITOR, headers=headers
            ) as response:
                visitor_id = (await response.json())["data"][0]["id"]
            async with session.post(
                f"{base}{BASE}/visit/createPreReg",
                json=prereg_body(visitor_id, destination="LibCal VSTC"),
                headers=headers,
            ) as response:
                assert response.status == 200
            async with session.get(
                f"{base}{BASE}/visit/getDestinations", headers=headers
            ) as response:
                names = [entry["name"] for entry in (await response.json())["data"]]
            async with session.get(
                f"{base}{BASE}/person/byUniqueId", params={"uniqueId": "5555"}, headers=headers
            ) as response:
                seeded = await response.json()
        assert names == ["LibCal Gelman", "LibCal VSTC"]
        assert [visitor["firstName"] for visitor in seeded] == ["Grace"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


async def test_standalone_destinations_shape_and_categories_options():
    """``--destinations-shape list-name`` answers a bare array; ``--categories`` sets the categories."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.passagepoint",
            "--port",
            "0",
            "--destinations",
            "LibCal Gelman",
            "--destinations-shape",
            "list-name",
            "--categories",
            "Visitor, Alumni",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = process.stdout.readline().rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}{BASE}/auth/login", json=LOGIN) as response:
                headers = {"token": (await response.json())["token"]}
            async with session.get(
                f"{base}{BASE}/visit/getDestinations", headers=headers
            ) as response:
                assert await response.json() == [{"id": 1, "name": "LibCal Gelman"}]
            statuses = []
            for category in ("Alumni", "Student"):
                async with session.post(
                    f"{base}{BASE}/person/createVisitor",
                    params={**VISITOR, "category": category, "uniqueId": category},
                    headers=headers,
                ) as response:
                    statuses.append(response.status)
            assert statuses == [200, 400]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_standalone_unknown_destinations_shape_is_usage_error():
    """An unknown --destinations-shape exits 2 and lists the shapes."""
    result = subprocess.run(
        [sys.executable, "-m", "simulators.passagepoint", "--destinations-shape", "xml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "argument --destinations-shape: invalid choice: 'xml' (choose from " in result.stderr
    assert "'not-json'" in result.stderr


def test_standalone_bad_latency_is_usage_error():
    """A malformed --latency exits 2 with argparse's message."""
    result = subprocess.run(
        [sys.executable, "-m", "simulators.passagepoint", "--port", "0", "--latency", "fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.endswith(
        "error: argument --latency: latency must look like 0.2-0.5, got 'fast'\n"
    )


def test_standalone_bad_visitors_file_exits_2(tmp_path):
    """A visitors file with an unknown field is a usage error naming the file and entry."""
    path = tmp_path / "visitors.json"
    path.write_text(json.dumps([{"unique_id": "1"}, {"barcode": "2"}]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators.passagepoint",
            "--port",
            "0",
            "--visitors-json",
            str(path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"passagepoint simulator: cannot load seed files: {path}: visitor #2: ")
    assert "'barcode'" in result.stderr


def test_load_visitors_rejects_non_list(tmp_path):
    """A visitors file must hold a JSON list."""
    path = tmp_path / "visitors.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="expected a JSON list of visitors, got dict"):
        load_visitors(PassagePointState(), str(path))
