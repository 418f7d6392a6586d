"""Where the store is: REDIS_URL, then the KMS-encrypted endpoint, then the embedded Redis."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from m2_code_store.config import StoreTarget, connect, redact_url, resolve_target
from m2_code_store.embedded import stop_local_server
from simulators.redis_server import free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def encrypt(kms, plaintext: str) -> str:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    return base64.b64encode(kms.encrypt(KeyId=key_id, Plaintext=plaintext.encode())["CiphertextBlob"]).decode()


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def test_redis_url_comes_first():
    target = resolve_target({"REDIS_URL": "rediss://:pw@cache.example.edu:6380/0", "REDIS_ENDPOINT_ENCRYPTED": "xx"})
    assert (target.url, target.source) == ("rediss://:pw@cache.example.edu:6380/0", "REDIS_URL")
    assert target.shown == "rediss://:***@cache.example.edu:6380/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "REDIS_URL must start with redis://, rediss:// or unix://"),
        ("redis://:6379", "REDIS_URL has no host name"),
        ("redis://cache:port", "REDIS_URL has an invalid port number"),
        ("redis://:s3cret@cache:99999/0", "REDIS_URL has an invalid port number"),
        ("redis://:s3cret@[::1/5", "REDIS_URL has an unclosed '[' (a bracketed IPv6 address): expected "
                                   "redis://[:password@]host[:port][/db]"),
        ("redis://:s3cret@cache:6379/zero", "REDIS_URL has a database that is not a number after the host"),
        ("redis://:s3cret@cache:6379/0?db=x", "REDIS_URL has an invalid value for 'db'"),
        ("redis://:s3cret@cache:6379/0?socket_timeout=abc", "REDIS_URL has an invalid value for 'socket_timeout'"),
    ],
)
def test_bad_redis_url_is_refused(url, message):
    with pytest.raises(ConfigError) as info:
        resolve_target({"REDIS_URL": url})
    assert str(info.value).startswith(message)
    assert "s3cret" not in str(info.value)


def test_at_a_terminal_without_settings_the_embedded_store_is_used_and_announced(tmp_path):
    from m2_code_store.config import embedded_note

    target = resolve_target({"M2_DATA_DIR": str(tmp_path)}, interactive=True)
    assert (target.source, target.data_dir, target.fallback) == ("embedded", tmp_path.resolve(), True)
    assert embedded_note(target) == (
        f"REDIS_URL and REDIS_ENDPOINT_ENCRYPTED are not set: using the embedded local Redis in "
        f"{tmp_path.resolve()} (set M2_STORE=embedded to choose it explicitly)")


def test_without_a_terminal_the_embedded_store_must_be_chosen_explicitly(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_target({"M2_DATA_DIR": str(tmp_path)}, interactive=False)
    assert str(info.value) == (
        "no store configured: set REDIS_URL (redis://host:port/db) or REDIS_ENDPOINT_ENCRYPTED (with AWS_REGION); "
        "this process has no terminal, so it does not fall back to the embedded local Redis. "
        "To use the embedded store on purpose, set M2_STORE=embedded")
    target = resolve_target({"M2_DATA_DIR": str(tmp_path), "M2_STORE": "embedded"}, interactive=False)
    assert (target.source, target.fallback) == ("embedded", False)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"M2_STORE": "embedded", "REDIS_URL": "redis://cache:6379/0"},
         "M2_STORE=embedded and REDIS_URL are both set: unset one of them"),
        ({"M2_STORE": "local"}, "M2_STORE must be 'embedded' or unset (got 'local')"),
    ],
)
def test_contradictory_or_unknown_store_choice_is_refused(environ, message):
    with pytest.raises(ConfigError) as info:
        resolve_target(environ, interactive=True)
    assert str(info.value) == message


@mock_aws
@pytest.mark.parametrize(
    ("plaintext", "environ", "url"),
    [
        ("m2.abc123.0001.use1.cache.amazonaws.com", {}, "redis://m2.abc123.0001.use1.cache.amazonaws.com:6379/0"),
        ("m2.abc123.cache.amazonaws.com:6380", {"REDIS_TLS": "true"}, "rediss://m2.abc123.cache.amazonaws.com:6380/0"),
        ("rediss://:s3cret@m2.abc123.cache.amazonaws.com:6379/0", {}, "rediss://:s3cret@m2.abc123.cache.amazonaws.com:6379/0"),
    ],
)
def test_kms_encrypted_endpoint_forms(aws_env, plaintext, environ, url):
    ciphertext = encrypt(boto3.client("kms", region_name="us-east-1"), plaintext)
    target = resolve_target({"REDIS_ENDPOINT_ENCRYPTED": ciphertext, "AWS_REGION": "us-east-1", **environ})
    assert (target.url, target.source) == (url, "REDIS_ENDPOINT_ENCRYPTED")
    assert target.shown == "the Redis endpoint in REDIS_ENDPOINT_ENCRYPTED"  # never the decrypted value


@mock_aws
def test_kms_plaintext_that_is_no_endpoint_is_refused_without_showing_it(aws_env):
    ciphertext = encrypt(boto3.client("kms", region_name="us-east-1"), "ftp://s3cret-host")
    with pytest.raises(ConfigError) as info:
        resolve_target({"REDIS_ENDPOINT_ENCRYPTED": ciphertext, "AWS_REGION": "us-east-1"})
    assert "s3cret" not in str(info.value)
    assert str(info.value) == "REDIS_ENDPOINT_ENCRYPTED must start with redis://, rediss:// or unix:// (got another scheme)"


@mock_aws
@pytest.mark.parametrize("plaintext", ["s3cret-host:6379:1", "s3cret host:6379", "s3cret-host:port"])
def test_kms_endpoint_that_redis_cannot_use_is_refused_without_showing_it(aws_env, plaintext):
    ciphertext = encrypt(boto3.client("kms", region_name="us-east-1"), plaintext)
    with pytest.raises(ConfigError) as info:
        resolve_target({"REDIS_ENDPOINT_ENCRYPTED": ciphertext, "AWS_REGION": "us-east-1"})
    assert "s3cret" not in str(info.value) and "6379" not in str(info.value)


@mock_aws
def test_ciphertext_from_another_account_is_refused_clearly(aws_env):
    bogus = base64.b64encode(b"\x01\x02\x03" * 20).decode()
    with pytest.raises(ConfigError, match=r"^cannot decrypt REDIS_ENDPOINT_ENCRYPTED with KMS in us-east-1: "):
        resolve_target({"REDIS_ENDPOINT_ENCRYPTED": bogus, "AWS_REGION": "us-east-1"})


def test_aws_endpoint_url_kms_is_honoured(aws_env, monkeypatch, redis_url):
    """boto3's standard AWS_ENDPOINT_URL_KMS reaches a KMS endpoint of our choosing (a moto server)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint)
        ciphertext = encrypt(kms, redis_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", endpoint)
        target = resolve_target({"REDIS_ENDPOINT_ENCRYPTED": ciphertext, "AWS_REGION": "us-east-1"})
        assert target.url == redis_url
        assert connect(target).ping()
    finally:
        server.stop()


def test_redact_url_hides_only_the_password():
    assert redact_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:pw@host:0/0") == "redis://:***@host:0/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_embedded_store_starts_by_itself_and_keeps_its_data_across_restarts(tmp_path):
    data_dir = tmp_path / "m2"
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("Item barcode,Accession date,Customer code,Delete date\n1234,2024-01-01,NX,\n")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED")}
    env.update(M2_DATA_DIR=str(data_dir), M2_STORE="embedded")
    try:
        loaded = subprocess.run([sys.executable, "-m", "m2_code_store", "load", str(csv_file)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert loaded.returncode == 0, loaded.stderr
        stopped = subprocess.run([sys.executable, "-m", "m2_code_store", "stop-embedded"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert stopped.stdout.startswith("stopped the embedded Redis in ")
        stats = subprocess.run([sys.executable, "-m", "m2_code_store", "stats"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert '"records": 1' in stats.stdout, stats.stderr
    finally:
        stop_local_server(data_dir)


def test_store_target_shown_for_embedded(tmp_path):
    assert StoreTarget("", "embedded", tmp_path).shown == f"the embedded local Redis in {tmp_path}"


def test_errors_about_an_encrypted_endpoint_never_name_its_host():
    from m2_code_store.config import describe_error

    target = StoreTarget("rediss://:pw@secret-host.invalid:6390/0", "REDIS_ENDPOINT_ENCRYPTED")
    try:
        connect(target, timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any connection error will do
        text = describe_error(exc, target)
    assert "secret-host" not in text and "6390" not in text and "pw" not in text
    assert text.startswith("ConnectionError")


def test_rediss_connections_check_the_host_name():
    client = connect(StoreTarget("rediss://cache.example.edu:6380/0", "REDIS_URL"))
    assert client.connection_pool.connection_kwargs["ssl_check_hostname"] is True
