"""Load a parsed LAS export into the store: incremental (default) or as a complete replacement.

- Incremental: upserts and deletes go straight into the live generation. ``m2:meta``'s ``dirty``
  is set to this load's token first; the count is updated from Redis' replies when the write
  completes. A load that dies part-way (connection lost, out of memory, kill -9) leaves it
  dirty, so the next load recounts it (HLEN of every bucket) before it starts.
- When the live generation would average more than CROWDED_PER_BUCKET records a bucket, an
  incremental load rebuilds the whole data set into a new generation with more buckets (read,
  merged with the file, written, switched atomically), so memory per record stays low.
- The first load into an empty store writes a new generation and switches it in, like a replace
  with nothing to compare: stopped part-way, it leaves the store empty, never part of the file live.
- A new generation (the first load into an empty store, a replace, a rebuild) starts empty, so
  each bucket is written whole, in one RESTORE, with what the file leaves in it (restore.py);
  a server that refuses RESTORE gets HSETs instead (bulk.restore_generation).
- Replace: the file is written into a new generation, compared with the live one (only the
  parts of buckets whose fingerprints differ are looked up: fingerprints.py), and switched in one step. It is refused, and the new generation deleted, when more than ``max_shrink`` of
  the live records are absent from the file, unless forced.

Loaders are kept apart by a lease, and every write that publishes or deletes is fenced by it
(Kleppmann, "How to do distributed locking"):

- The lease is ``{m2:meta}:lock``: the holder's token with a TTL of LOCK_TTL_MS, renewed after
  every slice the loader sends. A loader can stall past the TTL (SIGSTOP, a paused VM) and lose
  the lease to another one without knowing it.
- So the switch of ``m2:meta`` to a new generation, the count update of an incremental load, a
  generation's fingerprints and forgetting a deleted generation are Lua scripts that first check, on the server and in the same
  step, that the caller still holds the lease; the lease, ``m2:meta`` and the list of generations
  share one hash slot so this works on Redis Cluster too. A renewal that finds the lease gone
  stops the load. A loader that lost its lease publishes and deletes nothing of anyone else's:
  it deletes the generation it was writing (its own), and says so.
- ``{m2:meta}:generations`` lists every generation that is not live: ``writing`` ones with their
  writer's token and a heartbeat (renewed with the lease), ``retired`` ones with the time they
  were switched away from. A load starts by deleting retired generations and generations whose
  writer is gone (a dead process on this host, or silent for ABANDONED_AFTER_MS); it never
  deletes one whose writer may still be running.

On a Redis Cluster (the client is a cluster.ClusterRedis, from config.connect_store) all of this
holds as it is: the lease, ``m2:meta``, the list of generations and the fingerprints share
``m2:meta``'s hash slot, so every fenced script runs on that slot's primary as on one Redis, and
the switch stays one write of one key. What goes over every bucket (writes, lookups, counts,
reading a data set back, deleting or expiring a generation) is streamed to every primary at once,
each its own buckets (bulk.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.client import NEVER_DECODE
from redis.crc import key_slot

from m2_code_store.bulk import (
    WriteResult,
    count_present,
    file_fingerprints,
    final_rows,
    on_every_bucket,
    restore_generation,
    row_crc,
    touched_buckets,
    write_generation,
)
from m2_code_store.cluster import ClusterRedis
from m2_code_store.fingerprints import Fingerprints
from m2_code_store.las_csv import ParsedExport
from m2_code_store.store import Generation, Layout, buckets_for, read_generation

log = logging.getLogger("m2_code_store")
LOCK_TTL_MS = 60_000
ABANDONED_AFTER_MS = 600_000  # a writing generation whose loader is silent this long is deleted
DEFAULT_MAX_SHRINK = 0.10
CROWDED_PER_BUCKET = 96  # Redis keeps a hash compact up to 128 entries by default (hash-max-*-entries)
REPLACE_GRACE = 3.0  # > store.META_TTL plus a slow request: readers are done with the old generation
SWITCH_CHECKS = 5  # times the loader asks, a second apart, whether a switch whose reply was lost happened

_NOW_MS = "local function now_ms() local t = redis.call('TIME') return string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)) end\n"
# Every script checks the lease first: KEYS[1] is the lock, ARGV[1] the caller's token.
_HELD = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
_RELEASE = _HELD + "return redis.call('DEL', KEYS[1])"
# KEYS: lock, generations. ARGV: token, ttl ms, the generation being written ('' for none), its buckets.
_RENEW = _NOW_MS + _HELD + """
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4] .. ' writing ' .. ARGV[1] .. ' ' .. now_ms()) end
return 1"""
# KEYS: lock, generations. ARGV: token, generation.
_FORGET = _HELD + "return redis.call('HDEL', KEYS[2], ARGV[2]) + 1"
# KEYS: lock, generations, meta. ARGV: token, gen, buckets, count, dirty, loaded_at, source, the live gen
# the caller expects ('' for none), '1' when gen's fingerprints are stored and exact. Publishes gen and
# marks the previous one retired, in one step (and vouches for the fingerprints: fingerprints_vouched).
# Idempotent: redis-py re-sends a command whose reply was lost, and generation numbers are never reused.
_SWITCH = _NOW_MS + """
local live = redis.call('HGET', KEYS[3], 'gen') or ''
if live == ARGV[2] then return 1 end
""" + _HELD + """
if live ~= ARGV[8] then return -1 end
local entry = redis.call('HGET', KEYS[2], ARGV[2])
if not entry or not string.find(entry, ' writing ' .. ARGV[1] .. ' ', 1, true) then return -2 end
local old_buckets = redis.call('HGET', KEYS[3], 'buckets')
redis.call('HSET', KEYS[3], 'gen', ARGV[2], 'buckets', ARGV[3], 'count', ARGV[4], 'dirty', ARGV[5],
           'loaded_at', ARGV[6], 'source', ARGV[7])
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[3], 'counted_by', ARGV[1], 'fingerprinted', ARGV[2] .. ' ' .. ARGV[1])
else
  redis.call('HDEL', KEYS[3], 'fingerprinted')  -- its fingerprints could not be worked out
end
redis.call('HDEL', KEYS[2], ARGV[2])
if live ~= '' then redis.call('HSET', KEYS[2], live, old_buckets .. ' retired - ' .. now_ms()) end
return 1"""
# KEYS: lock, meta. ARGV: token, gen. An incremental load marks the live generation's count as
# being changed by it.
_MARK_DIRTY = _HELD + """
if redis.call('HGET', KEYS[2], 'gen') ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[2], 'dirty', ARGV[1])
return 1"""
# KEYS: lock, meta. ARGV: token, gen, dirty as read before the recount, the recounted count.
_RECOUNTED = _HELD + """
if redis.call('HGET', KEYS[2], 'gen') ~= ARGV[2] or redis.call('HGET', KEYS[2], 'dirty') ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[2], 'count', ARGV[4], 'dirty', '0')
redis.call('HDEL', KEYS[2], 'fingerprinted')
return 1"""
# KEYS: lock, meta. ARGV: token, gen, change in records, loaded_at, source, '1' when the generation's
# fingerprints are stored and exact. Returns {status, count}: 1 the count is exact; 2 another writer
# touched the generation meanwhile (it stays dirty).
# Idempotent: a re-sent call finds counted_by set to its token.
_COUNTED = _HELD + """
if redis.call('HGET', KEYS[2], 'gen') ~= ARGV[2] then return -1 end
local count = tonumber(redis.call('HGET', KEYS[2], 'count'))
if redis.call('HGET', KEYS[2], 'counted_by') == ARGV[1] then return {1, count} end
redis.call('HSET', KEYS[2], 'loaded_at', ARGV[4], 'source', ARGV[5], 'counted_by', ARGV[1])
if redis.call('HGET', KEYS[2], 'dirty') ~= ARGV[1] then
  redis.call('HDEL', KEYS[2], 'fingerprinted')
  return {2, count}
end
redis.call('HSET', KEYS[2], 'dirty', '0')
if ARGV[6] == '1' then redis.call('HSET', KEYS[2], 'fingerprinted', ARGV[2] .. ' ' .. ARGV[1])
else redis.call('HDEL', KEYS[2], 'fingerprinted') end
return {1, redis.call('HINCRBY', KEYS[2], 'count', ARGV[3])}"""
# KEYS: lock, a generation's fingerprints. ARGV: token, their bytes.
_SET_FINGERPRINTS = _HELD + "redis.call('SET', KEYS[2], ARGV[2])\nreturn 1"
# KEYS: generations, meta. ARGV: token, gen, buckets. Not fenced: run by a loader that lost the
# lease, about the generation it was writing. If that generation is live (an incremental load),
# its count is marked untrustworthy; otherwise it is listed as retired, so that whatever this
# loader cannot delete, the next load does.
_DISOWN = _NOW_MS + """
if redis.call('HGET', KEYS[2], 'gen') == ARGV[2] then
  redis.call('HSET', KEYS[2], 'dirty', ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. ' retired - ' .. now_ms())
return 1"""


class LoadError(Exception):
    """A load that could not be done; nothing was changed unless the message says so."""


class StoreBusy(LoadError):
    """Another loader holds the store's lock."""


class ReplaceRefused(LoadError):
    """``--replace`` would remove too large a share of the current records."""


class LockLost(LoadError):
    """Another loader took the lease while this one was stalled: this one must stop."""


class LoadStopped(LoadError):
    """The load stopped part-way: Redis failed, the lease was lost, or it was interrupted.

    ``cause`` is what stopped it; ``state`` says, as verified as it could be, what the store
    holds now (one sentence, for a person). ``whole``: nothing of the file, or all of it, is live
    (a load that writes a new generation, --replace, a first load or a rebuild; or one that
    stopped before writing), as ``switched`` says (None: unknown); otherwise up to ``rows_sent``
    rows were applied to the live data set.
    """

    def __init__(self, cause: BaseException, state: str, *, rows_sent: int, switched: bool | None = False,
                 whole: bool = False) -> None:
        super().__init__(state)
        self.cause = cause
        self.state = state
        self.rows_sent = rows_sent
        self.switched = switched
        self.whole = whole


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
    notes: list[str] | None = None  # things the operator should know (generations left alone, …)
    interrupted: KeyboardInterrupt | None = None  # an interrupt that came after the switch (the load is done)
    unsent: int = 0  # the file's rows not sent: their buckets already held what the file leaves in them


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class Lock:
    """The loaders' lease: ``{m2:meta}:lock`` holding this loader's token, with a TTL.

    Its scripts are the fenced writes: each checks the token on the server in the same step.
    """

    def __init__(self, client: redis.Redis, layout: Layout, *, ttl_ms: int = LOCK_TTL_MS) -> None:
        self.client = client
        self.layout = layout
        self.key = layout.lock
        self.ttl_ms = ttl_ms
        self.host = socket.gethostname()
        self.token = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.writing: tuple[int, int] | None = None  # (gen, buckets) of the generation this loader writes
        self.lost = False
        self.holder: str | None = None  # who held the lease when this loader found it lost

    def acquire(self) -> None:
        """Take the lease; one left by a dead loader on this host is taken over at once."""
        legacy = _text(self.client.get(self.layout.legacy_lock))
        if legacy:
            raise StoreBusy(f"a loader of the previous release is running (it holds {self.layout.legacy_lock}: "
                            f"{legacy}): wait for it to finish; its lock expires by itself within 60 seconds")
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return
        holder = _text(self.client.get(self.key))
        if holder == self.token:  # redis-py re-sent the SET whose reply was lost: it is ours
            return
        if owner_is_dead(holder, self.host):
            self.client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                             1, self.key, holder)
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return
        raise StoreBusy(
            f"another load is running (lock held by {holder}): wait for it to finish; a crashed "
            f"loader's lock expires by itself within {self.ttl_ms // 1000} seconds"
        )

    def _fenced(self, script: str, keys: list[str], *args: str | int | float | bytes) -> Any:
        return self.client.eval(script, len(keys), *keys, self.token, *args)

    def renew(self) -> None:
        """Extend the lease (and the heartbeat of the generation being written); LockLost if it is gone."""
        gen, buckets = self.writing or ("", "")
        if not self._fenced(_RENEW, [self.key, self.layout.generations], self.ttl_ms, gen, buckets):
            raise self._lost("")

    def _lost(self, when: str) -> LockLost:
        """The LockLost for a lease found gone, saying who holds it now (as read, not assumed)."""
        self.lost = True
        try:
            self.holder = _text(self.client.get(self.key)) or None
        except redis.exceptions.RedisError:
            self.holder = "?"
        now = {None: "no loader holds it now", "?": "who holds it now could not be read"}.get(
            self.holder, f"loader {self.holder} holds it now")
        return LockLost(f"this loader lost its lock on the store{when}: its {self.ttl_ms // 1000}-second lifetime "
                        f"ran out while this loader or Redis was stalled, and {now}")

    def begin(self, gen: int, buckets: int) -> None:
        """Record *gen* as being written by this loader (its heartbeat is renewed with the lease)."""
        self.writing = (gen, buckets)
        self.renew()

    def forget(self, gen: int) -> None:
        """Remove *gen* from the list of generations, once its keys are deleted."""
        if not self._fenced(_FORGET, [self.key, self.layout.generations], gen):
            raise self._lost(" while deleting an old data set")

    def release(self) -> None:
        self._fenced(_RELEASE, [self.key])


def owner_is_dead(token: str, host: str) -> bool:
    """True when *token* names a process on *host* (this machine) that no longer runs."""
    owner_host, _, rest = token.partition(":")
    pid = rest.partition(":")[0]
    return owner_host == host and pid.isdigit() and not _pid_alive(int(pid))


def delete_generation(client: redis.Redis, layout: Layout, gen: int, buckets: int,
                      before_batch: Callable[[], None] | None = None) -> None:
    """Delete every bucket key of a generation, one UNLINK per key (cluster-safe), streamed, and
    its fingerprints.

    *before_batch* runs before each megabyte of commands goes out: a loader passes its lease
    check, so one that lost the lease stops deleting.
    """
    client.unlink(layout.fingerprints(gen))
    on_every_bucket(client, layout, gen, buckets, "UNLINK", before_send=before_batch)


def expire_generation(client: redis.Redis, layout: Layout, gen: int, buckets: int, milliseconds: int,
                      before_batch: Callable[[], None] | None = None) -> None:
    """Let every bucket key of a generation expire after *milliseconds* (0: now), streamed; its
    fingerprints go at once (nothing reads them but a loader, and this one holds the lease)."""
    client.unlink(layout.fingerprints(gen))
    on_every_bucket(client, layout, gen, buckets, "PEXPIRE", milliseconds, before_send=before_batch)


def count_records(client: redis.Redis, layout: Layout, gen: int, buckets: int,
                  before_batch: Callable[[], None] | None = None) -> int:
    """The exact number of records in a generation (HLEN of every bucket)."""
    return sum(on_every_bucket(client, layout, gen, buckets, "HLEN", before_send=before_batch))


def fingerprints_vouched(client: redis.Redis, layout: Layout, live: Generation) -> bool:
    """Whether the stored fingerprints of the live generation describe what it holds: the last
    load that wrote it (``counted_by``) vouched for them when it finished (``fingerprinted``),
    and no load has been into it since, finished or not (``dirty``). A loader of the previous
    release, or a load that died, leaves them unvouched: they are then not used."""
    if live.dirty:
        return False
    counted_by, fingerprinted = (_text(value) for value in client.hmget(layout.meta, "counted_by", "fingerprinted"))
    return bool(counted_by) and fingerprinted == f"{live.gen} {counted_by}"


def read_fingerprints(client: redis.Redis, layout: Layout, gen: int, buckets: int) -> Fingerprints | None:
    """A generation's fingerprints, or None when it has none (or none for *buckets* buckets)."""
    return Fingerprints.from_bytes(client.execute_command("GET", layout.fingerprints(gen), **{NEVER_DECODE: True}),
                                   buckets)


def generation_barcodes(client: redis.Redis, layout: Layout, gen: int, buckets: int,
                        before_batch: Callable[[], None] | None = None) -> pa.Array:
    """Every barcode stored in a generation."""
    barcodes: list[bytes | str] = []
    for fields in on_every_bucket(client, layout, gen, buckets, "HKEYS", before_send=before_batch, each=list):
        barcodes.extend(fields)
    return _strings(barcodes)


def generation_records(client: redis.Redis, layout: Layout, gen: int, buckets: int,
                       before_batch: Callable[[], None] | None = None) -> tuple[pa.Array, pa.Array]:
    """Every (barcode, customer code) of a generation, as two string arrays."""
    barcodes: list[bytes | str] = []
    codes: list[bytes | str] = []
    for fields in on_every_bucket(client, layout, gen, buckets, "HGETALL", before_send=before_batch, each=_pairs):
        barcodes.extend(fields.keys())
        codes.extend(fields.values())
    return _strings(barcodes), _strings(codes)


def _pairs(reply: list | dict) -> dict:
    """An HGETALL reply as a dict: RESP3 sends a map, RESP2 a flat list (field, value, …)."""
    return reply if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2], strict=True))


def _strings(values: list[bytes | str]) -> pa.Array:
    """A string array from Redis replies (bytes, or str on a decoding client)."""
    if values and isinstance(values[0], str):
        return pa.array(values, type=pa.string())
    return pc.cast(pa.array(values, type=pa.binary()), pa.string())


@dataclass(frozen=True)
class OtherGeneration:
    """A generation that is not live: being written (by *owner*) or retired."""

    gen: int
    buckets: int
    state: str  # "writing" or "retired"
    owner: str  # the writer's lease token; "-" for a retired generation
    since_ms: int  # the writer's last heartbeat, or when it was retired (server time)

    @classmethod
    def parse(cls, gen: bytes | str, entry: bytes | str) -> OtherGeneration:
        buckets, state, owner, since = _text(entry).split(" ")
        return cls(int(_text(gen)), int(buckets), state, owner, int(since))


def other_generations(client: redis.Redis, layout: Layout) -> list[OtherGeneration]:
    """Every generation listed as being written or retired, oldest first."""
    entries = client.hgetall(layout.generations)
    return sorted((OtherGeneration.parse(gen, entry) for gen, entry in entries.items()), key=lambda g: g.gen)


def _server_ms(client: redis.Redis, layout: Layout) -> int:
    """The time on the Redis that runs the scripts (on a cluster: m2:meta's primary)."""
    if isinstance(client, ClusterRedis):
        seconds, micros = client.execute_command("TIME", target_nodes=client.primary_of(key_slot(layout.meta.encode())))
    else:
        seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def writer_gone(other: OtherGeneration, host: str, now_ms: int, abandoned_after_ms: int) -> str | None:
    """Why the loader writing *other* is gone (a reason for a note), or None if it may still run.

    On this host the process table decides, whatever the silence (a SIGSTOPped loader is alive);
    a loader on another host is presumed gone once silent for *abandoned_after_ms*.
    """
    owner_host = other.owner.partition(":")[0]
    if owner_host == host:
        return "its process is gone" if owner_is_dead(other.owner, host) else None
    silent_minutes = (now_ms - other.since_ms) // 60_000
    return f"silent for {silent_minutes:,} minutes" if now_ms - other.since_ms > abandoned_after_ms else None


def clean_generations(
    client: redis.Redis, layout: Layout, lock: Lock, live: Generation | None, *,
    grace: float = REPLACE_GRACE, abandoned_after_ms: int = ABANDONED_AFTER_MS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Delete retired generations and ones whose writer is gone; returns notes on what it did or left.

    A retired generation is deleted once *grace* seconds have passed since it was switched away
    from. A generation being written is deleted only when its writer is gone (:func:`writer_gone`):
    a writer that is merely stalled keeps it, and deletes it itself when it resumes and finds it
    lost the lease. Generations the previous release listed in ``m2:retired`` are deleted too.
    """
    notes: list[str] = []
    for member in client.smembers(layout.legacy_retired):
        gen, _, buckets = _text(member).partition(":")
        if live is None or int(gen) != live.gen:
            delete_generation(client, layout, int(gen), int(buckets), lock.renew)
        client.srem(layout.legacy_retired, member)
    for other in other_generations(client, layout):
        now = _server_ms(client, layout)
        if live is not None and other.gen == live.gen:
            lock.forget(other.gen)  # listed by a loader that lost its lease while writing into the live one
            continue
        if other.state == "retired":
            wait = other.since_ms + grace * 1000 - now
            if wait > 0:
                sleep(wait / 1000)  # readers may still be finishing on it
        else:
            gone = writer_gone(other, lock.host, now, abandoned_after_ms)
            if gone is None:
                silent = max(0, now - other.since_ms) // 1000
                notes.append(
                    f"left generation {other.gen} alone: loader {other.owner} was writing it {silent:,} s ago and may "
                    f"only be stalled; it deletes it itself when it resumes, or a load deletes it once that loader's "
                    f"process is gone (on its host) or it has been silent for {abandoned_after_ms // 60_000} minutes"
                )
                continue
            notes.append(f"deleted generation {other.gen}, which loader {other.owner} left part-written ({gone})")
        delete_generation(client, layout, other.gen, other.buckets, lock.renew)
        lock.forget(other.gen)
    return notes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Deferred:
    """The signals that arrived while interrupts were deferred."""

    def __init__(self) -> None:
        self.received: list[int] = []


@contextmanager
def interrupts_deferred(*, hold: int = 1) -> Iterator[Deferred]:
    """Hold off the first SIGINT or SIGTERM while the block runs (a clean-up should not stop
    half-way); a second one raises KeyboardInterrupt at once, so a person is never ignored for
    long (*hold* 0: the first one does, for a clean-up that an interrupt started). The caller
    decides what to do with ``received``. Only in the main thread."""
    deferred = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return

    def record(signum: int, _frame: object) -> None:
        deferred.received.append(signum)
        if len(deferred.received) > hold:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield deferred
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _SwitchUnknown(LoadError):
    """The switch was sent, its reply was lost, and the store has not answered since."""


class _Run:
    """One load: the client, the lease, the options, and how far it got."""

    def __init__(self, client: redis.Redis, layout: Layout, lock: Lock, *, source: str, grace: float,
                 progress: Callable[[int], None] | None, sleep: Callable[[float], None],
                 phase: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.layout = layout
        self.lock = lock
        self.source = source
        self.grace = grace
        self.user_progress = progress
        self.user_phase = phase
        self.sleep = sleep
        self.rows_sent = 0
        self.published: int | None = None  # the generation this load switched to
        self.interrupted: KeyboardInterrupt | None = None  # an interrupt that came after the switch
        self.notes: list[str] = []
        self.vouched = False  # whether the live generation's fingerprints are exact (fingerprints_vouched)
        self.fingerprinted = False  # whether write_new stored exact fingerprints of the generation it wrote
        self.stop_now = False  # a person stopped the clean-up: exit without waiting on Redis again

    def progress(self, rows: int) -> None:
        self.rows_sent = rows  # handed to the sender: sent unless the load stops first
        if self.user_progress:
            self.user_progress(rows)

    def _disown(self, gen: int, buckets: int) -> None:
        """After losing the lease: mark *gen* retired (or, if live, its count untrustworthy)."""
        self.client.eval(_DISOWN, 2, self.layout.generations, self.layout.meta, self.lock.token, gen, buckets)

    # -- incremental ------------------------------------------------------------------------

    def incremental(self, parsed: ParsedExport, live: Generation) -> LoadResult:
        """Apply *parsed* to the live generation in place (a store that holds a data set)."""
        try:
            if self.lock._fenced(_MARK_DIRTY, [self.lock.key, self.layout.meta], live.gen) != 1:
                raise self.lock._lost(" before it started writing")
            changing, vouch = self._changing(live, parsed)
            written = write_generation(self.client, self.layout, live.gen, live.buckets, changing,
                                       progress=self.progress, before_send=self.lock.renew)
            if len(changing) < len(parsed):
                self.phase(f"{len(parsed) - len(changing):,} of the file's {len(parsed):,} rows not sent: "
                           "their buckets already held exactly what the file leaves in them")
            counted = self.lock._fenced(_COUNTED, [self.lock.key, self.layout.meta], live.gen,
                                        written.added - written.removed, _now(), self.source, "1" if vouch else "0")
            if counted == 0:
                raise self.lock._lost(" as it finished writing")
        except BaseException as exc:
            raise self._stopped_incremental(exc, live) from exc
        status, records = counted
        if status == 2:
            self.notes.append("another loader wrote into the store during this load: the record count is "
                              "recounted by the next load")
        return LoadResult("incremental", live.gen, written.added, written.removed, int(records), live.count,
                          live.buckets, notes=self.notes, unsent=len(parsed) - len(changing))

    def _changing(self, target: Generation, parsed: ParsedExport) -> tuple[ParsedExport, bool]:
        """The rows of *parsed* to write into the live generation *target*, their buckets marked
        unknown in its fingerprints before writing (which of the file's barcodes are new is not
        known); and whether the fingerprints stay exact (this load may vouch for them).

        Left out: the rows of buckets where the file leaves exactly the records the bucket holds
        (fingerprints.py): applying them there changes nothing. Redis is asked how many records
        each bucket holds first: a bucket that lost keys the fingerprints do not know of (evicted
        under a maxmemory policy, deleted by hand) is written.
        """
        stored = read_fingerprints(self.client, self.layout, target.gen, target.buckets) if self.vouched else None
        if stored is None:
            return parsed, False
        if len(parsed):
            fresh, _ = file_fingerprints(parsed, target.buckets, final_rows(parsed))
            unchanged = fresh.buckets_with_the_same_records(stored)
            touched = np.zeros(target.buckets, dtype=bool)
            touched[touched_buckets(parsed, target.buckets)] = True
            unchanged &= touched  # a bucket the file has no row for is not written anyway
            if unchanged.any():
                held = on_every_bucket(self.client, self.layout, target.gen, target.buckets, "HLEN",
                                       before_send=self.lock.renew)
                unchanged &= np.array(held, dtype=np.int64) == stored.bucket_counts()
                bucket = row_crc(parsed)[parsed.order] & np.uint32(target.buckets - 1)
                parsed = dataclasses.replace(parsed, apply_order=parsed.order[~unchanged[bucket]])
        stored.forget(touched_buckets(parsed, target.buckets))
        self._store_fingerprints(target.gen, stored)
        return parsed, True

    def _store_fingerprints(self, gen: int, fingerprints: Fingerprints) -> None:
        if not self.lock._fenced(_SET_FINGERPRINTS, [self.lock.key, self.layout.fingerprints(gen)],
                                 fingerprints.to_bytes()):
            raise self.lock._lost(" as it stored the data set's fingerprints")

    def _stopped_incremental(self, exc: BaseException, target: Generation) -> LoadStopped:
        if self.lock.lost:
            try:
                with interrupts_deferred():
                    self._disown(target.gen, target.buckets)
            except redis.exceptions.RedisError:
                pass  # the store is gone too: its count stays dirty, and the next load recounts it
        sent = f"up to {self.rows_sent:,} rows were sent" if self.rows_sent else "no row was sent"
        if self.lock.lost:
            return LoadStopped(exc, f"{sent} before it noticed and stopped (at most the chunk of about a megabyte it "
                                    "was sending went out after the lease had run out); what Redis applied stays, "
                                    f"and the next load recounts the records. {self._advice()}",
                               rows_sent=self.rows_sent)
        return LoadStopped(exc, f"{sent} before it stopped; what Redis applied stays, and the next load recounts "
                                "the records. Re-running the same file is safe", rows_sent=self.rows_sent)

    # -- a new generation: replace and rebuild ----------------------------------------------

    def write_new(self, parsed: ParsedExport, *, rows_progress: bool = True,
                  compare_with: Generation | None = None) -> tuple[int, int, int, int | None]:
        """Write *parsed* into a fresh, unpublished generation; returns (gen, buckets, records, kept).

        *kept* is how many of the file's barcodes *compare_with* holds, counted after the write
        when the new generation has as many buckets as it (the nightly reload); otherwise None.
        The file's fingerprints are worked out on a thread while the write streams; then only the
        barcodes of the parts of buckets whose fingerprints differ from the live generation's are
        looked up in it (fingerprints.py).
        """
        gen, buckets = int(self.client.incr(self.layout.seq)), buckets_for(parsed.upserts)
        self.lock.begin(gen, buckets)  # listed before the first key: a crash leaves it to be cleaned
        compare = compare_with.gen if compare_with is not None and compare_with.buckets == buckets else None
        if not rows_progress:
            self.phase(f"rebuilding the store into {buckets:,} buckets")
        elif compare is not None:
            self.phase("writing the new data set")
        written, final, worked_out = self._fill(gen, buckets, parsed, progress=self.progress if rows_progress else None)
        fingerprints: Fingerprints | None
        parts: np.ndarray | None
        try:
            fingerprints, parts = worked_out.result()
        except Exception as exc:  # a bug, or no memory left: the data set stands, compared and counted in full
            fingerprints = parts = None
            self.notes.append(f"the data set's fingerprints could not be worked out ({type(exc).__name__}: {exc}); "
                              "the next --replace compares every bucket with the file, which takes longer")
        kept = None
        if compare is not None:
            self.phase("comparing it with the live one")
            lookup, known = final, 0
            old = read_fingerprints(self.client, self.layout, compare, buckets) if self.vouched else None
            if old is not None and fingerprints is not None and parts is not None:
                same = fingerprints.same_as(old)
                known = int(fingerprints.counts[same].sum())
                lookup = final[~same[parts]]
            del parts
            kept = known + count_present(self.client, self.layout, compare, buckets, parsed, rows=lookup,
                                         before_send=self.lock.renew)
        if fingerprints is not None:
            self._store_fingerprints(gen, fingerprints)
        self.fingerprinted = fingerprints is not None
        return gen, buckets, written.added - written.removed, kept  # exact: the generation started empty

    def _fill(self, gen: int, buckets: int, parsed: ParsedExport, *, progress: Callable[[int], None] | None,
              ) -> tuple[WriteResult, np.ndarray, Future[tuple[Fingerprints, np.ndarray]]]:
        """Write what *parsed* leaves into generation *gen*, new and empty: each bucket whole, in one
        RESTORE, where the server takes it (bulk.restore_generation), else as any load writes. Also
        returns the file's final rows, and its fingerprints, worked out on a thread meanwhile
        (numpy and Arrow leave the GIL)."""
        final = final_rows(parsed)
        fingerprints = _fingerprints_meanwhile(parsed, buckets, final)
        written = restore_generation(self.client, self.layout, gen, buckets, parsed, final, progress=progress,
                                     before_send=self.lock.renew)
        if written is None:
            written = write_generation(self.client, self.layout, gen, buckets, parsed, progress=progress,
                                       before_send=self.lock.renew)
        return written, final, fingerprints

    def discard(self, gen: int, buckets: int, *, interrupted: bool = False) -> str:
        """Delete this loader's unpublished generation; says how that went. When the load stops for
        an interrupt (*interrupted*), the next one stops the deletion: the second Ctrl-C."""
        try:
            with interrupts_deferred(hold=0 if interrupted else 1):
                live = read_generation(self.client, self.layout)
                if self.published == gen or (live is not None and live.gen == gen):
                    return f"the new data set (generation {gen}) is live after all, so it was kept"
                if self.lock.lost:  # ours to delete, but not fenced: list it first so the next load finishes
                    self._disown(gen, buckets)
                    delete_generation(self.client, self.layout, gen, buckets)
                    self.client.hdel(self.layout.generations, gen)  # only this loader ever writes this generation
                else:
                    delete_generation(self.client, self.layout, gen, buckets, self.lock.renew)
                    self.lock.forget(gen)
            return "the partial new data set was deleted"
        except (redis.exceptions.RedisError, LockLost) as exc:
            return (f"the partial new data set (generation {gen}) could not be deleted ({type(exc).__name__}); "
                    "the next load deletes it")
        except KeyboardInterrupt:
            self.stop_now = True  # the lease is released here, or not at all
            if self._let_go_quickly(gen, buckets):
                return (f"deleting the partial new data set (generation {gen}) was interrupted; the next load "
                        "deletes the rest")
            return (f"deleting the partial new data set (generation {gen}) was interrupted, and Redis did not "
                    f"answer in time: another load is refused until this loader's lock expires (within "
                    f"{self.lock.ttl_ms // 1000} seconds), then the next load deletes the rest")

    def _let_go_quickly(self, gen: int, buckets: int) -> bool:
        """After a second interrupt: list *gen* as retired (any next load deletes it, from any host)
        and release the lease, giving Redis a second; whether that was done."""
        quick = _meta_client(self.client, self.layout, timeout=1.0)
        try:
            with interrupts_deferred(hold=0):
                quick.eval(_DISOWN, 2, self.layout.generations, self.layout.meta, self.lock.token, gen, buckets)
                quick.eval(_RELEASE, 1, self.lock.key, self.lock.token)
            return True
        except (redis.exceptions.RedisError, KeyboardInterrupt):
            return False
        finally:
            quick.close()

    def _switch_to(self, gen: int, buckets: int, records: int, live: Generation | None, *, vouch: bool) -> None:
        """Publish *gen* (fenced, one step); the previous generation is marked retired in the same step.
        With *vouch*, gen's stored fingerprints are exact (fingerprints_vouched)."""
        expected = "" if live is None else str(live.gen)
        status = self.lock._fenced(
            _SWITCH, [self.lock.key, self.layout.generations, self.layout.meta],
            gen, buckets, records, "0", _now(), self.source, expected, "1" if vouch else "0",
        )
        if status == 0:
            raise self.lock._lost(" before it could switch to the new data set")
        if status != 1:
            raise LoadError(f"the live data set changed under this load (switch refused: {status}); nothing was switched")
        self.published = gen

    def phase(self, name: str) -> None:
        if self.user_phase:
            self.user_phase(name)

    def publish(self, gen: int, buckets: int, records: int, live: Generation | None) -> None:
        """Switch to *gen*, then delete the previous generation after the grace period.

        If the switch's reply is lost, or an interrupt comes while it is awaited, ``m2:meta`` is
        read again: a switch that happened is a success, one that did not raises, one that cannot
        be checked raises _SwitchUnknown. Once the switch is done nothing here raises: an interrupt
        is kept in ``interrupted`` and what is left undone is noted.
        """
        self.phase("switching to the new data set")
        try:
            self._switch_to(gen, buckets, records, live, vouch=self.fingerprinted)  # as write_new stored them
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KeyboardInterrupt) as exc:
            switched = self._verify_switch(gen)
            if switched is None:
                raise _SwitchUnknown(str(exc)) from exc
            if not switched:
                raise
            self.published = gen
            if isinstance(exc, KeyboardInterrupt):
                self.interrupted = exc
            else:
                self.notes.append(f"the connection failed as the switch was sent ({type(exc).__name__}); "
                                  f"m2:meta, read again, shows generation {gen} live")
        self.lock.writing = None
        if live is None:
            return
        try:
            if self.interrupted:
                raise self.interrupted
            # Readers that read m2:meta just before the switch finish on the old generation: its
            # keys expire by themselves after the grace period, and nobody waits for that.
            self.phase("cleaning up: the previous data set expires in "
                       f"{self.grace:g} s" if self.grace else "cleaning up: deleting the previous data set")
            expire_generation(self.client, self.layout, live.gen, live.buckets, int(self.grace * 1000), self.lock.renew)
            self.lock.forget(live.gen)
        except (redis.exceptions.RedisError, LockLost, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                self.interrupted = exc
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
            self.notes.append(f"the previous data set (generation {live.gen}) was not deleted ({what}); "
                              "the next load deletes it")

    def _verify_switch(self, gen: int) -> bool | None:
        """Whether generation *gen* is live, read again after a lost reply: True, False, or None (unknown).

        At most SWITCH_CHECKS reads a second apart, each with a short timeout; an interrupt ends
        the checks (unknown), so a person waits seconds, not the minutes of the loader's timeouts.
        """
        checker = _meta_client(self.client, self.layout, timeout=2.0)
        try:
            for attempt in range(SWITCH_CHECKS):
                try:
                    live = read_generation(checker, self.layout)
                    return live is not None and live.gen == gen
                except redis.exceptions.RedisError:
                    if attempt + 1 < SWITCH_CHECKS:
                        self.sleep(1.0)
        except KeyboardInterrupt:
            return None
        finally:
            checker.close()
        return None

    def stopped_replace(self, exc: BaseException, live: Generation | None, what: str) -> LoadStopped:
        """The LoadStopped for a replace or rebuild that stopped: what the store holds, as verified."""
        gen, buckets = self.lock.writing or (None, 0)
        if self.published is not None:  # an interrupt in the instant after the switch
            return LoadStopped(exc, f"{what} is live (generation {self.published}); the previous data set is "
                                    "deleted by the next load", rows_sent=self.rows_sent, switched=True, whole=True)
        if isinstance(exc, _SwitchUnknown):
            otherwise = (f"generation {live.gen} means the previous one is still live" if live is not None
                         else "no generation means it is not")
            how = "an interrupt came" if isinstance(exc.__cause__, KeyboardInterrupt) else "the connection failed"
            return LoadStopped(exc.__cause__ or exc, (
                f"{how} while switching to the new data set, and the store has not answered since: it is "
                f"unknown whether {what} is live. Check with 'm2-code-store stats': generation {gen} means it "
                f"is live and nothing more is needed; {otherwise}, and re-running the same command is safe"),
                rows_sent=self.rows_sent, switched=None, whole=True)
        cleaned = (self.discard(gen, buckets, interrupted=isinstance(exc, KeyboardInterrupt)) if gen is not None
                   else "nothing had been written yet")
        if self.lock.lost:
            return LoadStopped(exc, f"{what} was not switched in, and this loader changed nothing else; {cleaned}; "
                                    f"{self._holds_now(live)}", rows_sent=self.rows_sent, whole=True)
        holds = ("the store is still empty" if live is None or live.count == 0
                 else f"the store still holds the previous data set ({live.count:,} records)")
        return LoadStopped(exc, f"{what} was not switched in: {holds}; {cleaned}. Re-running the same command is "
                                "safe", rows_sent=self.rows_sent, whole=True)

    def _advice(self) -> str:
        if self.lock.holder not in (None, "?"):
            return "Re-run the same command once the other load has finished"
        return "Re-running the same command is safe"

    def _holds_now(self, live: Generation | None) -> str:
        """What the store holds, read now (after this loader lost its lease), and what to do next."""
        advice = self._advice()
        try:
            now = read_generation(self.client, self.layout)
        except redis.exceptions.RedisError:
            return f"what the store holds now could not be read. {advice}"
        if now is None:
            return f"the store is empty. {advice}"
        if live is not None and now.gen == live.gen:
            return f"the store still holds the previous data set ({now.count:,} records). {advice}"
        return (f"the store now holds generation {now.gen} ({now.count:,} records), published by another loader. "
                "Re-run the same command only if this file should replace that")


def _meta_client(client: redis.Redis, layout: Layout, *, timeout: float) -> redis.Redis:
    """A client of the node holding ``m2:meta`` (its lease and list of generations) whose calls
    give up after *timeout* seconds: for the last words of a load a person is waiting on."""
    if isinstance(client, ClusterRedis):  # m2:meta's primary, as the slot map says
        client = client.redis_cluster.get_redis_connection(client.primary_of(key_slot(layout.meta.encode())))
    pool = client.connection_pool
    return redis.Redis(connection_pool=pool.__class__(
        connection_class=pool.connection_class,
        **{**pool.connection_kwargs, "socket_timeout": timeout, "socket_connect_timeout": timeout}))


def _fingerprints_meanwhile(parsed: ParsedExport, buckets: int, final: np.ndarray,
                            ) -> Future[tuple[Fingerprints, np.ndarray]]:
    """The fingerprints of what *parsed* leaves in an empty generation of *buckets* buckets
    (*final*: its final rows), and the part of each final row (bulk.file_fingerprints), worked out on a thread of their own while the caller writes (not
    waited for at exit: it only computes). The CRCs and the encoded codes are worked out first,
    once: the thread and the write both read them."""
    row_crc(parsed), parsed.code_dictionary
    future: Future[tuple[Fingerprints, np.ndarray]] = Future()

    def run() -> None:
        try:
            future.set_result(file_fingerprints(parsed, buckets, final))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="m2-loader-background", daemon=True).start()
    return future


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
    phase: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    lock_ttl_ms: int = LOCK_TTL_MS,
) -> LoadResult:
    """Apply *parsed* to the store behind *client*; see store.py for the layout.

    Raises StoreBusy or ReplaceRefused (nothing changed), LoadStopped (it stopped part-way: Redis
    failed, the lease was lost or it was interrupted; its ``state`` says what the store holds).
    """
    layout = layout or Layout()
    lock = Lock(client, layout, ttl_ms=lock_ttl_ms)
    lock.acquire()
    run = _Run(client, layout, lock, source=source, grace=grace, progress=progress, sleep=sleep, phase=phase)
    try:
        try:
            live = read_generation(client, layout)
            run.vouched = live is not None and fingerprints_vouched(client, layout, live)
            run.notes += clean_generations(client, layout, lock, live, grace=grace, sleep=sleep)
            if live is not None and live.dirty:  # an earlier load died part-way: repair the count
                live = _recount(client, layout, lock, live)
        except (redis.exceptions.RedisError, LockLost, KeyboardInterrupt) as exc:
            raise LoadStopped(exc, "nothing of this file was written; the store holds what it held before "
                                   "(old data sets may remain to be cleaned by the next load)", rows_sent=0,
                              whole=True) from exc
        if replace:
            return _replace(run, parsed, live, force, max_shrink)
        if live is None or (live.count == 0 and not count_records(client, layout, live.gen, live.buckets, lock.renew)):
            return _first(run, parsed, live)
        if _crowded(run, parsed, live):
            return _rebuild(run, parsed, live)
        return run.incremental(parsed, live)
    finally:
        try:
            if not run.stop_now:  # else the lease runs out, or the next load on this host takes it over
                with interrupts_deferred():
                    lock.release()
        except redis.exceptions.RedisError:
            pass  # the store is gone: the lock expires by itself; keep the original error


def _crowded(run: _Run, parsed: ParsedExport, live: Generation) -> bool:
    """Whether applying *parsed* would leave more than CROWDED_PER_BUCKET records a bucket.

    Checked against what is really new: when every upsert might be (an upper bound), Redis
    counts which of the file's barcodes the store already holds, so reloading a file never
    triggers a rebuild.
    """
    if (live.count + parsed.upserts) / live.buckets <= CROWDED_PER_BUCKET:
        return False
    run.phase("counting the file's new barcodes")
    known = count_present(run.client, run.layout, live.gen, live.buckets, parsed, before_send=run.lock.renew)
    return (live.count + parsed.upserts - known) / live.buckets > CROWDED_PER_BUCKET


def _recount(client: redis.Redis, layout: Layout, lock: Lock, live: Generation) -> Generation:
    count = count_records(client, layout, live.gen, live.buckets, lock.renew)
    lock._fenced(_RECOUNTED, [lock.key, layout.meta], live.gen, live.dirty, count)
    return Generation(live.gen, live.buckets, count, live.loaded_at)


def _first(run: _Run, parsed: ParsedExport, live: Generation | None) -> LoadResult:
    """The first load into an empty store (*live* None, or a data set of no records, as a file of
    deletes leaves): written unpublished and switched in, as --replace does, so a load that stops
    part-way leaves the store empty (not a part of the file live), and the data set starts with
    exact fingerprints and as many buckets as it needs."""
    try:
        gen, buckets, records, _ = run.write_new(parsed)
        run.publish(gen, buckets, records, live)
    except BaseException as exc:
        raise run.stopped_replace(exc, live, "the new data set") from exc
    return LoadResult("incremental", gen, records, 0, records, 0, buckets, notes=run.notes, interrupted=run.interrupted)


def _replace(run: _Run, parsed: ParsedExport, live: Generation | None, force: bool, max_shrink: float) -> LoadResult:
    try:
        previous = live.count if live else 0
        # Redis counts which of the file's barcodes the live data set holds (the shrink check):
        # after the write, only the buckets whose fingerprints differ, when the new generation has
        # as many buckets; every barcode when it has another bucket count.
        gen, buckets, records, kept = run.write_new(parsed, compare_with=live if previous else None)
        if live is not None and previous and kept is None:
            run.phase("comparing with the live data set")
            kept = count_present(run.client, run.layout, live.gen, live.buckets, parsed, before_send=run.lock.renew)
        kept = kept or 0
        removed, added = (previous - kept, records - kept) if previous else (0, records)
        if previous and removed > previous * max_shrink and not force:
            run.discard(gen, buckets)
            run.lock.writing = None
            raise ReplaceRefused(
                f"refusing to replace: {removed:,} of the {previous:,} records in the store "
                f"({removed / previous:.0%}) are not in the file, more than the {max_shrink:.0%} allowed. "
                "Is the export truncated, or the wrong one? Nothing was changed. "
                "Re-run with --force to replace anyway."
            )
        run.publish(gen, buckets, records, live)
    except ReplaceRefused:
        raise
    except BaseException as exc:
        raise run.stopped_replace(exc, live, "the replacement") from exc
    return LoadResult("replace", gen, added, removed, records, previous, buckets, notes=run.notes,
                      interrupted=run.interrupted)


def _rebuild(run: _Run, parsed: ParsedExport, live: Generation) -> LoadResult:
    """Merge the live data set and the file into a new generation with more buckets."""
    try:
        barcodes, codes = generation_records(run.client, run.layout, live.gen, live.buckets, run.lock.renew)
        merged = ParsedExport(
            source_barcodes=pa.concat_arrays([barcodes, parsed.barcodes.cast(pa.string())]),
            source_codes=pa.concat_arrays([codes, parsed.customer_codes.cast(pa.string())]),
            source_deletes=np.concatenate([np.zeros(len(barcodes), dtype=bool), parsed.is_delete]),
            rows_read=parsed.rows_read,
        )
        gen, buckets, records, _ = run.write_new(merged, rows_progress=False)
        new = generation_barcodes(run.client, run.layout, gen, buckets, run.lock.renew)
        kept = int(pc.sum(pc.is_in(barcodes, value_set=new)).as_py() or 0)
        run.publish(gen, buckets, records, live)
    except BaseException as exc:
        raise run.stopped_replace(exc, live, "the rebuilt data set (with this file applied)") from exc
    return LoadResult("incremental", gen, records - kept, len(barcodes) - kept, records, live.count, buckets,
                      rebuilt=True, notes=run.notes, interrupted=run.interrupted)
