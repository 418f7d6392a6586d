"""The lookup API: barcodes parsing, the envelope, 400s, 503 against a dead store, recovery."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from m2_code_store.api import LookupFastPath, create_app
from m2_code_store.barcodes import BarcodeError, _checked, parse_barcodes
from m2_code_store.config import StoreTarget
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from simulators.redis_server import RedisServer, free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
PATHS = ["/api/v0.1/m2-customer-code", "/api/v0.1/m2-customer-codes"]


def fill(client: redis.Redis, tmp_path: Path, body: str) -> None:
    path = tmp_path / "items.csv"
    path.write_text(HEADER + body)
    load(client, read_export(path))


@pytest.fixture
def app(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    fill(client, tmp_path, "1234,,NX,\n5678,,NA,\n33433077906331,,QQ,\n")
    return create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")})


@pytest.fixture
def http(app):
    return app.test_client()


def data_of(response) -> list[dict]:
    body = response.get_json()
    assert body["statusCode"] == response.status_code == body["body"]["status"]
    return body["body"]["data"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "query",
    [
        "barcodes=1234,5678,999",
        "barcodes=[1234,5678,999]",
        "barcodes=[1234, \"5678\", \"999\"]",
        "barcodes=[\"1234\",\"5678\",\"999\"]",
        "barcodes=1234&barcodes=5678&barcodes=999",
        "barcodes=1234,5678&barcodes=999",
        "barcodes=%201234%20,5678,999",
        "barcodes=1234,5678,1234,999",
    ],
)
def test_every_barcodes_form_answers_in_request_order(http, path, query):
    response = http.get(f"{path}?{query}")
    assert response.status_code == 200
    assert response.json == {"statusCode": 200, "body": {"status": 200, "data": [
        {"barcode": "1234", "m2CustomerCode": "NX"},
        {"barcode": "5678", "m2CustomerCode": "NA"},
        {"barcode": "999", "m2CustomerCode": None},
    ]}}


def test_unknown_barcodes_only_still_200(http):
    response = http.get("/api/v0.1/m2-customer-codes?barcodes=1,2")
    assert data_of(response) == [{"barcode": "1", "m2CustomerCode": None}, {"barcode": "2", "m2CustomerCode": None}]


def test_fourteen_digit_barcode_as_json_number_keeps_every_digit(http):
    response = http.get("/api/v0.1/m2-customer-code?barcodes=[33433077906331]")
    assert data_of(response) == [{"barcode": "33433077906331", "m2CustomerCode": "QQ"}]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "query parameter 'barcodes' is missing: add ?barcodes=1234,5678"),
        ("barcodes=", "query parameter 'barcodes' is empty: give one or more barcodes, e.g. ?barcodes=1234,5678"),
        ("barcodes=[]", "query parameter 'barcodes' is empty: give one or more barcodes, e.g. ?barcodes=1234,5678"),
        ("barcodes=1,,2", "barcode 2 of 3 is empty (two commas in a row, or a trailing comma?)"),
        ("barcodes=[1,2", "barcodes value '[1,2' has an unbalanced bracket"),
        ("barcodes=[1.5]", "barcodes list holds 1.5: each barcode must be a string or a whole number"),
        ("barcodes=[null]", "barcodes list holds null: each barcode must be a string or a whole number"),
        ("barcodes=12%2034", "barcode '12 34' has characters outside A-Z, a-z, 0-9, '.', '_' and '-'"),
        ("barcodes=12%3Cscript%3E", "barcode '12<script>' has characters outside A-Z, a-z, 0-9, '.', '_' and '-'"),
        ("barcodes=" + "9" * 49, "barcode '" + "9" * 40 + "'… (49 characters) is longer than 48 characters"),
        ("barcodes=" + ",".join(str(i) for i in range(1001)), "too many barcodes: 1001 given, at most 1000 per request; split the request"),
    ],
)
def test_bad_requests_get_400_with_a_message_that_names_the_problem(http, query, message):
    response = http.get(f"/api/v0.1/m2-customer-codes?{query}")
    assert response.status_code == 400
    assert response.json == {"statusCode": 400, "body": {"status": 400, "message": message, "error": message}}


def test_a_thousand_barcodes_are_answered(http):
    barcodes = [str(100000 + i) for i in range(1000)]
    response = http.get("/api/v0.1/m2-customer-codes?barcodes=" + ",".join(barcodes))
    assert [row["barcode"] for row in data_of(response)] == barcodes


def test_unknown_path_and_method_answer_json(http):
    assert http.get("/nope").json["statusCode"] == 404
    response = http.post("/api/v0.1/m2-customer-codes?barcodes=1")
    assert response.status_code == 405 and response.json["body"]["status"] == 405


def test_health_reports_store_and_record_count(http):
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json["store"] == "up" and response.json["records"] == 3


def test_max_barcodes_comes_from_the_environment(monkeypatch, redis_url):
    monkeypatch.setenv("M2_MAX_BARCODES", "2")
    http = create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")}).test_client()
    assert http.get("/api/v0.1/m2-customer-codes?barcodes=1,2,3").json["body"]["message"] == (
        "too many barcodes: 3 given, at most 2 per request; split the request")
    monkeypatch.setenv("M2_MAX_BARCODES", "lots")
    with pytest.raises(ConfigError, match=r"^M2_MAX_BARCODES must be a positive whole number \(got 'lots'\)$"):
        create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")})


def test_openapi_describes_both_paths(http):
    spec = http.get("/api/v0.1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert set(PATHS) <= set(spec["paths"])


def test_store_down_gives_503_within_a_second_and_recovers_without_restart(tmp_path):
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis").start(persist=True)
    try:
        fill(redis.Redis(port=server.port), tmp_path, "1234,,NX,\n")
        app = create_app({"STORE_TARGET": StoreTarget(server.url, "REDIS_URL")})
        http = app.test_client()
        assert data_of(http.get("/api/v0.1/m2-customer-codes?barcodes=1234")) == [{"barcode": "1234", "m2CustomerCode": "NX"}]
        server.stop()
        for path in ("/api/v0.1/m2-customer-codes?barcodes=1234", "/health"):
            started = time.monotonic()
            response = http.get(path)
            assert time.monotonic() - started < 1.0
            assert response.status_code == 503
        assert http.get("/api/v0.1/m2-customer-codes?barcodes=1234").json == {"statusCode": 503, "body": {
            "status": 503,
            "message": "the customer code store is not answering; try again shortly",
            "error": "the customer code store is not answering; try again shortly"}}
        server.start(persist=True)
        deadline = time.monotonic() + 5  # the circuit breaker tries the store again after its pause
        while (response := http.get("/api/v0.1/m2-customer-codes?barcodes=1234")).status_code == 503:
            assert time.monotonic() < deadline, "the API did not recover"
            time.sleep(0.1)
        assert data_of(response) == [{"barcode": "1234", "m2CustomerCode": "NX"}]
        assert http.get("/health").json["store"] == "up"
    finally:
        server.stop()


def test_store_that_accepts_but_never_answers_gives_503_within_a_second():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        http = create_app({"STORE_TARGET": StoreTarget(f"redis://127.0.0.1:{port}/0", "REDIS_URL")}).test_client()
        started = time.monotonic()
        response = http.get("/api/v0.1/m2-customer-codes?barcodes=1234")
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503


def test_after_a_timeout_requests_fail_fast_instead_of_each_waiting():
    """Circuit breaker: with a hung store, the requests after the first get their 503 at once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        http = create_app({"STORE_TARGET": StoreTarget(f"redis://127.0.0.1:{port}/0", "REDIS_URL")}).test_client()
        assert http.get("/api/v0.1/m2-customer-codes?barcodes=1").status_code == 503
        started = time.monotonic()
        statuses = [http.get("/api/v0.1/m2-customer-codes?barcodes=1").status_code for _ in range(20)]
        assert statuses == [503] * 20
        assert time.monotonic() - started < 1.0  # 20 timeouts would take 8 s


def test_query_string_over_the_limit_is_refused_before_parsing(http):
    response = http.get("/api/v0.1/m2-customer-codes?barcodes=" + "1," * 40_000 + "1")
    assert response.status_code == 400
    assert response.json["body"]["message"] == (
        "the query string is 80,010 bytes, more than the 65,000 allowed: send fewer barcodes per request")


def test_openapi_documents_every_status_the_api_answers(http):
    spec = http.get("/api/v0.1/openapi.json").json
    for path in PATHS:
        assert set(spec["paths"][path]["get"]["responses"]) == {"200", "400", "404", "405", "500", "503"}
    assert set(spec["paths"]["/health"]["get"]["responses"]) == {"200", "503"}


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_serve_runs_the_app_under_a_production_server(server, redis_url, tmp_path):
    fill(redis.Redis.from_url(redis_url), tmp_path, "1234,,NX,\n")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "m2_code_store", "serve", "--port", str(port), "--workers", "1", "--server", server],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        longest = [f"{i:048d}" for i in range(999)]  # the longest barcodes, as many as allowed: ~49 KB
        url = f"http://127.0.0.1:{port}/api/v0.1/m2-customer-codes?barcodes=" + ",".join(["1234", *longest])
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(process.stderr.read().decode() if process.poll() is not None else "server did not start") from None
                time.sleep(0.2)
        assert body["body"]["data"][0] == {"barcode": "1234", "m2CustomerCode": "NX"}
        assert len(body["body"]["data"]) == 1000
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_the_api_process_imports_no_pyarrow_numpy_or_pandas_even_after_a_lookup(redis_url, tmp_path):
    """The loader's column machinery stays out of the API's workers (and the Lambda's 128 MB)."""
    fill(redis.Redis.from_url(redis_url), tmp_path, "1234,,NX,\n")
    script = (
        "import sys\n"
        "from m2_code_store.api import create_app\n"
        "from m2_code_store.config import StoreTarget\n"
        f"app = create_app({{'STORE_TARGET': StoreTarget({redis_url!r}, 'REDIS_URL')}})\n"
        "body = app.test_client().get('/api/v0.1/m2-customer-codes?barcodes=1234,99').json\n"
        "assert body['body']['data'][0]['m2CustomerCode'] == 'NX', body\n"
        "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@given(st.lists(st.from_regex(r"[A-Za-z0-9._-]{1,48}", fullmatch=True), min_size=1, max_size=30))
def test_the_one_regex_path_answers_as_the_checked_path(barcodes):
    """What clients send (valid barcodes, comma-separated) takes one regular expression; the
    result is the same as checking barcode by barcode."""
    value = ",".join(barcodes)
    assert parse_barcodes([value], limit=1000) == list(dict.fromkeys(_checked([value])))
    with pytest.raises(BarcodeError, match="is empty"):
        parse_barcodes([value + ","], limit=1000)


def test_behind_a_proxy_that_expects_the_inner_body(redis_url, tmp_path, monkeypatch):
    """M2_RESPONSE_BODY=inner serves what API Gateway hands the consumers: {"status", "data"}, and
    the failure body; the default stays the envelope; anything else is refused at start."""
    client = redis.Redis.from_url(redis_url)
    fill(client, tmp_path, "1234,,NX,\n")
    monkeypatch.setenv("M2_RESPONSE_BODY", "inner")
    http = create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")}).test_client()
    assert http.get("/api/v0.1/m2-customer-codes?barcodes=1234").json == {
        "status": 200, "data": [{"barcode": "1234", "m2CustomerCode": "NX"}]}
    bad = http.get("/api/v0.1/m2-customer-codes")
    assert bad.status_code == bad.json["status"] == 400 and bad.json["message"] == bad.json["error"]
    monkeypatch.setenv("M2_RESPONSE_BODY", "wrapped")
    with pytest.raises(ConfigError, match="M2_RESPONSE_BODY must be envelope .* or inner, not 'wrapped'"):
        create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")})


def _call(wsgi_app, query: str, method: str = "GET", path: str = PATHS[1]) -> tuple[str, list, bytes]:
    from werkzeug.test import EnvironBuilder

    answered: list = []
    environ = EnvironBuilder(path=path, method=method, query_string=query).get_environ()
    body = b"".join(wsgi_app(environ, lambda status, headers, exc_info=None: answered.extend((status, headers))))
    return answered[0], answered[1], body


def _fast_and_flask(app):
    """The app's WSGI entry (the fast path in front), and Flask alone behind it, counting its calls."""
    flask_calls: list[str] = []
    fast = app.wsgi_app.wsgi_app  # inside the metrics' middleware
    assert isinstance(fast, LookupFastPath)
    flask_alone = fast.wsgi_app

    def counted(environ, start_response):
        flask_calls.append(environ["QUERY_STRING"])
        return flask_alone(environ, start_response)

    fast.wsgi_app = counted
    return fast, flask_alone, flask_calls


@pytest.mark.parametrize("inner", [False, True])
def test_the_fast_path_answers_byte_for_byte_as_the_flask_route(redis_url, tmp_path, monkeypatch, inner):
    """What clients send is answered before Flask; the bytes, status and headers are the route's."""
    if inner:
        monkeypatch.setenv("M2_RESPONSE_BODY", "inner")
    fill(redis.Redis.from_url(redis_url), tmp_path, "1234,,NX,\n5678,,NA,\n")
    fast, flask_alone, flask_calls = _fast_and_flask(create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")}))
    many = ",".join(str(33433000000000 + n) for n in range(200)) + ",1234"
    for query in ("barcodes=1234", "barcodes=5678,999,1234,5678", "barcodes=a.b_c-D", f"barcodes={many}"):
        assert _call(fast, query) == _call(flask_alone, query)
    assert flask_calls == []  # every one of them took the fast path
    status, headers, body = _call(fast, "barcodes=5678,999")
    assert status == "200 OK" and ("Content-Type", "application/json") in headers
    inner_body = {"status": 200, "data": [{"barcode": "5678", "m2CustomerCode": "NA"}, {"barcode": "999", "m2CustomerCode": None}]}
    assert json.loads(body) == (inner_body if inner else {"statusCode": 200, "body": inner_body})


@pytest.mark.parametrize("query", [
    "barcodes=1234%2C5678",              # percent-encoded comma
    "barcodes=[1234,5678]",               # the documented bracketed form
    "barcodes=1234&barcodes=5678",        # repeated parameter
    "barcodes=1234,",                     # trailing comma: the route's 400 and its message
    "barcodes=1234&other=1",
    "barcodes=",
    "",
])
def test_anything_but_a_plain_comma_list_goes_on_to_flask(app, query):
    fast, _, flask_calls = _fast_and_flask(app)
    _call(fast, query)
    assert flask_calls == [query]


def test_the_fast_path_leaves_limits_heads_and_other_methods_to_flask(redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv("M2_MAX_BARCODES", "2")
    fill(redis.Redis.from_url(redis_url), tmp_path, "1234,,NX,\n")
    fast, _, flask_calls = _fast_and_flask(create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")}))
    status, _, body = _call(fast, "barcodes=1,2,3")
    assert status.startswith("400") and "at most 2 per request" in json.loads(body)["body"]["message"]
    assert _call(fast, "barcodes=1,2,1")[0] == "200 OK"  # duplicates count once, as in the route
    _call(fast, "barcodes=1234", method="HEAD")
    _call(fast, "barcodes=1234", method="POST")
    _call(fast, "barcodes=1234", path="/api/v0.1/m2-customer-codes/")
    assert flask_calls == ["barcodes=1,2,3", "barcodes=1234", "barcodes=1234", "barcodes=1234"]


def test_the_fast_path_answers_503_as_the_route_when_the_store_is_down(tmp_path):
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis").start()
    try:
        fill(redis.Redis(port=server.port), tmp_path, "1234,,NX,\n")
        fast, flask_alone, flask_calls = _fast_and_flask(create_app({"STORE_TARGET": StoreTarget(server.url, "REDIS_URL")}))
        assert _call(fast, "barcodes=1234")[0] == "200 OK"
    finally:
        server.stop()
    down = _call(fast, "barcodes=1234")
    assert down[0].startswith("503") and down == _call(flask_alone, "barcodes=1234")
    assert json.loads(down[2])["body"]["message"] == "the customer code store is not answering; try again shortly"
    assert flask_calls == []


def test_the_store_looks_up_any_string_it_is_given(redis_client, tmp_path):
    """CodeStore.lookup is also called without the API's checks (m2-code-store lookup): a
    barcode with a newline or beyond ASCII is looked up as itself, and the answers stay in order."""
    from m2_code_store.store import CodeStore

    fill(redis_client, tmp_path, "1234,,NX,\n5678,,NA,\n")
    assert CodeStore(redis_client).lookup(["1234", "12\n34", "é", "5678", ""]) == ["NX", None, None, "NA", None]


def test_behind_a_proxy_that_expects_the_inner_body_a_store_failure_is_the_originals_400(monkeypatch):
    """In the inner body a lookup the store fails to answer is a 400, as the deployed original
    answered it (its consumers read status 400 as "no codes"), on the fast path and Flask's alike."""
    monkeypatch.setenv("M2_RESPONSE_BODY", "inner")
    http = create_app({"STORE_TARGET": StoreTarget(f"redis://127.0.0.1:{free_port()}/0", "REDIS_URL")}).test_client()
    for query in ("barcodes=1234,5678", "barcodes=[1234,5678]"):
        response = http.get(f"{PATHS[1]}?{query}")
        assert response.status_code == 400
        assert response.json == {"status": 400, "message": "the customer code store is not answering; try again shortly",
                                 "error": "the customer code store is not answering; try again shortly"}
    assert http.get("/health").status_code == 503  # what a load balancer acts on stays 503
