"""The lookup API: barcode → M2 customer code, as JSON.

``create_app`` builds a plain WSGI app (any WSGI server runs it; ``m2-code-store serve`` uses a
production one). Every answer, errors included, is the contract's envelope
``{"statusCode": S, "body": {...}}`` with HTTP status S; no path answers with an HTML page. With
``M2_RESPONSE_BODY=inner`` (the Lambda, or a proxy that expects what API Gateway hands on) the
HTTP body is the envelope's inner body, ``{"status": S, "data": [...]}`` or ``{"status": S,
"message": …, "error": …}``, which is what the consumers read; a lookup the store fails to
answer is then a 400, as the deployed original answered it (503 in the envelope).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from m2_code_store import docs, metrics
from m2_code_store.barcodes import BarcodeError, parse_barcodes
from m2_code_store.config import StoreTarget, connect, describe_error, redirected, resolve_target
from m2_code_store.rules import BARCODE_LIST_RE
from m2_code_store.store import CodeStore, StoreUnavailable
from toolconfig import ConfigError

log = logging.getLogger(__name__)
bp = Blueprint("m2", __name__)

UNAVAILABLE = "the customer code store is not answering; try again shortly"
MAX_QUERY_BYTES = 65_000  # granian (hyper) refuses longer request targets with an empty 414


class APIError(Exception):
    """An error answered as the contract's failure envelope."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        # "error" repeats "message": some deployed releases used that key and clients read it.
        return {"status": self.status, "message": self.message, "error": self.message}


def envelope(payload: dict[str, Any], status: int) -> Response:
    """A JSON response (orjson: the API's hot path)."""
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


def answer(body: dict[str, Any], status: int) -> Response:
    """The contract's answer: ``{"statusCode": S, "body": body}``, or *body* alone when the app
    serves inner bodies (``M2_RESPONSE_BODY=inner``)."""
    if current_app.config["M2_RESPONSE_BODY"] == "inner":
        return envelope(body, status)
    return envelope({"statusCode": status, "body": body}, status)


def store() -> CodeStore:
    return current_app.extensions["m2_store"]


@bp.get("/api/v0.1/m2-customer-code")
@bp.get("/api/v0.1/m2-customer-codes")
def customer_codes() -> Response:
    """Look up the customer code of every barcode in ``barcodes``."""
    if len(request.query_string) > MAX_QUERY_BYTES:
        raise APIError(400, f"the query string is {len(request.query_string):,} bytes, more than the "
                            f"{MAX_QUERY_BYTES:,} allowed: send fewer barcodes per request")
    try:
        barcodes = parse_barcodes(request.args.getlist("barcodes"), limit=current_app.config["M2_MAX_BARCODES"])
    except BarcodeError as exc:
        raise APIError(400, str(exc)) from exc
    return answer(*lookup_answer(store(), barcodes, unavailable=UNAVAILABLE_STATUS[current_app.config["M2_RESPONSE_BODY"]]))


# The status of a lookup the store failed to answer: 503 in the envelope (what a proxy or client
# retries); in the inner body, 400 as the deployed original answered it, which its consumers turn
# into "no codes" (discovery-api: response.status === 400 ? {} : response.data.reduce(...)).
UNAVAILABLE_STATUS = {"envelope": 503, "inner": 400}
_SAID = {"redirected": False}


def lookup_answer(store: CodeStore, barcodes: list[str], *, unavailable: int = 503) -> tuple[dict[str, Any], int]:
    """The inner body and status answering a lookup of *barcodes* (already checked); *unavailable*
    is the status when the store fails to answer."""
    try:
        codes = store.lookup(barcodes)
    except redis.exceptions.RedisError as exc:
        if redirected(exc):  # not paused: said once a process
            if not _SAID["redirected"]:
                _SAID["redirected"] = True
                log.error("lookups fail: %s", describe_error(exc, None))
        elif not isinstance(exc, StoreUnavailable):  # answered at once while the store pauses: said once, below
            log.warning("store lookup failed: %s; lookups answer %d for the next %g s", type(exc).__name__,
                        unavailable, store.pause)
        metrics.STORE_ERRORS.inc()
        return APIError(unavailable, UNAVAILABLE).body(), unavailable
    metrics.counted_lookup(codes)
    return {"status": 200, "data": [{"barcode": b, "m2CustomerCode": c} for b, c in zip(barcodes, codes, strict=True)]}, 200


class LookupFastPath:
    """WSGI middleware answering the lookup that clients send, ``GET <lookup path>?barcodes=<b>,<b>,…``,
    without Flask's request machinery; every other request goes on to Flask.

    The answers are the route's own (``lookup_answer``, the same envelope and headers): this only
    skips the request context, routing and query parsing that cost more CPU than the lookup
    itself at 200 barcodes a request. The query must be nothing but ``barcodes=`` and valid
    barcodes separated by literal commas, within the limits, so it needs no decoding and no
    message; anything else (percent-encoding, JSON lists, repeated parameters, errors) is Flask's.
    """

    PATHS = frozenset({"/api/v0.1/m2-customer-code", "/api/v0.1/m2-customer-codes"})
    STATUS_LINES = {200: "200 OK", 400: "400 BAD REQUEST", 503: "503 SERVICE UNAVAILABLE"}

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query: str = environ.get("QUERY_STRING", "")
        if (environ.get("PATH_INFO") in self.PATHS and environ.get("REQUEST_METHOD") == "GET"
                and query.startswith("barcodes=") and len(query) <= MAX_QUERY_BYTES
                and BARCODE_LIST_RE.fullmatch(query, 9)):
            barcodes = list(dict.fromkeys(query[9:].split(",")))
            config = self.app.config
            if len(barcodes) <= config["M2_MAX_BARCODES"]:
                shape = config["M2_RESPONSE_BODY"]
                body, status = lookup_answer(self.app.extensions["m2_store"], barcodes, unavailable=UNAVAILABLE_STATUS[shape])
                payload = orjson.dumps(body if shape == "inner" else {"statusCode": status, "body": body})
                start_response(self.STATUS_LINES[status],
                               [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
                return [payload]
        return self.wsgi_app(environ, start_response)


@bp.get("/health")
def health() -> Response:
    """200 while the store answers with a data set loaded within M2_HEALTH_MAX_AGE; 503 otherwise."""
    try:
        stats = store().stats()
    except redis.exceptions.RedisError as exc:
        log.warning("health check failed: %s", type(exc).__name__)
        metrics.STORE_ERRORS.inc()
        return envelope({"status": "unavailable", "store": "down", "message": UNAVAILABLE}, 503)
    return envelope(*health_of(stats, current_app.config["M2_HEALTH_MAX_AGE"], datetime.now(UTC)))


def health_of(stats: dict[str, Any], max_age: float | None, now: datetime) -> tuple[dict[str, Any], int]:
    """/health's body and status for the store's *stats*: 503 when it holds no data set, or when
    *max_age* seconds are set and the data set is older (a nightly load that stopped happening)."""
    body = {"status": "ok", "store": "up", **stats}
    if not stats["generation"]:
        return {**body, "status": "empty", "message": "the store holds no data set: load the LAS export "
                                                      "(write_csv_to_redis FILE.csv)"}, 503
    age = metrics.dataset_age(stats["loadedAt"], now)
    if age is not None:
        body["ageSeconds"] = round(age)
    if max_age is not None and (age is None or age > max_age):
        if age is None:
            message = (f"the data set has no load time, so its age cannot be checked against M2_HEALTH_MAX_AGE "
                       f"({_hours(max_age)}): load the export again")
        else:
            message = (f"the data set was loaded {_hours(age, exact=False)} ago, more than M2_HEALTH_MAX_AGE "
                       f"({_hours(max_age)}): check the nightly load")
        return {**body, "status": "stale", "message": message}, 503
    return body, 200


def _hours(seconds: float, *, exact: bool = True) -> str:
    """A setting (*exact*) in the largest unit that holds it whole: ``36 hours``, ``90 minutes``,
    ``61 seconds``; an age to a tenth: ``48.0 hours``, ``5.0 minutes``, ``50 seconds``."""
    seconds = round(seconds, 6)  # 1.1d is 95040.00000000001 s
    for size, unit in ((3600, "hour"), (60, "minute")):
        if seconds >= size and (not exact or seconds % size == 0):
            amount = f"{seconds / size:,.1f}" if not exact else f"{seconds // size:,.0f}"
            return f"{amount} {unit}{'' if amount == '1' else 's'}"
    amount = f"{seconds:,.0f}" if not exact else f"{seconds:,.10g}"
    return f"{amount} second{'' if amount == '1' else 's'}"


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Counts of requests, barcodes and store errors across the server's workers, and the data set's
    record count and age (Prometheus text format)."""
    text, content_type = metrics.exposition(store().stats)
    return Response(text, content_type=content_type)


@bp.get("/api/v0.1/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of this API."""
    return Response(current_app.extensions["m2_openapi"], mimetype="application/json")


def handle_api_error(error: APIError) -> Response:
    return answer(error.body(), error.status)


def handle_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    response = answer(APIError(status, error.description or error.name).body(), status)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(error.valid_methods))  # RFC 9110: a 405 lists the allowed methods
    return response


def handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error")
    return answer(APIError(500, "internal error; the service log has the details").body(), 500)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _max_age(value: str) -> float | None:
    """M2_HEALTH_MAX_AGE: ``36h``, ``90m``, ``2d`` or seconds; empty for no limit."""
    text = value.strip().lower()
    if not text:
        return None
    number, unit = (text[:-1], text[-1]) if text[-1] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise ConfigError(f"M2_HEALTH_MAX_AGE must be a duration such as 36h, 90m, 2d or a number of seconds "
                          f"(got {value!r}); leave it unset for no limit")
    return seconds


def _max_barcodes(value: str) -> int:
    if not value.strip():
        return 1000
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:
        raise ConfigError(f"M2_MAX_BARCODES must be a positive whole number (got {value!r})")
    return int(value)


RESPONSE_BODIES = ("envelope", "inner")


def _response_body(value: str) -> str:
    choice = value.strip().lower() or "envelope"
    if choice not in RESPONSE_BODIES:
        raise ConfigError(f"M2_RESPONSE_BODY must be envelope (the default) or inner, not {value!r}")
    return choice


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the API. ``test_config`` may set REDIS_CLIENT (a ready client) or STORE_TARGET."""
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # a // path is the JSON 404, not werkzeug's HTML redirect to an absolute URL
    app.config.from_mapping(
        M2_MAX_BARCODES=_max_barcodes(os.environ.get("M2_MAX_BARCODES", "")),
        M2_RESPONSE_BODY=_response_body(os.environ.get("M2_RESPONSE_BODY", "")),
        M2_HEALTH_MAX_AGE=_max_age(os.environ.get("M2_HEALTH_MAX_AGE", "")),
        M2_REDIS_TIMEOUT=0.2,  # per attempt; two calls of connect + one retry stay inside 1 s
        REDIS_CLIENT=None,
        STORE_TARGET=None,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    metrics.check_environment()
    init_store(app)
    app.register_blueprint(bp)
    app.register_blueprint(docs.bp)
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
    app.wsgi_app = metrics.Instrumented(LookupFastPath(app))  # type: ignore[method-assign]
    return app


def init_store(app: Flask) -> None:
    """Create the Redis client and the store for *app*: a single Redis, or a Redis Cluster found
    from the node the configuration names (one INFO; M2_REDIS_CLUSTER overrides it). A store that
    does not answer yet is asked again by the first request that reaches it."""
    from m2_code_store.cluster import code_store
    from m2_code_store.config import connect_cluster

    client = app.config["REDIS_CLIENT"]
    if client is None:
        target: StoreTarget = app.config["STORE_TARGET"] or resolve_target()
        timeout = float(app.config["M2_REDIS_TIMEOUT"])
        client = connect(target, timeout=timeout, retries=1, health_check_interval=0)
        app.extensions["m2_store"] = code_store(
            client, mode=target.cluster,
            connect_cluster=lambda: connect_cluster(target, timeout=timeout, retries=1))
    else:
        app.extensions["m2_store"] = code_store(client)
    app.extensions["m2_openapi"] = (Path(__file__).parent / "openapi.json").read_bytes()
