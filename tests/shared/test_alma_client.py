"""alma.AlmaClient, the one Alma client: requests on the wire, every answer shape of alma.md mapped
to one exception tree, transport failures, redirects, the remaining-quota header, and the privacy
of user lookups. Against small aiohttp servers and the Alma simulator on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import alma
from alma import AlmaClient, parse_body
from simulators.alma import AlmaState, AlmaUser, create_app

KEY = "l8xx-secret-key"
ITEM_PATH = "/almaws/v1/bibs/991/holdings/221/items/231"
PATRON, BARCODE, EMAIL = "G00000001", "22222000000001", "jane.doe@example.edu"


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
    (400, "application/json", json.dumps({"web_service_result": json.loads(error_json("401872", "Desk X is not valid."))}),
     alma.AlmaRequestError, "401872", "Desk X is not valid."),
    (429, "application/json", error_json("PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),
     alma.AlmaRateLimited, "PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),
    (429, "text/plain", "Too Many Requests", alma.AlmaRateLimited, "HTTP 429", "Too Many Requests"),
    (429, "application/json", error_json("DAILY_THRESHOLD", "Daily threshold reached"),
     alma.AlmaDailyQuotaExceeded, "DAILY_THRESHOLD", "Daily threshold reached"),
    (400, "application/xml", XML_ERROR.replace("401872", "DAILY_THRESHOLD"),
     alma.AlmaDailyQuotaExceeded, "DAILY_THRESHOLD", "Circulation desk X is not valid for library MAIN."),
    (400, "application/json", error_json("UNAUTHORIZED", "API-key not defined or not configured to allow this API."),
     alma.AlmaUnauthorized, "UNAUTHORIZED", "API-key not defined or not configured to allow this API."),
    (403, "application/json", "{}", alma.AlmaUnauthorized, "HTTP 403", "HTTP 403 without an error message"),
    (500, "application/json", error_json("INTERNAL_SERVER_ERROR", "Internal error", single=True),
     alma.AlmaServerError, "INTERNAL_SERVER_ERROR", "Internal error"),
    (502, "text/plain", "Bad Gateway", alma.AlmaServerError, "HTTP 502", "Bad Gateway"),
    (503, "text/html", "<html><head><title>503</title></head><body><h1>Service Unavailable</h1></body></html>",
     alma.AlmaServerError, "HTTP 503", "503 Service Unavailable"),
    (504, "text/plain", "", alma.AlmaServerError, "HTTP 504", "HTTP 504 without an error message"),
    (200, "application/json", error_json("401666", "Item is not loanable", as_string=True),
     alma.AlmaUnexpectedResponse, "401666", "Item is not loanable"),
    (200, "application/json", json.dumps({"link": "x"}), alma.AlmaUnexpectedResponse, "HTTP 200", "200 without item_data"),
    (200, "text/plain", "OK", alma.AlmaUnexpectedResponse, "HTTP 200", "200 without an item object"),
    (404, "application/json", error_json("401689", "No items found for barcode"), alma.AlmaNotFound, "401689",
     "No items found for barcode"),
]


async def canned_server(aiohttp_server: Any, status: int, content_type: str, body: str, seen: list[web.Request]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(status=status, text=body, content_type=content_type, headers={"X-Exl-Api-Remaining": "4242"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app)


def base_of(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


async def scan(base_url: str, **kwargs: Any) -> alma.AlmaResponse:
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(base_url, KEY, session, **kwargs)
        return await client.scan_in("991", "221", "231", library="MAIN", circ_desk="DEFAULT_CIRC_DESK")


async def get_user(base_url: str, primary_id: str = PATRON, **kwargs: Any) -> alma.AlmaResponse:
    async with aiohttp.ClientSession() as session:
        return await AlmaClient(base_url, KEY, session, **kwargs).get_user(primary_id)


# -- scan-in ------------------------------------------------------------------------------------

async def test_scan_in_request_on_the_wire(aiohttp_server: Any) -> None:
    """POST to the item path with op/library/circ_desk/register_in_house_use=false, key only in the header."""
    seen: list[web.Request] = []
    server = await canned_server(aiohttp_server, 200, "application/json", json.dumps(ITEM), seen)
    base = base_of(server)
    response = await scan(base)
    (request,) = seen
    assert request.method == "POST"
    assert request.path == ITEM_PATH
    assert dict(request.query) == {"op": "scan", "library": "MAIN", "circ_desk": "DEFAULT_CIRC_DESK", "register_in_house_use": "false"}
    assert request.headers["Authorization"] == f"apikey {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert (response.status, response.body, response.remaining) == (200, ITEM, 4242)
    assert response.url == f"{base}{ITEM_PATH}?op=scan&library=MAIN&circ_desk=DEFAULT_CIRC_DESK&register_in_house_use=false"
    assert KEY not in response.url


@pytest.mark.parametrize("suffix", ["", "/", "/almaws/v1", "/almaws/v1/"])
async def test_base_url_with_or_without_the_api_path(aiohttp_server: Any, suffix: str) -> None:
    """The region's host or the API root itself: /almaws/v1 is never doubled."""
    seen: list[web.Request] = []
    server = await canned_server(aiohttp_server, 200, "application/json", json.dumps(ITEM), seen)
    await scan(base_of(server) + suffix)
    assert [r.path for r in seen] == [ITEM_PATH]


async def test_ids_stay_one_path_segment(aiohttp_server: Any) -> None:
    """An id with '/' or '?' (a damaged spreadsheet cell) is sent quoted, inside its own segment."""
    seen: list[web.Request] = []
    server = await canned_server(aiohttp_server, 200, "application/json", json.dumps(ITEM), seen)
    async with aiohttp.ClientSession() as session:
        await AlmaClient(base_of(server), KEY, session).scan_in("99/1", "221?x=1", "231", library="MAIN", circ_desk="D")
    (request,) = seen
    assert request.raw_path.startswith("/almaws/v1/bibs/99%2F1/holdings/221%3Fx=1/items/231?")
    assert request.query["op"] == "scan" and "x" not in request.query


@pytest.mark.parametrize(("status", "content_type", "body", "error", "code", "message"), CASES)
async def test_error_shapes(
    aiohttp_server: Any, status: int, content_type: str, body: str, error: type[alma.AlmaError], code: str, message: str
) -> None:
    """Every error body of alma.md (list, single object, string errorsExist, web_service_result
    wrapper, XML, text, HTML) maps to one typed error carrying status, code, URL and remaining."""
    server = await canned_server(aiohttp_server, status, content_type, body, [])
    with pytest.raises(error) as caught:
        await scan(base_of(server))
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code, caught.value.message, str(caught.value)) == (status, code, message, message)
    assert caught.value.remaining == 4242
    assert caught.value.url.startswith(f"{base_of(server)}{ITEM_PATH}?op=scan&")
    assert KEY not in caught.value.url and KEY not in str(caught.value)


@pytest.mark.parametrize("body", ["404: Not Found", "<html><body>Not Found</body></html>", ""])
async def test_a_404_without_an_alma_error_says_no_api_is_at_that_path(aiohttp_server: Any, body: str) -> None:
    """A base_url with a wrong path answers every request 404 and no Alma error list: not a bad
    item, so not an error of one request. It is raised as the configured URL's fault (AlmaUnauthorized,
    key_refused False), which stops a discharge run (exit 2 in libcal_passagepoint)."""
    server = await canned_server(aiohttp_server, 404, "text/plain", body, [])
    base = base_of(server) + "/almaws"
    with pytest.raises(alma.AlmaUnauthorized) as caught:
        await scan(base)
    assert not caught.value.key_refused and caught.value.status == 404
    assert str(caught.value) == (f"base_url {base} answered HTTP 404 without an Alma error: no Alma API is at that "
                                 "path; check base_url (e.g. https://api-na.hosted.exlibrisgroup.com)")


def test_the_tree() -> None:
    """Every exception is an AlmaError; the transient ones share AlmaUnavailable; not found is a request error."""
    for name in alma.errors.__all__:
        assert issubclass(getattr(alma, name), alma.AlmaError)
    assert {c.__name__ for c in alma.AlmaUnavailable.__subclasses__()} == {"AlmaNotSent", "AlmaNoAnswer", "AlmaServerError"}
    assert issubclass(alma.AlmaNotFound, alma.AlmaRequestError)


async def test_several_errors_are_all_kept(aiohttp_server: Any) -> None:
    """An errorList of several errors: code and message of the first, every pair in ``errors``."""
    body = json.dumps({"errorsExist": True, "errorList": {"error": [
        {"errorCode": "401871", "errorMessage": "first"}, {"errorCode": "401872", "errorMessage": "second"}]}})
    server = await canned_server(aiohttp_server, 400, "application/json", body, [])
    with pytest.raises(alma.AlmaRequestError) as caught:
        await scan(base_of(server))
    assert (caught.value.code, caught.value.message) == ("401871", "first")
    assert caught.value.errors == (("401871", "first"), ("401872", "second"))
    assert caught.value.response == json.loads(body)


async def test_connection_refused_is_not_sent(unused_tcp_port: int) -> None:
    """Nothing listening: AlmaNotSent (safe to retry), with a code and message a person can read."""
    with pytest.raises(alma.AlmaNotSent) as caught:
        await scan(f"http://127.0.0.1:{unused_tcp_port}")
    assert caught.value.code == "CANNOT_CONNECT" and caught.value.status is None
    assert caught.value.message.startswith(f"cannot connect to http://127.0.0.1:{unused_tcp_port}: ")
    assert caught.value.url.startswith(f"http://127.0.0.1:{unused_tcp_port}{ITEM_PATH}?op=scan&")


async def test_connect_timeout_is_not_sent(aiohttp_server: Any) -> None:
    """No connection within half the timeout (here: the only pooled connection is busy): AlmaNotSent
    CONNECT_TIMEOUT, and the scan-in never reached Alma, unlike a timeout waiting for the answer."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY}, hang_seconds=3)
    state.inject_failure("timeout")
    base = base_of(await aiohttp_server(create_app(state)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_connection:
        holder = AlmaClient(base, KEY, one_connection, timeout=5)
        client = AlmaClient(base, KEY, one_connection, timeout=1)
        hanging = asyncio.ensure_future(holder.scan_in("991", "221", "231", library="MAIN", circ_desk="D"))
        await asyncio.sleep(0.2)
        with pytest.raises(alma.AlmaNotSent) as caught:
            await client.scan_in("992", "222", "232", library="MAIN", circ_desk="D")
        hanging.cancel()
    assert caught.value.code == "CONNECT_TIMEOUT"
    assert caught.value.message == f"cannot connect to {base}: no connection within 0.5 s"
    assert [r["path"] for r in state.requests] == [ITEM_PATH]


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
    base = base_of(server)
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
        await scan(base_of(server))
    assert caught.value.message == "HTTP 302 redirect to (no Location header), not followed"
    assert caught.value.location is None


async def test_timeout_is_no_answer(aiohttp_server: Any) -> None:
    """An answer later than the timeout: AlmaNoAnswer with code TIMEOUT."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response(ITEM)

    app = web.Application()
    app.router.add_post(ITEM_PATH, slow)
    server = await aiohttp_server(app)
    with pytest.raises(alma.AlmaNoAnswer) as caught:
        await scan(base_of(server), timeout=0.2)
    assert (caught.value.code, caught.value.message) == ("TIMEOUT", "no answer within 0.2 s")


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
        await scan(base_of(server))
    assert caught.value.code == "CONNECTION_LOST"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("page", ["<!DOCTYPE html><html><body>Please sign in</body></html>",
                                  '<?xml version="1.0"?><html><body>Unauthorized</body></html>'])
async def test_an_html_401_names_the_url_setting_not_the_key(aiohttp_server: Any, status: int, page: str) -> None:
    """A base URL on the institution's Alma host (a login page) instead of the API gateway: the
    message names the setting and its value, and ``key_refused`` is False."""
    server = await canned_server(aiohttp_server, status, "text/html", page, [])
    with pytest.raises(alma.AlmaUnauthorized) as caught:
        await scan(base_of(server))
    assert caught.value.key_refused is False and caught.value.code == f"HTTP {status}"
    assert caught.value.message == (
        f"base_url {base_of(server)} answered HTTP {status} with an HTML page, not an API error: it is probably "
        "the institution's Alma host; use the API gateway, e.g. https://api-na.hosted.exlibrisgroup.com")


async def test_an_alma_unauthorized_answer_is_a_refused_key(aiohttp_server: Any) -> None:
    """The simulator's UNAUTHORIZED answer to a wrong key: key_refused, Alma's own message."""
    state = AlmaState(api_keys={"the-right-key"})
    server = await aiohttp_server(create_app(state))
    with pytest.raises(alma.AlmaUnauthorized) as caught:
        await scan(base_of(server))
    assert caught.value.key_refused is True
    assert (caught.value.code, caught.value.message) == ("UNAUTHORIZED", "API-key not defined or not configured to allow this API.")


def test_repr_shows_the_api_root_never_the_key() -> None:
    """A client in a log line or a traceback shows where it talks to, not its key."""
    client = AlmaClient("https://api-eu.hosted.exlibrisgroup.com/", KEY, None)  # type: ignore[arg-type]
    assert repr(client) == "AlmaClient('https://api-eu.hosted.exlibrisgroup.com/almaws/v1')"


# -- users --------------------------------------------------------------------------------------

@pytest.fixture
async def users(aiohttp_server: Any) -> AsyncIterator[tuple[AlmaState, AlmaClient]]:
    """The Alma simulator with one user, and a client for its zone."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY, "zone-two"}, hang_seconds=2)
    state.add_user(AlmaUser(primary_id=PATRON, barcode=BARCODE, user_group="UGRD", user_group_desc="Undergraduate",
                            first_name="Jane", last_name="Doe", email=EMAIL, api_key=KEY))
    server = await aiohttp_server(create_app(state))
    async with aiohttp.ClientSession() as session:
        yield state, AlmaClient(base_of(server), KEY, session, timeout=1)


def assert_private(error: alma.AlmaError) -> None:
    """Nothing in what a log line could show names the patron, nor the key."""
    location = getattr(error, "location", None) or ""
    for shown in (str(error), error.message, error.url, location, repr(error.errors)):
        for secret in (PATRON, BARCODE, EMAIL, KEY):
            assert secret not in shown, (secret, shown)


async def test_get_user_on_the_wire(users: tuple[AlmaState, AlmaClient]) -> None:
    """GET users/{id}?user_id_type=all_unique&view=full, key in the header; the record and the remaining quota."""
    state, client = users
    response = await client.get_user(PATRON)
    assert response.body["primary_id"] == PATRON and response.remaining == state.remaining
    (request,) = state.requests
    assert (request["method"], request["path"], request["api_key"]) == ("GET", f"/almaws/v1/users/{PATRON}", KEY)
    assert response.url.endswith("/almaws/v1/users/[id]?user_id_type=all_unique&view=full")


async def test_a_user_id_is_one_quoted_path_segment(aiohttp_server: Any) -> None:
    """An id with '/', '+' or '?' cannot reach another path or add a parameter."""
    seen: list[web.Request] = []
    server = await canned_server(aiohttp_server, 200, "application/json", "{}", seen)
    await get_user(base_of(server), "a/b+c?d")
    assert seen[0].raw_path == "/almaws/v1/users/a%2Fb%2Bc%3Fd?user_id_type=all_unique&view=full"


@pytest.mark.parametrize("shape", ["plain", "single_error_object", "errors_exist_string"])
async def test_a_user_this_zone_does_not_know_is_not_found(users: tuple[AlmaState, AlmaClient], shape: str) -> None:
    """401861 in any body shape is AlmaNotFound, and the message does not repeat the id."""
    state, client = users
    if shape != "plain":
        state.inject_failure(shape)
    with pytest.raises(alma.AlmaNotFound) as caught:
        await client.get_user("G77777777")
    assert (caught.value.status, caught.value.code) == (400, "401861")
    assert caught.value.message == "User with identifier [id] was not found."
    assert "G77777777" not in caught.value.url + str(caught.value.errors)


async def test_200_with_errors_exist_and_a_not_found_code_is_not_found(aiohttp_server: Any) -> None:
    """A 200 whose body says errorsExist is decided by its code: 401890 is AlmaNotFound."""
    server = await canned_server(aiohttp_server, 200, "application/json",
                                 error_json("401890", f"User with identifier {PATRON} of type BARCODE was not found.", as_string=True), [])
    with pytest.raises(alma.AlmaNotFound) as caught:
        await get_user(base_of(server))
    assert (caught.value.status, caught.value.code) == (200, "401890")
    assert_private(caught.value)


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("429", alma.AlmaRateLimited, "PER_SECOND_THRESHOLD"),
        ("500", alma.AlmaServerError, "INTERNAL_SERVER_ERROR"),
        ("502_text", alma.AlmaServerError, "HTTP 502"),
        ("503_html", alma.AlmaServerError, "HTTP 503"),
        ("redirect", alma.AlmaRedirected, "REDIRECTED"),
        ("timeout", alma.AlmaNoAnswer, "TIMEOUT"),
    ],
)
async def test_user_lookup_failures_from_the_simulator(
    users: tuple[AlmaState, AlmaClient], kind: str, error: type[alma.AlmaError], code: str
) -> None:
    """Each injected failure is one typed error for one request (the client never retries nor
    follows), and nothing it says names the patron."""
    state, client = users
    state.inject_failure(kind)
    with pytest.raises(error) as caught:
        await client.get_user(PATRON)
    assert type(caught.value) is error and caught.value.code == code
    assert len(state.requests) == 1
    assert_private(caught.value)
    if kind == "redirect":
        assert caught.value.location is not None and caught.value.location.startswith("https://")
        assert caught.value.location.endswith("/almaws/v1/users/[id]?user_id_type=all_unique&view=full")
    if kind != "timeout":
        assert caught.value.remaining == state.remaining


async def test_a_dropped_user_lookup_is_sent_once_more_by_aiohttp_then_no_answer(users: tuple[AlmaState, AlmaClient]) -> None:
    """aiohttp itself re-sends an idempotent request (a GET, never the scan-in POST) once when the
    connection closes without an answer; dropped twice, the lookup is AlmaNoAnswer CONNECTION_LOST."""
    state, client = users
    state.inject_failure("disconnect")
    assert (await client.get_user(PATRON)).body["primary_id"] == PATRON
    assert [r["status"] for r in state.requests] == [None, 200]
    state.inject_failure("disconnect", count=2)
    with pytest.raises(alma.AlmaNoAnswer) as caught:
        await client.get_user(PATRON)
    assert caught.value.code == "CONNECTION_LOST" and len(state.requests) == 4
    assert_private(caught.value)


async def test_the_daily_quota_and_a_refused_key_on_a_user_lookup(users: tuple[AlmaState, AlmaClient]) -> None:
    """DAILY_THRESHOLD and UNAUTHORIZED are told apart by their codes, on any status."""
    state, client = users
    state.remaining = 0
    with pytest.raises(alma.AlmaDailyQuotaExceeded) as quota:
        await client.get_user(PATRON)
    assert (quota.value.status, quota.value.code, quota.value.remaining) == (429, "DAILY_THRESHOLD", 0)
    state.reset_daily_quota()
    state.api_keys = {"zone-two"}
    with pytest.raises(alma.AlmaUnauthorized) as refused:
        await client.get_user(PATRON)
    assert (refused.value.code, refused.value.key_refused) == ("UNAUTHORIZED", True)


async def test_alma_text_that_echoes_a_patron_is_quoted_scrubbed(aiohttp_server: Any) -> None:
    """An error message naming the user's id, barcode and e-mail address is quoted through excerpt();
    an id that is not id-shaped is still shown as [id]."""
    for primary_id in (PATRON, "jdoe"):
        message = f"General Error: user {primary_id} (barcode {BARCODE}, {EMAIL})"
        server = await canned_server(aiohttp_server, 400, "application/json", error_json("401652", message), [])
        with pytest.raises(alma.AlmaRequestError) as caught:
            await get_user(base_of(server), primary_id)
        assert caught.value.message == "General Error: user [id] (barcode [id], [email])"
        assert caught.value.errors == (("401652", "General Error: user [id] (barcode [id], [email])"),)
        assert primary_id not in caught.value.url


async def test_a_user_answer_that_is_not_a_record(aiohttp_server: Any) -> None:
    """A 200 that is not a JSON object: AlmaUnexpectedResponse, its text quoted scrubbed."""
    server = await canned_server(aiohttp_server, 200, "text/plain", f"user {PATRON} ok", [])
    with pytest.raises(alma.AlmaUnexpectedResponse) as caught:
        await get_user(base_of(server))
    assert caught.value.message == "HTTP 200 with a body that is not a JSON object: user [id] ok"


# -- the body parser ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "errors", "errors_exist", "plain"),
    [
        ('{"errorsExist": true, "errorList": {"error": [{"errorCode": "401861", "errorMessage": "User with identifier X was not found."}]}, "result": null}',
         (("401861", "User with identifier X was not found."),), True, ""),
        ('{"errorsExist": "true", "errorList": {"error": {"errorCode": "401890", "errorMessage": "User with identifier X of type Y was not found."}}}',
         (("401890", "User with identifier X of type Y was not found."),), True, ""),
        ("<web_service_result><errorsExist>true</errorsExist><errorList><error><errorCode>PER_SECOND_THRESHOLD</errorCode>"
         "<errorMessage>HTTP requests are more than allowed per second</errorMessage></error></errorList></web_service_result>",
         (("PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"),), True, ""),
        ('<ns2:web_service_result xmlns:ns2="x"><ns2:errorList><ns2:error><ns2:errorCode>1</ns2:errorCode>'
         "<ns2:errorMessage>a &amp; b</ns2:errorMessage></ns2:error><ns2:error><ns2:errorCode>2</ns2:errorCode>"
         "</ns2:error></ns2:errorList></ns2:web_service_result>", (("1", "a & b"), ("2", "")), False, ""),
        (error_json("1", "m", single=True), (("1", "m"),), True, ""),
        ('{"errorList": [{"errorCode": "1", "errorMessage": "m"}]}', (("1", "m"),), False, ""),
        ("{}", (), False, ""),
        ("[1, 2]", (), False, ""),
        ("", (), False, ""),
        ("Bad Gateway", (), False, "Bad Gateway"),
        ("<html><body>503 Service Unavailable</body></html>", (), False, "503 Service Unavailable"),
        ("<html><head><style>p {color: red}</style><script>var x = 1;</script></head><body>Gateway   Timeout &amp; more</body></html>",
         (), False, "Gateway Timeout & more"),
    ],
    ids=["json-list", "single-object-string-flag", "xml", "xml-prefixed-two-errors", "single", "error-list-as-list",
         "empty-object", "json-list-body", "empty", "text-plain", "html", "html-script-style"],
)
def test_parse_body(text: str, errors: tuple[tuple[str, str], ...], errors_exist: bool, plain: str) -> None:
    """Error codes and messages come out of every error shape Alma is known to send, and a page
    that is not Alma's comes out as one line of text."""
    parsed = parse_body(text)
    assert (parsed.errors, parsed.errors_exist, parsed.plain) == (errors, errors_exist, plain)


_CODE = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=20)
_MESSAGE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)


@given(st.lists(st.tuples(_CODE, _MESSAGE), min_size=1, max_size=4), st.sampled_from(["json", "wrapped", "xml"]))
def test_parse_body_reads_back_what_any_shape_carries(errors: list[tuple[str, str]], shape: str) -> None:
    """Whatever the codes and messages, each body shape gives them back in order."""
    from xml.sax.saxutils import escape

    listed = [{"errorCode": code, "errorMessage": message} for code, message in errors]
    body: Any = {"errorsExist": True, "errorList": {"error": listed if len(listed) > 1 else listed[0]}}
    if shape == "json":
        text = json.dumps(body)
    elif shape == "wrapped":
        text = json.dumps({"web_service_result": body})
    else:
        text = "<web_service_result><errorsExist>true</errorsExist><errorList>" + "".join(
            f"<error><errorCode>{escape(c)}</errorCode><errorMessage>{escape(m)}</errorMessage></error>" for c, m in errors
        ) + "</errorList></web_service_result>"
    parsed = parse_body(text)
    assert parsed.errors == tuple(errors) and parsed.errors_exist


@given(st.text(max_size=300))
def test_parse_body_never_fails(text: str) -> None:
    """Any text at all is read without an exception: a gateway may answer anything."""
    parsed = parse_body(text)
    assert isinstance(parsed.errors, tuple) and isinstance(parsed.plain, str)


async def test_item_by_barcode_reads_the_ids_from_the_302_and_gets_the_item(aiohttp_server: Any) -> None:
    """The barcode goes percent-encoded ('+' as %2B); the 302 is not followed by aiohttp (it would
    pass the caller's limiter): its ids come back, and get_item is the second call."""
    from simulators.alma import AlmaItem

    state = AlmaState(api_keys={KEY})
    state.add_item(AlmaItem("991", "221", "231", "+F20313804", "MAIN", "stacks"))
    server = await aiohttp_server(create_app(state))
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(str(server.make_url("")), KEY, session)
        ids = await client.item_by_barcode("+F20313804")
        assert ids == alma.ItemIds("991", "221", "231")
        assert state.requests[-1]["raw_query"] == "item_barcode=%2BF20313804"
        item = await client.get_item(ids)
        assert item.body["item_data"]["barcode"] == "+F20313804" and "additional_info" not in item.body
        with pytest.raises(alma.AlmaNotFound) as caught:
            await client.item_by_barcode("no such barcode")
    assert caught.value.code == "401689" and caught.value.message == "No items found for barcode no such barcode."
    assert len(state.requests) == 3


async def test_analytics_errors_are_told_apart_from_a_failing_server(aiohttp_server: Any) -> None:
    """An unknown path (a 500) is AlmaReportNotFound, not a transient server error; a call after the
    last page is AlmaNoMoreRows."""
    state = AlmaState(api_keys={KEY})
    state.add_report("/shared/U/Reports/r", [("T", "Barcode")], [["1"]])
    server = await aiohttp_server(create_app(state))
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(str(server.make_url("")), KEY, session)
        with pytest.raises(alma.AlmaReportNotFound) as missing:
            await client.analytics_report(path="/shared/U/Reports/none")
        page = await client.analytics_report(path="/shared/U/Reports/r")
        assert page.finished and page.rows == [{"Column1": "1"}] and page.token
        with pytest.raises(alma.AlmaNoMoreRows):
            await client.analytics_report(token=page.token)
    assert missing.value.status == 500 and not isinstance(missing.value, alma.AlmaUnavailable)
