"""Prometheus metrics of the lookup API, served at ``GET /metrics``.

- ``m2_api_requests_total{path, status}`` and ``m2_api_request_duration_seconds{path}``: every
  request, by route (anything that is not one of the API's paths counts as ``other``, so a scanner
  cannot grow the label set);
- ``m2_api_barcodes_total{outcome}``: barcodes looked up, ``found`` or ``unknown``;
- ``m2_api_store_errors_total``: lookups and health checks the store failed to answer;
- ``m2_store_up``, ``m2_store_records``, ``m2_store_dataset_age_seconds``: read from the store when
  /metrics is scraped (the live data set's record count and the time since it was loaded).

Under a server with several worker processes each worker counts in files of the directory named by
``PROMETHEUS_MULTIPROC_DIR`` (``m2-code-store serve`` makes one) and /metrics adds every worker's
counts up: prometheus_client's multiprocess mode, chosen by that variable when the module is first
imported. Without it (one process: the Lambda, a test) the counts are the process' own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from toolconfig import ConfigError

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
PATHS = ("/api/v0.1/m2-customer-code", "/api/v0.1/m2-customer-codes", "/health", "/metrics", "/api/v0.1/openapi.json")
DOCS_PREFIX = "/api/v0.1/docs"

REQUESTS = Counter("m2_api_requests", "HTTP requests answered, by path and status", ["path", "status"])
DURATION = Histogram("m2_api_request_duration_seconds", "Time from a request's arrival in the app to its answer, by path",
                     ["path"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
BARCODES = Counter("m2_api_barcodes", "Barcodes looked up, by outcome", ["outcome"])
FOUND = BARCODES.labels(outcome="found")
UNKNOWN = BARCODES.labels(outcome="unknown")
STORE_ERRORS = Counter("m2_api_store_errors", "Lookups and health checks the store failed to answer")


def check_environment(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Refuse to start with a multiprocess directory that cannot be used (the first count would fail)."""
    directory = environ.get(MULTIPROCESS_DIR) or environ.get(MULTIPROCESS_DIR.lower())
    if directory and not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
        raise ConfigError(f"{MULTIPROCESS_DIR}={directory!r} is not a writable directory: create it (empty) "
                          f"before the server starts, or unset it to count in each process alone")


def path_label(path: str) -> str:
    if path in PATHS:
        return path
    return DOCS_PREFIX if path.startswith(DOCS_PREFIX) else "other"


def counted_lookup(codes: list[str | None]) -> None:
    """Count a lookup's barcodes by outcome."""
    unknown = codes.count(None)
    if unknown:
        UNKNOWN.inc(unknown)
    if len(codes) > unknown:
        FOUND.inc(len(codes) - unknown)


class Instrumented:
    """WSGI middleware counting and timing every request of *wsgi_app*."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        statuses: list[str] = []

        def recording_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, recording_start_response)
        finally:
            key = (path_label(environ.get("PATH_INFO", "")), statuses[-1][:3] if statuses else "500")
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (REQUESTS.labels(*key), DURATION.labels(key[0]))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


class StoreCollector(Collector):
    """The live data set's figures, read from the store at each scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]], clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.stats = stats
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("m2_store_up", "1 when the store answered this scrape, 0 when it did not")
        try:
            stats = self.stats()
        except redis.exceptions.RedisError:
            STORE_ERRORS.inc()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("m2_store_records", "Records in the live data set (0: the store holds none)",
                                value=stats["records"])
        if (age := dataset_age(stats.get("loadedAt"), self.clock())) is not None:
            yield GaugeMetricFamily("m2_store_dataset_age_seconds", "Seconds since the live data set was loaded",
                                    value=age)


def dataset_age(loaded_at: str | None, now: datetime) -> float | None:
    """Seconds since *loaded_at* (the store's ISO 8601 UTC time), or None when it is missing or unreadable."""
    if not loaded_at:
        return None
    try:
        loaded = datetime.fromisoformat(loaded_at)
    except ValueError:
        return None
    if loaded.tzinfo is None:
        loaded = loaded.replace(tzinfo=UTC)
    return max(0.0, (now - loaded).total_seconds())


def exposition(store_stats: Callable[[], dict[str, Any]]) -> tuple[bytes, str]:
    """The text of /metrics: every worker's counts (or this process' own), and the store's figures."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR) or os.environ.get(MULTIPROCESS_DIR.lower()):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY  # this process' metrics, plus its process and platform collectors
    store = generate_latest(_single(StoreCollector(store_stats)))  # first: a failed read is counted in this scrape
    return generate_latest(registry) + store, CONTENT_TYPE_LATEST


def _single(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
