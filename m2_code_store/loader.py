"""Load a parsed LAS export into the store: incremental (default) or as a complete replacement.

- Incremental: upserts and deletes go straight into the live generation. ``m2:meta`` is marked
  ``dirty`` first; the count is updated from Redis' replies when the write completes, and a load
  that dies part-way (connection lost, out of memory, kill -9) leaves it dirty, so the next load
  recounts it (HLEN of every bucket) before it starts.
- When the live generation would average more than CROWDED_PER_BUCKET records a bucket, an
  incremental load rebuilds the whole data set into a new generation with more buckets (read,
  merged with the file, written, switched atomically), so memory per record stays low.
- Replace: the file is written into a new generation, compared with the live one, and switched
  in one HSET. It is refused, and the new generation deleted, when more than ``max_shrink`` of
  the live records are absent from the file, unless forced.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from m2_code_store.bulk import write_generation
from m2_code_store.las_csv import ParsedExport
from m2_code_store.store import Generation, Layout, buckets_for, read_generation

LOCK_TTL_MS = 60_000
DEFAULT_MAX_SHRINK = 0.10
CROWDED_PER_BUCKET = 96  # Redis keeps a hash compact up to 128 entries by default (hash-max-*-entries)
REPLACE_GRACE = 3.0  # > store.META_TTL plus a slow request: readers are done with the old generation
PIPELINE_BATCH = 5_000

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
    added: int  # barcodes that were not in the store before
    removed: int  # barcodes that were in the store and no longer are
    records: int  # records in the live data set afterwards
    previous_records: int
    buckets: int = 0
    rebuilt: bool = False  # an incremental load that re-spread the data set over more buckets


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """The loader lock: a key with a TTL, refreshed while the load runs."""

    def __init__(self, client: redis.Redis, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = layout.lock
        self.host = socket.gethostname()
        self.token = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self._refreshed = 0.0

    def acquire(self) -> None:
        """Take the lock; a lock left by a dead loader on this host is taken over at once."""
        if self.client.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            self._refreshed = self.clock()
            return
        holder = self.client.get(self.key)
        holder = holder.decode() if isinstance(holder, bytes) else (holder or "")
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == self.host and pid.isdigit() and not _pid_alive(int(pid)):
            self.client.eval(_RELEASE, 1, self.key, holder)
            if self.client.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
                self._refreshed = self.clock()
                return
        raise StoreBusy(
            f"another load is running (lock held by {holder}): wait for it to finish; a crashed "
            f"loader's lock expires by itself within {LOCK_TTL_MS // 1000} seconds"
        )

    def refresh(self) -> None:
        """Extend the lock, at most once every 5 seconds."""
        if self.clock() - self._refreshed >= 5:
            self.client.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL_MS)
            self._refreshed = self.clock()

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)


def _batched(client: redis.Redis, layout: Layout, gen: int, buckets: int, command: str) -> list:
    """Run ``command`` (one key, e.g. HLEN) on every bucket of a generation, pipelined; all replies."""
    replies: list = []
    for start in range(0, buckets, PIPELINE_BATCH):
        pipe = client.pipeline(transaction=False)
        for bucket in range(start, min(start + PIPELINE_BATCH, buckets)):
            pipe.execute_command(command, layout.bucket_key(gen, bucket))
        replies.extend(pipe.execute())
    return replies


def delete_generation(client: redis.Redis, layout: Layout, gen: int, buckets: int) -> None:
    """Delete every bucket key of a generation, one UNLINK per key (cluster-safe), pipelined."""
    _batched(client, layout, gen, buckets, "UNLINK")


def count_records(client: redis.Redis, layout: Layout, gen: int, buckets: int) -> int:
    """The exact number of records in a generation (HLEN of every bucket)."""
    return int(sum(_batched(client, layout, gen, buckets, "HLEN")))


def generation_barcodes(client: redis.Redis, layout: Layout, gen: int, buckets: int) -> pa.Array:
    """Every barcode stored in a generation."""
    barcodes: list[bytes | str] = []
    for fields in _batched(client, layout, gen, buckets, "HKEYS"):
        barcodes.extend(fields)
    return _strings(barcodes)


def generation_records(client: redis.Redis, layout: Layout, gen: int, buckets: int) -> tuple[pa.Array, pa.Array]:
    """Every (barcode, customer code) of a generation, as two string arrays."""
    barcodes: list[bytes | str] = []
    codes: list[bytes | str] = []
    for start in range(0, buckets, PIPELINE_BATCH):
        pipe = client.pipeline(transaction=False)
        for bucket in range(start, min(start + PIPELINE_BATCH, buckets)):
            pipe.hgetall(layout.bucket_key(gen, bucket))
        for fields in pipe.execute():
            barcodes.extend(fields.keys())
            codes.extend(fields.values())
    return _strings(barcodes), _strings(codes)


def _strings(values: list[bytes | str]) -> pa.Array:
    """A string array from Redis replies (bytes, or str on a decoding client)."""
    if values and isinstance(values[0], str):
        return pa.array(values, type=pa.string())
    return pc.cast(pa.array(values, type=pa.binary()), pa.string())


def clean_retired(client: redis.Redis, layout: Layout, live: Generation | None) -> int:
    """Delete generations left behind by earlier loads (never the live one); returns how many."""
    cleaned = 0
    for member in client.smembers(layout.retired):
        text = member.decode() if isinstance(member, bytes) else member
        gen, _, buckets = text.partition(":")
        if live is None or int(gen) != live.gen:
            delete_generation(client, layout, int(gen), int(buckets))
            cleaned += 1
        client.srem(layout.retired, member)
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
    """Apply *parsed* to the store behind *client*; see store.py for the layout."""
    layout = layout or Layout()
    lock = Lock(client, layout)
    lock.acquire()
    try:
        live = read_generation(client, layout)
        clean_retired(client, layout, live)
        if live is not None and live.dirty:  # an earlier load died part-way: repair the count
            live = _recount(client, layout, live, source=None)

        def on_progress(rows: int) -> None:
            lock.refresh()
            if progress:
                progress(rows)

        if replace:
            return _replace(client, parsed, layout, live, force, max_shrink, grace, source, on_progress, sleep)
        if live is not None and (live.count + parsed.upserts) / live.buckets > CROWDED_PER_BUCKET:
            return _rebuild(client, parsed, layout, live, grace, source, on_progress, sleep)
        return _incremental(client, parsed, layout, live, source, on_progress)
    finally:
        try:
            lock.release()
        except redis.exceptions.RedisError:
            pass  # the store is gone: the lock expires by itself; keep the original error


def _recount(client, layout, live: Generation, *, source: str | None) -> Generation:
    count = count_records(client, layout, live.gen, live.buckets)
    fields = {"count": count, "dirty": 0}
    if source is not None:
        fields.update(loaded_at=_now(), source=source)
    client.hset(layout.meta, mapping=fields)
    return Generation(live.gen, live.buckets, count, live.loaded_at)


def _incremental(client, parsed, layout, live, source, progress) -> LoadResult:
    if live is None:
        gen = int(client.incr(layout.seq))
        buckets = buckets_for(parsed.upserts)
        client.hset(layout.meta, mapping={"gen": gen, "buckets": buckets, "count": 0, "dirty": 1,
                                          "loaded_at": _now(), "source": source})
        live = Generation(gen, buckets, 0)
    else:
        client.hset(layout.meta, "dirty", 1)
    written = write_generation(client, layout, live.gen, live.buckets, parsed, progress=progress)
    # Every reply was read, and the count was exact before (a dirty one is recounted first):
    # Redis' own replies give the exact new count.
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(layout.meta, "count", written.added - written.removed)
    pipe.hset(layout.meta, mapping={"dirty": 0, "loaded_at": _now(), "source": source})
    records = int(pipe.execute()[0])
    return LoadResult("incremental", live.gen, written.added, written.removed, records, live.count, live.buckets)


def _write_new_generation(client, layout, parsed, progress) -> tuple[int, int, int]:
    """Write *parsed* into a fresh, unpublished generation; returns (gen, buckets, records).

    On any failure the partial generation is deleted (or, if Redis is gone, left listed in
    ``m2:retired`` for the next load to delete).
    """
    gen = int(client.incr(layout.seq))
    buckets = buckets_for(parsed.upserts)
    marker = f"{gen}:{buckets}"
    client.sadd(layout.retired, marker)  # a crash before the switch leaves it to the next load to clean
    try:
        written = write_generation(client, layout, gen, buckets, parsed, progress=progress)
        return gen, buckets, written.added - written.removed  # exact: the generation started empty
    except BaseException:
        try:
            delete_generation(client, layout, gen, buckets)
            client.srem(layout.retired, marker)
        except redis.exceptions.RedisError:
            pass
        raise


def _switch(client, layout, live, gen, buckets, records, source, grace, sleep) -> None:
    """Publish generation *gen* in one HSET, then delete the old one after *grace* seconds."""
    # One HSET: a reader sees the old generation or the new one, never a mix.
    client.hset(layout.meta, mapping={"gen": gen, "buckets": buckets, "count": records, "dirty": 0,
                                      "loaded_at": _now(), "source": source})
    client.srem(layout.retired, f"{gen}:{buckets}")
    if live is not None:
        old = f"{live.gen}:{live.buckets}"
        client.sadd(layout.retired, old)
        sleep(grace)  # readers that read m2:meta just before the switch finish on the old generation
        delete_generation(client, layout, live.gen, live.buckets)
        client.srem(layout.retired, old)


def _replace(client, parsed, layout, live, force, max_shrink, grace, source, progress, sleep) -> LoadResult:
    gen, buckets, records = _write_new_generation(client, layout, parsed, progress)
    previous = live.count if live else 0
    removed = added = records
    if live is not None and previous:
        old = generation_barcodes(client, layout, live.gen, live.buckets)
        new = generation_barcodes(client, layout, gen, buckets)
        kept = int(pc.sum(pc.is_in(old, value_set=new)).as_py() or 0)
        removed, added = len(old) - kept, records - kept
        if removed > previous * max_shrink and not force:
            delete_generation(client, layout, gen, buckets)
            client.srem(layout.retired, f"{gen}:{buckets}")
            raise ReplaceRefused(
                f"refusing to replace: {removed:,} of the {previous:,} records in the store "
                f"({removed / previous:.0%}) are not in the file, more than the {max_shrink:.0%} allowed. "
                "Is the export truncated, or the wrong one? Nothing was changed. "
                "Re-run with --force to replace anyway."
            )
    elif live is None:
        removed = 0
    _switch(client, layout, live, gen, buckets, records, source, grace, sleep)
    return LoadResult("replace", gen, added, removed if previous else 0, records, previous, buckets)


def _rebuild(client, parsed, layout, live, grace, source, progress, sleep) -> LoadResult:
    """Merge the live data set and the file into a new generation with more buckets."""
    barcodes, codes = generation_records(client, layout, live.gen, live.buckets)
    merged = ParsedExport(
        source_barcodes=pa.concat_arrays([barcodes, parsed.barcodes.cast(pa.string())]),
        source_codes=pa.concat_arrays([codes, parsed.customer_codes.cast(pa.string())]),
        source_deletes=np.concatenate([np.zeros(len(barcodes), dtype=bool), parsed.is_delete]),
        rows_read=parsed.rows_read,
    )
    gen, buckets, records = _write_new_generation(client, layout, merged, progress)
    new = generation_barcodes(client, layout, gen, buckets)
    kept = int(pc.sum(pc.is_in(barcodes, value_set=new)).as_py() or 0)
    _switch(client, layout, live, gen, buckets, records, source, grace, sleep)
    return LoadResult("incremental", gen, records - kept, len(barcodes) - kept, records, live.count, buckets, rebuilt=True)
