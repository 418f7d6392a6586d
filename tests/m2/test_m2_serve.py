"""The API under gunicorn run by hand, with the settings the project ships."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from m2_code_store.las_csv import read_export
from m2_code_store.loader import load
from simulators.redis_server import free_port

HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
GUNICORN_CONFIG = "python:m2_code_store.gunicorn_conf"
#: 1000 barcodes as the catalog sends them: a query string of about 15 KB.
THOUSAND = [f"33433{n:09d}" for n in range(1000)]
LOOKUP = "/api/v0.1/m2-customer-codes?barcodes=" + ",".join(THOUSAND)


def fill(redis_url: str, tmp_path: Path) -> None:
    """The first of the thousand barcodes is NA; the others are unknown."""
    path = tmp_path / "items.csv"
    path.write_text(HEADER + f"{THOUSAND[0]},2024-01-01,NA,\n")
    client = redis.Redis.from_url(redis_url)
    load(client, read_export(path))
    client.close()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize(("config", "status"), [
    (["--config", GUNICORN_CONFIG], 200),
    ([], 414),  # gunicorn's own limit of 4094 bytes for the request line
], ids=["with-the-shipped-config", "without"])
def test_gunicorn_run_with_the_shipped_config_answers_1000_barcodes(config, status, redis_url, tmp_path):
    """The README's `gunicorn -c python:m2_code_store.gunicorn_conf 'm2_code_store.api:create_app()'`."""
    fill(redis_url, tmp_path)
    port = free_port()
    err = tmp_path / "gunicorn.err"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *config, "m2_code_store.api:create_app()", "--bind", f"127.0.0.1:{port}",
             "--workers", "1"],
            cwd=tmp_path, env={**os.environ, "REDIS_URL": redis_url}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert process.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        answered, body = get(port, LOOKUP)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert answered == status
    if status == 200:
        assert len(json.loads(body)["body"]["data"]) == 1000
