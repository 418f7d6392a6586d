"""Local simulator of the Ex Libris Alma REST API: scan-in, users, items by barcode, Analytics.

It answers like Alma as described in shared/reference/alma.md and alma-items-and-analytics.md
(the contract), quirks included. Where the contract says *unverified*, the simulator is strict:
it accepts only what is confirmed, so a client cannot come to rely on a forgiving guess.
Everything lives in one `AlmaState` that tests build, inspect and mutate; `create_app(state)`
wraps it in an aiohttp application (`app[STATE]` is the state).

Request pipeline (`simulators._pipeline`, with Alma's gateway in it; in this order, for every
request):
1. Recorded in `state.requests` (status filled in when the answer is sent; None if the
   connection was dropped; `api_key` is the key it sent, `failure` the injected failure it took).
2. Per-second threshold: requests admitted in any sliding one-second window, all keys together,
   may not exceed `per_second_limit`; over it -> HTTP 429 `PER_SECOND_THRESHOLD`. A rejected
   request has no effect, does not use the daily quota and does not occupy the window.
3. API key: `Authorization: apikey KEY` header, else the `apikey=` query parameter. Missing or
   unknown -> `UNAUTHORIZED` "API-key not defined or not configured to allow this API." with
   HTTP `state.unauthorized_status`, default 400. Not confirmed by Ex Libris' docs; public client
   test suites that replay recorded Alma answers use 400 with this body, and that recorded XML
   body has no `trackingId`, so neither has ours. (One third-party integration guide says an
   unknown key gets 403 `INVALID_REQUEST` instead; the contract says UNAUTHORIZED, so we follow it.)
   A call of `/almaws/v1/analytics/` with an accepted key outside `analytics_keys` (when that is
   not None) gets the same answer: the key has no Analytics permission.
4. Daily quota: one counter for the whole simulator (`daily_quota`), decremented by every
   request that passed 1-3. When it is 0 -> `DAILY_THRESHOLD` with HTTP `daily_status`
   (default 429; *unverified*). `X-Exl-Api-Remaining` (calls left) and `X-Request-ID` are on
   every response, errors and injected failures included (not on dropped connections).
5. Latency: a uniform random sleep within `latency` (min, max) seconds (`sleep` does it).
6. Injected failure, if one is pending (see `inject_failure`), else the real handler.

Format: JSON when `Accept` contains `application/json` or `format=json`; otherwise XML, as Alma
defaults to XML. Error bodies in XML are the real `<web_service_result>` shape; success bodies in
XML are a plain element-per-key rendering (approximate: the clients use JSON).

Item states (`state.items[pid].status`): seeded as "loan", "in_place" or "requested" (on loan,
with a hold request waiting); scans move them to "in_place", "in_transit", "hold_shelf" or
"work_order". The 200 body is the recorded example item (shared/reference/examples) with this
item's ids, barcode, library, location, temporary location and post-scan state filled in.

Scan-in (`POST /almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}?op=scan`), checks
in this order, each an HTTP 400 Alma error body:
- `op` missing or not `scan` -> `40166410` "The parameter op is invalid. Received: X. Valid
  options are: [scan]." (40166410 and "The parameter P is invalid. ... Valid options are: [..]"
  are what public Alma clients parse; the exact middle part is *unverified*).
- `library` missing -> `40166410` "The parameter library is invalid. Received: ." and neither
  `circ_desk` nor `department` -> "... circ_desk is invalid ..." (*unverified*, same pattern).
- non-numeric mms_id -> `402203` "Input parameters mmsId X is not valid."
- unknown item_pid -> `40166411` "The parameter item_pid is invalid. Received: X."
- item not under that mms_id/holding_id -> `401688` "Search failed for Items with mmsId M,
  holdings id H."
- (library, circ_desk) not added with `add_desk` -> `state.desk_error_code` (default `401872`,
  *unverified*) "Circulation desk DESK is not valid for library LIB.". If no desk was ever
  added, every desk is accepted. `department` scans skip the desk check.
Outcome of an applied scan (the loan, if any, is returned in every case; `state.scans` gets
(item_pid, library, circ_desk or department, register_in_house_use)):
- `department` given (no `circ_desk`) and `done` not "true" -> work order: `base_status` 0,
  `process_type` WORK_ORDER_DEPARTMENT "In Process" (desc *unverified*), "Item's destination
  is: DEPT. ..."; state "work_order". With `done=true` the item moves on as below.
- else desk library != owning library (temp_library if set, else library) -> in transit:
  `base_status` 0 "Item not in place", `process_type` TRANSIT "Transit", `additional_info`
  "Item's destination is: LIB. ..." (exact transit wording *unverified*); state "in_transit".
- else item "requested" (on loan with a hold request waiting) -> hold shelf: `base_status` 0,
  `process_type` HOLDSHELF "Hold Shelf", "Item's destination is: On Hold Shelf. ..."; state
  "hold_shelf"; `item_data.requested` stays true (the simulator has no checkout, so the item
  stays requested: scanning it again leaves it on the hold shelf). A requested item sent in
  transit keeps its request and goes to the hold shelf when scanned at its own library.
- else -> in place: `base_status` 1 "Item in place", `process_type` {"value": "", "desc": null},
  "Item's destination is: Reshelve to LOCATION. ..." (Alma puts the location's description
  there; the simulator's descriptions are the codes); state "in_place".
`register_in_house_use` is true unless the parameter is the string "false" (any case); a scan of
an item that was not on loan ("loan"/"requested") with it true adds one to `item.in_house_uses`.

Users (`GET /almaws/v1/users/{user_id}`): a user belongs to one API key (its institution zone)
and is invisible with any other key. `user_id_type` absent or `all_unique` matches primary_id
or barcode -> else `401861` "User with identifier X was not found."; `BARCODE` matches the
barcode and `primary_id` the primary id, else `401890` "User with identifier X of type T was
not found."; any other type -> the same 401890 (*unverified*: real Alma may validate the type).

Item by barcode (`GET /almaws/v1/items?item_barcode=X`): HTTP 302, empty body, `Location:
{scheme}://{host}/almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}` on the scheme and
host called, without query parameters (whether real Alma sends a body or repeats parameters is
*unverified*: none here). The barcode is compared exactly as decoded from the query string, so an
unencoded `+` is a space and does not find `+F20313804` (`%2B` does); no trimming and
case-sensitive (*unverified*: strict). Checks, each an HTTP 400 Alma error body:
- a parameter other than `item_barcode`, `apikey`, `format`, or one sent twice -> `40166410` "The
  parameter P is invalid. Received: V." (`view`/`expand` are not confirmed by the contract, so
  they are refused; strict, *unverified*); `item_barcode` missing or empty -> the same 40166410;
- no item with that barcode -> `401689` "No items found for barcode X." (the contract's code).
Retrieve Item (`GET /almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}`): 200, the
scan-in's item object in the item's current state but without `additional_info` (keys `bib_data`,
`holding_data`, `item_data`, `link`; `process_type` LOAN while on loan). Wrong ids -> the scan-in's
`402203` / `40166411` / `401688`; any parameter but `apikey`/`format` -> 40166410 (strict).
Both calls are ordinary requests in the pipeline: each counts against the per-second threshold
and the daily quota (that Alma counts the redirected GET is *unverified*; the contract says to
assume it), so a lookup that follows the redirect costs two calls.

Analytics reports (`GET /almaws/v1/analytics/reports`; seeded with `add_report` / `load_report`;
the XML is built by `simulators.alma_analytics`). Parameters: `path`, `limit`, `col_names`,
`token` (plus `apikey`, `format`). A call with `path` and no or an empty `token=` starts a run of
the report: a fresh ResumptionToken (128 upper-case hex digits) whose cursor the server keeps
(`state.report_runs[token]`, holding the rows as they were when the run started); every call with
`token=` (with or without `path`) returns the run's next page. Only the run's first answer carries
the token; only its first answer that is not "still loading" carries the schema; `IsFinished` is
true on the answer with the last row (already on the first one for a one-page report).
- `limit`: digits, 25..1000, default 25; an answer holds up to the limit rounded up to a multiple
  of 25 (30 -> 50 rows). Anything else -> 400 `40166410` (*unverified*: strict). Each call's own
  `limit` sizes its page (a token call without one gets 25; whether Alma remembers the first
  call's limit is *unverified*: send the same limit every time).
- `col_names`: exactly `true` (default) or `false`, else 400 40166410 (strict); the first call's
  counts for the run. With `true` the schema's elements carry `saw-sql:columnHeading` and
  `saw-sql:tableHeading`; with `false` the schema comes without them (as in a recorded fixture;
  *unverified*).
- `filter`: not supported by the simulator: 400 `40166410` whose message says so.
- "Still loading": each run of a report added with `still_loading=N` first answers N times 200
  with `IsFinished` false and an empty `<ResultXml/>` (no rows, no schema); the first of those
  carries the token, so the client goes on with the token. What a first answer without rows
  means for the schema is *unverified*; the choice here: the schema comes with the first answer
  that has rows (the first after loading), never with a still-loading one.
- Errors: a token after `IsFinished` was true -> HTTP 500 `420033` "No more rows to fetch";
  unknown report path -> HTTP 500 `INTERNAL_SERVER_ERROR` "Path not found (PATH)"; first call
  without `path` -> 400 40166410 "The parameter path is invalid. Received: ." (*unverified*); an
  unknown token -> 400 `40166410` "The parameter token is invalid. Received: T." (*unverified*:
  the code for a bad or expired token is not known); `path` with a token of another report's run
  -> 400 40166410 (strict, *unverified*); unknown or repeated parameters -> 400 40166410 (strict).
- Permission: `analytics_keys` (None, the default: every accepted key may read reports); an
  accepted key not in it gets the gateway's usual UNAUTHORIZED answer (no quota used).
- Format: XML by default, `<report><QueryResult>…</QueryResult></report>` laid out like the
  recorded answers (indentation whitespace between elements); JSON (`Accept: application/json`
  or `format=json`): `{"anies": ["<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n<QueryResult>…"]}`,
  the same `QueryResult` (rowset namespace included), no `report` wrapper.
Every call goes through the pipeline like a scan-in. An injected failure that is not applied
leaves the run where it was; an applied one moves it on (that page is lost, as when the answer
to a real call is lost).

Injected failures (`inject_failure(kind, count=1, item_pid=None, applied=False)`), taken in FIFO
order by requests that passed the gateway checks (optionally only scans of `item_pid`: a failure
aimed at an item is never taken by a GET of that item, a barcode lookup or a report). The
kinds every simulator knows (`simulators._pipeline`): "500" (HTTP 500 JSON/XML Alma body
`INTERNAL_SERVER_ERROR`), "502_text", "503_html", "gateway_timeout" (504 text/plain after
`state.hang_seconds`, default 60), "hang" (no answer; the connection is closed after
`hang_seconds`), "slow" (the real answer, `hang_seconds` late) and "disconnect" (the connection is
closed at once). "timeout" is an old name of "gateway_timeout", and `timeout_sleep=` an old name
of `hang_seconds=`, kept for callers that use them. Alma's own kinds:
- "429": the real PER_SECOND_THRESHOLD 429 (never applied, uses no quota, no latency).
- "redirect": what a proxy or load balancer in front of Alma answers (the contract describes no
  redirect from Alma's API itself): HTTP `state.redirect_status` (default 301) with `Location:
  state.redirect_location`, by default the request's own URL on https:// (the usual http ->
  https redirect), and a small HTML page. Never applied, uses no quota, no latency.
- "single_error_object" / "errors_exist_string": the request is answered with its own Alma
  error if it has one, else with a generic 400 `INTERNAL_SERVER_ERROR`-style error (and not
  applied), shaped with `error` as one object / `errorsExist` as the string "true".
`applied=True` (not "429", "redirect" or the shape kinds) runs the call first and then fails:
for a scan-in, the realistic case of a 5xx or timeout after Alma did the work. Default False:
nothing happens. An injected failure (other than "429" and "redirect") uses one call of the
daily quota, like any answered call.

Standalone: `python -m simulators.alma --host 127.0.0.1 --port 8081 --rate-limit 25
--daily-quota 100000 --latency 0.3-0.8 --seed 1 --api-key KEY [--api-key KEY2] [--items-csv EXPORT]
[--desks-csv desks.csv] [--users-csv users.csv] [--report 'PATH=EXPORT' ...]
[--report-still-loading N] [--analytics-key KEY ...]` prints "Alma simulator listening on
http://HOST:PORT (...)" once bound (`--port 0` picks a free port). `--items-csv` takes an
Analytics export (real headers, UTF-8 with or without BOM, or UTF-16 TSV) and seeds every row
on loan (findable by barcode through its `Barcode` column); `--report` serves an export in the
same format as the Analytics report at catalog PATH (repeatable; the same file as `--items-csv`
makes the report of those items), each run giving `--report-still-loading` "still loading"
answers first; `--analytics-key` keys (also accepted keys) are the only ones that may read
reports (default: every key); `--desks-csv` has location_code,circ_desk[,library_code]; users (primary_id,barcode,
user_group[,user_group_desc],first_name,last_name,email) belong to the first --api-key. A seed
file that cannot be read or lacks a column: message on stderr, exit 2.

Also *unverified* (no public source found): the wording of the DAILY_THRESHOLD message, whether
PER_SECOND_THRESHOLD bodies carry a trackingId (ours do), the 500 body's `INTERNAL_SERVER_ERROR`
code, and the exact 502/503/504 gateway texts (the contract only says "text/plain or HTML").

Other paths and methods get aiohttp's plain 404/405 (after the gateway checks); what real Alma
answers there is *unverified* and no client should depend on it. `reset_daily_quota()` plays
midnight GMT.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import io
import json
import random
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import InitVar, dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web
from multidict import MultiMapping

from simulators._common import (
    Handler,
    SlidingWindowCounter,
    run_standalone,
    standalone_parser,
)
from simulators._pipeline import Failure, FailureQueue, SimulatorState, simulator_pipeline
from simulators.alma_analytics import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MIN_LIMIT,
    AnalyticsReport,
    ReportRun,
    anies_body,
    headings_from_header,
    new_token,
    report_document,
    round_limit,
)

SHAPE_KINDS = ("single_error_object", "errors_exist_string")
GATEWAY_KINDS = ("429", "redirect")  # answered by the gateway: no quota, no latency
LEGACY_KINDS = {"timeout": ("gateway_timeout", False)}
ITEM_STATES = ("loan", "in_place", "requested", "in_transit", "hold_shelf", "work_order")
ON_LOAN_STATES = ("loan", "requested")

PER_SECOND_MESSAGE = "HTTP requests are more than allowed per second"
DAILY_MESSAGE = (
    "Daily API Request Threshold has been reached. For details see: "
    "https://developers.exlibrisgroup.com/alma/apis/#threshold"
)
UNAUTHORIZED_MESSAGE = "API-key not defined or not configured to allow this API."


class AlmaAPIError(Exception):
    """An Alma error answer: HTTP status, errorCode and errorMessage."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class AlmaItem:
    """One physical item and where it stands (status: one of ITEM_STATES)."""

    mms_id: str
    holding_id: str
    item_pid: str
    barcode: str
    library: str
    location: str
    temp_library: str | None = None
    temp_location: str | None = None
    status: str = "loan"
    in_house_uses: int = 0
    request_pending: bool = False
    work_order_department: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ITEM_STATES:
            raise ValueError(f"item status must be one of {ITEM_STATES}, got {self.status!r}")
        if self.status == "requested":
            self.request_pending = True

    @property
    def owning_library(self) -> str:
        """The library the item belongs to right now (temporary library if set)."""
        return self.temp_library or self.library


@dataclass
class AlmaUser:
    """One patron record, visible only with `api_key` (its institution zone)."""

    primary_id: str
    barcode: str
    user_group: str
    user_group_desc: str
    first_name: str
    last_name: str
    email: str
    api_key: str


@dataclass
class AlmaState(SimulatorState):
    """Everything the simulator knows: items, users, desks, limits, failures and a request log."""

    per_second_limit: int = 25
    daily_quota: int = 100_000
    latency: tuple[float, float] = (0.0, 0.0)
    api_keys: set[str] = field(default_factory=lambda: {"test-key"})
    seed: int = 1
    daily_status: int = 429
    unauthorized_status: int = 400
    desk_error_code: str = "401872"
    hang_seconds: float = 60.0
    redirect_status: int = 301
    redirect_location: str | None = None  # None: the request's URL on https://
    analytics_keys: set[str] | None = None  # None: every accepted key may read reports
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep  # latency sleeps (tests record)
    timeout_sleep: InitVar[float | None] = None  # the old name of hang_seconds

    def __post_init__(self, timeout_sleep: float | None) -> None:
        if timeout_sleep is not None:
            self.hang_seconds = timeout_sleep
        self.items: dict[str, AlmaItem] = {}
        self.users: dict[str, AlmaUser] = {}
        self.desks: set[tuple[str, str]] = set()
        self.requests: list[dict[str, Any]] = []
        self.scans: list[tuple[str, str, str, bool]] = []
        self.reports: dict[str, AnalyticsReport] = {}
        self.report_runs: dict[str, ReportRun] = {}  # resumption token -> its cursor
        self._barcode_index: dict[str, str] = {}  # barcode -> item_pid, rebuilt on a miss
        self.remaining = self.daily_quota
        self.rng = random.Random(self.seed)
        self.window = SlidingWindowCounter(self.per_second_limit, 1.0, self.clock)
        self.failures = FailureQueue(
            (*SHAPE_KINDS, *GATEWAY_KINDS),
            never_applied=(*SHAPE_KINDS, *GATEWAY_KINDS),
            legacy=LEGACY_KINDS,
        )

    def add_item(self, item: AlmaItem) -> AlmaItem:
        """Add (or replace) an item, keyed by item_pid."""
        self.items[item.item_pid] = item
        return item

    def find_barcode(self, barcode: str) -> AlmaItem | None:
        """The item whose barcode is exactly `barcode` (no trimming, case-sensitive), or None."""
        pid = self._barcode_index.get(barcode)
        item = self.items.get(pid) if pid is not None else None
        if item is not None and item.barcode == barcode:
            return item
        self._barcode_index = {}
        for item in self.items.values():  # items may be changed in place: look again
            if item.barcode:
                self._barcode_index.setdefault(item.barcode, item.item_pid)
        pid = self._barcode_index.get(barcode)
        return self.items[pid] if pid is not None else None

    def add_report(
        self,
        path: str,
        headings: list[tuple[str, str]],
        rows: list[list[str]],
        *,
        still_loading: int = 0,
    ) -> AnalyticsReport:
        """Add (or replace) the Analytics report at catalog `path`.

        `headings`: (tableHeading, columnHeading) of Column1..N; `rows`: lists of text cells
        ("" = empty, left out of the answer); `still_loading`: how many "still loading" answers
        each run of the report gives before its first page. Runs already started keep the rows
        they started with.
        """
        report = AnalyticsReport(path, list(headings), [list(row) for row in rows], still_loading)
        self.reports[path] = report
        return report

    def add_user(self, user: AlmaUser) -> AlmaUser:
        """Add (or replace) a user, keyed by primary_id."""
        self.users[user.primary_id] = user
        return user

    def add_desk(self, library: str, circ_desk: str) -> None:
        """Declare a circulation desk; once any is declared, scans at other desks are refused."""
        self.desks.add((library, circ_desk))

    def inject_failure(
        self, kind: str, count: int = 1, item_pid: str | None = None, applied: bool = False
    ) -> None:
        """Make the next `count` requests (or scans of `item_pid`) fail with `kind`."""
        self.failures.add(kind, count, item_pid, applied)

    def admit(self) -> bool:
        """Count one request start in the sliding second, or refuse it (limit and clock are live)."""
        self.window.limit = self.per_second_limit
        self.window.clock = self.clock
        return self.window.admit()

    def reset_daily_quota(self) -> None:
        """Midnight GMT: the daily quota is whole again."""
        self.remaining = self.daily_quota

    def tracking_id(self) -> str:
        """A tracking id shaped like Alma's ("E01-2211125012-ABCDE")."""
        suffix = "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=5))
        return f"E01-{time.strftime('%d%H%M%S', time.gmtime())}{self.rng.randint(10, 99)}-{suffix}"

    def request_id(self) -> str:
        """A fresh X-Request-ID value."""
        return "".join(self.rng.choices("0123456789abcdef", k=16))


STATE = web.AppKey("alma_state", AlmaState)


# --- response bodies --------------------------------------------------------------------------


_TEMPLATES: dict[str, dict[str, Any]] = {}


def _template(name: str) -> dict[str, Any]:
    """A deep copy of a recorded real body ("scan_in" or "user"), parsed once."""
    if name not in _TEMPLATES:
        _TEMPLATES[name] = json.loads(SCAN_IN_EXAMPLE if name == "scan_in" else USER_EXAMPLE)
    return copy.deepcopy(_TEMPLATES[name])


def error_body(
    code: str,
    message: str,
    tracking_id: str | None,
    single_object: bool = False,
    exists_as_string: bool = False,
) -> dict[str, Any]:
    """The Alma JSON error body, optionally with the two quirks seen in the wild."""
    error = {"errorCode": code, "errorMessage": message}
    if tracking_id is not None:
        error["trackingId"] = tracking_id
    return {
        "errorsExist": "true" if exists_as_string else True,
        "errorList": {"error": error if single_object else [error]},
        "result": None,
    }


def error_xml(code: str, message: str, tracking_id: str | None) -> str:
    """The Alma XML error body (`web_service_result`)."""
    tracking = "" if tracking_id is None else f"<trackingId>{escape(tracking_id)}</trackingId>"
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<web_service_result xmlns="http://com/exlibris/urm/general/xmlbeans">'
        "<errorsExist>true</errorsExist><errorList><error>"
        f"<errorCode>{escape(code)}</errorCode><errorMessage>{escape(message)}</errorMessage>"
        f"{tracking}"
        "</error></errorList></web_service_result>"
    )


def _to_xml(tag: str, value: Any) -> str:
    """Render a JSON value as XML: value/desc pairs as `<tag desc="..">value</tag>`."""
    if isinstance(value, dict):
        if set(value) == {"value", "desc"}:
            desc = "" if value["desc"] is None else str(value["desc"])
            text = "" if value["value"] is None else str(value["value"])
            return f'<{tag} desc="{escape(desc, {chr(34): "&quot;"})}">{escape(text)}</{tag}>'
        inner = "".join(_to_xml(key, val) for key, val in value.items())
        return f"<{tag}>{inner}</{tag}>"
    if isinstance(value, list):
        return "".join(_to_xml(tag, entry) for entry in value)
    if value is None:
        return f"<{tag}/>"
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def item_body(item: AlmaItem, base_url: str) -> dict[str, Any]:
    """The item object Alma answers a scan-in with, in the item's current state."""
    body = _template("scan_in")
    bib_link = f"{base_url}/almaws/v1/bibs/{item.mms_id}"
    body["bib_data"]["mms_id"] = item.mms_id
    body["bib_data"]["link"] = bib_link
    holding = body["holding_data"]
    holding["holding_id"] = item.holding_id
    holding["link"] = f"{bib_link}/holdings/{item.holding_id}"
    holding["in_temp_location"] = item.temp_library is not None
    holding["temp_library"] = {"value": item.temp_library, "desc": item.temp_library}
    holding["temp_location"] = {"value": item.temp_location, "desc": item.temp_location}
    data = body["item_data"]
    data["pid"] = item.item_pid
    data["barcode"] = item.barcode
    data["library"] = {"value": item.library, "desc": item.library}
    data["location"] = {"value": item.location, "desc": item.location}
    base_status, process_type, destination = _item_state_fields(item)
    data["base_status"] = base_status
    data["process_type"] = process_type
    data["requested"] = item.request_pending
    body["additional_info"] = destination
    body["link"] = f"{bib_link}/holdings/{item.holding_id}/items/{item.item_pid}"
    return body


def retrieved_item_body(item: AlmaItem, base_url: str) -> dict[str, Any]:
    """The Retrieve Item object (GET .../items/{item_pid}): the scan-in body without
    `additional_info` (keys `bib_data`, `holding_data`, `item_data`, `link`)."""
    body = item_body(item, base_url)
    del body["additional_info"]
    return body


def _item_state_fields(item: AlmaItem) -> tuple[dict, dict, str]:
    """(base_status, process_type, additional_info) for the item's state."""
    not_in_place = {"value": "0", "desc": "Item not in place"}
    tail = ". Request/Process Type: . Requester: . Requester ID: . Place in Queue: 0"
    if item.status in ON_LOAN_STATES:
        return not_in_place, {"value": "LOAN", "desc": "Loan"}, ""
    if item.status == "work_order":
        return (
            not_in_place,
            {"value": "WORK_ORDER_DEPARTMENT", "desc": "In Process"},
            f"Item's destination is: {item.work_order_department}{tail}",
        )
    if item.status == "in_transit":
        return (
            not_in_place,
            {"value": "TRANSIT", "desc": "Transit"},
            f"Item's destination is: {item.owning_library}{tail}",
        )
    if item.status == "hold_shelf":
        return (
            not_in_place,
            {"value": "HOLDSHELF", "desc": "Hold Shelf"},
            "Item's destination is: On Hold Shelf. Request/Process Type: Patron physical item "
            "request. Requester: . Requester ID: . Place in Queue: 1",
        )
    location = item.temp_location or item.location
    return (
        {"value": "1", "desc": "Item in place"},
        {"value": "", "desc": None},
        f"Item's destination is: Reshelve to {location}{tail}",  # the location's desc
    )


def user_body(user: AlmaUser) -> dict[str, Any]:
    """The full user record Alma answers with, filled from `user`."""
    body = _template("user")
    body["primary_id"] = user.primary_id
    body["first_name"] = user.first_name
    body["middle_name"] = ""
    body["last_name"] = user.last_name
    body["full_name"] = f"{user.first_name} {user.last_name}"
    body["user_group"] = {"value": user.user_group, "desc": user.user_group_desc}
    body["contact_info"]["email"][0]["email_address"] = user.email
    body["user_identifier"] = [
        {
            "value": user.barcode,
            "id_type": {"value": "BARCODE", "desc": "Barcode"},
            "note": "",
            "status": "ACTIVE",
            "segment_type": "Internal",
        }
    ]
    return body


# --- the domain: scan-in and user lookup ------------------------------------------------------


def _bad_parameter(name: str, received: str, valid: str = "") -> AlmaAPIError:
    options = f" Valid options are: [{valid}]." if valid else ""
    return AlmaAPIError(
        400, "40166410", f"The parameter {name} is invalid. Received: {received}.{options}"
    )


def check_scan_in(
    state: AlmaState, mms_id: str, holding_id: str, item_pid: str, query: dict[str, str]
) -> AlmaItem:
    """Validate a scan-in request exactly as Alma does; return the item or raise AlmaAPIError."""
    op = query.get("op", "")
    if op != "scan":
        raise _bad_parameter("op", op, "scan")
    library = query.get("library", "")
    if not library:
        raise _bad_parameter("library", library)
    circ_desk = query.get("circ_desk", "")
    department = query.get("department", "")
    if not circ_desk and not department:
        raise _bad_parameter("circ_desk", circ_desk)
    item = find_item(state, mms_id, holding_id, item_pid)
    if circ_desk and state.desks and (library, circ_desk) not in state.desks:
        raise AlmaAPIError(
            400,
            state.desk_error_code,
            f"Circulation desk {circ_desk} is not valid for library {library}.",
        )
    return item


def find_item(state: AlmaState, mms_id: str, holding_id: str, item_pid: str) -> AlmaItem:
    """The item at bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}, or raise AlmaAPIError."""
    if not mms_id.isdigit():
        raise AlmaAPIError(400, "402203", f"Input parameters mmsId {mms_id} is not valid.")
    item = state.items.get(item_pid)
    if item is None:
        raise AlmaAPIError(
            400, "40166411", f"The parameter item_pid is invalid. Received: {item_pid}."
        )
    if item.mms_id != mms_id or item.holding_id != holding_id:
        raise AlmaAPIError(
            400, "401688", f"Search failed for Items with mmsId {mms_id}, holdings id {holding_id}."
        )
    return item


def apply_scan_in(state: AlmaState, item: AlmaItem, query: dict[str, str]) -> AlmaItem:
    """Move a validated item to its post-scan state and record the scan."""
    library = query["library"]
    circ_desk = query.get("circ_desk", "")
    department = "" if circ_desk else query.get("department", "")
    done = query.get("done", "false").lower() == "true"
    register = query.get("register_in_house_use", "true").lower() != "false"
    if item.status not in ON_LOAN_STATES and register:
        item.in_house_uses += 1
    item.work_order_department = None
    if department and not done:
        item.status = "work_order"
        item.work_order_department = department
    elif library != item.owning_library:
        item.status = "in_transit"
    elif item.request_pending:  # the request stays until the requester borrows the item
        item.status = "hold_shelf"
    else:
        item.status = "in_place"
    state.scans.append((item.item_pid, library, circ_desk or department, register))
    return item


def find_user(state: AlmaState, api_key: str, user_id: str, user_id_type: str) -> AlmaUser:
    """Look a user up the way Alma does within one API key's zone, or raise AlmaAPIError."""
    zone = [user for user in state.users.values() if user.api_key == api_key]
    if user_id_type in ("", "all_unique"):
        for user in zone:
            if user_id in (user.primary_id, user.barcode):
                return user
        raise AlmaAPIError(400, "401861", f"User with identifier {user_id} was not found.")
    for user in zone:
        if (user_id_type == "BARCODE" and user.barcode == user_id) or (
            user_id_type == "primary_id" and user.primary_id == user_id
        ):
            return user
    raise AlmaAPIError(
        400, "401890", f"User with identifier {user_id} of type {user_id_type} was not found."
    )


# --- the domain: item by barcode, Analytics reports ------------------------------------------

ANALYTICS_PREFIX = "/almaws/v1/analytics/"
COMMON_PARAMETERS = ("apikey", "format")  # taken by every call (alma.md)
BARCODE_PARAMETERS = ("item_barcode", *COMMON_PARAMETERS)
ITEM_PARAMETERS = COMMON_PARAMETERS
REPORT_PARAMETERS = ("path", "limit", "col_names", "token", "filter", *COMMON_PARAMETERS)
FILTER_UNSUPPORTED = " The Alma simulator does not evaluate Analytics filters: leave filter out."


def check_parameters(query: MultiMapping[str], accepted: tuple[str, ...]) -> None:
    """Refuse with 40166410 a parameter not in `accepted`, or one sent more than once.

    Strict on purpose: what real Alma does with unknown or repeated parameters is *unverified*.
    """
    names = [name for name, _ in query.items()]
    for name, value in query.items():
        if name not in accepted:
            raise _bad_parameter(name, value)
        if names.count(name) > 1:
            raise _bad_parameter(name, ", ".join(query.getall(name)))


def find_item_by_barcode(state: AlmaState, query: MultiMapping[str]) -> AlmaItem:
    """The item GET /items?item_barcode=X redirects to, or raise AlmaAPIError.

    The barcode is compared exactly as decoded from the query string (an unencoded `+` arrives
    as a space): no trimming, case-sensitive.
    """
    check_parameters(query, BARCODE_PARAMETERS)
    barcode = query.get("item_barcode", "")
    if not barcode:
        raise _bad_parameter("item_barcode", barcode)
    item = state.find_barcode(barcode)
    if item is None:
        raise AlmaAPIError(400, "401689", f"No items found for barcode {barcode}.")
    return item


@dataclass(frozen=True)
class ReportCall:
    """A validated Analytics call: the run it continues (None: a new run of `report`)."""

    report: AnalyticsReport
    run: ReportRun | None
    limit: int  # as asked; the answer holds up to round_limit(limit) rows
    col_names: bool


def check_report_call(state: AlmaState, query: MultiMapping[str]) -> ReportCall:
    """Validate GET /analytics/reports without any effect; raise AlmaAPIError if refused."""
    check_parameters(query, REPORT_PARAMETERS)
    if "filter" in query:
        raise AlmaAPIError(
            400,
            "40166410",
            f"The parameter filter is invalid. Received: {query['filter']}.{FILTER_UNSUPPORTED}",
        )
    limit = query.get("limit", str(DEFAULT_LIMIT))
    if not (limit.isascii() and limit.isdigit() and MIN_LIMIT <= int(limit) <= MAX_LIMIT):
        raise _bad_parameter("limit", limit, f"{MIN_LIMIT}-{MAX_LIMIT}")
    col_names = query.get("col_names", "true")
    if col_names not in ("true", "false"):
        raise _bad_parameter("col_names", col_names, "true, false")
    path = query.get("path")
    token = query.get("token", "")
    if token:
        run = state.report_runs.get(token)
        if run is None:
            raise _bad_parameter("token", token)
        if path is not None and path != run.report.path:
            raise _bad_parameter("path", path)
        if run.finished:
            raise AlmaAPIError(500, "420033", "No more rows to fetch")
        return ReportCall(run.report, run, int(limit), run.col_names)
    if not path:
        raise _bad_parameter("path", "")
    report = state.reports.get(path)
    if report is None:
        raise AlmaAPIError(500, "INTERNAL_SERVER_ERROR", f"Path not found ({path})")
    return ReportCall(report, None, int(limit), col_names == "true")


def run_report(state: AlmaState, call: ReportCall) -> str:
    """Answer a validated call: the next `<QueryResult>` of its run (a new run gets a token)."""
    run = call.run
    if run is None:
        token = new_token(state.rng, state.report_runs)
        run = ReportRun(token, call.report, call.col_names)
        state.report_runs[token] = run
    return run.next_query_result(round_limit(call.limit))


# --- HTTP layer --------------------------------------------------------------------------------


def _wants_json(request: web.Request) -> bool:
    return (
        request.query.get("format", "").lower() == "json"
        or "application/json" in request.headers.get("Accept", "").lower()
    )


def _api_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "apikey" and key.strip():
        return key.strip()
    return request.query.get("apikey") or None


def _error_response(
    state: AlmaState, request: web.Request, error: AlmaAPIError, shape: str | None = None
) -> web.Response:
    # The gateway's UNAUTHORIZED answer carries no trackingId (as recorded from live Alma).
    tracking_id = None if error.code == "UNAUTHORIZED" else state.tracking_id()
    if _wants_json(request):
        body = error_body(
            error.code,
            error.message,
            tracking_id,
            single_object=shape == "single_error_object",
            exists_as_string=shape == "errors_exist_string",
        )
        return web.json_response(body, status=error.status)
    return web.Response(
        text=error_xml(error.code, error.message, tracking_id),
        status=error.status,
        content_type="application/xml",
    )


def _success_response(request: web.Request, root: str, body: dict[str, Any]) -> web.Response:
    if _wants_json(request):
        return web.json_response(body)
    xml = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + _to_xml(root, body)
    return web.Response(text=xml, content_type="application/xml")


def _per_second_error() -> AlmaAPIError:
    return AlmaAPIError(429, "PER_SECOND_THRESHOLD", PER_SECOND_MESSAGE)


class AlmaGateway:
    """Alma's API gateway: per-second threshold, API key and daily quota, then its own failures."""

    def refuse(self, request: web.Request, entry: dict[str, Any]) -> web.Response | None:
        """The gateway's refusal of this request, or None to let it on."""
        state = request.app[STATE]
        key = entry["api_key"] = _api_key(request)
        if not state.admit():
            return _error_response(state, request, _per_second_error())
        if key not in state.api_keys or (
            request.path.startswith(ANALYTICS_PREFIX)
            and state.analytics_keys is not None
            and key not in state.analytics_keys
        ):
            error = AlmaAPIError(state.unauthorized_status, "UNAUTHORIZED", UNAUTHORIZED_MESSAGE)
            return _error_response(state, request, error)
        if state.remaining <= 0:
            error = AlmaAPIError(state.daily_status, "DAILY_THRESHOLD", DAILY_MESSAGE)
            return _error_response(state, request, error)
        return None

    def admit(self, request: web.Request, failure: Failure | None) -> web.Response | None:
        """Answer an injected 429 or redirect (no quota used), else count the call in the quota."""
        state = request.app[STATE]
        if failure is not None and failure.kind == "429":
            return _error_response(state, request, _per_second_error())  # a gateway rejection
        if failure is not None and failure.kind == "redirect":
            return _redirect_response(state, request)
        state.remaining -= 1
        return None


@web.middleware
async def quota_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add Alma's X-Exl-Api-Remaining and X-Request-ID to every answer, errors included."""
    state = request.app[STATE]
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # unknown path or method: aiohttp's own 404/405
        _stamp(state, exc)
        raise
    _stamp(state, response)
    return response


def _stamp(state: AlmaState, response: web.StreamResponse) -> None:
    response.headers["X-Exl-Api-Remaining"] = str(state.remaining)
    response.headers["X-Request-ID"] = state.request_id()


@web.middleware
async def alma_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an AlmaAPIError raised by a handler with Alma's error body."""
    try:
        return await handler(request)
    except AlmaAPIError as error:
        return _error_response(request.app[STATE], request, error)


def _server_error(request: web.Request, kind: str) -> web.Response:
    error = AlmaAPIError(500, "INTERNAL_SERVER_ERROR", "INTERNAL_SERVER_ERROR")
    return _error_response(request.app[STATE], request, error)


def _shaped_error(request: web.Request, shape: str) -> web.Response:
    """The request's own Alma error (or a generic 400) in a quirky shape; nothing is applied."""
    state = request.app[STATE]
    try:
        _check_only(state, request)
        error = AlmaAPIError(400, "INTERNAL_SERVER_ERROR", "INTERNAL_SERVER_ERROR")
    except AlmaAPIError as real_error:
        error = real_error
    return _error_response(state, request, error, shape=shape)


def _redirect_response(state: AlmaState, request: web.Request) -> web.Response:
    """The injected redirect, shaped like nginx's: status, Location and a small HTML page."""
    location = state.redirect_location or str(request.url.with_scheme("https"))
    title = f"{state.redirect_status} {HTTPStatus(state.redirect_status).phrase}"
    return web.Response(
        status=state.redirect_status,
        headers={"Location": location},
        text=f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center></body></html>\n",
        content_type="text/html",
    )


def _check_only(state: AlmaState, request: web.Request) -> None:
    """Run the request's validation without any effect (for the error-shape failures)."""
    info = request.match_info
    if request.path == "/almaws/v1/items":
        find_item_by_barcode(state, request.query)
    elif request.path.startswith(ANALYTICS_PREFIX):
        check_report_call(state, request.query)
    elif "item_pid" in info and request.method == "GET":
        check_parameters(request.query, ITEM_PARAMETERS)
        find_item(state, info["mms_id"], info["holding_id"], info["item_pid"])
    elif "item_pid" in info:
        check_scan_in(
            state, info["mms_id"], info["holding_id"], info["item_pid"], dict(request.query)
        )
    elif "user_id" in info:
        find_user(
            state,
            _api_key(request) or "",
            info["user_id"],
            request.query.get("user_id_type", "all_unique"),
        )


async def scan_in(request: web.Request) -> web.Response:
    """POST .../items/{item_pid}?op=scan: return the loan, answer the item object."""
    state = request.app[STATE]
    info = request.match_info
    query = dict(request.query)
    item = check_scan_in(state, info["mms_id"], info["holding_id"], info["item_pid"], query)
    apply_scan_in(state, item, query)
    return _success_response(request, "item", item_body(item, _base_url(request)))


async def get_user(request: web.Request) -> web.Response:
    """GET /users/{user_id}: the full user record within the caller's zone."""
    state = request.app[STATE]
    user = find_user(
        state,
        _api_key(request) or "",
        request.match_info["user_id"],
        request.query.get("user_id_type", "all_unique"),
    )
    return _success_response(request, "user", user_body(user))


async def items_by_barcode(request: web.Request) -> web.Response:
    """GET /items?item_barcode=X: 302 to the item's own URL on the host called, empty body."""
    item = find_item_by_barcode(request.app[STATE], request.query)
    ids = (quote(part, safe="") for part in (item.mms_id, item.holding_id, item.item_pid))
    location = "{}/almaws/v1/bibs/{}/holdings/{}/items/{}".format(_base_url(request), *ids)
    return web.Response(status=302, headers={"Location": location})


async def get_item(request: web.Request) -> web.Response:
    """GET /bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}: the Retrieve Item object."""
    state = request.app[STATE]
    info = request.match_info
    check_parameters(request.query, ITEM_PARAMETERS)
    item = find_item(state, info["mms_id"], info["holding_id"], info["item_pid"])
    return _success_response(request, "item", retrieved_item_body(item, _base_url(request)))


async def analytics_report(request: web.Request) -> web.Response:
    """GET /analytics/reports: the next answer of a report run, XML or JSON (`anies`)."""
    state = request.app[STATE]
    query_result = run_report(state, check_report_call(state, request.query))
    if _wants_json(request):
        return web.json_response(anies_body(query_result))
    return web.Response(text=report_document(query_result), content_type="application/xml")


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _failure_target(request: web.Request) -> str | None:
    """What a request is aimed at for `inject_failure(item_pid=...)`: only scan-ins name one."""
    return request.match_info.get("item_pid") if request.method == "POST" else None


def create_app(state: AlmaState | None = None) -> web.Application:
    """The aiohttp application answering like Alma from `state`."""
    pipeline = simulator_pipeline(
        STATE,
        target=_failure_target,
        answers={"500": _server_error, **{shape: _shaped_error for shape in SHAPE_KINDS}},
        gateway=AlmaGateway(),
    )
    app = web.Application(middlewares=[quota_headers, pipeline, alma_errors])
    app[STATE] = state if state is not None else AlmaState()
    app.router.add_post("/almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}", scan_in)
    app.router.add_get("/almaws/v1/users/{user_id}", get_user)
    app.router.add_get("/almaws/v1/items", items_by_barcode, allow_head=False)
    app.router.add_get(
        "/almaws/v1/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}",
        get_item,
        allow_head=False,
    )
    app.router.add_get("/almaws/v1/analytics/reports", analytics_report, allow_head=False)
    return app


# --- seeding from files ------------------------------------------------------------------------


def read_export(path: Path, required: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """Rows of an Analytics-style export (UTF-8 with or without BOM CSV, or UTF-16 TSV).

    Each row is keyed by the names of `required` (name -> accepted headers, compared without
    case, BOM or underscores); a missing column raises ValueError naming the file and the fix.
    """
    header, rows = read_table(path)
    positions = {_normalise(name): index for index, name in enumerate(header)}
    columns: dict[str, int | None] = {}
    for name, accepted in required.items():
        found = [positions[_normalise(a)] for a in accepted if a and _normalise(a) in positions]
        optional = accepted[-1] == ""
        if not found and not optional:
            raise ValueError(
                f"column {accepted[0]!r} not found in {path.name} (found: {', '.join(header)})"
            )
        columns[name] = found[0] if found else None
    return [
        {
            name: (row[index].strip() if index is not None and index < len(row) else "")
            for name, index in columns.items()
        }
        for row in rows
    ]


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the non-blank rows of an export (UTF-8 with or without BOM CSV, or
    UTF-16 TSV), cells as written."""
    raw = path.read_bytes()
    text = (
        raw.decode("utf-16")
        if raw.startswith((b"\xff\xfe", b"\xfe\xff"))
        else raw.decode("utf-8-sig")
    )
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first_line else ",")
    header = next(reader, [])
    return header, [row for row in reader if any(cell.strip() for cell in row)]


def _normalise(header: str) -> str:
    return " ".join(header.replace("\ufeff", "").replace("_", " ").split()).lower()


# name -> accepted headers; a trailing "" marks the column optional.
ITEM_COLUMNS = {
    "mms_id": ("MMS Id",),
    "holding_id": ("Holding Id",),
    "item_pid": ("Physical Item Id", "Item Id"),
    "barcode": ("Barcode", ""),
    "library": ("Library Code (Active)", "Library Code"),
    "location": ("Location Code",),
    "temp_in_use": ("Temporary Physical Location In Use", ""),
    "temp_library": ("Temporary Library Code (Active)", "Temporary Library Code", ""),
    "temp_location": ("Temporary Location Code", ""),
}
DESK_COLUMNS = {
    "location_code": ("location_code",),
    "circ_desk": ("circ_desk",),
    "library_code": ("library_code", ""),
}
USER_COLUMNS = {
    "primary_id": ("primary_id",),
    "barcode": ("barcode",),
    "user_group": ("user_group",),
    "user_group_desc": ("user_group_desc", ""),
    "first_name": ("first_name", ""),
    "last_name": ("last_name", ""),
    "email": ("email", ""),
}


def load_items(state: AlmaState, path: Path) -> int:
    """Seed items from an Analytics export, every row on loan; return how many were added."""
    rows = read_export(path, ITEM_COLUMNS)
    for row in rows:
        in_temp = row["temp_in_use"].lower() == "yes"
        state.add_item(
            AlmaItem(
                mms_id=row["mms_id"],
                holding_id=row["holding_id"],
                item_pid=row["item_pid"],
                barcode=row["barcode"],
                library=row["library"],
                location=row["location"],
                temp_library=(row["temp_library"] or None) if in_temp else None,
                temp_location=(row["temp_location"] or None) if in_temp else None,
                status="loan",
            )
        )
    return len(rows)


def load_report(
    state: AlmaState, report_path: str, csv_path: Path, *, still_loading: int = 0
) -> int:
    """Serve an Analytics CSV export as the report at catalog `report_path`; return its rows.

    The export's headers become the column headings (their tableHeading the usual subject-area
    folder of that column, "Physical Item Details" if unknown; a header "Table::Column" names
    both); cells are stripped, and an empty cell is left out of the answers.
    """
    header, rows = read_table(csv_path)
    if not header or not any(name.strip() for name in header):
        raise ValueError(f"{csv_path.name}: no header line")
    try:
        state.add_report(
            report_path,
            headings_from_header(header),
            [[cell.strip() for cell in row] for row in rows],
            still_loading=still_loading,
        )
    except ValueError as exc:
        raise ValueError(f"{csv_path.name}: {exc}") from exc
    return len(rows)


def load_desks(state: AlmaState, path: Path) -> int:
    """Declare desks from location_code,circ_desk[,library_code]; return how many were added.

    Without library_code a desk is declared in the library of every seeded item shelved at that
    location (its permanent library for `location`, its temporary one for `temp_location`).
    """
    before = len(state.desks)
    for row in read_export(path, DESK_COLUMNS):
        if row["library_code"]:
            state.add_desk(row["library_code"], row["circ_desk"])
            continue
        for item in state.items.values():
            if item.location == row["location_code"]:
                state.add_desk(item.library, row["circ_desk"])
            if item.temp_location == row["location_code"]:
                state.add_desk(item.owning_library, row["circ_desk"])
    return len(state.desks) - before


def load_users(state: AlmaState, path: Path, api_key: str) -> int:
    """Seed users (primary_id,barcode,user_group,first_name,last_name,email) under `api_key`."""
    rows = read_export(path, USER_COLUMNS)
    for row in rows:
        state.add_user(
            AlmaUser(
                primary_id=row["primary_id"],
                barcode=row["barcode"],
                user_group=row["user_group"],
                user_group_desc=row["user_group_desc"] or row["user_group"],
                first_name=row["first_name"],
                last_name=row["last_name"],
                email=row["email"],
                api_key=api_key,
            )
        )
    return len(rows)


# --- standalone ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = standalone_parser("alma", "Run the local Alma API simulator.", port=8081)
    parser.add_argument("--rate-limit", type=int, default=25, help="requests per second")
    parser.add_argument("--daily-quota", type=int, default=100_000)
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accepted key, one institution zone each (repeatable; default test-key)",
    )
    parser.add_argument(
        "--daily-status", type=int, default=429, help="HTTP status of DAILY_THRESHOLD (unverified)"
    )
    parser.add_argument("--items-csv", type=Path, help="Analytics export of on-loan items")
    parser.add_argument("--desks-csv", type=Path, help="location_code,circ_desk[,library_code]")
    parser.add_argument("--users-csv", type=Path, help="users for the first --api-key")
    parser.add_argument(
        "--report",
        action="append",
        dest="reports",
        type=_report_argument,
        metavar="PATH=CSV",
        help="serve an Analytics CSV export as the report at catalog PATH (repeatable), e.g. "
        "'/shared/Uni/Reports/Loans=items.csv'",
    )
    parser.add_argument(
        "--report-still-loading",
        type=int,
        default=0,
        metavar="N",
        help="'still loading' answers each run of a --report gives before its first page",
    )
    parser.add_argument(
        "--analytics-key",
        action="append",
        dest="analytics_keys",
        help="a key that may read Analytics reports (repeatable; also accepted as an --api-key); "
        "without any, every key may",
    )
    return parser


def _report_argument(text: str) -> tuple[str, Path]:
    """PATH=CSV for --report (split at the last "=")."""
    report_path, separator, csv_path = text.rpartition("=")
    if not separator or not report_path or not csv_path:
        raise argparse.ArgumentTypeError(
            f"--report must look like '/shared/Uni/Reports/Loans=items.csv', got {text!r}"
        )
    return report_path, Path(csv_path)


def build_state(args: argparse.Namespace) -> AlmaState:
    """An AlmaState from parsed command-line options, seeded from the given files."""
    api_keys = args.api_keys or ["test-key"]
    analytics_keys = args.analytics_keys
    state = AlmaState(
        per_second_limit=args.rate_limit,
        daily_quota=args.daily_quota,
        latency=args.latency,
        daily_status=args.daily_status,
        api_keys=set(api_keys) | set(analytics_keys or ()),
        seed=args.seed,
        analytics_keys=set(analytics_keys) if analytics_keys else None,
    )
    if args.items_csv:
        load_items(state, args.items_csv)
    if args.desks_csv:
        load_desks(state, args.desks_csv)
    if args.users_csv:
        load_users(state, args.users_csv, api_keys[0])
    for report_path, csv_path in args.reports or ():
        load_report(state, report_path, csv_path, still_loading=args.report_still_loading)
    return state


def _summary(state: AlmaState) -> str:
    counts = f" ({len(state.items)} items, {len(state.users)} users, {len(state.desks)} desks)"
    if state.reports:
        counts += f" and {len(state.reports)} Analytics report(s)"
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until interrupted; exit 2 if the seed files cannot be read."""
    return run_standalone(
        "Alma",
        _parser().parse_args(argv),
        build_state,
        create_app,
        _summary,
    )


# --- recorded real bodies (shared/reference/examples), the templates of the answers ----------

SCAN_IN_EXAMPLE = r"""{
 "bib_data": {
  "mms_id": "9968643943506421",
  "title": "100 an\u0303os de seguridad social en Espan\u0303a (1900-2000) /",
  "author": "Bretin Herrero, Constantino.",
  "issn": null,
  "isbn": "8498494389",
  "complete_edition": "",
  "network_number": [
   "(NjP)6864394-princetondb",
   "(OCoLC)326577503",
   "6864394",
   "(OCoLC)ocn326577503"
  ],
  "place_of_publication": "Madrid :",
  "date_of_publication": "[2009]",
  "publisher_const": "Dykinson",
  "link": "https://api-na.hosted.exlibrisgroup.com/almaws/v1/bibs/9968643943506421"
 },
 "holding_data": {
  "holding_id": "22258767470006421",
  "call_number_type": {
   "value": "0",
   "desc": "Library of Congress classification"
  },
  "call_number": "KKT1504 .B748 2009",
  "accession_number": "",
  "copy_id": "1",
  "in_temp_location": false,
  "temp_library": {
   "value": null,
   "desc": null
  },
  "temp_location": {
   "value": null,
   "desc": null
  },
  "temp_call_number_type": {
   "value": "",
   "desc": null
  },
  "temp_call_number": "",
  "temp_policy": {
   "value": "",
   "desc": null
  },
  "link": "https://api-na.hosted.exlibrisgroup.com/almaws/v1/bibs/9968643943506421/holdings/22258767470006421"
 },
 "item_data": {
  "pid": "23258767460006421",
  "barcode": "32101081340380",
  "creation_date": "2020-12-03Z",
  "modification_date": "2021-02-17Z",
  "base_status": {
   "value": "1",
   "desc": "Item in place"
  },
  "awaiting_reshelving": false,
  "physical_material_type": {
   "value": "BOOK",
   "desc": "Book"
  },
  "policy": {
   "value": "Gen",
   "desc": "Gen"
  },
  "provenance": {
   "value": "",
   "desc": null
  },
  "po_line": "",
  "is_magnetic": false,
  "arrival_date": "2011-12-01Z",
  "year_of_issue": "",
  "enumeration_a": "",
  "enumeration_b": "",
  "enumeration_c": "",
  "enumeration_d": "",
  "enumeration_e": "",
  "enumeration_f": "",
  "enumeration_g": "",
  "enumeration_h": "",
  "chronology_i": "",
  "chronology_j": "",
  "chronology_k": "",
  "chronology_l": "",
  "chronology_m": "",
  "description": "",
  "receiving_operator": "import",
  "process_type": {
   "value": "",
   "desc": null
  },
  "inventory_number": "",
  "inventory_price": "",
  "library": {
   "value": "recap",
   "desc": "ReCAP"
  },
  "location": {
   "value": "pa",
   "desc": "rcppa RECAP"
  },
  "alternative_call_number": "",
  "alternative_call_number_type": {
   "value": "",
   "desc": null
  },
  "storage_location_id": "",
  "pages": "",
  "pieces": "1",
  "public_note": "",
  "fulfillment_note": "",
  "internal_note_1": "",
  "internal_note_2": "",
  "internal_note_3": "ON_RESERVE: N | RESERVE_CHARGES: 0 | RECALLS_PLACED: 0 | HOLDS_PLACED: 0 | HISTORICAL_BOOKINGS: 0 | SHORT_LOAN_CHARGES: 0 | ",
  "statistics_note_1": "",
  "statistics_note_2": "",
  "statistics_note_3": "",
  "requested": null,
  "edition": null,
  "imprint": null,
  "language": null,
  "physical_condition": {
   "value": null,
   "desc": null
  }
 },
 "additional_info": "Item's destination is: Reshelve to rcppa RECAP. Request/Process Type: . Requester: . Requester ID: . Place in Queue: 0",
 "link": "https://api-na.hosted.exlibrisgroup.com/almaws/v1/bibs/9968643943506421/holdings/22258767470006421/items/23258767460006421"
}"""

USER_EXAMPLE = r"""{
 "record_type": {
  "value": "PUBLIC",
  "desc": "Public"
 },
 "primary_id": "ID12345",
 "first_name": "JANE",
 "middle_name": "G",
 "last_name": "SMITH",
 "full_name": "JANE G SMITH",
 "user_title": {
  "value": "",
  "desc": ""
 },
 "job_category": {
  "value": "",
  "desc": ""
 },
 "job_description": "",
 "gender": {
  "value": "",
  "desc": ""
 },
 "user_group": {
  "value": "GST",
  "desc": "GST Guest Patron"
 },
 "campus_code": {
  "value": null,
  "desc": ""
 },
 "web_site_url": "",
 "cataloger_level": {
  "value": "00",
  "desc": "[00] Default Level"
 },
 "preferred_language": {
  "value": "en",
  "desc": "English"
 },
 "expiry_date": "2021-09-30Z",
 "purge_date": "2021-09-30Z",
 "account_type": {
  "value": "INTERNAL",
  "desc": "Internal"
 },
 "external_id": "",
 "password": "",
 "force_password_change": "",
 "status": {
  "value": "ACTIVE",
  "desc": "Active"
 },
 "status_date": "2021-07-25Z",
 "last_patron_activity_date": "2021-07-28Z",
 "contact_info": {
  "address": [
   {
    "line1": "ONE WASHINGTON ROAD",
    "line2": null,
    "line3": null,
    "line4": null,
    "line5": null,
    "city": "PRINCETON",
    "state_province": "NJ",
    "postal_code": "08544",
    "country": {
     "value": "",
     "desc": ""
    },
    "address_note": "",
    "start_date": "2021-07-23Z",
    "end_date": "2022-07-23Z",
    "preferred": true,
    "segment_type": "Internal",
    "address_type": [
     {
      "value": "home",
      "desc": "Home"
     },
     {
      "value": "work",
      "desc": "Work"
     },
     {
      "value": "school",
      "desc": "School"
     },
     {
      "value": "alternative",
      "desc": "Alternative"
     }
    ]
   }
  ],
  "email": [
   {
    "email_address": "pul@princeton.edu",
    "description": null,
    "preferred": true,
    "segment_type": "Internal",
    "email_type": [
     {
      "value": "personal",
      "desc": "Personal"
     },
     {
      "value": "school",
      "desc": "School"
     },
     {
      "value": "work",
      "desc": "Work"
     }
    ]
   }
  ],
  "phone": []
 },
 "pref_first_name": "",
 "pref_middle_name": "",
 "pref_last_name": "",
 "pref_name_suffix": "",
 "is_researcher": false,
 "researcher": null,
 "link": null,
 "user_identifier": [
  {
   "value": "22999000883100",
   "id_type": {
    "value": "BARCODE",
    "desc": "Barcode"
   },
   "note": "13 Apr 2015",
   "status": "ACTIVE",
   "segment_type": "Internal"
  }
 ],
 "user_role": [
  {
   "status": {
    "value": "ACTIVE",
    "desc": "Active"
   },
   "scope": {
    "value": "01PRI_INST",
    "desc": "Princeton University"
   },
   "role_type": {
    "value": "200",
    "desc": "Patron"
   },
   "parameter": []
  }
 ],
 "user_block": [],
 "user_note": [],
 "user_statistic": [
  {
   "statistic_category": {
    "value": "ALM",
    "desc": "ALM"
   },
   "segment_type": "Internal"
  }
 ],
 "proxy_for_user": []
}"""


if __name__ == "__main__":
    sys.exit(main())
