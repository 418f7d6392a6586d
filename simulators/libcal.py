"""Simulator of Springshare LibCal API 1.1: OAuth client-credentials token and space bookings.

Answers like the real service described in ``/work/shared/reference/libcal.md``:

- ``POST /1.1/oauth/token`` (also ``/api/1.1/oauth/token``) takes a form-encoded or a JSON body
  with ``client_id``, ``client_secret`` and ``grant_type=client_credentials`` and answers
  ``{"access_token", "expires_in", "token_type": "Bearer", "scope"}``.
  A ``grant_type`` other than ``client_credentials`` gets 400 ``{"error": "Grant type not supported"}``;
  wrong credentials get 400 ``{"error": "The client credentials are invalid"}``.
  With ``invalid_client_quirk=True`` wrong credentials instead get status **200** with
  ``{"error": "invalid_client", "error_description": "The client credentials are invalid"}``, as
  some deployments do (so clients must look for an ``error`` key, not only the status).
- Other calls need ``Authorization: Bearer <token>``. A token lives ``token_lifetime`` seconds on
  the state's clock; an expired, revoked (``expire_tokens()``) or unknown token gets 401. No refresh
  tokens exist.
- ``GET /1.1/space/bookings`` (also ``/api/1.1/space/bookings``) answers a bare JSON array of rows.
  Parameters: ``lid``, ``cid``, ``eid``, ``email`` filters; ``date`` (``YYYY-MM-DD``, default today
  in the library's time zone; a past date is ignored and today is used, as the real API documents:
  ``ignore_past_dates=False`` turns that off);
  ``days`` 0-365 (default 0; the window is ``date`` .. ``date + days`` inclusive, on the row's
  local ``fromDate`` date); ``limit`` 1-500 (default 20); ``page`` from 1; ``formAnswers=1`` to
  include custom answers as top-level ``q<question id>`` keys (absent otherwise);
  ``include_cancel`` (default 1: cancelled rows), ``include_tentative`` (default 1: ``Mediated
  Tentative``), ``include_denied`` (default 0: ``Mediated Denied``), each switched by ``1``/``0``.
  Rows are ordered by ``fromDate`` then row ``id``; page ``n`` holds rows ``(n-1)*limit .. n*limit``.
  A booking for several seats appears as several rows sharing one ``bookId`` (distinct row ``id``).
  Cancelled rows carry a cancelled status and ``"cancelled": "<ISO timestamp>"``.
  Dates are ISO 8601 with the library's local offset (e.g. ``2026-11-22T13:15:00-05:00``).
- Bad ``date`` -> 400 ``text/plain`` ``invalid "date" value``; bad ``page`` (not an integer or < 1)
  -> 400 ``text/plain`` ``invalid "page" value, must be >= 1`` (both exactly as the reference).
- ``GET /1.1/space/booking/{id[,id]}`` returns the rows of those ``bookId``s; cancelled bookings
  return no data (the reference quotes "Cancelled bookings do not return data"); ``formAnswers=1``
  works there as on ``/space/bookings``.

Strict where the reference is uncertain (the simulator accepts only what is confirmed, so that a
client that depends on more fails here rather than in production):

- only ``formAnswers`` (the spelling every public production client sends) turns on custom
  answers, and only with the value ``1``. ``form_answers`` is ignored like any unknown parameter,
  so rows come back without ``q<id>`` keys: whether LibCal honours that spelling is unverified.
- ``formAnswers`` and the ``include_*`` switches take ``1`` or ``0``; any other value
  (``true``, ``yes``, ...) is ignored and the default applies.
- ``include_cancel`` defaults to 1 as the spec says, but that default is unverified:
  ``include_cancel_default=False`` (``--include-cancel-default 0``) makes the simulator leave
  cancelled rows out unless ``include_cancel=1`` is sent, to show that a client sends it.
- ``date`` must be exactly ``YYYY-MM-DD`` in ASCII digits (``2026-W47-1`` and ``20261122`` are
  refused although Python's ``date.fromisoformat`` reads them); ``page``, ``limit``, ``days``,
  ``lid``, ``cid`` and ``eid`` must be plain decimal integers (no ``+``, spaces or ``_``). A
  parameter that is sent must be valid: an empty ``date=``, ``limit=``, ``lid=`` ... is a 400
  like any other bad value, never "use the default" or "no filter".
  A non-integer ``lid``/``cid``/``eid`` (``8827,10332`` included) -> 400 text/plain
  ``invalid "lid" value`` (message unverified) instead of silently dropping the filter.
- ``email`` matches exactly (case included): case-insensitive matching is unverified; an empty
  ``email=`` -> 400 ``invalid "email" value``.
- a parameter given twice -> 400 text/plain ``parameter "lid" given more than once``
  (unverified: PHP would silently keep the last one, this server's framework the first).
- ``Authorization`` must use the scheme spelled ``Bearer``, as the reference writes it.
- the token endpoint reads ``application/x-www-form-urlencoded`` and ``application/json``
  bodies only (the two the reference confirms): a multipart form, a body of another type or
  credentials in the query string are not read, so the answer is 400 ``Grant type not supported``.

Unverified (no public source; chosen here and kept simple):

- the 401 bodies: modelled on bshaffer/oauth2-server-php, which the error messages above come from:
  no token -> 401 ``{"error": "invalid_request", "error_description": "The access token was not found"}``,
  unknown -> ``{"error": "invalid_token", "error_description": "The access token provided is invalid"}``,
  expired/revoked -> ``{"error": "invalid_token", "error_description": "The access token provided has expired"}``;
- ``days`` outside 0-365 or not an integer -> 400 text/plain ``invalid "days" value``; ``limit``
  outside 1-500 or not an integer -> 400 text/plain ``invalid "limit" value``;
- which of grant type and credentials is checked first (grant type here);
- the seat rows' other fields (they repeat the booking's fields; only ``id`` differs);
- the body of a server error: the injected ``500`` answers text/html
  ``<html><body><h1>500 Internal Server Error</h1></body></html>`` (a web server's page, not JSON).

Test hooks: ``expire_tokens()``, ``requests`` (one dict per request received: ``method``,
``path``, ``query`` (first value of each parameter), ``params`` (every ``(name, value)`` pair as
sent, in order), ``raw_query`` (the query string as received), ``status``, ``failure``),
``count(prefix)``, ``latency=(min, max)`` seconds slept per request, ``clock`` (epoch seconds) and
``today`` to pin time, ``inject_failure(endpoint, kind, count=1, applied=False)`` with endpoint
``token`` | ``bookings`` | ``booking`` and any kind of the shared vocabulary (``simulators._pipeline``:
``500``, ``502_text``, ``503_html``, ``gateway_timeout``, ``hang``, ``slow``, ``disconnect``); the
stalls last ``hang_seconds``. ``timeout`` is an old name of ``hang``, kept for callers that use it.

Not simulated: ``GET /1.1/space/bookings/updates`` and the ``check_in_status``/``internal_notes``/
``include_remote`` parameters (accepted and ignored); no rate limit (none is documented).

Standalone: ``python -m simulators.libcal --port N [--bookings-json FILE] [--latency 0.2-0.2]``
binds 127.0.0.1 (``--port 0`` picks a free port) and prints its base URL. ``FILE`` is a JSON list
of ``add_booking`` keyword objects, e.g. ``{"book_id": "cs_1", "lid": 8827, "from_date": "...",
"to_date": "...", "primary_id": "G1", "seats": 2}``; an extra ``"cancel": "Cancelled by User"``
cancels that booking after adding it. A file that cannot be read: a message on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, tzinfo
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

SCOPE = "cal_r ev_r ms_r rm_r sp_r sp_w h_r"
CANCELLED_STATUSES = (
    "Cancelled by User",
    "Cancelled by System",
    "Cancelled by Admin",
    "Cancelled",
)
STATUSES = (
    "Confirmed",
    "Confirmed (Payment Pending)",
    "Mediated Tentative",
    "Mediated Approved",
    "Mediated Denied",
    *CANCELLED_STATUSES,
)
ENDPOINTS = ("token", "bookings", "booking")
LEGACY_KINDS = {"timeout": ("hang", False)}
SERVER_ERROR_PAGE = "<html><body><h1>500 Internal Server Error</h1></body></html>"
MAX_LIMIT = 500
MAX_DAYS = 365
DEFAULT_LIMIT = 20
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
INTEGER = re.compile(r"-?[0-9]+")
FORM_TYPES = ("application/x-www-form-urlencoded", "application/json")


def _default_timezone() -> tzinfo:
    """The library's local zone (America/New_York), or a fixed -05:00 if tz data is missing."""
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo("America/New_York")
    except Exception:  # noqa: BLE001 - no tz database on this machine
        from datetime import timezone

        return timezone(timedelta(hours=-5))


class LibCalState(TokenService):
    """Everything the LibCal simulator knows: credentials, tokens, bookings and the request log."""

    def __init__(
        self,
        client_id: str = "cid",
        client_secret: str = "secret",
        token_lifetime: int = 3600,
        latency: tuple[float, float] = (0.0, 0.0),
        seed: int | None = 1,
        form_answer_key: str = "q12505",
        invalid_client_quirk: bool = False,
        include_cancel_default: bool = True,
        timezone: tzinfo | None = None,
        today: date | None = None,
        ignore_past_dates: bool = True,
        hang_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.latency = latency
        self.rng = random.Random(seed)
        self.form_answer_key = form_answer_key
        self.invalid_client_quirk = invalid_client_quirk
        self.include_cancel_default = include_cancel_default
        self.timezone = timezone or _default_timezone()
        self.today = today
        self.ignore_past_dates = ignore_past_dates
        self.hang_seconds = hang_seconds
        self.clock = clock
        self.sleep = sleep
        self.failures = FailureQueue(targets=ENDPOINTS, legacy=LEGACY_KINDS)
        self.tokens = TokenBook()
        self.bookings: list[dict[str, Any]] = []  # one dict per row, in insertion order
        self.requests: list[dict[str, Any]] = []
        self._next_row_id = 23657

    # -- test hooks -----------------------------------------------------------------------
    def add_booking(
        self,
        book_id: str,
        lid: int,
        from_date: str,
        to_date: str,
        first_name: str = "Ada",
        last_name: str = "Lovelace",
        email: str = "ada@example.edu",
        primary_id: str | None = None,
        status: str = "Confirmed",
        seats: int = 1,
        *,
        eid: int = 44,
        cid: int = 37,
        created: str | None = None,
        account: str | None = None,
        location_name: str = "Gelman Library",
        category_name: str = "Study Rooms",
        item_name: str = "Room 101",
        check_in_code: str | None = None,
        cancelled: str | None = None,
        answers: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Add one booking (``seats`` rows sharing ``book_id``) and return its rows."""
        datetime.fromisoformat(from_date)  # reject malformed dates at setup time
        datetime.fromisoformat(to_date)
        if status not in STATUSES:
            raise ValueError(f"unknown LibCal status {status!r} (known: {', '.join(STATUSES)})")
        custom = dict(answers or {})
        if primary_id is not None:
            custom[self.form_answer_key] = primary_id
        if created is None:
            created = (datetime.fromisoformat(from_date) - timedelta(days=2)).isoformat()
        check_in_code = check_in_code or self._check_in_code()
        if cancelled is None and status in CANCELLED_STATUSES:
            cancelled = self._now().replace(microsecond=0).isoformat()
        rows = []
        for _ in range(max(1, seats)):
            row: dict[str, Any] = {
                "bookId": book_id,
                "id": self._next_row_id,
                "eid": eid,
                "cid": cid,
                "lid": lid,
                "fromDate": from_date,
                "toDate": to_date,
                "created": created,
                "firstName": first_name,
                "lastName": last_name,
                "email": email,
                "account": account if account is not None else email.split("@")[0],
                "status": status,
                "location_name": location_name,
                "category_name": category_name,
                "item_name": item_name,
                "check_in_code": check_in_code,
                "_answers": custom,
            }
            if cancelled is not None:
                row["cancelled"] = cancelled
            self._next_row_id += 1
            self.bookings.append(row)
            rows.append(row)
        return rows

    def cancel(self, book_id: str, status: str = "Cancelled by User") -> None:
        """Cancel every row of ``book_id``: set ``status`` and a ``cancelled`` timestamp."""
        if status not in CANCELLED_STATUSES:
            raise ValueError(
                f"{status!r} is not a cancelled status ({', '.join(CANCELLED_STATUSES)})"
            )
        rows = [row for row in self.bookings if row["bookId"] == book_id]
        if not rows:
            raise KeyError(f"no booking {book_id!r}")
        stamp = self._now().replace(microsecond=0).isoformat()
        for row in rows:
            row["status"] = status
            row["cancelled"] = stamp

    # -- behaviour ------------------------------------------------------------------------
    def issue_token(self) -> str:
        """Create a bearer token valid for ``token_lifetime`` seconds."""
        return self.tokens.issue(secrets.token_hex(20), self.clock() + self.token_lifetime)

    def token_problem(self, authorization: str | None) -> dict[str, str] | None:
        """The 401 error body for this Authorization header, or None when it is valid."""
        scheme, _, token = (authorization or "").partition(" ")
        problem = self.tokens.problem(token.strip() if scheme == "Bearer" else "", self.clock())
        return TOKEN_PROBLEMS[problem] if problem else None

    def local_today(self) -> date:
        """Today in the library's time zone (or the pinned ``today``)."""
        return self.today or self._now().date()

    def select(
        self,
        *,
        start: date,
        days: int,
        lid: int | None = None,
        cid: int | None = None,
        eid: int | None = None,
        email: str | None = None,
        include_cancel: bool = True,
        include_tentative: bool = True,
        include_denied: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows matching the filters, ordered by ``fromDate`` then row id (internal keys kept)."""
        end = start + timedelta(days=days)
        chosen = []
        for row in self.bookings:
            day = datetime.fromisoformat(row["fromDate"]).date()
            if not start <= day <= end:
                continue
            if lid is not None and row["lid"] != lid:
                continue
            if cid is not None and row["cid"] != cid:
                continue
            if eid is not None and row["eid"] != eid:
                continue
            if email is not None and row["email"] != email:
                continue
            if not include_cancel and row["status"] in CANCELLED_STATUSES:
                continue
            if not include_tentative and row["status"] == "Mediated Tentative":
                continue
            if not include_denied and row["status"] == "Mediated Denied":
                continue
            chosen.append(row)
        chosen.sort(key=lambda row: (datetime.fromisoformat(row["fromDate"]), row["id"]))
        return chosen

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.timezone)

    def _check_in_code(self) -> str:
        return "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6))


STATE = web.AppKey("libcal_state", LibCalState)
TOKEN_PROBLEMS = {
    "missing": {"error": "invalid_request", "error_description": "The access token was not found"},
    "unknown": {"error": "invalid_token", "error_description": "The access token provided is invalid"},
    "expired": {"error": "invalid_token", "error_description": "The access token provided has expired"},
}


def public_row(row: dict[str, Any], form_answers: bool) -> dict[str, Any]:
    """The row as the API shows it: custom answers as top-level keys only when asked for."""
    shown = {key: value for key, value in row.items() if not key.startswith("_")}
    if form_answers:
        shown.update(row["_answers"])
    return shown


def _text_400(message: str) -> web.Response:
    return web.Response(status=400, text=message, content_type="text/plain")


def _switch(query: Any, name: str, default: bool) -> bool:
    """A 0/1 parameter: ``1`` is on, ``0`` is off; absent or any other value keeps the default."""
    value = query.get(name)
    if value == "1":
        return True
    if value == "0":
        return False
    return default


def _int_param(query: Any, name: str) -> int | None:
    """The parameter as a plain decimal integer, or None if it is absent or anything else."""
    value = query.get(name)
    return int(value) if value is not None and INTEGER.fullmatch(value) else None


def _refused(request: web.Request) -> web.Response | None:
    """401 without a valid bearer token, 400 for a parameter given twice; None if neither."""
    problem = request.app[STATE].token_problem(request.headers.get("Authorization"))
    if problem:
        return web.json_response(
            problem,
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="Service", error="{problem["error"]}"'},
        )
    repeated = repeated_parameters(request)
    return _text_400(f'parameter "{repeated[0]}" given more than once') if repeated else None


async def _read_form(request: web.Request) -> dict[str, str]:
    if request.content_type not in FORM_TYPES:
        return {}
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
    form = await request.post()
    return {k: str(v) for k, v in form.items()}


async def token(request: web.Request) -> web.Response:
    """POST /1.1/oauth/token: client-credentials grant."""
    state = request.app[STATE]
    form = await _read_form(request)
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "Grant type not supported"}, status=400)
    if form.get("client_id") != state.client_id or form.get("client_secret") != state.client_secret:
        if state.invalid_client_quirk:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "The client credentials are invalid",
                }
            )
        return web.json_response({"error": "The client credentials are invalid"}, status=400)
    return web.json_response(
        {
            "access_token": state.issue_token(),
            "expires_in": state.token_lifetime,
            "token_type": "Bearer",
            "scope": SCOPE,
        }
    )


async def space_bookings(request: web.Request) -> web.Response:
    """GET /1.1/space/bookings: bookings of a day range, paged by ``limit``."""
    state = request.app[STATE]
    refused = _refused(request)
    if refused:
        return refused
    query = request.query
    today = state.local_today()
    start = today
    if "date" in query:
        try:
            if not ISO_DAY.fullmatch(query["date"]):
                raise ValueError(query["date"])
            start = date.fromisoformat(query["date"])
        except ValueError:
            return _text_400('invalid "date" value')
        if state.ignore_past_dates:
            start = max(start, today)
    page = 1
    if "page" in query:
        parsed = _int_param(query, "page")
        if parsed is None or parsed < 1:
            return _text_400('invalid "page" value, must be >= 1')
        page = parsed
    limit = DEFAULT_LIMIT
    if "limit" in query:
        parsed = _int_param(query, "limit")
        if parsed is None or not 1 <= parsed <= MAX_LIMIT:
            return _text_400('invalid "limit" value')
        limit = parsed
    days = 0
    if "days" in query:
        parsed = _int_param(query, "days")
        if parsed is None or not 0 <= parsed <= MAX_DAYS:
            return _text_400('invalid "days" value')
        days = parsed
    filters: dict[str, int | None] = {}
    for name in ("lid", "cid", "eid"):
        filters[name] = _int_param(query, name)
        if name in query and filters[name] is None:
            return _text_400(f'invalid "{name}" value')
    if query.get("email") == "":
        return _text_400('invalid "email" value')
    rows = state.select(
        start=start,
        days=days,
        **filters,
        email=query.get("email"),
        include_cancel=_switch(query, "include_cancel", state.include_cancel_default),
        include_tentative=_switch(query, "include_tentative", True),
        include_denied=_switch(query, "include_denied", False),
    )
    form_answers = _switch(query, "formAnswers", False)
    window = rows[(page - 1) * limit : page * limit]
    return web.json_response([public_row(row, form_answers) for row in window])


async def space_booking(request: web.Request) -> web.Response:
    """GET /1.1/space/booking/{ids}: rows of the given bookIds; cancelled ones return nothing."""
    state = request.app[STATE]
    refused = _refused(request)
    if refused:
        return refused
    wanted = [part for part in request.match_info["ids"].split(",") if part]
    form_answers = _switch(request.query, "formAnswers", False)
    rows = [
        public_row(row, form_answers)
        for book_id in wanted
        for row in state.bookings
        if row["bookId"] == book_id and row["status"] not in CANCELLED_STATUSES
    ]
    return web.json_response(rows)


def _server_error(request: web.Request, kind: str) -> web.Response:
    return web.Response(status=500, text=SERVER_ERROR_PAGE, content_type="text/html")


def create_app(state: LibCalState | None = None) -> web.Application:
    """The LibCal simulator as an aiohttp application; ``app[STATE]`` is its state."""
    endpoints: dict[Handler, str] = {token: "token", space_bookings: "bookings", space_booking: "booking"}
    pipeline = simulator_pipeline(
        STATE,
        target=lambda request: endpoints.get(request.match_info.handler),
        answers={"500": _server_error},
    )
    app = web.Application(middlewares=[pipeline])
    app[STATE] = state or LibCalState()
    for base in ("/1.1", "/api/1.1"):
        app.router.add_post(f"{base}/oauth/token", token)
        app.router.add_get(f"{base}/space/bookings", space_bookings)
        app.router.add_get(f"{base}/space/booking/{{ids}}", space_booking)
    return app


def load_bookings(state: LibCalState, path: str) -> int:
    """Add the bookings of a JSON file (a list of ``add_booking`` keyword objects); return how many."""

    def add(booking: dict[str, Any]) -> None:
        fields = dict(booking)
        cancelled_status = fields.pop("cancel", None)
        state.add_booking(**fields)
        if cancelled_status:
            state.cancel(fields["book_id"], status=cancelled_status)

    return load_json_list(path, "booking", add)


def build_state(args: argparse.Namespace) -> LibCalState:
    """A LibCalState from parsed command-line options, with the bookings file's bookings."""
    state = LibCalState(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        seed=args.seed,
        form_answer_key=args.form_answer_key,
        invalid_client_quirk=args.invalid_client_quirk,
        include_cancel_default=bool(args.include_cancel_default),
    )
    if args.bookings_json:
        load_bookings(state, args.bookings_json)
    return state


def main(argv: list[str] | None = None) -> int:
    """Run the LibCal simulator standalone."""
    parser = standalone_parser("libcal", __doc__.splitlines()[0], port=8082)
    parser.add_argument("--bookings-json", help="JSON list of add_booking keyword objects")
    parser.add_argument("--client-id", default="cid")
    parser.add_argument("--client-secret", default="secret")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument("--form-answer-key", default="q12505")
    parser.add_argument(
        "--include-cancel-default",
        type=int,
        choices=(0, 1),
        default=1,
        help="include_cancel when a request does not send it (spec: 1, unverified)",
    )
    parser.add_argument(
        "--invalid-client-quirk",
        action="store_true",
        help="answer bad credentials with 200 {error: invalid_client}",
    )
    return run_standalone("LibCal", parser.parse_args(argv), build_state, create_app)


if __name__ == "__main__":
    sys.exit(main())
