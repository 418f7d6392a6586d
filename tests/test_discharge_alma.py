"""loan_discharge.alma: the scan-in request on the wire, every error shape of alma.md, the outcomes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loan_discharge import alma
from loan_discharge.alma import AlmaClient, parse_error_body, scan_outcome
from simulators.alma import SCAN_IN_EXAMPLE

EXAMPLE = json.loads(SCAN_IN_EXAMPLE)  # the recorded real answer, shared/reference/examples/alma_scan_in_200.json
KEY = "l8xx-secret-key"
ITEM_PATH = "/almaws/v1/bibs/991/holdings/221/items/231"


def error_json(code: str, message: str, *, single: bool = False, as_string: bool = False) -> str:
    error = {"errorCode": code, "errorMessage": message, "trackingId": "E01-1"}
    return json.dumps({
        "errorsExist": "true" if as_string else True,
        "errorList": {"error": error if single else [error]},
        "result": None,
    })


XML_ERROR = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><web_service_result xmlns="http://com/exlibris/urm/general/xmlbeans">'
    "<errorsExist>true</errorsExist><errorList><error><errorCode>401872</errorCode>"
    "<errorMessage>Circulation desk X is not valid for library MAIN.</errorMessage></error></errorList></web_service_result>"
)

ITEM = {
    "item_data": {"pid": "231", "base_status": {"value": "1", "desc": "Item in place"}, "process_type": {"value": "", "desc": None}},
    "additional_info": "Item's destination is: Reshelve to stacks. Request/Process Type: . Requester: . Requester ID: . Place in Queue: 0",
}

# status, content type, body -> exception class, code, message
CASES: list[tuple[int, str, str, type[alma.AlmaError], str, str]] = [
    (400, "application/json", error_json("40166411", "The parameter item_pid is invalid. Received: 231."),
     alma.AlmaRequestError, "40166411", "The parameter item_pid is invalid. Received: 231."),
    (400, "application/json", error_json("401688", "Search failed for Items with mmsId 991, holdings id 221.", single=True),
     alma.AlmaRequestError, "401688", "Search failed for Items with mmsId 991, holdings id 221."),
    (400, "application/json", error_json("402203", "Input parameters mmsId foobar is not valid.", as_string=True),
     alma.AlmaRequestError, "402203", "Input parameters mmsId foobar is not valid."),
    (400, "application/xml", XML_ERROR, alma.AlmaRequestError, "401872", "Circulation desk X is not valid for library MAIN."),
    (429, "application/json", error_json("PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),
     alma.AlmaRateLimited, "PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),
    (429, "application/json", error_json("DAILY_THRESHOLD", "Daily threshold reached"),
     alma.AlmaDailyQuotaExceeded, "DAILY_THRESHOLD", "Daily threshold reached"),
    (400, "application/json", error_json("UNAUTHORIZED", "API-key not defined or not configured to allow this API."),
     alma.AlmaUnauthorized, "UNAUTHORIZED", "API-key not defined or not configured to allow this API."),
    (500, "application/json", error_json("INTERNAL_SERVER_ERROR", "Internal error", single=True),
     alma.AlmaServerError, "INTERNAL_SERVER_ERROR", "Internal error"),
    (502, "text/plain", "Bad Gateway", alma.AlmaServerError, "HTTP 502", "Bad Gateway"),
    (503, "text/html", "<html><head><title>503</title></head><body><h1>Service Unavailable</h1></body></html>",
     alma.AlmaServerError, "HTTP 503", "503 Service Unavailable"),
    (200, "application/json", error_json("401666", "Item is not loanable", as_string=True),
     alma.AlmaUnexpectedResponse, "401666", "Item is not loanable"),
    (200, "application/json", json.dumps({"link": "x"}), alma.AlmaUnexpectedResponse, "HTTP 200", "200 without item_data"),
]


async def canned_server(aiohttp_server: Any, status: int, content_type: str, body: str, seen: list[web.Request]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(status=status, text=body, content_type=content_type, headers={"X-Exl-Api-Remaining": "4242"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app)


async def scan(base_url: str, **kwargs: Any) -> alma.ScanResponse:
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(base_url, KEY, session, **kwargs)
        return await client.scan_in("991", "221", "231", library="MAIN", circ_desk="DEFAULT_CIRC_DESK")


async def test_scan_in_request_on_the_wire(aiohttp_server: Any) -> None:
    """POST to the item path with op/library/circ_desk/register_in_house_use=false, key only in the header."""
    seen: list[web.Request] = []
    server = await canned_server(aiohttp_server, 200, "application/json", json.dumps(ITEM), seen)
    base = str(server.make_url("")).rstrip("/")
    response = await scan(base)
    (request,) = seen
    assert request.method == "POST"
    assert request.path == ITEM_PATH
    assert dict(request.query) == {"op": "scan", "library": "MAIN", "circ_desk": "DEFAULT_CIRC_DESK", "register_in_house_use": "false"}
    assert request.headers["Authorization"] == f"apikey {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert response.remaining == 4242
    assert response.url == f"{base}{ITEM_PATH}?op=scan&library=MAIN&circ_desk=DEFAULT_CIRC_DESK&register_in_house_use=false"
    assert KEY not in response.url


@pytest.mark.parametrize(("status", "content_type", "body", "error", "code", "message"), CASES)
async def test_error_shapes(
    aiohttp_server: Any, status: int, content_type: str, body: str, error: type[alma.AlmaError], code: str, message: str
) -> None:
    """Every error body of alma.md (list, single object, string errorsExist, XML, text, HTML) maps to a typed error."""
    server = await canned_server(aiohttp_server, status, content_type, body, [])
    with pytest.raises(error) as caught:
        await scan(str(server.make_url("")).rstrip("/"))
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, message)
    assert caught.value.remaining == 4242
    assert KEY not in caught.value.url and KEY not in str(caught.value)


async def test_connection_refused_is_not_sent(unused_tcp_port: int) -> None:
    """Nothing listening: AlmaNotSent (safe to retry), with a code and message a person can read."""
    with pytest.raises(alma.AlmaNotSent) as caught:
        await scan(f"http://127.0.0.1:{unused_tcp_port}")
    assert caught.value.code == "CANNOT_CONNECT"
    assert caught.value.message.startswith(f"cannot connect to http://127.0.0.1:{unused_tcp_port}: ")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target", ["same-server", "dead-host", "relative"])
async def test_redirect_is_not_followed_and_names_its_location(
    aiohttp_server: Any, unused_tcp_port: int, status: int, target: str
) -> None:
    """A 3xx is AlmaRedirected naming the Location: the POST is sent once, never re-sent as a GET
    or anywhere else, and a Location nobody answers at is not reported as 'cannot connect'."""
    seen: list[web.Request] = []
    locations = {
        "same-server": "{base}/almaws/v1/moved",
        "dead-host": f"http://127.0.0.1:{unused_tcp_port}/almaws/v1/moved",
        "relative": "/almaws/v1/moved",
    }

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        location = locations[target].format(base=str(request.url.origin()))
        return web.Response(status=status, text="moved", headers={"Location": location, "X-Exl-Api-Remaining": "77"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    with pytest.raises(alma.AlmaRedirected) as caught:
        await scan(base)
    expected = locations[target].format(base=base) if target != "relative" else f"{base}/almaws/v1/moved"
    assert (caught.value.status, caught.value.code, caught.value.location) == (status, "REDIRECTED", expected)
    assert caught.value.message == f"HTTP {status} redirect to {expected}, not followed"
    assert caught.value.remaining == 77
    assert [(r.method, r.path) for r in seen] == [("POST", ITEM_PATH)]


async def test_redirect_without_location_says_so(aiohttp_server: Any) -> None:
    """A 3xx without a Location header is still a redirect, and the message says it had none."""
    server = await canned_server(aiohttp_server, 302, "text/html", "<html>moved</html>", [])
    with pytest.raises(alma.AlmaRedirected) as caught:
        await scan(str(server.make_url("")).rstrip("/"))
    assert caught.value.message == "HTTP 302 redirect to (no Location header), not followed"
    assert caught.value.location is None


async def test_timeout_is_no_answer(aiohttp_server: Any) -> None:
    """An answer later than request_timeout: AlmaNoAnswer with code TIMEOUT."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response(ITEM)

    app = web.Application()
    app.router.add_post(ITEM_PATH, slow)
    server = await aiohttp_server(app)
    with pytest.raises(alma.AlmaNoAnswer) as caught:
        await scan(str(server.make_url("")).rstrip("/"), request_timeout=0.2)
    assert caught.value.code == "TIMEOUT"


async def test_dropped_connection_is_no_answer(aiohttp_server: Any) -> None:
    """The server closes the connection without answering: AlmaNoAnswer with code CONNECTION_LOST."""
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_post(ITEM_PATH, drop)
    server = await aiohttp_server(app)
    with pytest.raises(alma.AlmaNoAnswer) as caught:
        await scan(str(server.make_url("")).rstrip("/"))
    assert caught.value.code == "CONNECTION_LOST"


def with_state(process_type: str, base_status: str, info: str) -> dict[str, Any]:
    return {
        "item_data": {"base_status": {"value": base_status}, "process_type": {"value": process_type, "desc": None}},
        "additional_info": info,
    }


@pytest.mark.parametrize(
    ("item", "outcome"),
    [
        (with_state("", "1", "Item's destination is: Reshelve to rcppa RECAP."), alma.OUTCOME_RETURNED),
        (with_state("TRANSIT", "0", "Item's destination is: LAW."), alma.OUTCOME_TRANSIT),
        (with_state("HOLDSHELF", "0", "Item's destination is: On Hold Shelf."), alma.OUTCOME_HOLD_SHELF),
        (with_state("", "0", "Item's destination is: On Hold Shelf. Request/Process Type: Patron physical item request"), alma.OUTCOME_HOLD_SHELF),
        (with_state("WORK_ORDER_DEPARTMENT", "0", ""), alma.OUTCOME_WORK_ORDER),
        (with_state("LOAN", "0", ""), alma.OUTCOME_STILL_ON_LOAN),
        (with_state("MISSING", "0", ""), "not in place (missing)"),
    ],
)
def test_scan_outcome(item: dict[str, Any], outcome: str) -> None:
    """The outcome comes from process_type, base_status and additional_info, as alma.md describes."""
    assert scan_outcome(item) == outcome


def test_recorded_real_answer_is_returned_and_in_place() -> None:
    """The real recorded scan-in answer (examples/alma_scan_in_200.json) reads as returned and in place."""
    assert scan_outcome(EXAMPLE) == alma.OUTCOME_RETURNED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (error_json("1", "m", single=True), ("1", "m")),
        ("{}", (None, None)),
        ("", (None, None)),
        ("<html><body>Gateway   Timeout</body></html>", (None, "Gateway Timeout")),
    ],
)
def test_parse_error_body(text: str, expected: tuple[str | None, str | None]) -> None:
    """Code and message come out of every body shape, or None when there is none."""
    assert parse_error_body(text)[:2] == expected
