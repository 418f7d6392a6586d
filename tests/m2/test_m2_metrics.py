"""GET /metrics after real traffic (one process, and a real server's workers added up), and /health
on an empty, a loaded and a stale store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from m2_code_store.api import _max_age, create_app, health_of
from m2_code_store.config import StoreTarget
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.store import Layout
from simulators.redis_server import RedisServer, free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
LOOKUP = "/api/v0.1/m2-customer-codes"


def fill(client: redis.Redis, tmp_path: Path, body: str) -> None:
    path = tmp_path / "items.csv"
    path.write_text(HEADER + body)
    load(client, read_export(path))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics text, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def store_url(tmp_path: Path):
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def test_metrics_count_requests_barcodes_and_store_errors_after_real_traffic(store_url, tmp_path):
    fill(redis.Redis(port=store_url.port), tmp_path, "1234,,NX,\n5678,,NA,\n")
    http = create_app({"STORE_TARGET": StoreTarget(store_url.url, "REDIS_URL")}).test_client()
    before = http.get("/metrics").text
    assert http.get(f"{LOOKUP}?barcodes=1234,5678,999").status_code == 200       # the fast path
    assert http.get(f"{LOOKUP}?barcodes=[1234,%2299%22]").status_code == 200      # Flask's route
    assert http.get(f"{LOOKUP}?barcodes=1234,").status_code == 400
    assert http.get("/no/such/path").status_code == 404
    assert http.get("/wp-login.php").status_code == 404
    after = http.get("/metrics")
    assert after.status_code == 200 and after.content_type.startswith("text/plain; version=")

    def delta(name: str, **labels: str) -> float:
        return value(after.text, name, **labels) - value(before, name, **labels)

    assert delta("m2_api_requests_total", path=LOOKUP, status="200") == 2
    assert delta("m2_api_requests_total", path=LOOKUP, status="400") == 1
    assert delta("m2_api_requests_total", path="other", status="404") == 2  # unknown paths share one label
    assert delta("m2_api_requests_total", path="/metrics", status="200") == 1  # the first scrape
    assert delta("m2_api_barcodes_total", outcome="found") == 3
    assert delta("m2_api_barcodes_total", outcome="unknown") == 2
    assert delta("m2_api_request_duration_seconds_count", path=LOOKUP) == 3
    assert value(after.text, "m2_store_up") == 1
    assert value(after.text, "m2_store_records") == 2
    assert 0 <= value(after.text, "m2_store_dataset_age_seconds") < 120

    store_url.stop()
    assert http.get(f"{LOOKUP}?barcodes=1234").status_code == 503
    down = http.get("/metrics")
    assert down.status_code == 200, "a scrape still answers while the store is down"
    assert value(down.text, "m2_store_up") == 0
    assert value(down.text, "m2_api_store_errors_total") - value(after.text, "m2_api_store_errors_total") >= 2
    assert value(down.text, "m2_api_requests_total", path=LOOKUP, status="503") >= 1


def test_metrics_add_up_every_worker_of_a_real_server(store_url, tmp_path):
    """Under `m2-code-store serve --workers 2` each worker counts in PROMETHEUS_MULTIPROC_DIR; any
    worker's /metrics shows the total."""
    fill(redis.Redis(port=store_url.port), tmp_path, "1234,,NX,\n")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, "REDIS_URL": store_url.url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = subprocess.Popen([sys.executable, "-m", "m2_code_store", "serve", "--port", str(port), "--workers", "2"],
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        # Which worker accepts a connection is the kernel's choice: one idle worker can take every
        # request sent one at a time, so send them 4 at once, in rounds, until both have counted
        # lookups (read from each worker's own file: a worker makes its file when it starts).
        def lookups_by_worker() -> dict[str, float]:
            counted: dict[str, float] = {}
            for path in metrics_dir.glob("counter_*.db"):
                for key, count, *_ in MmapedDict.read_all_values_from_file(str(path)):
                    _, sample, labels, _ = json.loads(key)
                    if sample == "m2_api_requests_total" and labels.get("path") == LOOKUP:
                        counted[path.name] = counted.get(path.name, 0) + count
            return counted

        def lookup(_: int) -> None:
            urllib.request.urlopen(f"{base}{LOOKUP}?barcodes=1234,999", timeout=5).read()

        sent = 0
        with ThreadPoolExecutor(4) as pool:
            while sent < 60 or (sum(1 for n in lookups_by_worker().values() if n) < 2 and sent < 4000):
                list(pool.map(lookup, range(20)))
                sent += 20
        by_worker = lookups_by_worker()
        assert sum(1 for n in by_worker.values() if n) >= 2, f"one worker answered all {sent} lookups: {by_worker}"
        assert sum(by_worker.values()) == sent
        scrapes = [urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode() for _ in range(6)]
        for text in scrapes:  # whichever worker answered, it shows every worker's counts
            assert value(text, "m2_api_requests_total", path=LOOKUP, status="200") == sent
            assert value(text, "m2_api_barcodes_total", outcome="found") == sent
            assert value(text, "m2_api_barcodes_total", outcome="unknown") == sent
            assert value(text, "m2_store_records") == 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_health_answers_503_on_an_empty_store_and_200_once_loaded(store_url, tmp_path):
    http = create_app({"STORE_TARGET": StoreTarget(store_url.url, "REDIS_URL")}).test_client()
    empty = http.get("/health")
    assert empty.status_code == 503
    assert empty.json["status"] == "empty" and empty.json["store"] == "up" and empty.json["records"] == 0
    assert "write_csv_to_redis" in empty.json["message"]
    fill(redis.Redis(port=store_url.port), tmp_path, "1234,,NX,\n")
    loaded = http.get("/health")
    assert loaded.status_code == 200
    assert loaded.json["status"] == "ok" and loaded.json["records"] == 1 and loaded.json["loadedAt"]
    assert 0 <= loaded.json["ageSeconds"] < 120


def test_health_answers_503_when_the_data_set_is_older_than_the_configured_age(store_url, tmp_path, monkeypatch):
    client = redis.Redis(port=store_url.port)
    fill(client, tmp_path, "1234,,NX,\n")
    monkeypatch.setenv("M2_HEALTH_MAX_AGE", "36h")
    http = create_app({"STORE_TARGET": StoreTarget(store_url.url, "REDIS_URL")}).test_client()
    assert http.get("/health").status_code == 200
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="seconds")
    client.hset(Layout().meta, "loaded_at", two_days_ago)
    stale = http.get("/health")
    assert stale.status_code == 503 and stale.json["status"] == "stale"
    assert "loaded 48.0 hours ago, more than M2_HEALTH_MAX_AGE (36 hours)" in stale.json["message"]
    assert http.get(f"{LOOKUP}?barcodes=1234").status_code == 200, "lookups still answer from a stale store"
    fill(client, tmp_path, "1234,,NX,\n")  # the next load
    assert http.get("/health").status_code == 200


def test_health_decision():
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    loaded = {"records": 5, "generation": 3, "loadedAt": "2026-12-02T02:00:00+00:00"}
    assert health_of(loaded, None, now) == ({"status": "ok", "store": "up", **loaded, "ageSeconds": 36000}, 200)
    assert health_of(loaded, 11 * 3600, now)[1] == 200
    assert health_of(loaded, 9 * 3600, now)[1] == 503
    assert health_of({**loaded, "loadedAt": None}, None, now)[1] == 200
    body, status = health_of({**loaded, "loadedAt": None}, 3600, now)
    assert status == 503 and "has no load time" in body["message"]
    assert health_of({"records": 0, "generation": None, "loadedAt": None}, None, now)[1] == 503


@pytest.mark.parametrize(("text", "seconds"), [("", None), ("36h", 129600), ("90m", 5400), ("2d", 172800),
                                               ("3600", 3600), ("45s", 45), (" 1.5H ", 5400)])
def test_max_age_setting(text, seconds):
    assert _max_age(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1h", "abc", "36x", "h"])
def test_a_bad_max_age_is_refused_with_what_to_write(text):
    with pytest.raises(ConfigError, match="M2_HEALTH_MAX_AGE must be a duration such as 36h"):
        _max_age(text)


def test_an_unusable_metrics_directory_is_refused_at_start(tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR=.* is not a writable directory"):
        create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")})



def test_an_age_of_zero_is_still_a_metric(store_url, tmp_path):
    client = redis.Redis(port=store_url.port)
    fill(client, tmp_path, "1234,,NX,\n")
    client.hset(Layout().meta, "loaded_at", "2030-01-01T00:00:00+00:00")  # a clock ahead: age 0, not "no age"
    http = create_app({"STORE_TARGET": StoreTarget(store_url.url, "REDIS_URL")}).test_client()
    assert ("m2_store_dataset_age_seconds", ()) in samples(http.get("/metrics").text)


def test_a_store_outage_is_logged_once_per_pause_not_once_per_request(tmp_path, caplog):
    http = create_app({"STORE_TARGET": StoreTarget(f"redis://127.0.0.1:{free_port()}/0", "REDIS_URL")}).test_client()
    with caplog.at_level("WARNING", logger="m2_code_store.api"):
        for _ in range(20):
            assert http.get(f"{LOOKUP}?barcodes=1234").status_code == 503
    assert [r.getMessage() for r in caplog.records] == [
        "store lookup failed: ConnectionError; lookups answer 503 for the next 2 s"]


def test_a_max_barcodes_of_unicode_digits_is_refused_not_a_traceback(monkeypatch, redis_url):
    monkeypatch.setenv("M2_MAX_BARCODES", "²")
    with pytest.raises(ConfigError, match="M2_MAX_BARCODES must be a positive whole number"):
        create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")})


def test_a_stale_message_under_an_hour_says_minutes_or_seconds():
    from datetime import UTC, datetime, timedelta

    from m2_code_store.api import health_of

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    stats = {"records": 5, "generation": 3, "loadedAt": (now - timedelta(minutes=5)).isoformat()}
    body, status = health_of(stats, 60, now)
    assert status == 503 and body["message"] == ("the data set was loaded 5.0 minutes ago, more than "
                                                 "M2_HEALTH_MAX_AGE (1 minute): check the nightly load")
    body, status = health_of({**stats, "loadedAt": (now - timedelta(seconds=50)).isoformat()}, 30, now)
    assert "loaded 50 seconds ago, more than M2_HEALTH_MAX_AGE (30 seconds)" in body["message"]
    assert health_of(stats, 36 * 3600, now)[1] == 200
    assert "more than M2_HEALTH_MAX_AGE (61 seconds)" in health_of(stats, 61, now)[0]["message"]
    assert "(1,584 minutes)" in health_of({**stats, "loadedAt": "2026-11-01T00:00:00+00:00"}, 1.1 * 86400, now)[0]["message"]
    assert "more than M2_HEALTH_MAX_AGE (90 minutes)" in health_of({**stats, "loadedAt": "2026-12-01T00:00:00+00:00"},
                                                                   5400, now)[0]["message"]
