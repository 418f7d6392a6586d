"""The key layout of the customer code store, and reading it.

Layout (every command touches one key, so it works on Redis Cluster as it is):

- ``m2:meta`` (hash): ``gen`` (the live generation), ``buckets`` (its bucket count, a power of
  two), ``count`` (records in it), ``dirty`` (``0``, or the token of an incremental load writing
  into the live generation: the count is exact again when that load ends, or recounted by the
  next load if it died or another writer touched it), ``loaded_at``, ``source``.
- ``m2:{gen}:{bucket}`` (hash): barcode → customer code for the barcodes whose
  ``crc32(barcode) & (buckets - 1)`` is ``bucket``. About 32 barcodes per bucket keeps each hash in
  Redis' compact listpack encoding: about 16 bytes a record instead of about 85 for a plain key.
- ``m2:gen-seq`` (counter) hands out generation numbers.
- ``{m2:meta}:fingerprints:{gen}`` (string): per bucket, how many barcodes it holds and a sum
  of their hashes, so that ``--replace`` only looks up the buckets that changed (fingerprints.py).
- ``{m2:meta}:lock`` (string with a TTL: the loaders' lease) and ``{m2:meta}:generations`` (hash:
  every generation that is not live, being written or retired) share ``m2:meta``'s hash slot,
  so one script can check the lease and write ``m2:meta`` atomically, on Redis Cluster too.
  loader.py describes how they fence every write that publishes or deletes.

``--replace`` fills a new generation while readers keep using the old one, then switches
``m2:meta`` in one HSET: a reader sees the old data set or the new one, never a mix. The old
generation is deleted after a grace period longer than a reader's cached view of ``m2:meta``.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import hiredis
import redis

PREFIX = "m2"
T = TypeVar("T")
META_TTL = 1.0  # seconds a reader trusts its copy of m2:meta
TARGET_PER_BUCKET = 32
MIN_BUCKETS = 1024
MAX_CACHED_HEADS = 1 << 18  # a reader keeps the packed "HGET key" of at most this many buckets (~16 MB)


def bucket_of(barcode: str, buckets: int) -> int:
    """The bucket that holds *barcode* in a generation of *buckets* buckets."""
    return zlib.crc32(barcode.encode()) & (buckets - 1)


def _command_head(layout: Layout, gen: int, bucket: int) -> bytes:
    """``HGET m2:{gen}:{bucket}`` in the Redis protocol, up to the field."""
    key = f"{layout.prefix}:{gen}:{bucket}".encode()
    return b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n" % (len(key), key)


def buckets_for(records: int) -> int:
    """A power-of-two bucket count giving about TARGET_PER_BUCKET records per bucket."""
    wanted = max(MIN_BUCKETS, -(-records // TARGET_PER_BUCKET))
    return 1 << (wanted - 1).bit_length()


@dataclass(frozen=True)
class Layout:
    """Key names; *prefix* lets tests and side-by-side stores share one Redis."""

    prefix: str = PREFIX

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:gen-seq"

    @property
    def lock(self) -> str:
        return f"{{{self.meta}}}:lock"  # the hash tag puts it in m2:meta's slot

    @property
    def generations(self) -> str:
        return f"{{{self.meta}}}:generations"

    @property
    def legacy_lock(self) -> str:
        return f"{self.prefix}:lock"  # the previous release's lock: respected during an upgrade

    @property
    def legacy_retired(self) -> str:
        return f"{self.prefix}:retired"  # the previous release's set of gen:buckets left to delete

    def fingerprints(self, gen: int) -> str:
        return f"{{{self.meta}}}:fingerprints:{gen}"  # see fingerprints.py; in m2:meta's slot, for fencing

    def bucket_key(self, gen: int, bucket: int) -> str:
        return f"{self.prefix}:{gen}:{bucket}"


@dataclass(frozen=True)
class Generation:
    """The live data set: its number, bucket count and record count."""

    gen: int
    buckets: int
    count: int
    loaded_at: str = ""
    dirty: str = ""  # the token of a load writing into it, or that died part-way: count may be off until recounted


def read_generation(client: redis.Redis, layout: Layout = Layout()) -> Generation | None:
    """The live generation from ``m2:meta``, or None for an empty store."""
    gen, buckets, count, loaded_at, dirty = client.hmget(layout.meta, "gen", "buckets", "count", "loaded_at", "dirty")
    if gen is None or buckets is None:
        return None
    dirty_by = _text(dirty)
    return Generation(int(gen), int(buckets), int(count or 0), _text(loaded_at), "" if dirty_by == "0" else dirty_by)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class StoreUnavailable(redis.exceptions.ConnectionError):
    """The store failed to answer a moment ago; not tried again until the pause is over."""


class CodeStore:
    """Reads barcode → customer code; caches ``m2:meta`` for META_TTL seconds.

    After a connection failure or timeout, calls fail at once for *pause* seconds (a circuit
    breaker): with a hung Redis, requests queued behind the first one are answered quickly
    instead of each waiting out its own timeout.
    """

    def __init__(
        self,
        client: redis.Redis,
        layout: Layout = Layout(),
        *,
        meta_ttl: float = META_TTL,
        pause: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.layout = layout
        self.meta_ttl = meta_ttl
        self.pause = pause
        self.clock = clock
        self._generation: Generation | None = None
        self._fetched_at = float("-inf")
        self._paused_until = float("-inf")
        self._heads: tuple[int, list[bytes | None]] = (-1, [])  # (generation, its buckets' HGET heads as built)
        self._idle: list[redis.connection.AbstractConnection] = []  # lookup connections not in use (see _pipelined)
        os.register_at_fork(after_in_child=self._idle.clear)

    def _guard(self, call: Callable[[], T]) -> T:
        if self.clock() < self._paused_until:
            raise StoreUnavailable("the store failed to answer a moment ago")
        try:
            return call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._paused_until = self.clock() + self.pause
            raise

    def generation(self) -> Generation | None:
        """The live generation, re-read from Redis at most every *meta_ttl* seconds."""
        now = self.clock()
        if now - self._fetched_at >= self.meta_ttl:
            self._generation = self._guard(lambda: read_generation(self.client, self.layout))
            self._fetched_at = now
        return self._generation

    def lookup(self, barcodes: Sequence[str]) -> list[str | None]:
        """Customer codes for *barcodes*, in order; None where a barcode is unknown."""
        return self._guard(lambda: self._lookup(barcodes))

    def _lookup(self, barcodes: Sequence[str]) -> list[str | None]:
        generation = self.generation()
        if generation is None or not barcodes:
            return [None] * len(barcodes)
        # One HGET per barcode, packed by hand: a request's barcodes fall in different buckets
        # (200 of them among tens of thousands), so grouping them into HMGETs saves nothing.
        if self._heads[0] != generation.gen:  # each bucket's packed "HGET key", kept for its generation
            self._heads = (generation.gen, [None] * min(generation.buckets, MAX_CACHED_HEADS))
        heads = self._heads[1]
        mask = generation.buckets - 1
        crc32 = zlib.crc32
        prefixes = _LENGTH_PREFIXES
        fields = "\n".join(barcodes).encode().split(b"\n")  # one encode for all (checked barcodes hold no newline)
        if len(fields) != len(barcodes):
            fields = [barcode.encode() for barcode in barcodes]
        parts: list[bytes] = []
        if generation.buckets <= len(heads) and max(map(len, fields)) < len(prefixes):  # the usual case
            for field in fields:
                bucket = crc32(field) & mask
                parts += (heads[bucket] or self._head(generation.gen, bucket), prefixes[len(field)], field, b"\r\n")
        else:
            for field in fields:
                bucket = crc32(field) & mask
                head = (heads[bucket] or self._head(generation.gen, bucket) if bucket < len(heads)
                        else _command_head(self.layout, generation.gen, bucket))
                parts += (head, b"$%d\r\n" % len(field), field, b"\r\n")
        return self._pipelined(b"".join(parts), len(barcodes))

    def _head(self, gen: int, bucket: int) -> bytes:
        """The packed ``HGET key`` of *bucket*, built once and kept."""
        head = self._heads[1][bucket] = _command_head(self.layout, gen, bucket)
        return head

    def _pipelined(self, payload: bytes, replies: int) -> list:
        """Send pre-packed commands on one of the store's connections and read their replies.

        The API's hot path: the replies are parsed by hiredis' reader straight from the socket,
        in C, instead of one redis-py call each. The connections are the store's own, made with
        the client's settings and kept in a list (a pop and an append, atomic under the GIL,
        instead of the pool's lock and per-checkout socket poll); a worker forked after they were
        made starts with none. A connection that turns out to be dead (Redis restarted) is
        replaced once.
        """
        for attempt in (1, 2):
            try:
                connection = self._idle.pop()
            except IndexError:
                pool = self.client.connection_pool
                connection = pool.connection_class(**pool.connection_kwargs)
            try:
                connection.send_packed_command([payload])
                result = _read_replies(connection, replies)
            except redis.exceptions.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                connection.disconnect()  # replies may be unread: never reuse it
                raise
            self._idle.append(connection)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def stats(self) -> dict:
        """Record count and generation of the live data set (read fresh, not cached)."""
        generation = self._guard(lambda: read_generation(self.client, self.layout))
        if generation is None:
            return {"records": 0, "generation": None, "loadedAt": None}
        return {"records": generation.count, "generation": generation.gen, "loadedAt": generation.loaded_at or None}


_INCOMPLETE = object()  # what the reader returns when no whole reply is buffered
_LENGTH_PREFIXES = tuple(b"$%d\r\n" % size for size in range(64))  # a barcode's "$<length>" line


def read_replies(connection: redis.connection.AbstractConnection, count: int, *, encoding: str | None) -> list:
    """*count* replies read from *connection*'s socket with a hiredis reader (simple values only;
    bulk strings decoded with *encoding*, or bytes), error replies kept in place as
    ``hiredis.ReplyError`` (on a cluster a MOVED among them is answered, not raised)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        raise redis.exceptions.ConnectionError("the connection to Redis is not open")
    if encoding:
        reader = hiredis.Reader(encoding=encoding, errors="replace", notEnoughData=_INCOMPLETE)
    else:
        reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
    replies: list = []
    while True:
        replies.extend(iter(reader.gets, _INCOMPLETE))  # every whole reply buffered, in a C loop
        if len(replies) >= count:
            return replies
        try:
            data = sock.recv(65536)
        except TimeoutError as exc:
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"the connection to Redis failed: {exc}") from exc
        if not data:
            raise redis.exceptions.ConnectionError("Redis closed the connection")
        reader.feed(data)


def _read_replies(connection: redis.connection.AbstractConnection, count: int) -> list:
    """:func:`read_replies` decoded as UTF-8, the first error reply raised as ResponseError."""
    replies = read_replies(connection, count, encoding="utf-8")
    if hiredis.ReplyError in set(map(type, replies)):
        error = next(reply for reply in replies if isinstance(reply, hiredis.ReplyError))
        raise redis.exceptions.ResponseError(str(error))
    return replies
