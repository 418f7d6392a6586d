"""Simulator of STOPware PassagePoint REST API v2: login, visitors, pre-registrations, destinations.

Answers like the service described in ``/work/shared/reference/passagepoint.md`` (paths under
``/pp/api/v2``):

- ``POST auth/login`` with JSON ``{"username", "password"}`` -> ``{"token": "<base64>"}`` where the
  token is standard base64 of the JSON ``{"exp": <epoch milliseconds>, "username": "..."}`` (not a
  JWT). Later calls send it in the header ``token: <token>``. A token stops working when its
  ``exp`` passes (on the state's ``clock``), after ``expire_tokens()``, or if this server never
  issued it: all get 401.
- ``POST person/createVisitor`` takes its fields in the **query string** (``category``, default
  ``Visitor``; ``firstName``, ``lastName``, ``email``, ``mobilePhoneNo``, ``uniqueId``) and answers
  ``{"data": [{"id": <15-digit integer>}]}``. A ``uniqueId`` that already exists gets an HTTP error
  (``duplicate_status``, default 400) whose body contains ``ALREADY_EXIST_UNIQUE_ID``.
- ``GET person/byUniqueId?uniqueId=`` -> a bare JSON array of the visitors with that uniqueId
  (empty if none; may hold more than one), or ``{"data": [...]}`` with ``wrap_byuniqueid=True``
  (some versions wrap it).
- ``POST visit/createPreReg`` with JSON ``{"startTime", "endTime", "visitorId", "destination"}``;
  times are epoch **seconds as strings** -> ``{"data": [{"id": <15-digit integer>}]}``.
- ``GET visit/getDestinations`` lists the destinations that exist, in the shape chosen by
  ``destinations_shape`` (below): its real answer has never been seen.
- There is no endpoint to delete or update a pre-registration, and none is simulated.

Strict where the reference is uncertain (only what the original integration is known to have sent
is accepted, so that a client depending on more fails here rather than in production):

- ``auth/login`` and ``visit/createPreReg`` read their JSON body only with ``Content-Type:
  application/json`` (what the original sent: ``requests``' ``json=``); another type -> 415.
  Calls without a body (createVisitor, the GETs) work with or without that header: until
  October 2020 the original sent them with a misspelled ``Content Type`` header (no real
  Content-Type), and its commits from before that fix report it working.
- createVisitor: ``uniqueId`` is required like ``firstName``/``lastName`` (every known call sends
  it); ``category`` must be one of ``categories`` (default ``Student``, ``Faculty``, ``Staff``,
  ``Visitor``: the reference's examples), not any text; a query parameter other than the six
  fields (e.g. a misspelled ``mobilePhoneNumber``, which would silently be lost) -> 400.
- createPreReg: ``visitorId`` must be a string of digits as the original sends it
  (``"137505764541173"``): an integer is refused, not converted; a body field other than the four
  -> 400.
- createVisitor and byUniqueId refuse a query parameter given twice.
- paths are matched exactly: ``//pp/api/v2/...`` (a root ending in ``/`` joined to a path starting
  with ``/``) and a trailing ``/`` are 404.

Unverified (no public source; the simulator's choice, documented so clients do not depend on it):

- every error status and body except the ``ALREADY_EXIST_UNIQUE_ID`` marker; errors here are JSON
  ``{"error": "<CODE>", "message": "<text>"}``:
  bad login -> 401 ``INVALID_CREDENTIALS``; a login body that is not a JSON object -> 400
  ``BAD_REQUEST``; missing/undecodable/unknown/expired token -> 401 ``UNAUTHORIZED``;
  duplicate uniqueId -> ``duplicate_status`` (400; 409 is as plausible) ``ALREADY_EXIST_UNIQUE_ID``;
  a JSON body sent with another Content-Type -> 415 ``UNSUPPORTED_MEDIA_TYPE``;
  a query parameter given twice -> 400 ``BAD_REQUEST``;
  createVisitor without ``firstName``, ``lastName`` or ``uniqueId`` -> 400
  ``MISSING_REQUIRED_FIELD``; an unknown ``category`` -> 400 ``CATEGORY_NOT_FOUND``; an unknown
  query parameter -> 400 ``BAD_REQUEST``;
  byUniqueId without ``uniqueId`` -> 400 ``MISSING_REQUIRED_FIELD``;
  createPreReg: a body that is not a JSON object, or has a field other than the four -> 400
  ``BAD_REQUEST``; ``startTime``/``endTime`` not a string of digits -> 400 ``INVALID_TIME``;
  ``endTime`` not after ``startTime`` -> 400 ``INVALID_TIME``; ``visitorId`` not a string of
  digits -> 400 ``INVALID_VISITOR_ID``; unknown ``visitorId`` -> 400 ``VISITOR_NOT_FOUND``;
  unknown ``destination`` -> 400 ``DESTINATION_NOT_FOUND``;
- the visitor fields byUniqueId returns (the fields createVisitor received, plus ``id``);
- the getDestinations answer (see the next section);
- whether a second login invalidates earlier tokens (it does not here).

getDestinations shapes (``destinations_shape=`` or ``--destinations-shape``). The one public
integration configured this path but never called it, so **every shape is a guess**; none is
confirmed. A client must survive all of them without blocking pre-registrations (createPreReg
accepts the existing destinations whatever the shape):

- ``data-name`` (default): ``{"data": [{"id": 1, "name": "LibCal Gelman"}, ...]}``, guessed from
  the ``{"data": [...]}`` wrapping of the createVisitor and createPreReg answers;
- ``list-name``: a bare array ``[{"id": 1, "name": "LibCal Gelman"}, ...]``, like byUniqueId's;
- ``other-keys``: ``{"data": [{"destinationId": 1, "description": "LibCal Gelman"}, ...]}``: the
  display name under another key, and no ``name``/``id``;
- ``code-name``: ``{"data": [{"id": 1, "name": "DEST0001", "displayName": "LibCal Gelman"}, ...]}``:
  ``name`` holds a code, not the destination name createPreReg takes;
- ``empty``: ``{"data": []}`` although the destinations exist (a list filtered by permissions);
- ``not-json``: status 200 with an HTML page (``text/html``), as a web front end answers a path
  it does not route;
- ``error``: status 500 with a JSON body ``{"error": "INTERNAL_SERVER_ERROR", "message": ...}``;
- ``not-found``: status 404 with a JSON body ``{"error": "NOT_FOUND", "message": ...}``: this
  PassagePoint version has no such endpoint.
Every shape still checks the token first (401 as for any call).

Test hooks: ``add_visitor()`` (bypasses the uniqueId check, so duplicates can be seeded),
``visitors``, ``preregs``, ``expire_tokens()``, ``inject_failure(endpoint, kind, count=1,
applied=False)`` with endpoint ``login`` | ``createVisitor`` | ``byUniqueId`` | ``createPreReg`` |
``getDestinations`` and any kind of the shared vocabulary (``simulators._pipeline``: ``500`` (a JSON
500 body), ``502_text``, ``503_html``, ``gateway_timeout``, ``hang``, ``slow``, ``disconnect``); the
stalls last ``hang_seconds``, and ``applied=True`` makes the call take effect before the failure (a
lost response). Old names kept for callers that use them: ``timeout`` is ``hang``,
``timeout_after_apply`` is ``hang`` with ``applied=True``. ``requests`` and ``count(prefix)``;
``latency=(min, max)``; ``clock``.

Standalone: ``python -m simulators.passagepoint --port N [--destinations "LibCal Gelman,LibCal Eckles"]
[--destinations-shape SHAPE] [--categories "Student,Faculty,Staff,Visitor"] [--visitors-json FILE]``
binds 127.0.0.1 (``--port 0`` picks a free port) and prints its base URL; ``FILE`` is a JSON list of
``add_visitor`` keyword objects (``{"unique_id": "2222...", ...}``). A file that cannot be read: a
message on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from simulators._common import (
    Handler,
    TokenBook,
    load_json_list,
    repeated_parameters,
    run_standalone,
    standalone_parser,
)
from simulators._pipeline import FailureQueue, TokenService, simulator_pipeline

BASE = "/pp/api/v2"
ENDPOINTS = ("login", "createVisitor", "byUniqueId", "createPreReg", "getDestinations")
LEGACY_KINDS = {"timeout": ("hang", False), "timeout_after_apply": ("hang", True)}
VISITOR_FIELDS = ("category", "firstName", "lastName", "email", "mobilePhoneNo", "uniqueId")
REQUIRED_VISITOR_FIELDS = ("firstName", "lastName", "uniqueId")
PREREG_FIELDS = ("startTime", "endTime", "visitorId", "destination")
DEFAULT_CATEGORIES = ("Student", "Faculty", "Staff", "Visitor")
DESTINATIONS_SHAPES = (
    "data-name",
    "list-name",
    "other-keys",
    "code-name",
    "empty",
    "not-json",
    "error",
    "not-found",
)
NOT_JSON_PAGE = (
    "<!DOCTYPE html><html><head><title>PassagePoint</title></head>"
    "<body><p>Please sign in to continue.</p></body></html>"
)


class PassagePointState(TokenService):
    """Everything the PassagePoint simulator knows: account, tokens, visitors, pre-registrations."""

    def __init__(
        self,
        username: str = "svc",
        password: str = "pw",
        token_lifetime: int = 3600,
        latency: tuple[float, float] = (0.0, 0.0),
        destinations: list[str] | None = None,
        wrap_byuniqueid: bool = False,
        destinations_shape: str = "data-name",
        categories: list[str] | None = None,
        seed: int | None = 1,
        duplicate_status: int = 400,
        hang_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.username = username
        self.password = password
        self.token_lifetime = token_lifetime
        self.latency = latency
        self.destinations = list(
            destinations if destinations is not None else ["LibCal Gelman", "LibCal Eckles"]
        )
        self.wrap_byuniqueid = wrap_byuniqueid
        if destinations_shape not in DESTINATIONS_SHAPES:
            raise ValueError(
                f"unknown destinations shape {destinations_shape!r} "
                f"(known: {', '.join(DESTINATIONS_SHAPES)})"
            )
        self.destinations_shape = destinations_shape
        self.categories = list(categories if categories is not None else DEFAULT_CATEGORIES)
        self.rng = random.Random(seed)
        self.duplicate_status = duplicate_status
        self.hang_seconds = hang_seconds
        self.clock = clock
        self.sleep = sleep
        self.tokens = TokenBook()
        self.visitors: dict[int, dict[str, Any]] = {}
        self.preregs: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.failures = FailureQueue(targets=ENDPOINTS, legacy=LEGACY_KINDS)
        self._used_ids: set[int] = set()

    # -- test hooks -----------------------------------------------------------------------
    def add_visitor(
        self,
        unique_id: str,
        first_name: str = "Ada",
        last_name: str = "Lovelace",
        email: str = "ada@example.edu",
        category: str = "Student",
        mobile_phone_no: str | None = None,
    ) -> int:
        """Store a visitor directly (no duplicate check) and return its id."""
        fields = {
            "category": category,
            "firstName": first_name,
            "lastName": last_name,
            "email": email,
            "uniqueId": unique_id,
        }
        if mobile_phone_no is not None:
            fields["mobilePhoneNo"] = mobile_phone_no
        return self.store_visitor(fields)

    # -- behaviour ------------------------------------------------------------------------
    def issue_token(self) -> str:
        """A token for the service account expiring ``token_lifetime`` seconds from now."""
        exp_ms = int((self.clock() + self.token_lifetime) * 1000)
        payload = json.dumps({"exp": exp_ms, "username": self.username}, separators=(",", ":"))
        return self.tokens.issue(base64.b64encode(payload.encode()).decode(), exp_ms / 1000)

    def token_problem(self, token: str | None) -> str | None:
        """Why this ``token`` header is refused, or None when it is valid."""
        problem = self.tokens.problem(token, self.clock())
        return TOKEN_PROBLEMS[problem] if problem else None

    def new_id(self) -> int:
        """A fresh 15-digit id, unique across visitors and pre-registrations."""
        while True:
            candidate = self.rng.randint(10**14, 10**15 - 1)
            if candidate not in self._used_ids:
                self._used_ids.add(candidate)
                return candidate

    def store_visitor(self, fields: dict[str, str]) -> int:
        """Store a visitor with these API fields and return its new id."""
        visitor_id = self.new_id()
        self.visitors[visitor_id] = {**fields, "id": visitor_id}
        return visitor_id

    def by_unique_id(self, unique_id: str) -> list[dict[str, Any]]:
        """Visitors whose uniqueId equals ``unique_id``, oldest first."""
        return [v for v in self.visitors.values() if v.get("uniqueId") == unique_id]


STATE = web.AppKey("passagepoint_state", PassagePointState)
TOKEN_PROBLEMS = {"missing": "Missing token header", "unknown": "Invalid token", "expired": "Token expired"}


def error(status: int, code: str, message: str) -> web.Response:
    """A JSON error answer (the shape is the simulator's choice: unverified)."""
    return web.json_response({"error": code, "message": message}, status=status)


def _authorized(request: web.Request) -> web.Response | None:
    problem = request.app[STATE].token_problem(request.headers.get("token"))
    return error(401, "UNAUTHORIZED", problem) if problem else None


def _not_json_typed(request: web.Request) -> web.Response | None:
    """415 unless the body is declared ``application/json`` (the only type known to work)."""
    if request.content_type == "application/json":
        return None
    return error(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type must be application/json, got {request.headers.get('Content-Type', '')!r}",
    )


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None if it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _repeated(request: web.Request) -> web.Response | None:
    repeated = repeated_parameters(request)
    return error(400, "BAD_REQUEST", f"Parameter {repeated[0]} given more than once") if repeated else None


async def login(request: web.Request) -> web.Response:
    """POST auth/login: exchange the service account's credentials for a token."""
    state = request.app[STATE]
    refused = _not_json_typed(request)
    if refused:
        return refused
    body = await _json_object(request)
    if body is None:
        return error(400, "BAD_REQUEST", "Body must be a JSON object with username and password")
    if body.get("username") != state.username or body.get("password") != state.password:
        return error(401, "INVALID_CREDENTIALS", "Invalid username or password")
    return web.json_response({"token": state.issue_token()})


async def create_visitor(request: web.Request) -> web.Response:
    """POST person/createVisitor: fields come in the query string."""
    state = request.app[STATE]
    refused = _authorized(request) or _repeated(request)
    if refused:
        return refused
    query = request.query
    unknown = [name for name in query if name not in VISITOR_FIELDS]
    if unknown:
        return error(400, "BAD_REQUEST", f"Unknown parameter(s): {', '.join(unknown)}")
    for required in REQUIRED_VISITOR_FIELDS:
        if not query.get(required):
            return error(400, "MISSING_REQUIRED_FIELD", f"{required} is required")
    fields = {name: query[name] for name in VISITOR_FIELDS if name in query}
    fields.setdefault("category", "Visitor")
    if fields["category"] not in state.categories:
        return error(400, "CATEGORY_NOT_FOUND", f"No category named {fields['category']!r}")
    unique_id = fields.get("uniqueId")
    if unique_id and state.by_unique_id(unique_id):
        return error(
            state.duplicate_status,
            "ALREADY_EXIST_UNIQUE_ID",
            f"A person with uniqueId {unique_id} already exists",
        )
    return web.json_response({"data": [{"id": state.store_visitor(fields)}]})


async def by_unique_id(request: web.Request) -> web.Response:
    """GET person/byUniqueId: visitors with that uniqueId."""
    state = request.app[STATE]
    refused = _authorized(request) or _repeated(request)
    if refused:
        return refused
    unique_id = request.query.get("uniqueId")
    if not unique_id:
        return error(400, "MISSING_REQUIRED_FIELD", "uniqueId is required")
    visitors = state.by_unique_id(unique_id)
    return web.json_response({"data": visitors} if state.wrap_byuniqueid else visitors)


def _digit_string(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


async def create_prereg(request: web.Request) -> web.Response:
    """POST visit/createPreReg: pre-register a visitor at a destination for a time span."""
    state = request.app[STATE]
    refused = _authorized(request) or _not_json_typed(request)
    if refused:
        return refused
    body = await _json_object(request)
    if body is None:
        return error(400, "BAD_REQUEST", "Body must be a JSON object")
    unknown = [name for name in body if name not in PREREG_FIELDS]
    if unknown:
        return error(400, "BAD_REQUEST", f"Unknown field(s): {', '.join(unknown)}")
    start, end = _digit_string(body, "startTime"), _digit_string(body, "endTime")
    for name, value in (("startTime", start), ("endTime", end)):
        if value is None:
            return error(
                400,
                "INVALID_TIME",
                f"{name} must be epoch seconds as a string, got {body.get(name)!r}",
            )
    if end <= start:  # type: ignore[operator]
        return error(400, "INVALID_TIME", "endTime must be after startTime")
    visitor_id = body.get("visitorId")
    visitor_number = _digit_string(body, "visitorId")
    if visitor_number is None:
        return error(
            400,
            "INVALID_VISITOR_ID",
            f"visitorId must be the visitor's id as a string of digits, got {visitor_id!r}",
        )
    if visitor_number not in state.visitors:
        return error(400, "VISITOR_NOT_FOUND", f"No visitor with id {visitor_id!r}")
    destination = body.get("destination")
    if destination not in state.destinations:
        return error(400, "DESTINATION_NOT_FOUND", f"No destination named {destination!r}")
    prereg_id = state.new_id()
    state.preregs.append(
        {
            "id": prereg_id,
            "startTime": body["startTime"],
            "endTime": body["endTime"],
            "visitorId": visitor_id,
            "destination": destination,
        }
    )
    return web.json_response({"data": [{"id": prereg_id}]})


def destinations_answer(shape: str, destinations: list[str]) -> web.Response:
    """The getDestinations answer in one of the guessed ``DESTINATIONS_SHAPES``."""
    numbered = list(enumerate(destinations, start=1))
    if shape == "data-name":
        return web.json_response({"data": [{"id": n, "name": name} for n, name in numbered]})
    if shape == "list-name":
        return web.json_response([{"id": n, "name": name} for n, name in numbered])
    if shape == "other-keys":
        return web.json_response(
            {"data": [{"destinationId": n, "description": name} for n, name in numbered]}
        )
    if shape == "code-name":
        return web.json_response(
            {"data": [{"id": n, "name": f"DEST{n:04d}", "displayName": name} for n, name in numbered]}
        )
    if shape == "empty":
        return web.json_response({"data": []})
    if shape == "not-json":
        return web.Response(text=NOT_JSON_PAGE, content_type="text/html")
    if shape == "error":
        return error(500, "INTERNAL_SERVER_ERROR", "Could not list destinations")
    if shape == "not-found":
        return error(404, "NOT_FOUND", "No endpoint GET /pp/api/v2/visit/getDestinations")
    raise ValueError(f"unknown destinations shape {shape!r}")


async def get_destinations(request: web.Request) -> web.Response:
    """GET visit/getDestinations: the destinations that exist, in the configured (guessed) shape."""
    state = request.app[STATE]
    refused = _authorized(request)
    if refused:
        return refused
    return destinations_answer(state.destinations_shape, state.destinations)


ROUTES: dict[str, tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = {
    "login": ("POST", f"{BASE}/auth/login", login),
    "createVisitor": ("POST", f"{BASE}/person/createVisitor", create_visitor),
    "byUniqueId": ("GET", f"{BASE}/person/byUniqueId", by_unique_id),
    "createPreReg": ("POST", f"{BASE}/visit/createPreReg", create_prereg),
    "getDestinations": ("GET", f"{BASE}/visit/getDestinations", get_destinations),
}


def _server_error(request: web.Request, kind: str) -> web.Response:
    return error(500, "INTERNAL_SERVER_ERROR", "Unexpected server error")


def create_app(state: PassagePointState | None = None) -> web.Application:
    """The PassagePoint simulator as an aiohttp application; ``app[STATE]`` is its state."""
    endpoints: dict[Handler, str] = {handler: name for name, (_, _, handler) in ROUTES.items()}
    pipeline = simulator_pipeline(
        STATE,
        target=lambda request: endpoints.get(request.match_info.handler),
        answers={"500": _server_error},
    )
    app = web.Application(middlewares=[pipeline])
    app[STATE] = state or PassagePointState()
    for method, path, handler in ROUTES.values():
        app.router.add_route(method, path, handler)
    return app


def load_visitors(state: PassagePointState, path: str) -> int:
    """Add the visitors of a JSON file (a list of ``add_visitor`` keyword objects); return how many."""
    return load_json_list(path, "visitor", lambda visitor: state.add_visitor(**visitor))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_state(args: argparse.Namespace) -> PassagePointState:
    """A PassagePointState from parsed command-line options, with the visitors file's visitors."""
    state = PassagePointState(
        username=args.username,
        password=args.password,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        destinations=_names(args.destinations),
        wrap_byuniqueid=args.wrap_byuniqueid,
        destinations_shape=args.destinations_shape,
        categories=_names(args.categories),
        seed=args.seed,
        duplicate_status=args.duplicate_status,
    )
    if args.visitors_json:
        load_visitors(state, args.visitors_json)
    return state


def main(argv: list[str] | None = None) -> int:
    """Run the PassagePoint simulator standalone."""
    parser = standalone_parser("passagepoint", __doc__.splitlines()[0], port=2444)
    parser.add_argument(
        "--destinations",
        default="LibCal Gelman,LibCal Eckles",
        help="comma-separated destination names that exist",
    )
    parser.add_argument("--username", default="svc")
    parser.add_argument("--password", default="pw")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument(
        "--wrap-byuniqueid", action="store_true", help='answer byUniqueId as {"data": [...]}'
    )
    parser.add_argument(
        "--destinations-shape",
        choices=DESTINATIONS_SHAPES,
        default="data-name",
        help="how getDestinations answers (its real shape is unknown; see the module docstring)",
    )
    parser.add_argument(
        "--categories",
        default=",".join(DEFAULT_CATEGORIES),
        help="comma-separated visitor categories that exist",
    )
    parser.add_argument("--duplicate-status", type=int, default=400)
    parser.add_argument("--visitors-json", help="JSON list of add_visitor keyword objects")
    return run_standalone("PassagePoint", parser.parse_args(argv), build_state, create_app)


if __name__ == "__main__":
    sys.exit(main())
