"""Tests of the Alma simulator: it must answer like Alma (shared/reference/alma.md)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from simulators._common import SlidingWindowCounter, free_port, parse_latency
from simulators.alma import (
    STATE,
    AlmaItem,
    AlmaState,
    AlmaUser,
    create_app,
    load_desks,
    load_items,
    load_users,
)

KEY = "test-key"
OTHER_KEY = "other-zone-key"
JSON_HEADERS = {"Authorization": f"apikey {KEY}", "Accept": "application/json"}
TRACKING_ID = re.compile(r"^E01-\d{10}-[A-Z0-9]{5}$")
ROOT = Path(__file__).resolve().parents[2]

LOANED = AlmaItem(
    mms_id="991234560001234",
    holding_id="221234560001234",
    item_pid="231234560001234",
    barcode="39000001",
    library="MAIN",
    location="stacks",
    status="loan",
)


def make_item(item_pid: str, status: str, **changes: str | None) -> AlmaItem:
    """An item like LOANED with its own pid and barcode."""
    fields = {
        "mms_id": LOANED.mms_id,
        "holding_id": LOANED.holding_id,
        "item_pid": item_pid,
        "barcode": "39" + item_pid[-6:],
        "library": "MAIN",
        "location": "stacks",
        "status": status,
    }
    fields.update(changes)
    return AlmaItem(**fields)


@pytest.fixture
def state() -> AlmaState:
    """Items in every state, two desks, a user in each of two zones."""
    state = AlmaState(per_second_limit=1000, daily_quota=1000, api_keys={KEY, OTHER_KEY})
    state.add_item(make_item(LOANED.item_pid, "loan"))
    state.add_item(make_item("231000000201234", "in_place"))
    state.add_item(make_item("231000000301234", "requested"))
    state.add_item(
        make_item("231000000401234", "loan", temp_library="ANNEX", temp_location="reserve")
    )
    state.add_desk("MAIN", "DESK1")
    state.add_desk("ANNEX", "DESK2")
    state.add_user(
        AlmaUser(
            primary_id="G12345678",
            barcode="22222000012345",
            user_group="STUDENT",
            user_group_desc="Student",
            first_name="Ada",
            last_name="Lovelace",
            email="ada@example.edu",
            api_key=KEY,
        )
    )
    state.add_user(
        AlmaUser(
            primary_id="Z999",
            barcode="22222000099999",
            user_group="GST",
            user_group_desc="GST Guest Patron",
            first_name="Grace",
            last_name="Hopper",
            email="grace@example.org",
            api_key=OTHER_KEY,
        )
    )
    return state


@pytest.fixture
async def client(aiohttp_client, state: AlmaState):
    """A test client on a real loopback server running the simulator."""
    return await aiohttp_client(create_app(state))


def scan_path(item_pid: str, mms_id: str = LOANED.mms_id, holding_id: str = LOANED.holding_id):
    """The scan-in path of an item."""
    return f"/almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}"


def scan_query(library: str = "MAIN", circ_desk: str = "DESK1", **extra: str) -> dict[str, str]:
    """Query parameters of a scan-in."""
    return {"op": "scan", "library": library, "circ_desk": circ_desk, **extra}


async def scan(client, item_pid: str, headers=None, **query: str):
    """POST a scan-in of `item_pid` (JSON unless headers say otherwise)."""
    params = scan_query(**query) if "op" not in query else query
    return await client.post(scan_path(item_pid), params=params, headers=headers or JSON_HEADERS)


def only_error(body: dict) -> dict:
    """The single entry of an Alma error body's error list, checking the envelope."""
    assert body["errorsExist"] is True
    assert body["result"] is None
    assert list(body) == ["errorsExist", "errorList", "result"]
    errors = body["errorList"]["error"]
    assert isinstance(errors, list) and len(errors) == 1
    return errors[0]


# --- scan-in outcomes --------------------------------------------------------------------------

RESHELVE = (
    "Item's destination is: Reshelve to stacks. Request/Process Type: . Requester: . "
    "Requester ID: . Place in Queue: 0"
)
HOLD_SHELF = (
    "Item's destination is: On Hold Shelf. Request/Process Type: Patron physical item request. "
    "Requester: . Requester ID: . Place in Queue: 1"
)
TRANSIT_TO_MAIN = (
    "Item's destination is: MAIN. Request/Process Type: . Requester: . Requester ID: . "
    "Place in Queue: 0"
)
IN_PLACE = {"value": "1", "desc": "Item in place"}
NOT_IN_PLACE = {"value": "0", "desc": "Item not in place"}
NO_PROCESS = {"value": "", "desc": None}
TRANSIT = {"value": "TRANSIT", "desc": "Transit"}
HOLDSHELF = {"value": "HOLDSHELF", "desc": "Hold Shelf"}


@pytest.mark.parametrize(
    ("item_pid", "library", "desk", "extra", "base", "process", "info", "after", "uses"),
    [
        # a loan returned at its own library: back in place, no in-house use
        (LOANED.item_pid, "MAIN", "DESK1", {}, IN_PLACE, NO_PROCESS, RESHELVE, "in_place", 0),
        # in place, register_in_house_use absent: Alma defaults to true and counts a use
        ("231000000201234", "MAIN", "DESK1", {}, IN_PLACE, NO_PROCESS, RESHELVE, "in_place", 1),
        # in place with register_in_house_use=false: no use counted
        (
            "231000000201234",
            "MAIN",
            "DESK1",
            {"register_in_house_use": "false"},
            IN_PLACE,
            NO_PROCESS,
            RESHELVE,
            "in_place",
            0,
        ),
        # requested: the return goes to the hold shelf
        (
            "231000000301234",
            "MAIN",
            "DESK1",
            {},
            NOT_IN_PLACE,
            HOLDSHELF,
            HOLD_SHELF,
            "hold_shelf",
            0,
        ),
        # returned at another library's desk: in transit home
        (
            LOANED.item_pid,
            "ANNEX",
            "DESK2",
            {},
            NOT_IN_PLACE,
            TRANSIT,
            TRANSIT_TO_MAIN,
            "in_transit",
            0,
        ),
    ],
    ids=["loan", "in_place_default_in_house", "in_place_no_in_house", "requested", "transit"],
)
async def test_scan_in_outcome(
    client, state, item_pid, library, desk, extra, base, process, info, after, uses
):
    """Each item state gives Alma's post-scan base_status, process_type and additional_info."""
    response = await scan(client, item_pid, library=library, circ_desk=desk, **extra)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["item_data"]["base_status"] == base
    assert body["item_data"]["process_type"] == process
    assert body["additional_info"] == info
    assert state.items[item_pid].status == after
    assert state.items[item_pid].in_house_uses == uses
    register = extra.get("register_in_house_use", "true") != "false"
    assert state.scans == [(item_pid, library, desk, register)]


async def test_scan_in_body_is_the_real_item_object(client):
    """The 200 body has the recorded shape, filled with this item's ids, barcode and place."""
    response = await scan(client, LOANED.item_pid)
    body = await response.json()
    assert list(body) == ["bib_data", "holding_data", "item_data", "additional_info", "link"]
    assert body["bib_data"]["mms_id"] == LOANED.mms_id
    assert body["holding_data"]["holding_id"] == LOANED.holding_id
    assert body["holding_data"]["in_temp_location"] is False
    item = body["item_data"]
    assert item["pid"] == LOANED.item_pid
    assert item["barcode"] == LOANED.barcode[:2] + LOANED.item_pid[-6:]
    assert item["library"] == {"value": "MAIN", "desc": "MAIN"}
    assert item["location"] == {"value": "stacks", "desc": "stacks"}
    assert item["physical_material_type"] == {"value": "BOOK", "desc": "Book"}
    assert item["requested"] is False
    assert body["link"].endswith(scan_path(LOANED.item_pid))
    assert response.headers["X-Exl-Api-Remaining"] == "999"
    assert response.headers["X-Request-ID"]


async def test_item_in_temporary_location_belongs_to_its_temporary_library(client, state):
    """An item whose temp_library is ANNEX is returned in place at ANNEX, not sent in transit."""
    response = await scan(client, "231000000401234", library="ANNEX", circ_desk="DESK2")
    body = await response.json()
    assert body["item_data"]["base_status"] == IN_PLACE
    assert body["holding_data"]["in_temp_location"] is True
    assert body["holding_data"]["temp_library"]["value"] == "ANNEX"
    assert body["additional_info"].startswith("Item's destination is: Reshelve to reserve.")
    assert state.items["231000000401234"].status == "in_place"


async def test_requested_item_in_transit_reaches_hold_shelf_at_home(client, state):
    """A requested item returned elsewhere goes in transit, then to the hold shelf at home."""
    first = await (await scan(client, "231000000301234", library="ANNEX", circ_desk="DESK2")).json()
    assert first["item_data"]["process_type"] == TRANSIT
    second = await (await scan(client, "231000000301234")).json()
    assert second["item_data"]["process_type"] == HOLDSHELF
    assert second["item_data"]["requested"] is True
    assert state.items["231000000301234"].status == "hold_shelf"
    assert state.items["231000000301234"].in_house_uses == 1  # the second scan: not on loan
    third = await (await scan(client, "231000000301234")).json()
    assert third["item_data"]["process_type"] == HOLDSHELF  # still waiting for its requester


async def test_scan_in_by_department_skips_the_desk_check(client, state):
    """`department` instead of `circ_desk` is accepted whatever desks are declared."""
    response = await client.post(
        scan_path(LOANED.item_pid),
        params={"op": "scan", "library": "MAIN", "department": "DIGI"},
        headers=JSON_HEADERS,
    )
    assert response.status == 200
    assert state.scans == [(LOANED.item_pid, "MAIN", "DIGI", True)]


async def test_any_desk_is_accepted_when_none_is_declared(aiohttp_client):
    """Without add_desk calls, every (library, circ_desk) is valid."""
    state = AlmaState()
    state.add_item(make_item(LOANED.item_pid, "loan"))
    client = await aiohttp_client(create_app(state))
    response = await scan(client, LOANED.item_pid, circ_desk="ANYTHING")
    assert response.status == 200


# --- scan-in errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "code", "message"),
    [
        (
            scan_path(LOANED.item_pid),
            scan_query(op="loan"),
            "40166410",
            "The parameter op is invalid. Received: loan. Valid options are: [scan].",
        ),
        (
            scan_path(LOANED.item_pid),
            {"library": "MAIN", "circ_desk": "DESK1"},
            "40166410",
            "The parameter op is invalid. Received: . Valid options are: [scan].",
        ),
        (
            scan_path(LOANED.item_pid),
            {"op": "scan", "circ_desk": "DESK1"},
            "40166410",
            "The parameter library is invalid. Received: .",
        ),
        (
            scan_path(LOANED.item_pid),
            {"op": "scan", "library": "MAIN"},
            "40166410",
            "The parameter circ_desk is invalid. Received: .",
        ),
        (
            scan_path(LOANED.item_pid, mms_id="foobar"),
            scan_query(),
            "402203",
            "Input parameters mmsId foobar is not valid.",
        ),
        (
            scan_path("23258799999906421"),
            scan_query(),
            "40166411",
            "The parameter item_pid is invalid. Received: 23258799999906421.",
        ),
        (
            scan_path(LOANED.item_pid, mms_id="123", holding_id="456"),
            scan_query(),
            "401688",
            "Search failed for Items with mmsId 123, holdings id 456.",
        ),
        (
            scan_path(LOANED.item_pid, holding_id="229999999901234"),
            scan_query(),
            "401688",
            f"Search failed for Items with mmsId {LOANED.mms_id}, holdings id 229999999901234.",
        ),
        (
            scan_path(LOANED.item_pid),
            scan_query(library="MAIN", circ_desk="DESK2"),
            "401872",
            "Circulation desk DESK2 is not valid for library MAIN.",
        ),
    ],
    ids=[
        "op_not_scan",
        "op_missing",
        "library_missing",
        "circ_desk_missing",
        "mms_id_not_numeric",
        "unknown_item",
        "item_not_under_mms_and_holding",
        "item_not_under_holding",
        "unknown_desk",
    ],
)
async def test_scan_in_errors(client, state, path, query, code, message):
    """Invalid scan-ins get HTTP 400 with Alma's error body, and change nothing."""
    response = await client.post(path, params=query, headers=JSON_HEADERS)
    assert response.status == 400
    assert response.content_type == "application/json"
    error = only_error(await response.json())
    assert error["errorCode"] == code
    assert error["errorMessage"] == message
    assert TRACKING_ID.match(error["trackingId"])
    assert state.scans == []
    assert state.items[LOANED.item_pid].status == "loan"


async def test_desk_error_code_is_configurable(client, state):
    """The unverified wrong-desk code can be changed on the state."""
    state.desk_error_code = "401136"
    response = await scan(client, LOANED.item_pid, circ_desk="NOPE")
    assert only_error(await response.json())["errorCode"] == "401136"


async def test_error_answered_in_xml_unless_json_is_asked(client):
    """Without Accept: application/json the error is Alma's XML web_service_result."""
    response = await client.post(
        scan_path("23258799999906421"),
        params=scan_query(),
        headers={"Authorization": f"apikey {KEY}"},
    )
    assert response.status == 400
    assert response.content_type == "application/xml"
    text = await response.text()
    assert "<web_service_result" in text
    assert "<errorsExist>true</errorsExist>" in text
    assert "<errorCode>40166411</errorCode>" in text
    assert (
        "<errorMessage>The parameter item_pid is invalid. Received: 23258799999906421."
        "</errorMessage>" in text
    )


async def test_format_json_query_parameter_selects_json(client):
    """format=json works like Accept: application/json."""
    response = await client.post(
        scan_path(LOANED.item_pid),
        params={**scan_query(), "format": "json"},
        headers={"Authorization": f"apikey {KEY}"},
    )
    assert response.status == 200
    assert (await response.json())["item_data"]["pid"] == LOANED.item_pid


async def test_success_in_xml_when_asked(client):
    """A client asking for XML gets an <item> document with value/desc as attributes."""
    response = await scan(
        client,
        LOANED.item_pid,
        headers={"Authorization": f"apikey {KEY}", "Accept": "application/xml"},
    )
    text = await response.text()
    assert response.content_type == "application/xml"
    assert f"<pid>{LOANED.item_pid}</pid>" in text
    assert '<base_status desc="Item in place">1</base_status>' in text


# --- authentication ----------------------------------------------------------------------------

UNAUTHORIZED = {
    "errorsExist": True,
    "errorList": {
        "error": [
            {
                "errorCode": "UNAUTHORIZED",
                "errorMessage": "API-key not defined or not configured to allow this API.",
            }
        ]
    },
    "result": None,
}


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "application/json", "Authorization": "apikey wrong-key"},
        {"Accept": "application/json", "Authorization": "Bearer test-key"},
    ],
    ids=["missing", "unknown", "wrong_scheme"],
)
async def test_bad_key_is_unauthorized(client, state, headers):
    """A missing or unknown key gets the UNAUTHORIZED body (HTTP 400) and has no effect."""
    response = await scan(client, LOANED.item_pid, headers=headers)
    assert response.status == 400
    assert await response.json() == UNAUTHORIZED
    assert state.scans == []
    assert response.headers["X-Exl-Api-Remaining"] == "1000"


async def test_unauthorized_in_xml_has_no_tracking_id(client):
    """The XML UNAUTHORIZED answer is the recorded web_service_result, without trackingId."""
    response = await client.get("/almaws/v1/users/G12345678", headers={"Accept": "application/xml"})
    assert response.status == 400
    text = await response.text()
    assert "<errorCode>UNAUTHORIZED</errorCode>" in text
    assert (
        "<errorMessage>API-key not defined or not configured to allow this API.</errorMessage>"
        in text
    )
    assert "trackingId" not in text


async def test_api_key_query_parameter_is_accepted(client):
    """apikey= in the query string authenticates too."""
    response = await client.get(
        "/almaws/v1/users/G12345678", params={"apikey": KEY, "format": "json"}
    )
    assert response.status == 200


async def test_unauthorized_status_is_configurable(client, state):
    """The unverified status of UNAUTHORIZED can be changed."""
    state.unauthorized_status = 401
    response = await client.get(
        "/almaws/v1/users/G12345678", headers={"Accept": "application/json"}
    )
    assert response.status == 401


# --- rate limit and quota ----------------------------------------------------------------------

PER_SECOND = {
    "errorCode": "PER_SECOND_THRESHOLD",
    "errorMessage": "HTTP requests are more than allowed per second",
}


async def test_per_second_threshold_rejects_the_excess_before_any_effect(aiohttp_client):
    """12 scans started together against a limit of 5: 5 applied, 7 get the real 429 body."""
    state = AlmaState(per_second_limit=5, clock=lambda: 100.0)  # all in the same instant
    for number in range(12):
        state.add_item(make_item(f"2310000{number:04d}1234", "loan"))
    client = await aiohttp_client(create_app(state))
    responses = await asyncio.gather(*(scan(client, pid) for pid in state.items))
    statuses = sorted(response.status for response in responses)
    assert statuses == [200] * 5 + [429] * 7
    for response in responses:
        if response.status == 429:
            error = only_error(await response.json())
            assert {k: error[k] for k in PER_SECOND} == PER_SECOND
    assert len(state.scans) == 5
    assert sum(item.status == "in_place" for item in state.items.values()) == 5
    assert state.remaining == state.daily_quota - 5
    assert state.count("/almaws/v1/bibs") == 12


def test_sliding_window_admits_again_once_a_second_has_passed():
    """The window slides: starts older than one second no longer count."""
    now = [0.0]
    window = SlidingWindowCounter(limit=2, window=1.0, clock=lambda: now[0])
    assert [window.admit(), window.admit(), window.admit()] == [True, True, False]
    now[0] = 0.6
    assert window.admit() is False
    now[0] = 1.0001
    assert [window.admit(), window.admit(), window.admit()] == [True, True, False]


async def test_daily_quota_counts_down_then_stops(aiohttp_client):
    """X-Exl-Api-Remaining counts down; at zero every call gets DAILY_THRESHOLD."""
    state = AlmaState(daily_quota=3)
    state.add_item(make_item(LOANED.item_pid, "loan"))
    client = await aiohttp_client(create_app(state))
    remaining = []
    for _ in range(3):
        response = await client.get("/almaws/v1/users/nobody", headers=JSON_HEADERS)
        assert response.status == 400
        remaining.append(response.headers["X-Exl-Api-Remaining"])
    assert remaining == ["2", "1", "0"]
    response = await scan(client, LOANED.item_pid)
    assert response.status == 429
    assert response.headers["X-Exl-Api-Remaining"] == "0"
    error = only_error(await response.json())
    assert error["errorCode"] == "DAILY_THRESHOLD"
    assert error["errorMessage"].startswith("Daily API Request Threshold has been reached.")
    assert state.scans == []


async def test_daily_threshold_status_is_configurable(aiohttp_client):
    """daily_status sets the unverified HTTP status of DAILY_THRESHOLD."""
    client = await aiohttp_client(create_app(AlmaState(daily_quota=0, daily_status=400)))
    response = await client.get("/almaws/v1/users/x", headers=JSON_HEADERS)
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "DAILY_THRESHOLD"


# --- users -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["G12345678", "22222000012345"], ids=["primary_id", "barcode"])
async def test_user_found_by_any_unique_identifier(client, user_id):
    """all_unique finds the user by primary id or barcode and answers the full record."""
    response = await client.get(
        f"/almaws/v1/users/{user_id}",
        params={"user_id_type": "all_unique", "view": "full"},
        headers=JSON_HEADERS,
    )
    assert response.status == 200
    body = await response.json()
    assert body["primary_id"] == "G12345678"
    assert body["first_name"] == "Ada"
    assert body["last_name"] == "Lovelace"
    assert body["user_group"] == {"value": "STUDENT", "desc": "Student"}
    assert body["contact_info"]["email"][0]["email_address"] == "ada@example.edu"
    barcodes = [
        entry["value"]
        for entry in body["user_identifier"]
        if entry["id_type"]["value"] == "BARCODE" and entry["status"] == "ACTIVE"
    ]
    assert barcodes == ["22222000012345"]
    assert body["record_type"] == {"value": "PUBLIC", "desc": "Public"}


@pytest.mark.parametrize(
    ("key", "user_id", "status"),
    [
        (KEY, "G12345678", 200),
        (OTHER_KEY, "G12345678", 400),
        (OTHER_KEY, "Z999", 200),
        (KEY, "Z999", 400),
    ],
)
async def test_users_are_visible_only_in_their_own_zone(client, key, user_id, status):
    """A user exists only for the API key of its institution zone."""
    response = await client.get(
        f"/almaws/v1/users/{user_id}",
        headers={"Authorization": f"apikey {key}", "Accept": "application/json"},
    )
    assert response.status == status
    if status == 400:
        error = only_error(await response.json())
        assert error["errorCode"] == "401861"
        assert error["errorMessage"] == f"User with identifier {user_id} was not found."


@pytest.mark.parametrize(
    ("user_id", "user_id_type", "status", "code", "message"),
    [
        ("22222000012345", "BARCODE", 200, None, None),
        ("G12345678", "primary_id", 200, None, None),
        (
            "G12345678",
            "BARCODE",
            400,
            "401890",
            "User with identifier G12345678 of type BARCODE was not found.",
        ),
        (
            "G12345678",
            "SHOE_SIZE",
            400,
            "401890",
            "User with identifier G12345678 of type SHOE_SIZE was not found.",
        ),
    ],
)
async def test_user_id_type(client, user_id, user_id_type, status, code, message):
    """A typed lookup matches only that identifier; a miss is 401890 naming the type."""
    response = await client.get(
        f"/almaws/v1/users/{user_id}", params={"user_id_type": user_id_type}, headers=JSON_HEADERS
    )
    assert response.status == status
    if code:
        error = only_error(await response.json())
        assert (error["errorCode"], error["errorMessage"]) == (code, message)


# --- injected failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "check"),
    [
        ("500", 500, "application/json", '"errorCode": "INTERNAL_SERVER_ERROR"'),
        ("502_text", 502, "text/plain", "Bad Gateway"),
        ("503_html", 503, "text/html", "<h1>503 Service Temporarily Unavailable</h1>"),
        ("429", 429, "application/json", '"errorCode": "PER_SECOND_THRESHOLD"'),
    ],
)
async def test_injected_failure_not_applied(client, state, kind, status, content_type, check):
    """An injected failure answers its body once, without scanning; the next call works."""
    state.inject_failure(kind)
    response = await scan(client, LOANED.item_pid)
    assert response.status == status
    assert response.content_type == content_type
    assert check in await response.text()
    assert "X-Exl-Api-Remaining" in response.headers
    assert state.items[LOANED.item_pid].status == "loan"
    assert state.scans == []
    assert (await scan(client, LOANED.item_pid)).status == 200


@pytest.mark.parametrize("kind", ["500", "502_text", "503_html"])
async def test_injected_failure_applied_returns_the_loan_anyway(client, state, kind):
    """applied=True: the scan happened, yet the client sees a 5xx."""
    state.inject_failure(kind, applied=True)
    response = await scan(client, LOANED.item_pid)
    assert response.status >= 500
    assert state.items[LOANED.item_pid].status == "in_place"
    assert state.scans == [(LOANED.item_pid, "MAIN", "DESK1", True)]


async def test_injected_failure_count_and_item_filter(client, state):
    """count=2 with item_pid fails only two scans of that item, not other requests."""
    state.inject_failure("500", count=2, item_pid=LOANED.item_pid)
    assert (await scan(client, "231000000201234")).status == 200
    assert (await client.get("/almaws/v1/users/G12345678", headers=JSON_HEADERS)).status == 200
    assert (await scan(client, LOANED.item_pid)).status == 500
    assert (await scan(client, LOANED.item_pid)).status == 500
    assert (await scan(client, LOANED.item_pid)).status == 200


async def test_single_error_object_quirk_on_a_real_error(client, state):
    """The request's own error comes back with `error` as one object, not a list."""
    state.inject_failure("single_error_object")
    response = await client.get("/almaws/v1/users/nobody", headers=JSON_HEADERS)
    body = await response.json()
    assert response.status == 400
    assert body["errorList"]["error"]["errorCode"] == "401861"
    assert (
        body["errorList"]["error"]["errorMessage"] == "User with identifier nobody was not found."
    )


async def test_errors_exist_string_quirk_on_a_valid_scan(client, state):
    """A would-be success becomes a 400 error with errorsExist "true" and is not applied."""
    state.inject_failure("errors_exist_string")
    response = await scan(client, LOANED.item_pid)
    body = await response.json()
    assert response.status == 400
    assert body["errorsExist"] == "true"
    assert body["errorList"]["error"][0]["errorCode"] == "INTERNAL_SERVER_ERROR"
    assert state.scans == []


@pytest.mark.parametrize("applied", [False, True])
async def test_injected_gateway_timeout(client, state, applied):
    """A gateway timeout holds the answer past the client's timeout; applied decides if the scan ran."""
    state.hang_seconds = 0.3
    state.inject_failure("gateway_timeout", applied=applied)
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            scan_path(LOANED.item_pid),
            params=scan_query(),
            headers=JSON_HEADERS,
            timeout=aiohttp.ClientTimeout(total=0.05),
        )
    assert state.items[LOANED.item_pid].status == ("in_place" if applied else "loan")


async def test_injected_disconnect(client, state):
    """The connection is closed without an answer; the log shows no status."""
    state.inject_failure("disconnect")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await scan(client, LOANED.item_pid)
    assert state.requests[-1]["status"] is None
    assert state.scans == []


async def test_old_timeout_name_is_a_gateway_timeout(aiohttp_client):
    """"timeout" and timeout_sleep=, the old names, still give a 504 text/plain after the wait."""
    state = AlmaState(timeout_sleep=0.1)
    state.add_item(make_item(LOANED.item_pid, "loan"))
    client = await aiohttp_client(create_app(state))
    state.inject_failure("timeout")
    response = await scan(client, LOANED.item_pid)
    assert (response.status, response.content_type) == (504, "text/plain")
    assert state.requests[-1]["failure"] == "gateway_timeout"


async def test_injected_redirect_is_a_301_to_https_and_changes_nothing(client, state):
    """Opt-in only: an injected redirect answers 301 with Location = the same URL on https://,
    applies nothing and uses no quota; the next request is answered as usual."""
    state.inject_failure("redirect")
    response = await scan_no_follow(client, LOANED.item_pid)
    assert response.status == 301
    assert response.headers["Location"] == str(response.url.with_scheme("https"))
    assert "<h1>301 Moved Permanently</h1>" in await response.text()
    assert response.headers["X-Exl-Api-Remaining"] == "1000"
    assert state.scans == [] and state.items[LOANED.item_pid].status == "loan"
    assert [entry["status"] for entry in state.requests] == [301]
    assert (await scan(client, LOANED.item_pid)).status == 200


@pytest.mark.parametrize("status", [302, 303, 307, 308])
async def test_injected_redirect_status_and_location_are_configurable(client, state, status):
    """redirect_status and redirect_location shape the injected redirect."""
    state.redirect_status = status
    state.redirect_location = "https://api-eu.hosted.exlibrisgroup.com/almaws/v1/moved"
    state.inject_failure("redirect")
    response = await scan_no_follow(client, LOANED.item_pid)
    assert (response.status, response.headers["Location"]) == (status, state.redirect_location)
    assert state.scans == []


async def scan_no_follow(client, item_pid: str):
    """POST a scan-in without following a redirect (the test client follows them by default)."""
    return await client.post(
        scan_path(item_pid), params=scan_query(), headers=JSON_HEADERS, allow_redirects=False
    )


@pytest.mark.parametrize(
    ("kind", "applied", "message"),
    [
        ("boom", False, "unknown failure kind 'boom' (known: 500, 502_text, 503_html, "),
        ("single_error_object", True, "a 'single_error_object' failure is never applied"),
        ("429", True, "a '429' failure is never applied: drop applied=True"),
        ("redirect", True, "a 'redirect' failure is never applied: drop applied=True"),
    ],
)
def test_inject_failure_rejects_nonsense(kind, applied, message):
    """Typos and impossible combinations fail loudly in the test that made them."""
    with pytest.raises(ValueError) as exc_info:
        AlmaState().inject_failure(kind, applied=applied)
    assert str(exc_info.value).startswith(message)


# --- request log -----------------------------------------------------------------------------------


async def test_request_log_records_every_request(client, state):
    """state.requests holds method, path, query, status, time and key of each request."""
    await scan(client, LOANED.item_pid)
    await client.get("/almaws/v1/users/G12345678", headers={"Accept": "application/json"})
    assert [(r["method"], r["path"], r["status"], r["api_key"]) for r in state.requests] == [
        ("POST", scan_path(LOANED.item_pid), 200, KEY),
        ("GET", "/almaws/v1/users/G12345678", 400, None),
    ]
    assert state.requests[0]["query"] == scan_query()
    assert state.count("/almaws/v1/bibs") == 1
    assert state.count("/almaws/v1/users") == 1
    assert client.app[STATE] is state


# --- seeding files and the standalone entry point -------------------------------------------------

ANALYTICS_HEADER = [
    "MMS Id",
    "Holding Id",
    "Physical Item Id",
    "Barcode",
    "Process Type",
    "Library Code (Active)",
    "Location Code",
    "Temporary Physical Location In Use",
    "Temporary Library Code (Active)",
    "Temporary Location Code",
]
ANALYTICS_ROWS = [
    [
        LOANED.mms_id,
        LOANED.holding_id,
        LOANED.item_pid,
        "39000001",
        "Loan",
        "MAIN",
        "stacks",
        "No",
        "",
        "",
    ],
    [
        LOANED.mms_id,
        LOANED.holding_id,
        "231000000501234",
        "39000005",
        "Loan",
        "MAIN",
        "stacks",
        "Yes",
        "ANNEX",
        "reserve",
    ],
]


def write_export(path: Path, delimiter: str, encoding: str) -> Path:
    """Write the Analytics rows as an export file in the given shape."""
    lines = [delimiter.join(ANALYTICS_HEADER)] + [delimiter.join(row) for row in ANALYTICS_ROWS]
    path.write_text("\r\n".join(lines) + "\r\n", encoding=encoding)
    return path


@pytest.mark.parametrize(
    ("delimiter", "encoding"), [(",", "utf-8-sig"), ("\t", "utf-16"), (",", "utf-8")]
)
def test_load_items_from_analytics_exports(tmp_path, delimiter, encoding):
    """BOM'd UTF-8 CSV and UTF-16 TSV exports seed on-loan items, temp locations included."""
    state = AlmaState()
    count = load_items(state, write_export(tmp_path / "items.csv", delimiter, encoding))
    assert count == 2
    first = state.items[LOANED.item_pid]
    assert (first.mms_id, first.barcode, first.library, first.status) == (
        LOANED.mms_id,
        "39000001",
        "MAIN",
        "loan",
    )
    assert first.temp_library is None
    second = state.items["231000000501234"]
    assert (second.temp_library, second.temp_location) == ("ANNEX", "reserve")


def test_load_desks_and_users(tmp_path):
    """Desks map by location (library from the items, or given); users go to one key."""
    state = AlmaState()
    load_items(state, write_export(tmp_path / "items.csv", ",", "utf-8"))
    desks = tmp_path / "desks.csv"
    desks.write_text("location_code,circ_desk\nstacks,DESK1\nreserve,RES\n", encoding="utf-8")
    load_desks(state, desks)
    assert state.desks == {("MAIN", "DESK1"), ("ANNEX", "RES")}
    users = tmp_path / "users.csv"
    users.write_text(
        "primary_id,barcode,user_group,first_name,last_name,email\n"
        "G1,2220001,STAFF,Ada,Lovelace,ada@example.edu\n",
        encoding="utf-8",
    )
    assert load_users(state, users, "k1") == 1
    assert state.users["G1"].api_key == "k1"
    assert state.users["G1"].user_group_desc == "STAFF"


@pytest.mark.parametrize(
    ("text", "expected"), [("0.3-0.8", (0.3, 0.8)), ("0.5", (0.5, 0.5)), ("0-0", (0.0, 0.0))]
)
def test_parse_latency(text, expected):
    """--latency takes MIN-MAX or one number."""
    assert parse_latency(text) == expected


@pytest.mark.parametrize("text", ["0.8-0.3", "-1", "fast"])
def test_parse_latency_rejects_nonsense(text):
    """Reversed, negative or non-numeric latencies are refused."""
    with pytest.raises(ValueError):
        parse_latency(text)


@pytest.fixture
def standalone(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m simulators.alma` started on a free port with seed files; stopped afterwards."""
    items = write_export(tmp_path / "items.tsv", "\t", "utf-16")
    desks = tmp_path / "desks.csv"
    desks.write_text("location_code,circ_desk,library_code\nstacks,DESK1,MAIN\n", encoding="utf-8")
    users = tmp_path / "users.csv"
    users.write_text(
        "primary_id,barcode,user_group,first_name,last_name,email\n"
        "G1,2220001,STAFF,Ada,Lovelace,ada@example.edu\n",
        encoding="utf-8",
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.alma",
            "--port",
            str(port),
            "--rate-limit",
            "25",
            "--daily-quota",
            "500",
            "--latency",
            "0-0.01",
            "--api-key",
            "sim-key",
            "--items-csv",
            str(items),
            "--desks-csv",
            str(desks),
            "--users-csv",
            str(users),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        yield line, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


async def test_standalone_entry_point(standalone):
    """The module runs as a server, prints its URL and answers scan-ins and users."""
    line, process = standalone
    match = re.match(r"Alma simulator listening on (http://127\.0\.0\.1:\d+) ", line)
    assert match, f"unexpected first line {line!r}"
    base = match.group(1)
    assert "(2 items, 1 users, 1 desks)" in line
    headers = {"Authorization": "apikey sim-key", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(base + scan_path(LOANED.item_pid), params=scan_query()) as response:
            assert response.status == 200
            assert response.headers["X-Exl-Api-Remaining"] == "499"
            assert (await response.json())["item_data"]["base_status"] == IN_PLACE
        async with session.get(base + "/almaws/v1/users/2220001") as response:
            assert (await response.json())["primary_id"] == "G1"
    assert process.poll() is None
    process.terminate()
    assert process.wait(timeout=10) == 0  # SIGTERM is a clean stop


def test_standalone_refuses_unreadable_seed_file(tmp_path):
    """A missing seed file is a usage error: exit 2 and a message naming the problem."""
    result = subprocess.run(
        [sys.executable, "-m", "simulators.alma", "--items-csv", str(tmp_path / "none.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("alma simulator: cannot load seed files: [Errno 2]")


# --- work orders, latency, quota reset, unknown paths ---------------------------------------------


async def test_department_scan_puts_the_item_in_a_work_order(client, state):
    """department without done=true: process_type WORK_ORDER_DEPARTMENT, loan returned."""
    response = await client.post(
        scan_path(LOANED.item_pid),
        params={"op": "scan", "library": "MAIN", "department": "BINDERY"},
        headers=JSON_HEADERS,
    )
    body = await response.json()
    assert body["item_data"]["process_type"] == {
        "value": "WORK_ORDER_DEPARTMENT",
        "desc": "In Process",
    }
    assert body["item_data"]["base_status"] == NOT_IN_PLACE
    assert body["additional_info"].startswith("Item's destination is: BINDERY.")
    assert state.items[LOANED.item_pid].status == "work_order"
    assert state.scans == [(LOANED.item_pid, "MAIN", "BINDERY", True)]


async def test_department_scan_done_moves_the_item_on(client, state):
    """done=true finishes the work order: the item goes back in place."""
    params = {"op": "scan", "library": "MAIN", "department": "BINDERY"}
    await client.post(scan_path(LOANED.item_pid), params=params, headers=JSON_HEADERS)
    response = await client.post(
        scan_path(LOANED.item_pid), params={**params, "done": "true"}, headers=JSON_HEADERS
    )
    assert (await response.json())["item_data"]["base_status"] == IN_PLACE
    assert state.items[LOANED.item_pid].status == "in_place"
    assert state.items[LOANED.item_pid].work_order_department is None


async def test_latency_is_drawn_within_the_configured_range(aiohttp_client):
    """Every answered request sleeps a uniform random time within (min, max)."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    state = AlmaState(latency=(0.3, 0.8), sleep=record)
    client = await aiohttp_client(create_app(state))
    for _ in range(20):
        await client.get("/almaws/v1/users/nobody", headers=JSON_HEADERS)
    assert len(slept) == 20
    assert all(0.3 <= seconds <= 0.8 for seconds in slept)
    assert len(set(slept)) > 1


async def test_same_seed_gives_the_same_latencies(aiohttp_client):
    """The seed makes runs repeatable."""
    runs = []
    for _ in range(2):
        slept: list[float] = []

        async def record(seconds: float, slept=slept) -> None:
            slept.append(seconds)

        client = await aiohttp_client(create_app(AlmaState(latency=(0, 1), seed=7, sleep=record)))
        for _ in range(3):
            await client.get("/almaws/v1/users/x", headers=JSON_HEADERS)
        runs.append(slept)
    assert runs[0] == runs[1]


async def test_injected_429_uses_no_quota(client, state):
    """A forced 429 is a gateway rejection: X-Exl-Api-Remaining does not move."""
    state.inject_failure("429")
    response = await client.get("/almaws/v1/users/G12345678", headers=JSON_HEADERS)
    assert response.status == 429
    assert response.headers["X-Exl-Api-Remaining"] == "1000"


async def test_reset_daily_quota_lets_calls_through_again(aiohttp_client):
    """After midnight GMT (reset_daily_quota) the quota is whole again."""
    state = AlmaState(daily_quota=1)
    client = await aiohttp_client(create_app(state))
    await client.get("/almaws/v1/users/x", headers=JSON_HEADERS)
    assert (await client.get("/almaws/v1/users/x", headers=JSON_HEADERS)).status == 429
    state.reset_daily_quota()
    response = await client.get("/almaws/v1/users/x", headers=JSON_HEADERS)
    assert response.status == 400  # user not found: the call went through
    assert response.headers["X-Exl-Api-Remaining"] == "0"


async def test_unknown_path_is_logged_with_its_status(client, state):
    """Paths the simulator does not serve answer 404 and still appear in the request log."""
    response = await client.get("/almaws/v1/nothing", headers=JSON_HEADERS)
    assert response.status == 404
    assert "X-Exl-Api-Remaining" in response.headers
    assert state.requests[-1]["status"] == 404


async def test_per_second_limit_can_be_changed_on_a_running_state(client, state):
    """Lowering state.per_second_limit takes effect on the next request."""
    state.clock = lambda: 5.0  # every request in the same instant
    state.per_second_limit = 2
    statuses = [
        (await client.get("/almaws/v1/users/G12345678", headers=JSON_HEADERS)).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    ("loader", "text", "message"),
    [
        (
            load_items,
            "Holding Id,Physical Item Id,Library Code,Location Code\n1,2,MAIN,stacks\n",
            "column 'MMS Id' not found in seed.csv (found: Holding Id, Physical Item Id, "
            "Library Code, Location Code)",
        ),
        (
            load_desks,
            "location,desk\nstacks,DESK1\n",
            "column 'location_code' not found in seed.csv (found: location, desk)",
        ),
        (
            lambda state, path: load_users(state, path, KEY),
            "primary_id,user_group\nG1,STAFF\n",
            "column 'barcode' not found in seed.csv (found: primary_id, user_group)",
        ),
    ],
    ids=["items", "desks", "users"],
)
def test_seed_file_missing_a_column_names_it(tmp_path, loader, text, message):
    """A seed file without a needed column fails with the column, the file and what it has."""
    path = tmp_path / "seed.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as exc_info:
        loader(AlmaState(), path)
    assert str(exc_info.value) == message


def test_seed_headers_match_without_case_or_underscores(tmp_path):
    """'mms_id' / 'LOCATION CODE' style headers are read like the Analytics ones."""
    path = tmp_path / "items.csv"
    path.write_text(
        "mms_id,holding_id,item_id,LIBRARY CODE,location_code\n991,221,231,MAIN,stacks\n\n",
        encoding="utf-8",
    )
    state = AlmaState()
    assert load_items(state, path) == 1
    assert state.items["231"].library == "MAIN"
    assert state.items["231"].barcode == ""


def test_standalone_refuses_seed_file_without_needed_column(tmp_path):
    """A desks file without circ_desk is a usage error (exit 2) naming the column."""
    desks = tmp_path / "desks.csv"
    desks.write_text("location_code,desk\nstacks,D\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "simulators.alma", "--desks-csv", str(desks)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "alma simulator: cannot load seed files: column 'circ_desk' not found in desks.csv "
        "(found: location_code, desk)\n"
    )
