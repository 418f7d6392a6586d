"""Where the store lives: one Redis, chosen in one documented order.

1. ``REDIS_URL``: ``redis://`` or ``rediss://`` (TLS, certificates verified), password allowed.
2. ``REDIS_ENDPOINT_ENCRYPTED``: the endpoint as base64 KMS ciphertext, decrypted with boto3 in
   ``AWS_REGION`` (boto3's own settings, e.g. ``AWS_ENDPOINT_URL_KMS``, apply). The plaintext may
   be a bare host as ElastiCache shows it, ``host:port``, or a full ``redis://``/``rediss://`` URL.
   A bare host or ``host:port`` uses TLS when ``REDIS_TLS`` is ``1``/``true``.
3. Otherwise an embedded local redis-server whose data persists in ``M2_DATA_DIR``
   (default ``~/.local/share/m2-code-store``), started on first use.

No message or log line built here contains a password or a decrypted secret: use
:func:`redact_url` for anything shown to a person.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from toolconfig import ConfigError, kms_decrypt

DEFAULT_DATA_DIR = Path("~/.local/share/m2-code-store")


@dataclass(frozen=True)
class StoreTarget:
    """A resolved Redis location: a URL (secret) and a description safe to show."""

    url: str
    source: str  # "REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED" or "embedded"
    data_dir: Path | None = None

    @property
    def shown(self) -> str:
        """Where the store is, fit for messages: never the password, never a decrypted endpoint."""
        if self.source == "REDIS_ENDPOINT_ENCRYPTED":
            return "the Redis endpoint in REDIS_ENDPOINT_ENCRYPTED"
        if self.source == "embedded":
            return f"the embedded local Redis in {self.data_dir}"
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe_error(exc: BaseException, target: StoreTarget | None) -> str:
    """A Redis error fit for a message: for a KMS-encrypted endpoint, without host or port."""
    if target is not None and target.source == "REDIS_ENDPOINT_ENCRYPTED":
        cause = exc.__cause__ or exc.__context__
        reason = getattr(cause, "strerror", None) or type(cause or exc).__name__
        return f"{type(exc).__name__} ({reason})"
    return str(exc)


def _check_url(url: str, name: str, *, secret: bool) -> str:
    parts = urlsplit(url)
    shown = "its value" if secret else redact_url(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name} must start with redis://, rediss:// or unix:// (got {shown if not secret else 'another scheme'})")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name} has no host name: expected redis://[:password@]host[:port][/db]")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port number") from None
    return url


def endpoint_to_url(plaintext: str, *, tls: bool) -> str:
    """Turn a decrypted endpoint (bare host, ``host:port`` or URL) into a Redis URL."""
    value = plaintext.strip()
    if "://" in value:
        return _check_url(value, "REDIS_ENDPOINT_ENCRYPTED", secret=True)
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "6379"
    if not host or not port.isdigit():
        raise ConfigError(
            "REDIS_ENDPOINT_ENCRYPTED decrypts to something that is neither a host, host:port nor a redis:// URL"
        )
    return f"{'rediss' if tls else 'redis'}://{host}:{port}/0"


def resolve_target(environ: Mapping[str, str] | None = None) -> StoreTarget:
    """Resolve where the store lives from the environment, in the documented order."""
    environ = os.environ if environ is None else environ
    url = environ.get("REDIS_URL", "").strip()
    if url:
        return StoreTarget(_check_url(url, "REDIS_URL", secret=False), "REDIS_URL")
    encrypted = environ.get("REDIS_ENDPOINT_ENCRYPTED", "").strip()
    if encrypted:
        plaintext = kms_decrypt(encrypted, region=environ.get("AWS_REGION") or None, name="REDIS_ENDPOINT_ENCRYPTED")
        tls = environ.get("REDIS_TLS", "").strip().lower() in ("1", "true", "yes")
        return StoreTarget(endpoint_to_url(plaintext, tls=tls), "REDIS_ENDPOINT_ENCRYPTED")
    data_dir = Path(environ.get("M2_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
    return StoreTarget("", "embedded", data_dir)


def connect(
    target: StoreTarget,
    *,
    timeout: float = 5.0,
    connect_timeout: float | None = None,
    retries: int = 1,
    start_embedded: bool = True,
    **kwargs,
) -> redis.Redis:
    """A redis-py client for *target* with a timeout on every call.

    For the embedded store the local server is started when it is not running (unless
    *start_embedded* is false). Retries are immediate and few: callers that must answer within a
    deadline (the API) keep *timeout* small.
    """
    url = target.url
    if target.source == "embedded":
        from m2_code_store.embedded import ensure_local_server

        url = ensure_local_server(target.data_dir, start=start_embedded)
    retry = Retry(NoBackoff(), retries)
    if url.startswith("rediss://"):
        kwargs.setdefault("ssl_check_hostname", True)  # older redis-py releases did not check it
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout if connect_timeout is not None else timeout,
        retry=retry,
        retry_on_timeout=False,
        **kwargs,
    )


def open_store(*, timeout: float) -> tuple[StoreTarget, redis.Redis]:
    """Resolve the store, connect and PING it; any failure is a ConfigError fit for a person."""
    target = resolve_target()
    client = connect(target, timeout=timeout)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        raise ConfigError(f"cannot reach {target.shown}: {describe_error(exc, target)}") from exc
    return target, client
