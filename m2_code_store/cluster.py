"""Redis Cluster: telling one from a single Redis, a client for it, and the API's reads from it.

ElastiCache Serverless speaks cluster mode only, and a cluster-mode-enabled replication group is
how a deployment outgrows one node. The store's layout already fits one (store.py): every command
touches one key, and the keys the loader's scripts touch together share ``m2:meta``'s hash slot.

- :func:`detect_cluster`: whether the node a configuration names belongs to a cluster, in one
  ``INFO cluster`` on the connection that is kept for the lookups (``M2_REDIS_CLUSTER`` in
  config.py overrides it).
- :class:`ClusterRedis`: a ``redis.Redis`` whose commands go to the cluster through redis-py's
  ``RedisCluster`` (its slot map, its MOVED and ASK handling, scripts whose keys share a slot).
  Code written for one Redis, such as the loader's lease and fenced scripts, ``read_generation``
  and ``stats``, runs on it unchanged; the loader's streams (bulk.py) and the API's reads
  (:class:`ClusterCodeStore`) reach the primaries through its ``redis_cluster``.
- :class:`ClusterCodeStore`: ``CodeStore``'s lookups with a request's buckets grouped by the
  primary that owns their slot, every primary sent its packed HGETs before any reply is read.

Nothing here imports numpy or pyarrow: the API's workers import this module.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from m2_code_store.store import (
    _LENGTH_PREFIXES,
    CodeStore,
    Generation,
    Layout,
    _command_head,
    read_replies,
)

MAX_REDIRECTS = 5  # MOVED/ASK answers followed for one command before giving up
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class ClusterUnavailable(redis.exceptions.ConnectionError):
    """The cluster could not be reached, or does not cover a slot the store needs.

    redis-py raises ``RedisClusterException`` for these, which is no ``RedisError``; translated,
    the API answers 503 and the loader says what the store holds, as for a single Redis that fails.
    """


def detect_cluster(client: redis.Redis) -> bool:
    """Whether the node behind *client* runs in cluster mode: ``INFO cluster`` (one round trip on
    a connection the pool keeps), or ``CLUSTER INFO`` where INFO is refused.

    Raises redis' ConnectionError or TimeoutError when the node does not answer, and ResponseError
    when it refuses both (the override, ``M2_REDIS_CLUSTER``, is then needed).
    """
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.exceptions.ResponseError as refused:
        if "not allowed in cluster mode" in str(refused):  # the connection's SELECT of a database other than 0
            return True  # the cluster client then says what is wrong with the address
        try:
            client.execute_command("CLUSTER INFO")
        except redis.exceptions.ResponseError as exc:
            if "cluster support disabled" in str(exc).lower():
                return False
            raise redis.exceptions.ResponseError(
                f"cannot tell whether the store is a Redis Cluster: INFO was refused ({refused}) and so was "
                f"CLUSTER INFO ({exc}); set M2_REDIS_CLUSTER to yes or no") from exc
        return True


class ClusterRedis(redis.Redis):
    """A ``redis.Redis`` whose commands go to a Redis Cluster (``redis_cluster``, redis-py's
    RedisCluster, routes each by its key's slot and follows MOVED and ASK).

    It has no connection pool of its own: code that needs the nodes' connections (bulk streams,
    the API's pipelined reads) takes them from ``redis_cluster``, per primary.
    """

    def __init__(self, redis_cluster: RedisCluster, seed: tuple[str, int] | None = None) -> None:
        # no redis.Redis.__init__: no pool of its own
        self.redis_cluster = redis_cluster
        self.seed = seed  # the configured address (a configuration endpoint's name): asked too when refreshing

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return self.redis_cluster.execute_command(*args, **options)
        except RedisClusterException as exc:
            raise ClusterUnavailable(f"the Redis Cluster is not answering: {exc}") from exc

    def __getattr__(self, name: str) -> Any:
        if name == "connection_pool":
            raise AttributeError("a Redis Cluster has no single connection pool: read the store through "
                                 "m2_code_store.cluster.code_store(client), a ClusterCodeStore")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def refresh_slots(self) -> None:
        """Read the slot map again (after MOVED, or a node that stopped answering)."""
        try:
            self.redis_cluster.nodes_manager.initialize(additional_startup_nodes_info=[self.seed] if self.seed else None)
        except RedisClusterException as exc:
            raise ClusterUnavailable(f"the Redis Cluster is not answering: {exc}") from exc

    def node_client(self, host: str, port: int) -> redis.Redis:
        """The client of the node at *host*:*port* (one MOVED or ASK named, perhaps not yet in the map)."""
        node = self.redis_cluster.get_node(host=host, port=port) or ClusterNode(host, port, "primary")
        return self.redis_cluster.get_redis_connection(node)

    def primary_of(self, slot: int) -> ClusterNode:
        """The primary that owns *slot* in the slot map as last read."""
        nodes = self.redis_cluster.nodes_manager.slots_cache.get(slot)
        if not nodes:
            raise ClusterUnavailable(f"slot {slot} is not covered by the Redis Cluster (as its slot map was last read)")
        return nodes[0]

    def close(self) -> None:
        self.redis_cluster.close()

    def __repr__(self) -> str:
        nodes = ", ".join(sorted(node.name for node in self.redis_cluster.get_primaries()))
        return f"<{type(self).__name__} primaries: {nodes}>"


def redirect_of(reply: object) -> tuple[bool, str, int] | None:
    """For a MOVED or ASK error reply: (asking, host, port) of the node to ask; None for any other reply."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    words = str(reply).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0] == "ASK", host, int(port)


def exchange(client: redis.Redis, commands: Sequence[bytes], *, asking: bool, encoding: str | None) -> list:
    """Send packed *commands* to the node behind *client* (each after ASKING with *asking*) on one
    pooled connection; their replies, errors kept in place."""
    payload = b"".join(_ASKING + command for command in commands) if asking else b"".join(commands)
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([payload])
        replies = read_replies(connection, len(commands) * (2 if asking else 1), encoding=encoding)
    except BaseException:
        connection.disconnect()  # replies may be unread: never reuse it
        raise
    finally:
        pool.release(connection)
    return replies[1::2] if asking else replies


@dataclass
class _Routing:
    """Where a generation's buckets live, for the slot map as read when it was built."""

    gen: int
    slots: dict  # the slot map this was built from (redis-py replaces it when it reads it again)
    nodes: list[ClusterNode] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    buckets: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # bucket -> (node, packed "HGET key")


MAX_ROUTED_BUCKETS = 1 << 18  # as store.MAX_CACHED_HEADS: about 16 MB of packed heads at most


class ClusterCodeStore(CodeStore):
    """``CodeStore`` on a Redis Cluster, or on a store not yet known to be one.

    A lookup groups its barcodes by the primary that owns their bucket's slot, sends every
    primary its packed HGETs, then reads each one's replies: the primaries work in parallel, and
    no thread is needed. The answers, and the circuit breaker, are CodeStore's: a node that does
    not answer raises ConnectionError or TimeoutError, the store pauses, and the next call after
    the pause reads the slot map again first (a failed-over primary is found there). A MOVED
    reply (a slot moved) is followed and the slot map read again; an ASK reply (a slot being
    migrated) is followed with ASKING.

    *client* is a :class:`ClusterRedis`, or a plain client on the configured node with
    *connect_cluster* to build the cluster client when it is needed: with *detect*, the first call
    that reaches the node asks it whether it is a cluster (the API's workers start even while the
    store is down), and a single Redis is then read exactly as CodeStore reads it.
    """

    def __init__(self, client: redis.Redis, layout: Layout | None = None, *,
                 connect_cluster: Callable[[], ClusterRedis] | None = None, detect: bool = False,
                 **options: Any) -> None:
        super().__init__(client, layout or Layout(), **options)
        if not isinstance(client, ClusterRedis) and connect_cluster is None:
            raise TypeError("ClusterCodeStore needs a ClusterRedis client, or connect_cluster to make one")
        self._connect_cluster = connect_cluster
        self._cluster: bool | None = None if detect else True  # None: not known yet
        self._resolving = threading.Lock()
        self._routing: _Routing | None = None
        self._stale = False  # a node failed: read the slot map again before the next lookup
        self._node_idle: dict[str, list[redis.connection.AbstractConnection]] = {}
        os.register_at_fork(after_in_child=self._node_idle.clear)

    # -- which kind of store, and its client ------------------------------------------------

    def _resolve(self) -> bool:
        """True for a cluster (with the cluster client made), False for a single Redis."""
        if self._cluster is not None and (not self._cluster or isinstance(self.client, ClusterRedis)):
            return self._cluster
        with self._resolving:
            if self._cluster is None:
                self._cluster = detect_cluster(self.client)
            if self._cluster and not isinstance(self.client, ClusterRedis):
                assert self._connect_cluster is not None  # checked in __init__
                seed, self.client = self.client, self._connect_cluster()
                seed.close()
        return self._cluster

    def generation(self) -> Generation | None:
        self._guard(self._resolve)
        return super().generation()

    generation.__doc__ = CodeStore.generation.__doc__

    def stats(self) -> dict:
        self._guard(self._resolve)
        return super().stats()

    stats.__doc__ = CodeStore.stats.__doc__

    # -- lookups ----------------------------------------------------------------------------

    def _lookup(self, barcodes: Sequence[str]) -> list[str | None]:
        if not self._resolve():
            return super()._lookup(barcodes)
        client = self.client
        assert isinstance(client, ClusterRedis)  # _resolve made it
        if self._stale:
            client.refresh_slots()
            self._stale = False
        generation = self.generation()
        if generation is None or not barcodes:
            return [None] * len(barcodes)
        routing = self._routing
        if routing is None or routing.gen != generation.gen or routing.slots is not client.redis_cluster.nodes_manager.slots_cache:
            routing = self._routing = _Routing(generation.gen, client.redis_cluster.nodes_manager.slots_cache)
        routes = routing.buckets
        mask = generation.buckets - 1
        crc32 = zlib.crc32
        prefixes = _LENGTH_PREFIXES
        parts: dict[int, list[bytes]] = {}
        where: list[int] = []
        for barcode in barcodes:
            data = barcode.encode()
            bucket = crc32(data) & mask
            node, head = routes.get(bucket) or self._route(client, routing, bucket)
            size = len(data)
            part = parts.get(node)
            if part is None:
                part = parts[node] = []
            part += (head, prefixes[size] if size < len(prefixes) else b"$%d\r\n" % size, data, b"\r\n")
            where.append(node)
        replies = self._ask_primaries(client, routing, parts)
        for node, answered in replies.items():
            if hiredis.ReplyError in set(map(type, answered)):
                self._follow_redirects(client, parts[node], answered)
        answers = {node: iter(answered) for node, answered in replies.items()}
        return [next(answers[node]) for node in where]

    def _route(self, client: ClusterRedis, routing: _Routing, bucket: int) -> tuple[int, bytes]:
        """The primary that owns *bucket*'s key and its packed ``HGET key``, kept for the generation."""
        head = _command_head(self.layout, routing.gen, bucket)
        primary = client.primary_of(key_slot(self.layout.bucket_key(routing.gen, bucket).encode()))
        node = routing.index.get(primary.name)
        if node is None:
            node = routing.index[primary.name] = len(routing.nodes)
            routing.nodes.append(primary)
        if len(routing.buckets) >= MAX_ROUTED_BUCKETS:
            routing.buckets.clear()
        routing.buckets[bucket] = (node, head)
        return node, head

    def _connection(self, client: ClusterRedis, node: ClusterNode) -> redis.connection.AbstractConnection:
        """One of this store's connections to *node* (made with its pool's settings: TLS, AUTH, timeouts)."""
        try:
            return self._node_idle.setdefault(node.name, []).pop()
        except IndexError:
            pool = client.redis_cluster.get_redis_connection(node).connection_pool
            return pool.connection_class(**pool.connection_kwargs)

    def _ask_primaries(self, client: ClusterRedis, routing: _Routing, parts: dict[int, list[bytes]]) -> dict[int, list]:
        """Every primary's HGETs sent, then every primary's replies read; a connection that turns out
        to be dead (a node restarted) is replaced once."""
        for attempt in (1, 2):
            sent: list[tuple[int, redis.connection.AbstractConnection]] = []
            try:
                for node, part in parts.items():
                    connection = self._connection(client, routing.nodes[node])
                    sent.append((node, connection))
                    connection.send_packed_command([b"".join(part)])
                replies = {node: read_replies(connection, len(parts[node]) // 4, encoding="utf-8")
                           for node, connection in sent}
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                for _, connection in sent:
                    connection.disconnect()  # replies may be unread on the others too
                self._stale = True
                if attempt == 2 or isinstance(exc, redis.exceptions.TimeoutError):
                    raise
                continue
            except BaseException:
                for _, connection in sent:
                    connection.disconnect()
                raise
            for node, connection in sent:
                self._node_idle.setdefault(routing.nodes[node].name, []).append(connection)
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow_redirects(self, client: ClusterRedis, part: list[bytes], replies: list) -> None:
        """Replace MOVED and ASK replies in *replies* by the answers of the nodes they name; raise
        ResponseError for any other error reply."""
        moved = False
        for attempt in range(MAX_REDIRECTS + 1):
            pending: dict[tuple[bool, str, int], list[int]] = {}
            for position, reply in enumerate(replies):
                if isinstance(reply, hiredis.ReplyError):
                    redirect = redirect_of(reply)
                    if redirect is None:
                        raise redis.exceptions.ResponseError(str(reply))
                    moved |= not redirect[0]
                    pending.setdefault(redirect, []).append(position)
            if not pending:
                break
            if attempt == MAX_REDIRECTS:
                raise redis.exceptions.ResponseError(f"the Redis Cluster still redirected a lookup after {MAX_REDIRECTS} tries")
            for (asking, host, port), positions in pending.items():
                commands = [b"".join(part[4 * position:4 * position + 4]) for position in positions]
                answered = exchange(client.node_client(host, port), commands, asking=asking, encoding="utf-8")
                for position, reply in zip(positions, answered, strict=True):
                    replies[position] = reply
        if moved:
            client.refresh_slots()  # the routes are rebuilt from the new map by the next lookup


def code_store(client: redis.Redis, *, connect_cluster: Callable[[], ClusterRedis] | None = None,
               mode: str = "no") -> CodeStore:
    """The store to read through *client*: a CodeStore on a single Redis, a ClusterCodeStore on a cluster.

    *mode* is ``M2_REDIS_CLUSTER``'s: ``no`` reads *client* as a single Redis; ``yes`` needs
    *connect_cluster*; ``auto`` asks the node (:func:`detect_cluster`) and, when it cannot be
    reached yet, leaves the question to the store's first call. A ClusterRedis *client* is a
    cluster whatever *mode* says.
    """
    if isinstance(client, ClusterRedis):
        return ClusterCodeStore(client)
    if mode == "no" or connect_cluster is None:
        return CodeStore(client)
    if mode == "auto":
        try:
            if not detect_cluster(client):
                return CodeStore(client)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return ClusterCodeStore(client, connect_cluster=connect_cluster, detect=True)
    try:
        cluster = connect_cluster()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return ClusterCodeStore(client, connect_cluster=connect_cluster)  # the first lookup tries again
    client.close()
    return ClusterCodeStore(cluster)
