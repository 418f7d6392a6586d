"""The Alma simulator's Retrieve Item by Barcode and Analytics reports.

The contract is shared/reference/alma-items-and-analytics.md. Each test starts the simulator on
127.0.0.1 (a free port), talks to it with a plain aiohttp client that does not follow redirects,
and stops it again.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from simulators._common import free_port, start_site
from simulators.alma import AlmaItem, AlmaState, create_app, load_items, load_report

KEY = "test-key"
ANALYTICS_KEY = "analytics-key"
AUTH = {"Authorization": f"apikey {KEY}"}
JSON = {**AUTH, "Accept": "application/json"}
ROOT = Path(__file__).resolve().parents[2]
ROWSET_NS = "urn:schemas-microsoft-com:xml-analysis:rowset"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
SAW_SQL = "{urn:saw-sql}"
TOKEN = re.compile(r"^[0-9A-F]{128}$")
REPORT = "/shared/Some University/Reports/Items to discharge"
REPORTS = "/almaws/v1/analytics/reports"

ON_LOAN = AlmaItem(
    mms_id="991234567806421",
    holding_id="2212345678006421",
    item_pid="2312345678006421",
    barcode="32882012345678",
    library="gelman",
    location="gstk",
    temp_library="gelman",
    temp_location="gres",
    status="loan",
)
IN_PLACE = AlmaItem(
    mms_id="991234567906421",
    holding_id="2212345679006421",
    item_pid="2312345679006421",
    barcode="+F20313804",
    library="MAIN",
    location="stacks",
    status="in_place",
)
HEADINGS = [
    ("Bibliographic Details", "MMS Id"),
    ("Holding Details", "Holding Id"),
    ("Physical Item Details", "Barcode"),
    ("Temporary Location", "Temporary Location Code"),
]


def report_rows(count: int) -> list[list[str]]:
    """Rows of the test report; every third has a temporary location, the others leave it empty."""
    return [
        [f"99{n:05d}06421", f"22{n:05d}06421", f"39{n:06d}", "res" if n % 3 == 0 else ""]
        for n in range(count)
    ]


Start = Callable[[AlmaState], Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a simulator for a state on a free loopback port; stopped when the test ends."""
    runners = []

    async def run(state: AlmaState) -> str:
        runner, port = await start_site(create_app(state), "127.0.0.1", 0)
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield run
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client."""
    async with aiohttp.ClientSession() as client:
        yield client


def make_state(**changes) -> AlmaState:
    """Two items, the 60-row report and a tiny one."""
    state = AlmaState(api_keys={KEY, ANALYTICS_KEY}, **changes)
    state.add_item(replace(ON_LOAN))  # copies: tests may change the state's items
    state.add_item(replace(IN_PLACE))
    state.add_report(REPORT, HEADINGS, report_rows(60))
    state.add_report("/shared/U/Tiny", [("", "Barcode")], [["1"]])
    return state


@pytest.fixture
def state() -> AlmaState:
    return make_state()


@pytest.fixture
async def base(start: Start, state: AlmaState) -> str:
    return await start(state)


async def get(
    session: aiohttp.ClientSession,
    url: str | URL,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """GET without following redirects; the response (closed) and its body."""
    async with session.get(
        url, params=params, headers=AUTH if headers is None else headers, allow_redirects=False
    ) as response:
        return response, await response.read()


def only_error(body: dict) -> dict:
    """The single error of an Alma JSON error body, checking the envelope."""
    assert body["errorsExist"] is True
    assert body["result"] is None
    errors = body["errorList"]["error"]
    assert isinstance(errors, list) and len(errors) == 1
    return errors[0]


def xml_error(text: bytes) -> tuple[str, str]:
    """(errorCode, errorMessage) of an Alma XML error body."""
    root = ET.fromstring(text)
    assert root.tag == "{http://com/exlibris/urm/general/xmlbeans}web_service_result"
    error = {
        local(e.tag): e.text for e in root.iter() if local(e.tag) in ("errorCode", "errorMessage")
    }
    return error["errorCode"], error["errorMessage"]


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def find(root: ET.Element, name: str) -> ET.Element | None:
    """The first element (root included) whose local name is `name`."""
    return next((e for e in root.iter() if local(e.tag) == name), None)


def rows_of(root: ET.Element) -> list[dict[str, str]]:
    """Each Row as {ColumnN: text}."""
    return [
        {local(cell.tag): cell.text or "" for cell in row}
        for row in root.iter()
        if local(row.tag) == "Row"
    ]


def item_path(item: AlmaItem) -> str:
    return f"/almaws/v1/bibs/{item.mms_id}/holdings/{item.holding_id}/items/{item.item_pid}"


# --- Retrieve Item by Barcode ------------------------------------------------------------------


async def test_barcode_answers_302_to_the_items_own_url(base, session, state):
    """302, Location = the item's URL on the scheme and host called, no query, empty body."""
    response, body = await get(
        session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode}
    )
    assert response.status == 302
    assert response.headers["Location"] == base + item_path(ON_LOAN)
    assert body == b""
    assert response.headers["X-Exl-Api-Remaining"] == str(state.daily_quota - 1)


async def test_barcode_redirect_stays_on_the_host_called(base, session):
    """The Location's host is the Host the client called (Alma's regional host)."""
    response, _ = await get(
        session,
        f"{base}/almaws/v1/items",
        {"item_barcode": ON_LOAN.barcode},
        {**AUTH, "Host": "api-eu.example.org:8443"},
    )
    assert response.status == 302
    assert response.headers["Location"] == "http://api-eu.example.org:8443" + item_path(ON_LOAN)


async def test_redirected_item_is_the_retrieve_item_object(base, session, state):
    """The Location gives bib_data, holding_data, item_data and link, and no additional_info."""
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    response, _ = await get(session, response.headers["Location"], headers=JSON)
    assert response.status == 200
    body = await response.json()
    assert list(body) == ["bib_data", "holding_data", "item_data", "link"]
    assert body["bib_data"]["mms_id"] == ON_LOAN.mms_id
    holding = body["holding_data"]
    assert holding["holding_id"] == ON_LOAN.holding_id
    assert holding["in_temp_location"] is True
    assert holding["temp_library"]["value"] == "gelman"
    assert holding["temp_location"]["value"] == "gres"
    data = body["item_data"]
    assert (data["pid"], data["barcode"]) == (ON_LOAN.item_pid, ON_LOAN.barcode)
    assert (data["library"]["value"], data["location"]["value"]) == ("gelman", "gstk")
    assert data["process_type"] == {"value": "LOAN", "desc": "Loan"}
    assert body["link"] == base + item_path(ON_LOAN)
    assert state.items[ON_LOAN.item_pid].status == "loan"  # a GET changes nothing
    assert state.scans == []


async def test_item_not_on_loan_nor_in_a_temporary_location(base, session):
    """An item in place: no LOAN process type, in_temp_location false, temp values null."""
    response, _ = await get(session, base + item_path(IN_PLACE), headers=JSON)
    body = await response.json()
    assert body["item_data"]["process_type"]["value"] == ""
    assert body["holding_data"]["in_temp_location"] is False
    assert body["holding_data"]["temp_library"]["value"] is None
    assert body["holding_data"]["temp_location"]["value"] is None


async def test_following_the_redirect_costs_two_calls(base, session, state):
    """An HTTP library that follows the 302 sends two requests, both counted in the quota."""
    async with session.get(
        f"{base}/almaws/v1/items", params={"item_barcode": ON_LOAN.barcode}, headers=JSON
    ) as response:
        assert response.status == 200
        assert (await response.json())["item_data"]["pid"] == ON_LOAN.item_pid
        assert response.headers["X-Exl-Api-Remaining"] == str(state.daily_quota - 2)
    assert [(e["path"], e["status"]) for e in state.requests] == [
        ("/almaws/v1/items", 302),
        (item_path(ON_LOAN), 200),
    ]
    assert [e["api_key"] for e in state.requests] == [KEY, KEY]


async def test_retrieve_item_in_xml(base, session):
    """Without Accept JSON the item comes as XML, without additional_info."""
    response, body = await get(session, base + item_path(ON_LOAN))
    assert response.status == 200
    assert response.content_type == "application/xml"
    root = ET.fromstring(body)
    assert root.tag == "item"
    assert [local(child.tag) for child in root] == ["bib_data", "holding_data", "item_data", "link"]
    assert find(root, "pid").text == ON_LOAN.item_pid
    assert find(root, "additional_info") is None


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        (
            "/almaws/v1/bibs/abc/holdings/2212345678006421/items/2312345678006421",
            "402203",
            "Input parameters mmsId abc is not valid.",
        ),
        (
            "/almaws/v1/bibs/991234567806421/holdings/2212345678006421/items/2399999999906421",
            "40166411",
            "The parameter item_pid is invalid. Received: 2399999999906421.",
        ),
        (
            "/almaws/v1/bibs/991234567806421/holdings/2299999999906421/items/2312345678006421",
            "401688",
            "Search failed for Items with mmsId 991234567806421, holdings id 2299999999906421.",
        ),
    ],
)
async def test_retrieve_item_with_wrong_ids(base, session, path, code, message):
    """Wrong ids get the same Alma errors as a scan-in of them."""
    response, _ = await get(session, base + path, headers=JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert (error["errorCode"], error["errorMessage"]) == (code, message)


async def test_retrieve_item_refuses_parameters(base, session):
    """The item GET takes no parameter the contract does not confirm (strict)."""
    response, _ = await get(session, base + item_path(ON_LOAN), {"view": "brief"}, JSON)
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "40166410"


async def test_unknown_barcode_is_401689_in_json(base, session):
    response, _ = await get(
        session, f"{base}/almaws/v1/items", {"item_barcode": "32882099999999"}, JSON
    )
    assert response.status == 400
    assert response.content_type == "application/json"
    error = only_error(await response.json())
    assert error["errorCode"] == "401689"
    assert error["errorMessage"] == "No items found for barcode 32882099999999."
    assert error["trackingId"].startswith("E01-")


async def test_unknown_barcode_is_401689_in_xml(base, session):
    response, body = await get(
        session, f"{base}/almaws/v1/items", {"item_barcode": "32882099999999"}
    )
    assert response.status == 400
    assert response.content_type == "application/xml"
    assert xml_error(body) == ("401689", "No items found for barcode 32882099999999.")


async def test_plus_must_be_percent_encoded(base, session, state):
    """%2B finds +F20313804; a raw + is a space, so the lookup fails with 401689."""
    encoded = URL(f"{base}/almaws/v1/items?item_barcode=%2BF20313804", encoded=True)
    response, _ = await get(session, encoded, headers=JSON)
    assert response.status == 302
    assert response.headers["Location"].endswith(item_path(IN_PLACE))
    raw = URL(f"{base}/almaws/v1/items?item_barcode=+F20313804", encoded=True)
    response, _ = await get(session, raw, headers=JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert error["errorCode"] == "401689"
    assert error["errorMessage"] == "No items found for barcode  F20313804."
    assert [e["raw_query"] for e in state.requests] == [
        "item_barcode=%2BF20313804",
        "item_barcode=+F20313804",
    ]


@pytest.mark.parametrize(
    "barcode", ["32882012345678 ", " 32882012345678", "3288201234567", "+f20313804"]
)
async def test_barcode_is_matched_exactly(base, session, barcode):
    """No trimming, no prefix match, case-sensitive (strict: unverified)."""
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": barcode}, JSON)
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "401689"


@pytest.mark.parametrize(
    "query",
    [
        "item_barcode=32882012345678&view=brief",
        "item_barcode=32882012345678&expand=due_date",
        "item_barcode=32882012345678&item_barcode=32882012345678",
        "barcode=32882012345678",
        "item_barcode=",
        "",
    ],
)
async def test_barcode_lookup_takes_only_item_barcode(base, session, query):
    """Unconfirmed, repeated, missing or empty parameters: a 400 Alma error (40166410)."""
    url = URL(f"{base}/almaws/v1/items" + (f"?{query}" if query else ""), encoded=True)
    response, _ = await get(session, url, headers=JSON)
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "40166410"


async def test_barcode_lookup_accepts_apikey_and_format_parameters(base, session):
    """The key as apikey= and format=json work as for every call."""
    response, _ = await get(
        session,
        f"{base}/almaws/v1/items",
        {"item_barcode": "nope", "apikey": KEY, "format": "json"},
        headers={},
    )
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "401689"


async def test_items_loaded_from_the_items_csv_are_found_by_barcode(start, session, tmp_path):
    """load_items (--items-csv) seeds items the barcode lookup finds."""
    export = tmp_path / "items.csv"
    export.write_text(
        "\ufeffMMS Id,Holding Id,Physical Item Id,Barcode,Library Code,Location Code\r\n"
        "991000000106421,221000000106421,231000000106421,+A0001,MAIN,stacks\r\n",
        encoding="utf-8",
    )
    state = AlmaState()
    assert load_items(state, export) == 1
    base = await start(state)
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": "+A0001"})
    assert response.status == 302
    assert response.headers["Location"] == (
        f"{base}/almaws/v1/bibs/991000000106421/holdings/221000000106421/items/231000000106421"
    )


async def test_barcode_found_after_the_item_changes(base, session, state):
    """Items replaced or re-barcoded after a lookup are found under their new barcode."""
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    assert response.status == 302
    state.items[ON_LOAN.item_pid].barcode = "NEW1"
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    assert response.status == 400
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": "NEW1"})
    assert response.status == 302


# --- the gateway: per-second threshold, quota, failures ---------------------------------------


async def test_barcode_and_item_calls_count_against_the_per_second_threshold(start, session):
    """With a limit of 2, the 302 and the item GET fill the second: the third call gets 429."""
    state = make_state(per_second_limit=2, clock=lambda: 100.0)
    base = await start(state)
    first, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    second, _ = await get(session, first.headers["Location"], headers=JSON)
    third, _ = await get(
        session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode}, JSON
    )
    assert [first.status, second.status, third.status] == [302, 200, 429]
    error = only_error(await third.json())
    assert error["errorCode"] == "PER_SECOND_THRESHOLD"
    assert error["errorMessage"] == "HTTP requests are more than allowed per second"
    assert state.remaining == state.daily_quota - 2


async def test_report_calls_count_against_the_per_second_threshold(start, session):
    """Analytics calls fill the same window: two report pages, then the item GET gets 429."""
    state = make_state(per_second_limit=2, clock=lambda: 100.0)
    base = await start(state)
    first, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    second, _ = await get(session, base + REPORTS, {"token": token})
    third, _ = await get(session, base + item_path(ON_LOAN), headers=JSON)
    assert [first.status, second.status, third.status] == [200, 200, 429]
    assert only_error(await third.json())["errorCode"] == "PER_SECOND_THRESHOLD"
    assert third.headers["X-Exl-Api-Remaining"] == str(state.daily_quota - 2)


async def test_report_calls_use_the_daily_quota(start, session):
    """Every report call counts down X-Exl-Api-Remaining; at zero it gets DAILY_THRESHOLD."""
    state = make_state(daily_quota=2)
    base = await start(state)
    first, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    second, _ = await get(session, base + REPORTS, {"token": token})
    third, _ = await get(session, base + REPORTS, {"token": token}, JSON)
    assert [r.headers["X-Exl-Api-Remaining"] for r in (first, second, third)] == ["1", "0", "0"]
    assert third.status == 429
    assert only_error(await third.json())["errorCode"] == "DAILY_THRESHOLD"
    assert state.report_runs[token].position == 50  # the refused call moved nothing


async def test_injected_failures_reach_the_new_calls(base, session, state):
    """An injected failure is taken by a barcode lookup and a report call like any other."""
    state.inject_failure("503_html")
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    assert response.status == 503
    state.inject_failure("500")
    response, body = await get(session, base + REPORTS, {"path": REPORT})
    assert response.status == 500
    assert xml_error(body) == ("INTERNAL_SERVER_ERROR", "INTERNAL_SERVER_ERROR")
    assert state.report_runs == {}  # not applied: no run started


async def test_failure_aimed_at_an_item_is_not_taken_by_its_get(base, session, state):
    """inject_failure(item_pid=...) aims at scans of the item, not at Retrieve Item."""
    state.inject_failure("500", item_pid=ON_LOAN.item_pid)
    response, _ = await get(session, base + item_path(ON_LOAN), headers=JSON)
    assert response.status == 200
    assert len(state.failures.pending) == 1


async def test_applied_failure_loses_a_page_and_unapplied_does_not(base, session, state):
    """Not applied: the next call gets the same page. Applied: that page is gone."""
    response, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    state.inject_failure("502_text")
    response, _ = await get(session, base + REPORTS, {"token": token})
    assert response.status == 502
    response, body = await get(session, base + REPORTS, {"token": token})
    assert rows_of(ET.fromstring(body))[0]["Column3"] == "39000025"  # the second page
    state.hang_seconds = 0.0
    state.inject_failure("gateway_timeout", applied=True)
    response, _ = await get(session, base + REPORTS, {"token": token})
    assert response.status == 504
    assert state.requests[-1]["applied_status"] == 200
    assert state.report_runs[token].finished is True  # the last page went with the lost answer
    response, body = await get(session, base + REPORTS, {"token": token}, JSON)
    assert response.status == 500
    assert only_error(await response.json())["errorCode"] == "420033"


async def test_aiohttp_resending_after_a_disconnect_skips_a_page(base, session, state):
    """aiohttp resends a GET once when the connection drops: after an applied disconnect the
    resent call gets the page after the lost one, and the caller never sees the gap."""
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    state.inject_failure("disconnect", applied=True)
    response, body = await get(session, base + REPORTS, {"token": token})
    assert response.status == 200
    assert rows_of(ET.fromstring(body))[0]["Column3"] == "39000050"  # rows 25-49 were lost
    assert [(e.get("failure"), e["status"]) for e in state.requests[1:]] == [
        ("disconnect", None),
        (None, 200),
    ]


async def test_error_shape_failure_on_a_report_call(base, session, state):
    """The error-shape failures answer a report call with its own error, shaped."""
    state.inject_failure("single_error_object")
    response, _ = await get(session, base + REPORTS, {"path": "/shared/nowhere"}, JSON)
    assert response.status == 500
    body = await response.json()
    assert body["errorList"]["error"]["errorMessage"] == "Path not found (/shared/nowhere)"


# --- Analytics: paging --------------------------------------------------------------------------


def expected_row(n: int) -> dict[str, str]:
    row = {
        "Column0": "0",
        "Column1": f"99{n:05d}06421",
        "Column2": f"22{n:05d}06421",
        "Column3": f"39{n:06d}",
    }
    if n % 3 == 0:
        row["Column4"] = "res"
    return row


async def test_report_in_three_pages(base, session, state):
    """60 rows with limit 25: the token and schema only on the first answer, 25+25+10 rows."""
    answers = []
    response, body = await get(session, base + REPORTS, {"path": REPORT, "limit": "25"})
    answers.append((response.status, ET.fromstring(body)))
    token = find(answers[0][1], "ResumptionToken").text
    assert TOKEN.match(token)
    for _ in range(2):
        response, body = await get(session, base + REPORTS, {"token": token, "limit": "25"})
        answers.append((response.status, ET.fromstring(body)))
    assert [status for status, _ in answers] == [200, 200, 200]
    roots = [root for _, root in answers]
    assert [find(r, "IsFinished").text for r in roots] == ["false", "false", "true"]
    assert [find(r, "ResumptionToken") is not None for r in roots] == [True, False, False]
    assert [find(r, "schema") is not None for r in roots] == [True, False, False]
    rows = [rows_of(r) for r in roots]
    assert [len(page) for page in rows] == [25, 25, 10]
    assert [row for page in rows for row in page] == [expected_row(n) for n in range(60)]
    response, body = await get(session, base + REPORTS, {"token": token})
    assert response.status == 500
    assert xml_error(body) == ("420033", "No more rows to fetch")


async def test_report_row_elements_and_namespaces(base, session):
    """Column0 is 0; empty cells have no element; rowset/Row/ColumnN in the rowset namespace."""
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    root = ET.fromstring(body)
    assert root.tag == "report"
    assert [child.tag for child in root] == ["QueryResult"]
    assert [child.tag for child in root[0]] == ["ResumptionToken", "IsFinished", "ResultXml"]
    rowset = root[0][2][0]
    assert rowset.tag == f"{{{ROWSET_NS}}}rowset"
    rows = [e for e in rowset if e.tag == f"{{{ROWSET_NS}}}Row"]
    assert len(rows) == 25
    assert [cell.tag for cell in rows[0]] == [f"{{{ROWSET_NS}}}Column{n}" for n in range(5)]
    assert [cell.tag for cell in rows[1]] == [f"{{{ROWSET_NS}}}Column{n}" for n in range(4)]
    assert all(row[0].text == "0" for row in rows)


async def test_report_schema_carries_the_headings(base, session):
    """The schema: Column0 heading "0", then each column's columnHeading and tableHeading."""
    _, body = await get(session, base + REPORTS, {"path": REPORT, "col_names": "true"})
    schema = find(ET.fromstring(body), "schema")
    assert schema.tag == f"{{{XSD_NS}}}schema"
    elements = [e for e in schema.iter(f"{{{XSD_NS}}}element")]
    assert [e.get("name") for e in elements] == [f"Column{n}" for n in range(5)]
    headings = [
        (e.get(f"{SAW_SQL}tableHeading"), e.get(f"{SAW_SQL}columnHeading")) for e in elements
    ]
    assert headings == [("", "0"), *HEADINGS]
    assert elements[0].get("type") == "xsd:int"
    assert elements[1].get("type") == "xsd:string"


async def test_report_without_col_names_has_no_headings(base, session):
    """col_names=false: the schema's elements carry no heading attributes."""
    _, body = await get(session, base + REPORTS, {"path": REPORT, "col_names": "false"})
    elements = list(find(ET.fromstring(body), "schema").iter(f"{{{XSD_NS}}}element"))
    assert len(elements) == 5
    assert all(e.get(f"{SAW_SQL}columnHeading") is None for e in elements)
    assert all(e.get(f"{SAW_SQL}tableHeading") is None for e in elements)


async def test_report_xml_layout_is_the_recorded_one(base, session):
    """Declaration and <report><QueryResult> on one line, two-space indentation, as recorded."""
    _, body = await get(session, base + REPORTS, {"path": "/shared/U/Tiny"})
    text = body.decode("utf-8")
    token = find(ET.fromstring(body), "ResumptionToken").text
    assert text.startswith(
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><report><QueryResult>\n'
        f"  <ResumptionToken>{token}</ResumptionToken>\n"
        "  <IsFinished>true</IsFinished>\n"
        "  <ResultXml>\n"
        f'    <rowset xmlns="{ROWSET_NS}">\n'
        f'      <xsd:schema xmlns:xsd="{XSD_NS}" xmlns:saw-sql="urn:saw-sql" '
        f'targetNamespace="{ROWSET_NS}">\n'
        '        <xsd:complexType name="Row">\n'
    )
    assert text.endswith(
        "      <Row>\n"
        "        <Column0>0</Column0>\n"
        "        <Column1>1</Column1>\n"
        "      </Row>\n"
        "    </rowset>\n"
        "  </ResultXml>\n"
        "</QueryResult></report>"
    )


@pytest.mark.parametrize(
    ("limit", "sizes"), [("30", [50, 10]), ("26", [50, 10]), ("50", [50, 10]), ("1000", [60])]
)
async def test_limit_is_rounded_up_to_a_multiple_of_25(base, session, limit, sizes):
    """limit=30 gives up to 50 rows (Analytics serves blocks of 25)."""
    _, body = await get(session, base + REPORTS, {"path": REPORT, "limit": limit})
    root = ET.fromstring(body)
    token = find(root, "ResumptionToken").text
    pages = [rows_of(root)]
    while find(root, "IsFinished").text == "false":
        _, body = await get(session, base + REPORTS, {"token": token, "limit": limit})
        root = ET.fromstring(body)
        pages.append(rows_of(root))
    assert [len(page) for page in pages] == sizes


async def test_default_limit_is_25(base, session):
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    assert len(rows_of(ET.fromstring(body))) == 25


@pytest.mark.parametrize("limit", ["24", "0", "1001", "abc", "", "30.0", "-25", "+30", "２５"])
async def test_bad_limit_is_refused(base, session, state, limit):
    """Outside 25-1000 or not a number: a 400 Alma error, no run started (strict: unverified)."""
    response, _ = await get(session, base + REPORTS, {"path": REPORT, "limit": limit}, JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert error["errorCode"] == "40166410"
    assert error["errorMessage"].startswith(f"The parameter limit is invalid. Received: {limit}.")
    assert state.report_runs == {}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"path": REPORT, "col_names": "yes"}, "col_names"),
        ({"path": REPORT, "col_names": "TRUE"}, "col_names"),
        ({"path": REPORT, "sort": "asc"}, "sort"),
        ({}, "path"),
        ({"path": ""}, "path"),
        ({"token": ""}, "path"),
    ],
)
async def test_bad_report_parameters_are_refused(base, session, params, parameter):
    response, _ = await get(session, base + REPORTS, params, JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert error["errorCode"] == "40166410"
    assert error["errorMessage"].startswith(f"The parameter {parameter} is invalid.")


async def test_filter_is_refused_as_not_supported(base, session, state):
    """filter: a clear 400 saying the simulator does not evaluate it."""
    expression = '<sawx:expr xsi:type="sawx:comparison" op="equal"/>'
    response, _ = await get(session, base + REPORTS, {"path": REPORT, "filter": expression}, JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert error["errorCode"] == "40166410"
    assert "does not evaluate Analytics filters" in error["errorMessage"]
    assert state.report_runs == {}


async def test_empty_token_on_the_first_call_is_accepted(base, session):
    """relay sends token= with an empty value on the first call."""
    response, body = await get(session, base + REPORTS, {"path": REPORT, "token": ""})
    assert response.status == 200
    assert TOKEN.match(find(ET.fromstring(body), "ResumptionToken").text)


async def test_token_with_its_path_goes_on_and_another_path_is_refused(base, session):
    """Later calls may send the path along (scriptotek); another report's path is refused."""
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    response, _ = await get(
        session, base + REPORTS, {"path": "/shared/U/Tiny", "token": token}, JSON
    )
    assert response.status == 400
    assert only_error(await response.json())["errorCode"] == "40166410"
    response, body = await get(session, base + REPORTS, {"path": REPORT, "token": token})
    assert response.status == 200
    assert rows_of(ET.fromstring(body))[0]["Column3"] == "39000025"


async def test_unknown_token_is_a_400(base, session):
    response, body = await get(session, base + REPORTS, {"token": "AB" * 64})
    assert response.status == 400
    assert xml_error(body) == (
        "40166410",
        f"The parameter token is invalid. Received: {'AB' * 64}.",
    )


async def test_runs_of_the_same_report_keep_their_own_cursors(base, session):
    """Each first call starts a run with its own token and cursor."""
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    first = find(ET.fromstring(body), "ResumptionToken").text
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    second = find(ET.fromstring(body), "ResumptionToken").text
    assert first != second
    _, body = await get(session, base + REPORTS, {"token": second})
    assert rows_of(ET.fromstring(body))[0]["Column3"] == "39000025"
    _, body = await get(session, base + REPORTS, {"token": first})
    assert rows_of(ET.fromstring(body))[0]["Column3"] == "39000025"


async def test_single_page_report_is_finished_at_once_and_has_a_token(base, session):
    _, body = await get(session, base + REPORTS, {"path": "/shared/U/Tiny"})
    root = ET.fromstring(body)
    assert find(root, "IsFinished").text == "true"
    token = find(root, "ResumptionToken").text
    response, _ = await get(session, base + REPORTS, {"token": token}, JSON)
    assert response.status == 500
    error = only_error(await response.json())
    assert (error["errorCode"], error["errorMessage"]) == ("420033", "No more rows to fetch")


async def test_empty_report_answers_the_schema_and_no_rows(base, session, state):
    state.add_report("/shared/U/Empty", HEADINGS, [])
    _, body = await get(session, base + REPORTS, {"path": "/shared/U/Empty"})
    root = ET.fromstring(body)
    assert find(root, "IsFinished").text == "true"
    assert find(root, "schema") is not None
    assert rows_of(root) == []


async def test_still_loading_answers_before_the_first_page(base, session, state):
    """IsFinished false and an empty ResultXml; the token on the first; the schema with the rows."""
    state.add_report("/shared/U/Slow", HEADINGS, report_rows(30), still_loading=2)
    _, body = await get(session, base + REPORTS, {"path": "/shared/U/Slow"})
    loading = ET.fromstring(body)
    token = find(loading, "ResumptionToken").text
    assert TOKEN.match(token)
    _, body = await get(session, base + REPORTS, {"token": token})
    roots = [loading, ET.fromstring(body)]
    for _ in range(2):
        _, body = await get(session, base + REPORTS, {"token": token})
        roots.append(ET.fromstring(body))
    assert [find(r, "IsFinished").text for r in roots] == ["false", "false", "false", "true"]
    assert [find(r, "ResumptionToken") is not None for r in roots] == [True, False, False, False]
    for root in roots[:2]:
        result = find(root, "ResultXml")
        assert len(result) == 0 and not (result.text or "").strip()
    assert [find(r, "schema") is not None for r in roots] == [False, False, True, False]
    assert [len(rows_of(r)) for r in roots] == [0, 0, 25, 5]
    assert body.decode().endswith("</QueryResult></report>")
    first_loading = ET.tostring(loading, encoding="unicode")
    assert "<ResultXml />" in first_loading


async def test_unknown_path_is_a_500_path_not_found(base, session, state):
    response, body = await get(session, base + REPORTS, {"path": "/shared/U/Nowhere"})
    assert response.status == 500
    assert xml_error(body) == ("INTERNAL_SERVER_ERROR", "Path not found (/shared/U/Nowhere)")
    response, _ = await get(session, base + REPORTS, {"path": "/shared/U/Nowhere"}, JSON)
    assert response.status == 500
    error = only_error(await response.json())
    assert (error["errorCode"], error["errorMessage"]) == (
        "INTERNAL_SERVER_ERROR",
        "Path not found (/shared/U/Nowhere)",
    )


async def test_json_answer_wraps_the_query_result_in_anies(base, session):
    """{"anies": [one XML string]}: UTF-16 declaration, root QueryResult, rowset namespace."""
    response, _ = await get(session, base + REPORTS, {"path": REPORT}, JSON)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["anies"] and len(body["anies"]) == 1
    text = body["anies"][0]
    assert text.startswith('<?xml version="1.0" encoding="UTF-16"?>\n<QueryResult>')
    root = ET.fromstring(text)
    assert root.tag == "QueryResult"
    token = find(root, "ResumptionToken").text
    assert TOKEN.match(token)
    assert find(root, "rowset").tag == f"{{{ROWSET_NS}}}rowset"
    assert rows_of(root)[:2] == [expected_row(0), expected_row(1)]
    response, _ = await get(session, base + REPORTS, {"token": token}, JSON)
    root = ET.fromstring((await response.json())["anies"][0])
    assert find(root, "ResumptionToken") is None
    assert rows_of(root)[0] == expected_row(25)


async def test_key_without_analytics_permission_is_unauthorized(start, session):
    """analytics_keys: another accepted key gets UNAUTHORIZED for reports, and uses no quota."""
    state = make_state(analytics_keys={ANALYTICS_KEY})
    base = await start(state)
    response, _ = await get(session, base + REPORTS, {"path": REPORT}, JSON)
    assert response.status == 400
    error = only_error(await response.json())
    assert error["errorCode"] == "UNAUTHORIZED"
    assert error["errorMessage"] == "API-key not defined or not configured to allow this API."
    assert state.remaining == state.daily_quota
    response, _ = await get(
        session, base + REPORTS, {"path": REPORT}, {"Authorization": f"apikey {ANALYTICS_KEY}"}
    )
    assert response.status == 200
    response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": ON_LOAN.barcode})
    assert response.status == 302  # the key still reads items


async def test_every_key_reads_reports_by_default(base, session):
    response, _ = await get(
        session, base + REPORTS, {"path": REPORT}, {"Authorization": f"apikey {ANALYTICS_KEY}"}
    )
    assert response.status == 200
    response, _ = await get(
        session, base + REPORTS, {"path": REPORT}, {"Authorization": "apikey nope"}
    )
    assert response.status == 400


async def test_report_rows_are_the_ones_the_run_started_with(base, session, state):
    """Changing or replacing a report does not change a run already started."""
    _, body = await get(session, base + REPORTS, {"path": REPORT})
    token = find(ET.fromstring(body), "ResumptionToken").text
    del state.reports[REPORT].rows[25:]
    state.add_report(REPORT, HEADINGS, [])
    _, body = await get(session, base + REPORTS, {"token": token})
    assert len(rows_of(ET.fromstring(body))) == 25


# --- seeding reports --------------------------------------------------------------------------


def test_add_report_refuses_rows_wider_than_the_headings():
    with pytest.raises(ValueError, match="row 1 has 2 cells"):
        AlmaState().add_report("/p", [("", "A")], [["1", "2"]])


@pytest.mark.parametrize(("delimiter", "encoding"), [(",", "utf-8-sig"), ("\t", "utf-16")])
def test_load_report_from_an_analytics_export(tmp_path, delimiter, encoding):
    """The headers become headings (usual table headings), cells are kept, empty ones empty."""
    export = tmp_path / "report.csv"
    lines = [
        [
            "MMS Id",
            "Holding Id",
            "Physical Item Id",
            "Barcode",
            "Temporary Location Code",
            "Due::Date",
        ],
        ["991", "221", "231", "+B1", "", "2024-01-02"],
        ["992", "222", "232", "B2", "res"],
    ]
    export.write_text(
        "\r\n".join(delimiter.join(line) for line in lines) + "\r\n", encoding=encoding
    )
    state = AlmaState()
    assert load_report(state, "/shared/U/R", export) == 2
    report = state.reports["/shared/U/R"]
    assert report.headings == [
        ("Bibliographic Details", "MMS Id"),
        ("Holding Details", "Holding Id"),
        ("Physical Item Details", "Physical Item Id"),
        ("Physical Item Details", "Barcode"),
        ("Temporary Location", "Temporary Location Code"),
        ("Due", "Date"),
    ]
    assert report.rows == [
        ["991", "221", "231", "+B1", "", "2024-01-02"],
        ["992", "222", "232", "B2", "res", ""],
    ]
    assert report.still_loading == 0


@pytest.fixture
def standalone(tmp_path):
    """`python -m simulators.alma --report PATH=CSV --analytics-key K` on a free port."""
    export = tmp_path / "items.csv"
    export.write_text(
        "MMS Id,Holding Id,Physical Item Id,Barcode,Library Code,Location Code\n"
        "991000000106421,221000000106421,231000000106421,+A1,MAIN,stacks\n",
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
            "--api-key",
            "sim-key",
            "--analytics-key",
            "ana-key",
            "--items-csv",
            str(export),
            "--report",
            f"/shared/U/Reports/Loans={export}",
            "--report-still-loading",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process.stdout.readline(), process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


async def test_standalone_serves_reports_and_barcodes(standalone):
    line, process = standalone
    match = re.match(r"Alma simulator listening on (http://127\.0\.0\.1:\d+) ", line)
    assert match, f"unexpected first line {line!r}"
    assert "(1 items, 0 users, 0 desks) and 1 Analytics report(s)" in line
    base = match.group(1)
    async with aiohttp.ClientSession() as session:
        ana = {"Authorization": "apikey ana-key"}
        response, _ = await get(
            session,
            base + REPORTS,
            {"path": "/shared/U/Reports/Loans"},
            {"Authorization": "apikey sim-key"},
        )
        assert response.status == 400  # sim-key has no Analytics permission
        _, body = await get(session, base + REPORTS, {"path": "/shared/U/Reports/Loans"}, ana)
        root = ET.fromstring(body)
        assert rows_of(root) == []  # still loading
        _, body = await get(
            session, base + REPORTS, {"token": find(root, "ResumptionToken").text}, ana
        )
        assert rows_of(ET.fromstring(body)) == [
            {
                "Column0": "0",
                "Column1": "991000000106421",
                "Column2": "221000000106421",
                "Column3": "231000000106421",
                "Column4": "+A1",
                "Column5": "MAIN",
                "Column6": "stacks",
            }
        ]
        response, _ = await get(session, f"{base}/almaws/v1/items", {"item_barcode": "+A1"}, ana)
        assert response.status == 302
    process.terminate()
    assert process.wait(timeout=10) == 0


@pytest.mark.parametrize("value", ["no-equals-sign", "=file.csv", "/shared/p="])
def test_standalone_refuses_a_malformed_report_option(value):
    result = subprocess.run(
        [sys.executable, "-m", "simulators.alma", "--report", value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--report must look like" in result.stderr


def test_standalone_refuses_an_unreadable_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "simulators.alma", "--report", f"/p={tmp_path / 'none.csv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("alma simulator: cannot load seed files: [Errno 2]")


async def test_concurrent_first_calls_get_distinct_tokens(base, session, state):
    """Ten runs started together: ten tokens, ten cursors."""
    answers = await asyncio.gather(
        *(get(session, base + REPORTS, {"path": REPORT}) for _ in range(10))
    )
    tokens = {find(ET.fromstring(body), "ResumptionToken").text for _, body in answers}
    assert len(tokens) == 10
    assert set(state.report_runs) == tokens
