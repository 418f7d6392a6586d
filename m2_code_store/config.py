"""Where the store lives: one Redis, chosen in one documented order.

1. ``REDIS_URL``: ``redis://`` or ``rediss://`` (TLS, certificates verified), password allowed.
2. ``REDIS_ENDPOINT_ENCRYPTED``: the endpoint as base64 KMS ciphertext, decrypted with boto3 in
   ``AWS_REGION`` (boto3's own settings, e.g. ``AWS_ENDPOINT_URL_KMS``, apply). The plaintext may
   be a bare host as ElastiCache shows it, ``host:port``, or a full ``redis://``/``rediss://`` URL.
   A bare host or ``host:port`` uses TLS when ``REDIS_TLS`` is ``1``/``true``.
   2b. ``ENVIRONMENT`` (as the deployed original Lambda reads it): ``config/{ENVIRONMENT}.yaml``
   (directory ``M2_CONFIG_DIR``, default ``config`` in the working directory) with
   ``PLAINTEXT_VARIABLES`` (``AWS_REGION``, …: used where the environment does not set them) and
   ``ENCRYPTED_VARIABLES: {REDIS_ENDPOINT: <base64 KMS ciphertext>}``, decrypted as in 2.
3. ``M2_STORE=embedded``: an embedded local redis-server whose data persists in ``M2_DATA_DIR``
   (default ``~/.local/share/m2-code-store``), started on first use.
4. With none of these, the embedded store is used only when a person is at a terminal (and the
   commands say so). A job without a terminal (cron, systemd, CI) whose environment lost its
   settings is refused: it must never load or serve a local store while production goes stale.

A Redis Cluster (ElastiCache Serverless, a cluster-mode-enabled replication group, any cluster)
is found from the address of any of its nodes, or its configuration endpoint: the store asks the
node (``INFO cluster``, see cluster.py) unless ``M2_REDIS_CLUSTER`` says ``yes`` or ``no``
(default ``auto``; ``no`` also suits a proxy that routes a cluster's keys itself).

No message or log line built here contains a password or a decrypted secret: use
:func:`redact_url` for anything shown to a person.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from toolconfig import ConfigError, kms_decrypt, load_yaml

if TYPE_CHECKING:
    from m2_code_store.cluster import ClusterRedis

DEFAULT_DATA_DIR = Path("~/.local/share/m2-code-store")


@dataclass(frozen=True)
class StoreTarget:
    """A resolved Redis location: a URL (secret) and a description safe to show."""

    url: str
    source: str  # "REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED" or "embedded"
    data_dir: Path | None = None
    fallback: bool = False  # embedded because nothing was set and a person is at a terminal
    cluster: str = "auto"  # M2_REDIS_CLUSTER: "auto" (ask the node), "yes" or "no"

    @property
    def shown(self) -> str:
        """Where the store is, fit for messages: never the password, never a decrypted endpoint."""
        if self.source == "REDIS_ENDPOINT_ENCRYPTED":
            return "the Redis endpoint in REDIS_ENDPOINT_ENCRYPTED"
        if self.source == "embedded":
            return f"the embedded local Redis in {self.data_dir}"
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***`` (a URL too malformed to parse is not shown)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(a malformed URL)"
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redirected(exc: BaseException) -> bool:
    """A MOVED or ASK answer: a Redis Cluster node read as a single Redis (redis-py raises these as
    MovedError or AskError; the lookup's own reply reader as a ResponseError with the reply's text)."""
    return isinstance(exc, redis.exceptions.AskError) or (
        isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(("MOVED ", "ASK ")))


def describe_error(exc: BaseException, target: StoreTarget | None) -> str:
    """A Redis error fit for a message: for a KMS-encrypted endpoint, without host or port."""
    if redirected(exc):
        return ("the store is a Redis Cluster (its node answered MOVED), read here as a single Redis: "
                "unset M2_REDIS_CLUSTER (or set it to auto) so the cluster is found by itself")
    if target is not None and target.source == "REDIS_ENDPOINT_ENCRYPTED":
        cause = exc.__cause__ or exc.__context__
        reason = getattr(cause, "strerror", None) or type(cause or exc).__name__
        return f"{type(exc).__name__} ({reason})"
    return str(exc)


URL_FORM = "redis://[:password@]host[:port][/db]"


def _check_url(url: str, name: str, *, secret: bool) -> str:
    """*url* if redis-py can use it; else a ConfigError that never shows the password (or, for a
    *secret* URL, anything of it)."""
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError as exc:  # an unclosed "[", a port out of range or not a number
        text = str(exc).lower()  # never shown: it may quote part of the URL
        reason = ("an invalid port number" if "port" in text
                  else "an unclosed '[' (a bracketed IPv6 address)" if "ipv6" in text else "a malformed address")
        raise ConfigError(f"{name} has {reason}: expected {URL_FORM}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name} must start with redis://, rediss:// or unix:// (got {redact_url(url) if not secret else 'another scheme'})")
    if parts.scheme != "unix" and not hostname:
        raise ConfigError(f"{name} has no host name: expected {URL_FORM}")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigError(f"{name} has a database that is not a number after the host: expected {URL_FORM}")
    try:
        redis.connection.parse_url(url)  # what redis-py itself will refuse: ?db=x, ?socket_timeout=abc, …
    except ValueError as exc:
        setting = re.search(r"'(\w+)'", str(exc)) if "Invalid value for" in str(exc) else None  # a parameter name only
        what = f"an invalid value for {setting.group(1)!r}" if setting else "a part redis-py cannot read"
        raise ConfigError(f"{name} has {what}: expected {URL_FORM}") from None
    return url


def endpoint_to_url(plaintext: str, *, tls: bool) -> str:
    """Turn a decrypted endpoint (bare host, ``host:port`` or URL) into a Redis URL."""
    value = plaintext.strip()
    if "://" in value:
        return _check_url(value, "REDIS_ENDPOINT_ENCRYPTED", secret=True)
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "6379"
    if not host or not port.isdigit() or not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
        raise ConfigError(
            "REDIS_ENDPOINT_ENCRYPTED decrypts to something that is neither a host, host:port nor a redis:// URL"
        )
    return _check_url(f"{'rediss' if tls else 'redis'}://{host}:{port}/0", "REDIS_ENDPOINT_ENCRYPTED", secret=True)


def has_terminal() -> bool:
    """True when a person is at a terminal: standard input or error is one (never under cron,
    systemd or CI)."""
    return any(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stderr))


NO_STORE = (
    "no store configured: set REDIS_URL (redis://host:port/db) or REDIS_ENDPOINT_ENCRYPTED (with AWS_REGION); "
    "this process has no terminal, so it does not fall back to the embedded local Redis. "
    "To use the embedded store on purpose, set M2_STORE=embedded"
)


CLUSTER_MODES = ("auto", "yes", "no")


def cluster_mode(environ: Mapping[str, str]) -> str:
    """``M2_REDIS_CLUSTER``: ``auto`` (the default), ``yes`` or ``no``; anything else is a ConfigError."""
    value = environ.get("M2_REDIS_CLUSTER", "").strip().lower() or "auto"
    if value not in CLUSTER_MODES:
        raise ConfigError(f"M2_REDIS_CLUSTER must be auto (the default: ask the Redis node whether it is part of a "
                          f"cluster), yes or no, not {environ.get('M2_REDIS_CLUSTER', '')[:40]!r}")
    return value


def resolve_target(environ: Mapping[str, str] | None = None, *, interactive: bool | None = None) -> StoreTarget:
    """Resolve where the store lives from the environment, in the documented order.

    *interactive* (default: :func:`has_terminal`) allows the embedded store when nothing is set.
    """
    environ = os.environ if environ is None else environ
    cluster = cluster_mode(environ)
    url = environ.get("REDIS_URL", "").strip()
    encrypted = environ.get("REDIS_ENDPOINT_ENCRYPTED", "").strip()
    store = environ.get("M2_STORE", "").strip().lower()
    if store not in ("", "embedded"):
        raise ConfigError(f"M2_STORE must be 'embedded' or unset (got {store[:40]!r})")
    if store == "embedded" and (url or encrypted):
        both = "REDIS_URL" if url else "REDIS_ENDPOINT_ENCRYPTED"
        raise ConfigError(f"M2_STORE=embedded and {both} are both set: unset one of them")
    if url:
        return StoreTarget(_check_url(url, "REDIS_URL", secret=False), "REDIS_URL", cluster=cluster)
    if not encrypted and environ.get("ENVIRONMENT", "").strip() and not store:
        variables = original_variables(environ)
        environ = {**variables, **{k: v for k, v in environ.items() if v}}
        encrypted = variables.get("REDIS_ENDPOINT_ENCRYPTED", "")
        cluster = cluster_mode(environ)
    if encrypted:
        plaintext = kms_decrypt(encrypted, region=environ.get("AWS_REGION") or None, name="REDIS_ENDPOINT_ENCRYPTED")
        tls = environ.get("REDIS_TLS", "").strip().lower() in ("1", "true", "yes")
        return StoreTarget(endpoint_to_url(plaintext, tls=tls), "REDIS_ENDPOINT_ENCRYPTED", cluster=cluster)
    if not store and not (has_terminal() if interactive is None else interactive):
        raise ConfigError(NO_STORE)
    if cluster == "yes":
        raise ConfigError("M2_REDIS_CLUSTER=yes, but the store is the embedded local Redis, a single server: set "
                          "REDIS_URL to a node of the cluster, or unset M2_REDIS_CLUSTER")
    data_dir = Path(environ.get("M2_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
    return StoreTarget("", "embedded", data_dir, fallback=not store, cluster="no")


def original_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of the original Lambda's ``config/{ENVIRONMENT}.yaml``: every plaintext
    variable as it is, and the encrypted ``REDIS_ENDPOINT`` as ``REDIS_ENDPOINT_ENCRYPTED``.
    Other encrypted variables are not needed here and are left undecrypted."""
    name = environ.get("ENVIRONMENT", "").strip()
    directory = Path(environ.get("M2_CONFIG_DIR", "").strip() or "config")
    path = directory / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ConfigError(f"ENVIRONMENT must be a name such as qa or production, not {name[:40]!r}")
    if not path.is_file():
        raise ConfigError(f"ENVIRONMENT={name}, but {path.resolve()} does not exist: add it (PLAINTEXT_VARIABLES, "
                          "ENCRYPTED_VARIABLES: {REDIS_ENDPOINT: <KMS ciphertext>}), set M2_CONFIG_DIR to its "
                          "directory, or set REDIS_URL")
    data = load_yaml(path)
    variables: dict[str, str] = {}
    for section in ("PLAINTEXT_VARIABLES", "ENCRYPTED_VARIABLES"):
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section} must be a mapping of names to values")
        for key, value in values.items():
            if isinstance(value, bool | dict | list) or value is None:
                raise ConfigError(f"{path}: {section}.{key} must be a text value")
            if section == "PLAINTEXT_VARIABLES":
                variables[str(key)] = str(value)
            elif key == "REDIS_ENDPOINT":
                variables["REDIS_ENDPOINT_ENCRYPTED"] = str(value)
    if "REDIS_ENDPOINT_ENCRYPTED" not in variables:
        raise ConfigError(f"{path}: ENCRYPTED_VARIABLES.REDIS_ENDPOINT is missing: add the KMS-encrypted "
                          "endpoint, or set REDIS_URL")
    return variables


def embedded_note(target: StoreTarget) -> str | None:
    """What a command tells the person at the terminal when it fell back to the embedded store."""
    if not target.fallback:
        return None
    return (f"REDIS_URL and REDIS_ENDPOINT_ENCRYPTED are not set: using the embedded local Redis in "
            f"{target.data_dir} (set M2_STORE=embedded to choose it explicitly)")


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
    if target.data_dir is not None:  # the embedded store
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


def connect_cluster(
    target: StoreTarget,
    *,
    timeout: float = 5.0,
    connect_timeout: float | None = None,
    retries: int = 1,
    **kwargs,
) -> ClusterRedis:
    """A client for the Redis Cluster that *target*'s node belongs to (a cluster.ClusterRedis: the
    slot map is read from that node now), with the same timeouts, TLS and retries as :func:`connect`.

    Raises ConfigError when the node is no cluster node or the URL names a database other than 0,
    and cluster.ClusterUnavailable (a redis ConnectionError) when the cluster cannot be reached.
    """
    from m2_code_store.cluster import ClusterRedis, ClusterUnavailable

    if target.data_dir is not None:
        raise ConfigError("the embedded local Redis is a single server, not a Redis Cluster")
    if target.url.startswith("rediss://"):
        kwargs.setdefault("ssl_check_hostname", True)
    try:
        cluster = redis.RedisCluster.from_url(
            target.url,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout if connect_timeout is not None else timeout,
            retry=Retry(NoBackoff(), retries),
            retry_on_timeout=False,
            require_full_coverage=False,  # a slot left uncovered fails its own commands, not the client
            **kwargs,
        )
    except redis.exceptions.RedisClusterException as exc:
        text = str(exc)
        if "Cluster mode is not enabled" in text:
            raise ConfigError(f"M2_REDIS_CLUSTER=yes, but {target.shown} is not a Redis Cluster node (cluster "
                              "support disabled): set M2_REDIS_CLUSTER=auto or no") from None
        if "db" in text and "cluster mode" in text:
            raise ConfigError(f"{target.source} names a database other than 0, and a Redis Cluster has only "
                              "database 0: end the URL with /0 or with the port") from None
        cause = exc.__cause__ if isinstance(exc.__cause__, redis.exceptions.RedisError) else exc
        raise ClusterUnavailable(describe_error(cause, target)) from cause
    parts = urlsplit(target.url)
    return ClusterRedis(cluster, seed=(parts.hostname or "localhost", parts.port or 6379))


def connect_store(target: StoreTarget, *, timeout: float = 5.0, retries: int = 1, **kwargs) -> redis.Redis:
    """A client for *target*: a single Redis (as :func:`connect`), or a cluster.ClusterRedis when
    the node belongs to a Redis Cluster (``M2_REDIS_CLUSTER``, :attr:`StoreTarget.cluster`).

    With ``auto``, the node is asked (one ``INFO cluster``, on the connection then kept for the
    single Redis: nothing more than the PING that checks it is there).
    """
    from m2_code_store.cluster import detect_cluster

    client = connect(target, timeout=timeout, retries=retries, **kwargs)
    if target.cluster == "no" or target.data_dir is not None:
        return client
    try:
        if target.cluster == "auto" and not detect_cluster(client):
            return client
    except BaseException:
        client.close()
        raise
    client.close()
    return connect_cluster(target, timeout=timeout, retries=retries, **kwargs)


def open_store(*, timeout: float, interactive: bool | None = None) -> tuple[StoreTarget, redis.Redis]:
    """Resolve the store, connect and check that it answers; any failure is a ConfigError fit for
    a person. On a Redis Cluster the client is a cluster.ClusterRedis (see :func:`connect_store`)."""
    target = resolve_target(interactive=interactive)
    client: redis.Redis | None = None
    try:
        client = connect_store(target, timeout=timeout)
        if target.cluster == "no" or target.data_dir is not None:
            client.ping()  # with auto, asking whether it is a cluster showed that it answers
    except redis.exceptions.RedisError as exc:
        if client is not None:
            client.close()
        raise ConfigError(f"cannot reach {target.shown}: {describe_error(exc, target)}") from exc
    return target, client
