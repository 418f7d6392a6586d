"""Load a parsed LAS export into the store: incremental (default) or as a complete replacement."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from m2_code_store.bulk import write_generation
from m2_code_store.las_csv import ParsedExport
from m2_code_store.store import Generation, Layout, buckets_for, read_generation

LOCK_TTL_MS = 60_000
DEFAULT_MAX_SHRINK = 0.10
CROWDED_PER_BUCKET = 96  # Redis keeps a hash compact up to 128 entries (hash-max-*-entries)
REPLACE_GRACE = 3.0  # > store.META_TTL plus a slow request: readers are done with the old generation

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"


class LoadError(Exception):
    """A load that could not be done; nothing was changed unless the message says so."""


class StoreBusy(LoadError):
    """Another loader holds the store's lock."""


class ReplaceRefused(LoadError):
    """``--replace`` would remove too large a share of the current records."""


@dataclass
class LoadResult:
    """What a load did to the store."""

    mode: str  # "incremental" or "replace"
    generation: int
    added: int  # barcodes that were not in the store (or the new generation) before
    removed: int  # barcodes a Delete date removed
    records: int  # records in the live data set afterwards
    previous_records: int
    buckets: int = 0

    @property
    def crowded(self) -> bool:
        """True when buckets hold so many records on average that some leave the compact encoding."""
        return bool(self.buckets) and self.records / self.buckets > CROWDED_PER_BUCKET


class Lock:
    """The loader lock: a key with a TTL, refreshed while the load runs."""

    def __init__(self, client: redis.Redis, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = layout.lock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self._refreshed = 0.0

    def acquire(self) -> None:
        if not self.client.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            holder = self.client.get(self.key)
            holder = holder.decode() if isinstance(holder, bytes) else holder
            raise StoreBusy(
                f"another load is running (lock held by {holder}): wait for it to finish; a crashed "
                f"loader's lock expires by itself within {LOCK_TTL_MS // 1000} seconds"
            )
        self._refreshed = self.clock()

    def refresh(self) -> None:
        """Extend the lock, at most once every 5 seconds."""
        if self.clock() - self._refreshed >= 5:
            self.client.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL_MS)
            self._refreshed = self.clock()

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)


def delete_generation(client: redis.Redis, layout: Layout, gen: int, buckets: int, batch: int = 10_000) -> None:
    """Delete every bucket key of a generation, one UNLINK per key (cluster-safe), pipelined."""
    for start in range(0, buckets, batch):
        pipe = client.pipeline(transaction=False)
        for bucket in range(start, min(start + batch, buckets)):
            pipe.unlink(layout.bucket_key(gen, bucket))
        pipe.execute()


def clean_retired(client: redis.Redis, layout: Layout, live: Generation | None) -> int:
    """Delete generations left behind by earlier loads (never the live one); returns how many."""
    cleaned = 0
    for member in client.smembers(layout.retired):
        text = member.decode() if isinstance(member, bytes) else member
        gen, _, buckets = text.partition(":")
        if live is not None and int(gen) == live.gen:
            client.srem(layout.retired, member)
            continue
        delete_generation(client, layout, int(gen), int(buckets))
        client.srem(layout.retired, member)
        cleaned += 1
    return cleaned


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load(
    client: redis.Redis,
    parsed: ParsedExport,
    *,
    layout: Layout | None = None,
    replace: bool = False,
    force: bool = False,
    max_shrink: float = DEFAULT_MAX_SHRINK,
    grace: float = REPLACE_GRACE,
    source: str = "",
    progress: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> LoadResult:
    """Apply *parsed* to the store behind *client*; see the module docstring of store.py for the layout."""
    layout = layout or Layout()
    lock = Lock(client, layout)
    lock.acquire()
    try:
        live = read_generation(client, layout)
        clean_retired(client, layout, live)

        def on_progress(rows: int) -> None:
            lock.refresh()
            if progress:
                progress(rows)

        if replace:
            return _replace(client, parsed, layout, live, force, max_shrink, grace, source, on_progress, sleep)
        return _incremental(client, parsed, layout, live, source, on_progress)
    finally:
        lock.release()


def _incremental(client, parsed, layout, live, source, progress) -> LoadResult:
    if live is None:
        gen = int(client.incr(layout.seq))
        buckets = buckets_for(parsed.upserts)
        client.hset(layout.meta, mapping={"gen": gen, "buckets": buckets, "count": 0, "loaded_at": _now(), "source": source})
        live = Generation(gen, buckets, 0)
    written = write_generation(client, layout, live.gen, live.buckets, parsed, progress=progress)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(layout.meta, "count", written.added - written.removed)
    pipe.hset(layout.meta, mapping={"loaded_at": _now(), "source": source})
    records = int(pipe.execute()[0])
    return LoadResult("incremental", live.gen, written.added, written.removed, records, live.count, live.buckets)


def _replace(client, parsed, layout, live, force, max_shrink, grace, source, progress, sleep) -> LoadResult:
    gen = int(client.incr(layout.seq))
    buckets = buckets_for(parsed.upserts)
    marker = f"{gen}:{buckets}"
    client.sadd(layout.retired, marker)  # a crash before the switch leaves it to the next load to clean
    written = write_generation(client, layout, gen, buckets, parsed, progress=progress)
    records = written.added - written.removed
    previous = live.count if live else 0
    if previous and records < previous * (1 - max_shrink) and not force:
        delete_generation(client, layout, gen, buckets)
        client.srem(layout.retired, marker)
        share = 1 - records / previous
        raise ReplaceRefused(
            f"refusing to replace: the file holds {records:,} records but the store holds {previous:,} "
            f"({share:.0%} fewer, more than the {max_shrink:.0%} allowed). Is the export truncated? "
            "Nothing was changed. Re-run with --force to replace anyway."
        )
    # The switch: one HSET, so a reader sees the old generation or the new one, never a mix.
    client.hset(layout.meta, mapping={"gen": gen, "buckets": buckets, "count": records, "loaded_at": _now(), "source": source})
    client.srem(layout.retired, marker)
    if live is not None:
        old = f"{live.gen}:{live.buckets}"
        client.sadd(layout.retired, old)
        sleep(grace)  # readers that read m2:meta just before the switch finish on the old generation
        delete_generation(client, layout, live.gen, live.buckets)
        client.srem(layout.retired, old)
    return LoadResult("replace", gen, written.added, written.removed, records, previous, buckets)
