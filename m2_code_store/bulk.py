"""Write parsed records into one generation of the store, fast.

The rows go in slices, in ParsedExport order (event-date order, see las_csv). For each slice the bucket of every barcode is computed
with a vectorised CRC-32 (the same value as ``zlib.crc32``, which readers use), the rows are
grouped by bucket with a stable sort (file order kept inside a bucket), the Redis protocol for
the whole slice is built with Arrow, and it streams over one connection in chunks of about a
megabyte; replies are read one chunk behind, so Redis works on one slice while the next is built.

Inside a bucket, consecutive rows of the same kind become one ``HSET key f v f v …`` or
``HDEL key f f …``, in that order, so Redis applies "the latest row wins" itself, and its replies
(fields added, fields removed) give the exact change in the record count.

A generation that starts empty is written otherwise (:func:`restore_generation`): each bucket whole,
its final records only, in one ``RESTORE`` (restore.py); slices are built two at a time.
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import ClusterNode
from redis.crc import key_slot

from m2_code_store import restore
from m2_code_store.cluster import (
    MAX_REDIRECTS,
    ClusterRedis,
    ClusterUnavailable,
    exchange,
    redirect_of,
)
from m2_code_store.fingerprints import Fingerprints, part_of
from m2_code_store.las_csv import ParsedExport
from m2_code_store.rules import MAX_BARCODE_LENGTH
from m2_code_store.store import Layout

CHUNK_BYTES = 1 << 20
log = logging.getLogger("m2_code_store")
HSET, HDEL = 0, 1  # the kinds of command in a write stream
SLICE_ROWS_MIN = 65_536  # rows are sorted by bucket and slices end where a bucket does: size is only memory


def _crc_table(polynomial: int) -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ polynomial if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table(0xEDB88320)  # CRC-32, zlib's: the bucket of a barcode


@dataclass
class WriteResult:
    """What Redis reported for one write pass."""

    added: int = 0  # fields that did not exist before (HSET replies)
    removed: int = 0  # fields that existed and were deleted (HDEL replies)
    commands: int = 0


class BulkWriteError(redis.exceptions.ResponseError):
    """Redis refused commands during a bulk write (e.g. out of memory)."""


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and data bytes of an Arrow string array, without copying."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    data_buffer = array.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(1, np.uint8)
    return offsets, data


def _positions(array: pa.Array, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start offsets and lengths of the strings of *array* (those at *rows* if given), and its data bytes."""
    if array.type != pa.string():
        array = array.cast(pa.string())  # 32-bit offsets, as _string_buffers reads them
    offsets, data = _string_buffers(array)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if rows is not None:
        starts, lengths = starts[rows], lengths[rows]
    return starts, lengths, data


def _fixed_width(array: pa.Array, rows: np.ndarray | None) -> np.ndarray | None:
    """The strings of *array* (those at *rows* if given) as the rows of a 2-D byte array, when
    every string of *array* has the same length (a barcode export, nearly always); else None."""
    if array.type != pa.string() or len(array) == 0:
        return None
    offsets, data = _string_buffers(array)
    width = int(offsets[1] - offsets[0])
    if width == 0 or int(offsets[-1] - offsets[0]) != width * len(array):
        return None
    if not (np.diff(offsets) == width).all():
        return None
    packed = data[offsets[0]:offsets[-1]]
    if rows is None:
        return packed.reshape(len(array), width)
    return packed.view(np.dtype(f"V{width}"))[rows].view(np.uint8).reshape(len(rows), width)  # one copy a row


def _hashable_fixed_width(array: pa.Array) -> np.ndarray | None:
    """:func:`_fixed_width` of every string, when that width is at most a valid barcode's (the
    per-width CRC tables grow as its square; wider values are bad rows, never hashed); else None."""
    fixed = _fixed_width(array, None)
    return fixed if fixed is not None and fixed.shape[1] <= MAX_BARCODE_LENGTH else None


@functools.cache
def _fixed_width_crc_tables(width: int) -> tuple[np.uint32, list[np.ndarray], np.ndarray]:
    """CRC-32 of strings of *width* bytes as XORs of table entries: a CRC is linear, so the CRC of a
    string is that of *width* zero bytes XOR, for each pair of bytes, what that pair contributes at
    its place (a table of 65,536 entries for each place), XOR the odd last byte's contribution.
    No step waits on the one before (the byte-by-byte loop does)."""
    def followed_by_zeros(values: np.ndarray, zeros: int) -> np.ndarray:  # the raw CRC state, shifted
        for _ in range(zeros):
            values = CRC_TABLE[values & 0xFF] ^ (values >> 8)
        return values

    single = [followed_by_zeros(CRC_TABLE.copy(), width - 1 - position) for position in range(width)]
    low, high = np.arange(1 << 16) & 0xFF, np.arange(1 << 16) >> 8
    pair_tables = [single[2 * k][low] ^ single[2 * k + 1][high] for k in range(width // 2)]
    start = np.uint32(zlib.crc32(bytes(width)))
    return start, pair_tables, single[width - 1]


def crc32_array(array: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """``zlib.crc32`` of every string in *array* (UTF-8 bytes), or of those at positions *rows*, vectorised.

    Strings all of one length, at most a valid barcode's, are read two bytes at a time, down the
    columns of a 2-D view (its tables grow as the square of the length). Otherwise the loop runs
    once per byte position of the longest string hashed: callers pass only rows that passed
    validation (barcodes of at most 48 characters), so huge values in skipped rows cost nothing.
    """
    whole = _hashable_fixed_width(array)
    if rows is not None and 2 * len(rows) >= len(array) and whole is not None:
        return crc32_array(array)[rows]  # most rows: hashing them all in place beats gathering them
    fixed = whole if rows is None or whole is None else whole[rows]
    if fixed is not None:
        width = fixed.shape[1]
        start, pair_tables, last_byte = _fixed_width_crc_tables(width)
        crc = np.full(len(fixed), start, dtype=np.uint32)
        pairs = np.ascontiguousarray(fixed[:, :width - width % 2]).view("<u2")
        for k, table in enumerate(pair_tables):
            crc ^= table[pairs[:, k]]
        if width % 2:
            crc ^= last_byte[fixed[:, width - 1]]
        return crc
    starts, lengths, data = _positions(array, rows)
    crc = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    longest = int(lengths.max()) if len(starts) else 0
    for pos in range(longest):
        live = lengths > pos
        if live.all():
            crc = CRC_TABLE[(crc ^ data[starts + pos]) & 0xFF] ^ (crc >> 8)
        else:
            idx = np.flatnonzero(live)
            c = crc[idx]
            crc[idx] = CRC_TABLE[(c ^ data[starts[idx] + pos]) & 0xFF] ^ (c >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


DIGEST_CHUNK = 1 << 18
_CODE = np.uint64(0x2545F4914F6CDD1D)  # mixed into a customer code's hash (file_fingerprints)
_MIX1, _MIX2, _GOLDEN = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(0x9E3779B97F4A7C15)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: every output bit depends on every input bit."""
    h ^= h >> np.uint64(33)
    h *= _MIX1
    h ^= h >> np.uint64(33)
    h *= _MIX2
    h ^= h >> np.uint64(33)
    return h


def digest64_array(array: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash of every string in *array* (or of those at *rows*), independent of the
    CRC-32 that picks the bucket: the UTF-8 bytes zero-padded to whole 8-byte words, each word
    mixed in with murmur3's finaliser, starting from the length (so the hash of a value does not
    depend on the other values in the array). The fingerprints add these up.

    Vectorised by word, not by byte: strings all of one length are padded in a 2-D copy, other
    ASCII values by Arrow, and anything else takes a slower path; all give the same hash.
    """
    if rows is None:
        rows = np.arange(len(array))
    if len(rows) > DIGEST_CHUNK:  # a chunk at a time: the padded copies stay small
        return np.concatenate([digest64_array(array, rows[first:first + DIGEST_CHUNK])
                               for first in range(0, len(rows), DIGEST_CHUNK)])
    if len(rows) == 0:
        return np.zeros(0, dtype=np.uint64)
    fixed = _fixed_width(array, rows)
    if fixed is not None:
        length = fixed.shape[1]
        width = max(8, (length + 7) // 8 * 8)
        grid = np.zeros((len(rows), width), dtype=np.uint8)
        grid[:, :length] = fixed
        words = grid.view(np.uint64)
        lengths = np.full(len(rows), length, dtype=np.int64)
    else:
        values = pc.take(array, pa.array(rows))
        lengths = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
        width = max(8, (int(lengths.max()) + 7) // 8 * 8)
        if pc.all(pc.string_is_ascii(values.cast(pa.string()))).as_py():
            padded = pc.utf8_rpad(values.cast(pa.string()), width=width, padding="\0")
        else:
            binary = values.cast(pa.binary())
            pads = pc.binary_repeat(pa.scalar(b"\0", pa.binary()), pa.array(width - lengths))
            padded = pc.binary_join_element_wise(binary, pads, pa.scalar(b"", pa.binary()))
        offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32, count=len(padded) + 1, offset=padded.offset * 4)
        words = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].view(np.uint64)
        words = words.reshape(len(padded), width // 8)
    h = (lengths.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    word_counts = (lengths + 7) // 8  # a value's hash mixes its own words only, not the padding to *width*
    for k in range(width // 8):
        mixed = _fmix64(h ^ words[:, k])
        h = mixed if (word_counts > k).all() else np.where(word_counts > k, mixed, h)
    return h


def _kinds_commute(parsed: ParsedExport) -> bool:
    """True when no barcode has both a set row and a delete row in *parsed*.

    Only rows whose CRC-32 is also a delete row's can be such a barcode: a bitmap on the CRC's low
    22 bits picks them (a gather, not a search of every row), and only they are compared as text.
    """
    order = parsed.order
    deletes = parsed.source_deletes[order]
    if not deletes.any() or deletes.all():
        return True
    crc = row_crc(parsed)[order]
    low = np.uint32((1 << 22) - 1)
    bitmap = np.zeros(1 << 22, dtype=bool)
    bitmap[crc[deletes] & low] = True
    sets = np.flatnonzero(bitmap[crc & low] & ~deletes)
    sets = sets[np.isin(crc[sets], crc[deletes])]
    if len(sets) == 0:
        return True
    deleted = pc.take(parsed.source_barcodes, pa.array(order[deletes]))
    return not pc.any(pc.is_in(pc.take(parsed.source_barcodes, pa.array(order[sets])), value_set=deleted)).as_py()


@functools.cache
def _length_prefixes() -> pa.Array:
    """``$n\r\n`` for every possible barcode length n (built on first use, not at import)."""
    return pa.array([f"${n}\r\n" for n in range(256)], type=pa.string())


@dataclass(frozen=True)
class _CodeSegments:
    """The protocol tail of every row: ``\r\n$m\r\ncode\r\n`` for a set, ``\r\n`` for a delete.

    Customer codes are few, so each distinct tail is built once and rows take theirs by index.
    """

    segments: pa.Array
    row_segment: np.ndarray  # per row, an index into segments

    @classmethod
    def of(cls, codes: pa.Array, deletes: np.ndarray) -> _CodeSegments:
        encoded = pc.dictionary_encode(codes)
        distinct = encoded.dictionary.to_pylist()
        segments = [f"\r\n${len(code.encode())}\r\n{code}\r\n" for code in distinct] + ["\r\n"]
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        return cls(pa.array(segments, type=pa.string()), np.where(deletes, len(distinct), indices).astype(np.int32))


def _slice_protocol(
    prefix: str, gen: int, buckets: int, parsed: ParsedExport, crc: np.ndarray, tails: _CodeSegments,
    rows: np.ndarray, commute: bool, detail: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[list[memoryview], np.ndarray]:
    """The Redis protocol for the source rows *rows* (in apply order), and the kind (HSET or HDEL)
    of each command.

    *detail* (a cluster's streams) gets the bucket of every write command and the offset where it
    starts in the protocol.
    """
    bucket = crc[rows] & np.uint32(buckets - 1)
    bucket = bucket.astype(np.uint16) if buckets <= 1 << 16 else bucket  # uint16 sorts by radix
    deletes = parsed.source_deletes[rows]
    if commute and deletes.any() and not deletes.all():
        # No barcode is both set and deleted: sets may go before deletes in a bucket, one HSET
        # and one HDEL per bucket instead of a command per alternation.
        sort_key = (bucket.astype(np.uint32) << 1) | deletes
        sort_key = sort_key.astype(np.uint16) if buckets <= 1 << 15 else sort_key
    else:
        sort_key = bucket
    order = np.argsort(sort_key, kind="stable")
    bucket = bucket[order]
    deletes = deletes[order]
    sorted_rows = rows[order]
    sorted_barcodes = pc.take(parsed.source_barcodes, pa.array(sorted_rows))

    # A run: consecutive records with the same bucket and kind, sent as one command whose
    # header goes in front of the run's first record.
    is_start = np.ones(len(bucket), dtype=bool)
    is_start[1:] = (bucket[1:] != bucket[:-1]) | (deletes[1:] != deletes[:-1])
    starts = np.flatnonzero(is_start)
    run_kinds = deletes[starts].astype(np.int8)  # HSET (0) or HDEL (1)
    run_lengths = np.diff(np.append(starts, len(bucket)))
    keys = pc.binary_join_element_wise(
        pa.scalar(f"{prefix}:{gen}:"), pc.cast(pa.array(bucket[starts]), pa.string()), ""
    )
    headers = pc.binary_join_element_wise(
        pa.scalar("*"), pc.cast(pa.array(2 + run_lengths * np.where(run_kinds == HDEL, 1, 2)), pa.string()),
        pc.if_else(pa.array(run_kinds == HDEL), pa.scalar("\r\n$4\r\nHDEL\r\n$"), pa.scalar("\r\n$4\r\nHSET\r\n$")),
        pc.cast(pc.binary_length(keys), pa.string()), pa.scalar("\r\n"), keys, pa.scalar("\r\n"), "",
    )
    headers = pa.concat_arrays([headers, pa.array([""], type=pa.string())])  # last: "no header"
    header_of_row = np.where(is_start, np.cumsum(is_start) - 1, len(starts)).astype(np.int32)
    protocol = pc.binary_join_element_wise(
        pc.take(headers, pa.array(header_of_row)),
        pc.take(_length_prefixes(), pc.binary_length(sorted_barcodes)),
        sorted_barcodes,
        pc.take(tails.segments, pa.array(tails.row_segment[sorted_rows])),
        "",
    )
    offsets, _ = _string_buffers(protocol)
    data = memoryview(protocol.buffers()[2])[offsets[0]:offsets[-1]]
    if detail is not None:
        detail.append((bucket[starts].astype(np.int64), (offsets[starts] - offsets[0]).astype(np.int64)))
    return [data], run_kinds


class _Sender(threading.Thread):
    """Sends buffers in order on a socket, so the next slice is built while Redis reads this one.

    *check* runs before every chunk of about a megabyte (the loader's lease renewal): a loader that
    stalled and lost its lease notices before it sends more. Once *abort* is set, what is still
    queued is dropped, not sent.
    """

    def __init__(self, sock: socket.socket, check: Callable[[], None] | None) -> None:
        super().__init__(name="m2-bulk-sender", daemon=True)
        self.sock = sock
        self.check = check
        self.queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=2)
        self.abort = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (buffer := self.queue.get()) is not None:
                for start in range(0, len(buffer), CHUNK_BYTES):
                    if self.abort.is_set():
                        break
                    if self.check:
                        self.check()
                    self.sock.sendall(buffer[start:start + CHUNK_BYTES])
        except BaseException as exc:
            self.error = exc
            while self.queue.get() is not None:  # let the producer finish
                pass


class _Receiver(threading.Thread):
    """Reads the replies with hiredis' reader until *expected* have come, keeping ``each(reply)``
    of each (an error reply is kept as it is)."""

    def __init__(self, sock: socket.socket, each: Callable[[Any], Any]) -> None:
        super().__init__(name="m2-bulk-receiver", daemon=True)
        self.sock = sock
        self.each = each
        self.reader = hiredis.Reader()
        self.kept: list[Any] = []
        self.expected: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.expected is None or len(self.kept) < self.expected:
                reply = self.reader.gets()
                if reply is not False:
                    self.kept.append(reply if isinstance(reply, hiredis.ReplyError) else self.each(reply))
                    continue
                if self.expected is None and not select.select([self.sock], [], [], 0.05)[0]:
                    continue
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise redis.exceptions.ConnectionError("Redis closed the connection during the load")
                self.reader.feed(chunk)
        except BaseException as exc:
            self.error = exc


def _stream(
    client: redis.Redis,
    slices: Iterator[tuple[list[memoryview], int, int]],
    *,
    progress: Callable[[int], None] | None = None,
    before_send: Callable[[], None] | None = None,
    each: Callable[[Any], Any] = int,
) -> list[Any]:
    """Send each slice's pre-built commands on one connection while the next is built; return
    ``each(reply)`` of every reply, in order (an error reply as it is, for the caller to raise).

    *slices* yields (protocol buffers, commands in them, rows done). *before_send* runs (in the sending
    thread) before each chunk of about a megabyte goes out; if it raises, nothing more is sent and
    the error is raised here. If this function is left by an exception (an interrupt included),
    slices still queued are dropped, not sent.
    """
    connection = client.connection_pool.get_connection()
    # The raw socket of redis-py's connection (handshake, TLS, AUTH and SELECT already done):
    # replies are counted in bulk instead of parsed one call at a time.
    sock = connection._sock
    if sock is None:  # redis-py connects lazily: get_connection() has connected it, so this is a bug
        raise redis.exceptions.ConnectionError("the connection to Redis is not open")
    connection_ok = False
    sender, receiver = _Sender(sock, before_send), _Receiver(sock, each)
    commands = 0
    # OpenSSL does not allow one thread to read while another writes on the same TLS socket:
    # over TLS the replies are read once everything is sent (Redis buffers them meanwhile).
    read_while_sending = not isinstance(sock, ssl.SSLSocket)
    try:
        sender.start()
        if read_while_sending:
            receiver.start()
        try:
            for buffers, count, done in slices:
                commands += count
                for data in buffers:
                    sender.queue.put(data)
                if sender.error:
                    break
                if progress:
                    progress(done)
        except BaseException:
            sender.abort.set()  # a load that stops sends nothing more than the chunk on the wire
            raise
        finally:
            sender.queue.put(None)
            sender.join()
        if sender.error:
            raise _as_redis_error(sender.error)
        receiver.expected = commands
        if not read_while_sending:
            receiver.start()
        receiver.join(timeout=None)
        if receiver.error:
            raise _as_redis_error(receiver.error)
        connection_ok = True
        return receiver.kept
    finally:
        if not connection_ok:
            receiver.expected = 0  # stop the receiver if it still waits
            connection.disconnect()  # replies may be unread: never hand this connection back mid-stream
        client.connection_pool.release(connection)


BUCKETS_PER_SLICE = 16_384


def on_every_bucket(
    client: redis.Redis,
    layout: Layout,
    gen: int,
    buckets: int,
    command: str,
    *args: str | int,
    before_send: Callable[[], None] | None = None,
    each: Callable[[Any], Any] = int,
) -> list[Any]:
    """``command key *args`` on every bucket key of generation *gen*, streamed as a load is (one
    key a command: cluster-safe); ``each(reply)`` of every reply, in bucket order. *before_send*
    as for :func:`_stream`: a loader passes its lease check, so one that lost the lease stops."""
    head = b"*%d\r\n" % (2 + len(args)) + _bulk_strings(command)
    tail = _bulk_strings(*args)
    if isinstance(client, ClusterRedis):
        return _cluster_on_every_bucket(client, layout, gen, buckets, head, tail, before_send=before_send, each=each)

    def slices() -> Iterator[tuple[list[memoryview], int, int]]:
        for start in range(0, buckets, BUCKETS_PER_SLICE):
            stop = min(start + BUCKETS_PER_SLICE, buckets)
            keys = pc.binary_join_element_wise(pa.scalar(layout.bucket_key(gen, 0)[:-1].encode()),
                                               pc.cast(pa.array(np.arange(start, stop)), pa.string()).cast(pa.binary()), b"")
            protocol = pc.binary_join_element_wise(pa.scalar(head + b"$"), pc.cast(pc.binary_length(keys), pa.string()).cast(pa.binary()),
                                                   pa.scalar(b"\r\n"), keys, pa.scalar(b"\r\n" + tail), b"")
            offsets, _ = _string_buffers(protocol)
            yield [memoryview(protocol.buffers()[2])[offsets[0]:offsets[-1]]], stop - start, stop

    replies = _stream(client, slices(), before_send=before_send, each=each)
    _refused(replies)
    return replies


def _bulk_strings(*values: str | int) -> bytes:
    """*values* as Redis protocol bulk strings."""
    encoded = [str(value).encode() for value in values]
    return b"".join(b"$%d\r\n%s\r\n" % (len(value), value) for value in encoded)


def write_generation(
    client: redis.Redis,
    layout: Layout,
    gen: int,
    buckets: int,
    parsed: ParsedExport,
    *,
    progress: Callable[[int], None] | None = None,
    before_send: Callable[[], None] | None = None,
    slice_rows: int | None = None,
) -> WriteResult:
    """Apply *parsed* (upserts and deletes, in ParsedExport order) to generation *gen* of *buckets*
    buckets; *progress* and *before_send* as for :func:`_stream`."""
    result = WriteResult()
    total = len(parsed)
    if total == 0:
        return result
    slice_rows = slice_rows or SLICE_ROWS_MIN
    kinds: list[np.ndarray] = []
    tails = _CodeSegments.of(parsed.source_codes, parsed.source_deletes)
    crc = row_crc(parsed)  # once for the file; each slice masks it
    commute = _kinds_commute(parsed)
    # The rows sorted by bucket once (stable: apply order holds within a bucket) and the slices
    # cut where a bucket ends, so each bucket gets one command per kind of row, not one per slice.
    order, bucket = _by_bucket(parsed, parsed.order, buckets)

    if isinstance(client, ClusterRedis):
        return _cluster_write(client, layout, gen, buckets, parsed, crc, tails, commute, order, bucket, slice_rows,
                              progress=progress, before_send=before_send)
    slices = _write_slices(layout.prefix, gen, buckets, parsed, crc, tails, commute, order, bucket, slice_rows, kinds)
    replies = _stream(client, slices, progress=progress, before_send=before_send, each=_counted)
    _tally(replies, np.concatenate(kinds), result)
    return result


def _by_bucket(parsed: ParsedExport, rows: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The source rows *rows* sorted by bucket, stably (their order holds within a bucket), and the
    bucket of each."""
    bucket = row_crc(parsed)[rows] & np.uint32(buckets - 1)
    by_bucket = np.argsort(bucket.astype(np.uint16) if buckets <= 1 << 16 else bucket, kind="stable")
    return _compact(rows[by_bucket]), bucket[by_bucket]


def _slice_bounds(bucket: np.ndarray, first: int, slice_rows: int) -> Iterator[tuple[int, int]]:
    """(first, last) of each slice of about *slice_rows* rows from *first* on, over rows sorted by
    *bucket*: a slice ends where a bucket does, so each bucket's commands go in one slice."""
    while first < len(bucket):
        last = min(first + slice_rows, len(bucket))
        if last < len(bucket):
            last = int(np.searchsorted(bucket, bucket[last - 1], side="right"))
        yield first, last
        first = last


RESTORE_BUILDERS = 2
RESTORE_REFUSALS = ("unknown command", "DUMP payload", "Bad data format")  # the server refuses RESTORE itself


def restore_generation(
    client: redis.Redis,
    layout: Layout,
    gen: int,
    buckets: int,
    parsed: ParsedExport,
    final: np.ndarray,
    *,
    progress: Callable[[int], None] | None = None,
    before_send: Callable[[], None] | None = None,
    slice_rows: int | None = None,
) -> WriteResult | None:
    """Fill generation *gen*, new and empty, with what *parsed* leaves in it (*final*: its
    :func:`final_rows`): one ``RESTORE`` a bucket (restore.py); *progress* and *before_send* as
    for :func:`_stream`.

    Returns None, having written nothing, when the server refuses RESTORE itself (its first bucket
    goes alone, as a probe), or on a cluster: the caller then writes with :func:`write_generation`.
    """
    if isinstance(client, ClusterRedis):
        return None
    result = WriteResult()
    if len(final) == 0:
        return result
    rows, bucket = _by_bucket(parsed, final, buckets)
    # The codes the written rows hold, each encoded once (a skipped row's code may be anything).
    codes = parsed.code_dictionary
    code_of_row = codes.indices.to_numpy(zero_copy_only=False)
    used = np.flatnonzero(np.bincount(code_of_row[final], minlength=len(codes.dictionary)))
    renumbered = np.zeros(len(codes.dictionary), dtype=np.int32)
    renumbered[used] = np.arange(len(used), dtype=np.int32)
    code_entries, code_of_row = restore.entries(pc.take(codes.dictionary, pa.array(used))), renumbered[code_of_row]
    key_head = f"{layout.prefix}:{gen}:"

    def protocol(first: int, last: int) -> tuple[memoryview, np.ndarray]:
        chosen = pa.array(rows[first:last])
        return restore.restore_protocol(key_head, bucket[first:last],
                                        restore.entries(pc.take(parsed.source_barcodes, chosen)),
                                        pc.take(code_entries, pa.array(code_of_row[rows[first:last]])))

    probe_end = int(np.searchsorted(bucket, bucket[0], side="right"))
    if before_send:
        before_send()
    connection = client.connection_pool.get_connection()
    try:
        connection.send_packed_command([bytes(protocol(0, probe_end)[0])])
        connection.read_response()
    except redis.exceptions.ResponseError as exc:
        if isinstance(exc, redis.exceptions.NoPermissionError) or any(words in str(exc) for words in RESTORE_REFUSALS):
            said = str(exc).split(", with args beginning with")[0]  # Redis quotes the (binary) payload after this
            log.info("the store refused RESTORE (%s): the new data set is written with HSET instead, which "
                     "takes Redis longer", said)
            return None
        raise BulkWriteError(f"Redis refused 1 command(s): {exc}") from exc
    finally:
        client.connection_pool.release(connection)
    replies: list[Any] = [True]
    bounds = list(_slice_bounds(bucket, probe_end, slice_rows or SLICE_ROWS_MIN))

    def slices() -> Iterator[tuple[list[memoryview], int, int]]:
        # Slices are built two at a time (Arrow and numpy leave the GIL; Redis needs little CPU
        # for RESTORE) and sent in order.
        pool = ThreadPoolExecutor(max_workers=RESTORE_BUILDERS, thread_name_prefix="m2-restore-build")
        try:
            pending = deque((last, pool.submit(protocol, first, last)) for first, last in bounds[:RESTORE_BUILDERS + 1])
            waiting = iter(bounds[RESTORE_BUILDERS + 1:])
            while pending:
                last, built = pending.popleft()
                data, records = built.result()
                if (following := next(waiting, None)) is not None:
                    pending.append((following[1], pool.submit(protocol, *following)))
                yield [data], len(records), last * len(parsed) // len(final)  # progress counts the file's rows
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    replies += _stream(client, slices(), progress=progress, before_send=before_send, each=bool)
    _refused(replies)
    result.commands, result.added = len(replies), len(final)
    return result


def _write_slices(
    prefix: str, gen: int, buckets: int, parsed: ParsedExport, crc: np.ndarray, tails: _CodeSegments, commute: bool,
    order: np.ndarray, bucket: np.ndarray, slice_rows: int, kinds: list[np.ndarray],
    detail: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Iterator[tuple[list[memoryview], int, int]]:
    """The write stream's slices over the source rows *order* (sorted by *bucket*, apply order
    within a bucket), cut where a bucket ends; each slice's command kinds go to *kinds*."""
    for first, last in _slice_bounds(bucket, 0, slice_rows):
        data, run_kinds = _slice_protocol(prefix, gen, buckets, parsed, crc, tails, order[first:last], commute, detail)
        kinds.append(run_kinds)
        yield data, len(run_kinds), last


def _counted(reply: int | list) -> int:
    """An HSET or HDEL reply (fields added or removed), or how many fields an HMGET found."""
    return reply if isinstance(reply, int) else len(reply) - reply.count(None)


def barcode_crcs(barcodes: pa.Array) -> np.ndarray | None:
    """CRC-32 of every barcode as read (bad rows too), when they all have one length that a valid
    barcode can have (an export, nearly always: hashed in place at no extra cost); else None, and
    :func:`row_crc` hashes the valid rows alone (so a file of huge values is never hashed).
    Worked out while the rows are checked (las_csv.read_export's *hash_barcodes*)."""
    return crc32_array(barcodes) if _hashable_fixed_width(barcodes) is not None else None


def row_crc(parsed: ParsedExport) -> np.ndarray:
    """CRC-32 of every valid row's barcode, by source row (skipped rows are not hashed, unless
    :func:`barcode_crcs` hashed every row); computed once per file and kept on *parsed*."""
    if parsed.row_crc is None:
        crc = np.zeros(len(parsed.source_barcodes), dtype=np.uint32)
        crc[parsed.order] = crc32_array(parsed.source_barcodes, parsed.order)
        parsed.row_crc = crc
    return parsed.row_crc


def file_fingerprints(parsed: ParsedExport, buckets: int, final: np.ndarray) -> tuple[Fingerprints, np.ndarray]:
    """The fingerprints of what *parsed* leaves in an empty generation of *buckets* buckets
    (*final*: its :func:`final_rows`), and the part (fingerprints.part_of) of each final row."""
    crc, mask = row_crc(parsed), np.uint32(buckets - 1)
    none = np.zeros(0, dtype=np.uint64)
    fingerprints = Fingerprints.of(np.zeros(0, dtype=np.uint32), none, none, buckets)
    codes = parsed.code_dictionary
    code_digests = _fmix64(digest64_array(codes.dictionary) ^ _CODE)  # a code's hash, apart from a barcode's
    code_of_row = codes.indices.to_numpy(zero_copy_only=False)
    parts = np.empty(len(final), dtype=np.uint32)
    for first in range(0, len(final), DIGEST_CHUNK):  # a chunk at a time: no whole-file copies
        rows = final[first:first + DIGEST_CHUNK]
        digest = digest64_array(parsed.source_barcodes, rows)
        parts[first:first + len(rows)] = part_of(crc[rows] & mask, digest)
        fingerprints.add(parts[first:first + len(rows)], digest, _fmix64(digest + code_digests[code_of_row[rows]]))
    return fingerprints, parts


def touched_buckets(parsed: ParsedExport, buckets: int) -> np.ndarray:
    """The buckets (of a generation of *buckets* buckets) that applying *parsed* writes to."""
    touched = np.zeros(buckets, dtype=bool)
    touched[row_crc(parsed)[parsed.order] & np.uint32(buckets - 1)] = True
    return np.flatnonzero(touched)


def _compact(positions: np.ndarray) -> np.ndarray:
    """Row positions as int32 when they fit (they index a file's rows): half the memory of the
    int64 that numpy's sorts and selections give, for arrays that live through a whole write."""
    return positions.astype(np.int32) if len(positions) and positions.max() <= np.iinfo(np.int32).max else positions


def final_rows(parsed: ParsedExport) -> np.ndarray:
    """Positions (into ``source_*``, in apply order) of the rows that decide each barcode's final
    state and leave it present: each barcode's last row, when that row is not a deletion.

    Rows whose CRC-32 no other row shares hold distinct barcodes; only the few that share one
    (repeats, and the odd collision) are compared as text.
    """
    order = parsed.order
    if len(order) == 0:
        return order
    crc = row_crc(parsed)[order]
    sorted_crc = np.sort(crc)  # no index needed, and not stable: far quicker than a stable argsort
    shared_crcs = np.unique(sorted_crc[1:][sorted_crc[1:] == sorted_crc[:-1]])
    last = np.ones(len(order), dtype=bool)
    if len(shared_crcs):
        # Rows whose CRC another row shares, in apply order: a bitmap on the low 22 bits picks the
        # candidates (a gather, not a search of every row), a search keeps the exact ones.
        low = np.uint32((1 << 22) - 1)
        bitmap = np.zeros(1 << 22, dtype=bool)
        bitmap[shared_crcs & low] = True
        candidates = np.flatnonzero(bitmap[crc & low])
        found = np.minimum(np.searchsorted(shared_crcs, crc[candidates]), len(shared_crcs) - 1)
        shared = candidates[shared_crcs[found] == crc[candidates]]
        latest: dict[str, int] = {}
        barcodes = pc.take(parsed.source_barcodes, pa.array(order[shared])).to_pylist()
        for position, barcode in zip(shared.tolist(), barcodes, strict=True):
            latest[barcode] = position  # in apply order: the last one stays
        last[shared] = False
        last[list(latest.values())] = True
    return _compact(order[last & ~parsed.source_deletes[order]])


def count_present(
    client: redis.Redis,
    layout: Layout,
    gen: int,
    buckets: int,
    parsed: ParsedExport,
    *,
    progress: Callable[[int], None] | None = None,
    before_send: Callable[[], None] | None = None,
    slice_rows: int = SLICE_ROWS_MIN,
    rows: np.ndarray | None = None,
) -> int:
    """How many of the barcodes present once *parsed* is applied (:func:`final_rows`, or the
    subset *rows* of them) generation *gen* already holds, counted from Redis' HMGET answers
    bucket by bucket (each command touches one key: cluster-safe). Nothing but the count is kept
    of the answers."""
    rows = final_rows(parsed) if rows is None else rows
    if len(rows) == 0:
        return 0
    # One HMGET per bucket with all its barcodes (per-command overhead is most of Redis' work
    # here): the rows sorted by bucket once, the slices cut where a bucket ends.
    rows, bucket = _by_bucket(parsed, rows, buckets)

    if isinstance(client, ClusterRedis):
        return _cluster_count_present(client, layout, gen, buckets, parsed, rows, bucket, slice_rows,
                                      progress=progress, before_send=before_send)
    replies = _stream(client, _lookup_slices(layout.prefix, gen, parsed, rows, bucket, slice_rows), progress=progress,
                      before_send=before_send, each=_counted)
    _refused(replies)
    return int(sum(replies))


def _lookup_slices(prefix: str, gen: int, parsed: ParsedExport, rows: np.ndarray, bucket: np.ndarray, slice_rows: int,
                   detail: list[tuple[np.ndarray, np.ndarray]] | None = None, *, done: int | None = None,
                   ) -> Iterator[tuple[list[memoryview], int, int]]:
    """One HMGET per bucket of generation *gen* with the barcodes of the source rows *rows* (sorted
    by *bucket*), in slices cut where a bucket ends; each slice reports *done* rows if given, else
    the rows looked up so far."""
    for first, last in _slice_bounds(bucket, 0, slice_rows):
        values = pc.take(parsed.source_barcodes, pa.array(rows[first:last]))
        data, runs = _runs_protocol(prefix, gen, bucket[first:last], values, "\r\n$5\r\nHMGET\r\n$",
                                    extra_args=1, detail=detail)
        yield [data], runs, last if done is None else done


def _runs_protocol(prefix: str, gen: int, bucket: np.ndarray, values: pa.Array, command: str,
                   *, extra_args: int, detail: list[tuple[np.ndarray, np.ndarray]] | None = None,
                   ) -> tuple[memoryview, int]:
    """One command per bucket run: ``*N<command><key>`` then each value as a bulk string; the
    values come sorted by *bucket*.

    *command* is the protocol between the array length and the key's ``$len``; *extra_args*
    counts the arguments it holds besides the key and the values. *detail* as for
    :func:`_slice_protocol`.
    """
    is_start = np.ones(len(bucket), dtype=bool)
    is_start[1:] = bucket[1:] != bucket[:-1]
    starts = np.flatnonzero(is_start)
    run_lengths = np.diff(np.append(starts, len(bucket)))
    keys = pc.binary_join_element_wise(pa.scalar(f"{prefix}:{gen}:"), pc.cast(pa.array(bucket[starts]), pa.string()), "")
    headers = pc.binary_join_element_wise(
        pa.scalar("*"), pc.cast(pa.array(1 + extra_args + run_lengths), pa.string()), pa.scalar(command),
        pc.cast(pc.binary_length(keys), pa.string()), pa.scalar("\r\n"), keys, pa.scalar("\r\n"), "",
    )
    headers = pa.concat_arrays([headers, pa.array([""], type=pa.string())])  # last: "no header"
    header_of_row = np.where(is_start, np.cumsum(is_start) - 1, len(starts)).astype(np.int32)
    protocol = pc.binary_join_element_wise(
        pc.take(headers, pa.array(header_of_row)),
        pc.take(_length_prefixes(), pc.binary_length(values)),
        values,
        pa.scalar("\r\n"),
        "",
    )
    offsets, _ = _string_buffers(protocol)
    if detail is not None:
        detail.append((bucket[starts].astype(np.int64), (offsets[starts] - offsets[0]).astype(np.int64)))
    return memoryview(protocol.buffers()[2])[offsets[0]:offsets[-1]], len(starts)


def _as_redis_error(exc: BaseException) -> BaseException:
    if isinstance(exc, redis.exceptions.RedisError):
        return exc
    if isinstance(exc, socket.timeout):
        return redis.exceptions.TimeoutError(f"Redis did not answer in time during the load: {exc}")
    if isinstance(exc, OSError):
        return redis.exceptions.ConnectionError(f"the connection to Redis failed during the load: {exc}")
    return exc


def _refused(replies: list[Any]) -> None:
    """Raise BulkWriteError naming the first error reply, if any."""
    errors = [str(r) for r in replies if isinstance(r, hiredis.ReplyError)]
    if errors:
        raise BulkWriteError(f"Redis refused {len(errors)} command(s): {errors[0]}")


def _tally(replies: list[Any], kinds: np.ndarray, result: WriteResult) -> None:
    """Add counted replies to *result* by command kind; raise on error replies."""
    _refused(replies)
    if len(replies) != len(kinds):
        raise BulkWriteError(f"expected {len(kinds)} replies from Redis, got {len(replies)}")
    values = np.array(replies, dtype=np.int64)
    result.commands += len(values)
    result.added += int(values[kinds == HSET].sum())
    result.removed += int(values[kinds == HDEL].sum())


# -- Redis Cluster --------------------------------------------------------------------------------
#
# On a cluster (the client is a cluster.ClusterRedis) each stream above is split by the primary
# that owns each command's key: one connection per primary, each stream fed by its own thread
# (building a slice and the socket I/O release the GIL), the replies put back together. Commands
# a node answered with MOVED or ASK (a slot that moved, or is moving, during a resharding) are
# sent again once the streams are done, in their order, to the node named (ASKING first for an
# ASK), the slot map read again; see _resend_redirected. Every command touches one key, and a
# key's commands all go to one stream, so what was applied before a redirect stays applied, and
# what was redirected is applied after it, in order.

CLUSTER_SLOTS = 16384


def _slot_crc_table() -> np.ndarray:
    """CRC-16/XMODEM (polynomial 0x1021), the hash of Redis Cluster's key slots, one byte at a time."""
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021 if c & 0x8000 else c << 1) & 0xFFFF
        table[i] = c
    return table


SLOT_CRC_TABLE = _slot_crc_table()


def key_slots(prefix: str, gen: int, buckets: int) -> np.ndarray:
    """The cluster hash slot of every bucket key ``{prefix}:{gen}:{bucket}`` (as redis-py's
    ``key_slot``), vectorised: the CRC of the common head once, then one step per digit."""
    head = f"{prefix}:{gen}:".encode()
    if b"{" in head:  # a hash tag may decide the slot: the general rule, key by key
        return np.array([key_slot(head + b"%d" % bucket) for bucket in range(buckets)], dtype=np.int64)
    crc = 0
    for byte in head:
        crc = ((crc << 8) & 0xFFFF) ^ int(SLOT_CRC_TABLE[((crc >> 8) ^ byte) & 0xFF])
    numbers = np.arange(buckets, dtype=np.int64)
    slots = np.zeros(buckets, dtype=np.int64)
    for length in range(1, len(str(max(buckets - 1, 0))) + 1):
        group = numbers[(numbers >= (10 ** (length - 1) if length > 1 else 0)) & (numbers < 10 ** length)]
        c = np.full(len(group), crc, dtype=np.uint32)
        for position in range(length):
            digit = ((group // 10 ** (length - 1 - position)) % 10 + 48).astype(np.uint32)
            c = ((c << np.uint32(8)) & np.uint32(0xFFFF)) ^ SLOT_CRC_TABLE[((c >> np.uint32(8)) ^ digit) & np.uint32(0xFF)]
        slots[group] = c % CLUSTER_SLOTS
    return slots


class _Primaries:
    """A cluster's primaries and which one owns each slot, as its slot map was last read."""

    def __init__(self, client: ClusterRedis) -> None:
        self.nodes: list[ClusterNode] = []
        index: dict[str, int] = {}
        table = np.full(CLUSTER_SLOTS, -1, dtype=np.int64)
        for slot, nodes in list(client.redis_cluster.nodes_manager.slots_cache.items()):
            if nodes:
                if nodes[0].name not in index:
                    index[nodes[0].name] = len(self.nodes)
                    self.nodes.append(nodes[0])
                table[slot] = index[nodes[0].name]
        uncovered = np.flatnonzero(table < 0)
        if len(uncovered):
            raise ClusterUnavailable(f"{len(uncovered):,} slots (the first: {uncovered[0]}) are not covered by the "
                                     "Redis Cluster, as its slot map was last read")
        self.table = table
        self.clients = [client.redis_cluster.get_redis_connection(node) for node in self.nodes]

    def of_buckets(self, prefix: str, gen: int, buckets: int) -> np.ndarray:
        """Per bucket of generation *gen*, the index of the primary that owns its key."""
        return self.table[key_slots(prefix, gen, buckets)]


WRITES, LOOKUPS = 0, 1  # the key of a cluster stream's command: (family << 32) | bucket


@dataclass
class _NodeStream:
    """What one primary is sent: its slices, and what is needed to send a command of them again."""

    client: redis.Redis
    slices: Iterator[tuple[list[memoryview], int, int]] | None = None
    # per family (its writes, then its lookups: the order sent), per slice: the bucket of each
    # command and where it starts in the slice's protocol
    details: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=lambda: {WRITES: [], LOOKUPS: []})
    kinds: list[np.ndarray] = field(default_factory=list)
    done: int = 0
    replies: list[Any] = field(default_factory=list)
    error: BaseException | None = None

    def keys(self) -> np.ndarray:
        """Every command's key, (family << 32) | bucket, in the order sent."""
        parts = [(family << 32) | buckets for family in (WRITES, LOOKUPS) for buckets, _ in self.details[family]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class _Stopped(Exception):
    """Another primary's stream failed, or the load was interrupted: this one stops too."""


def _run_on_primaries(streams: list[_NodeStream], *, progress: Callable[[int], None] | None,
                      before_send: Callable[[], None] | None, each: Callable[[Any], Any]) -> None:
    """Run every stream on its primary, in parallel; raise the first error (the others stop after
    the slice they are on), or an interrupt once they have stopped."""
    stop = threading.Event()

    def run(stream: _NodeStream) -> None:
        def slices() -> Iterator[tuple[list[memoryview], int, int]]:
            for item in stream.slices or ():
                if stop.is_set():
                    raise _Stopped
                yield item

        def sent(done: int) -> None:
            stream.done = done

        try:
            stream.replies = _stream(stream.client, slices(), progress=sent, before_send=before_send, each=each)
        except BaseException as exc:
            stream.error = exc
            stop.set()

    threads = [threading.Thread(target=run, args=(stream,), name="m2-bulk-primary", daemon=True) for stream in streams]
    try:
        for thread in threads:
            thread.start()
        while alive := [thread for thread in threads if thread.is_alive()]:
            alive[0].join(0.05)  # a timeout: an interrupt reaches this (the main) thread at once
            if progress:
                progress(sum(stream.done for stream in streams))
        if progress:
            progress(sum(stream.done for stream in streams))
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join()
        raise
    errors = [stream.error for stream in streams if stream.error is not None]
    if errors:
        raise next((error for error in errors if not isinstance(error, _Stopped)), errors[0])


def _ranks(keys: np.ndarray) -> np.ndarray:
    """For each command, how many commands on the same key came before it in the stream."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys)) - first_of_group
    return ranks


def _split_commands(data: memoryview | bytes, detail: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, list[bytes]]:
    """The commands of one protocol buffer built with *detail*, as bytes, by bucket, in order."""
    commands: dict[int, list[bytes]] = {}
    buckets, starts = detail[0]
    ends = np.r_[starts[1:], len(data)]
    for bucket, start, end in zip(buckets.tolist(), starts.tolist(), ends.tolist(), strict=True):
        commands.setdefault(bucket, []).append(bytes(data[start:end]))
    return commands


def _resend_redirected(client: ClusterRedis, streams: list[_NodeStream], *, each: Callable[[Any], Any],
                       commands_of: Callable[[int, np.ndarray], dict[int, list[bytes]]],
                       before_send: Callable[[], None] | None) -> None:
    """Send again, to the node each names, the commands answered with MOVED or ASK, and put their
    replies in place; *commands_of(family, buckets)* builds a family's commands for those buckets
    again (the same commands, in the same order, as the stream sent)."""
    pending: list[tuple[_NodeStream, int, tuple[bool, str, int]]] = []
    for stream in streams:
        if hiredis.ReplyError in set(map(type, stream.replies)):
            pending += [(stream, index, redirect) for index, reply in enumerate(stream.replies)
                        if (redirect := redirect_of(reply)) is not None]
    if not pending:
        return
    client.refresh_slots()  # for the streams that follow
    commands: dict[tuple[int, int], bytes] = {}
    for stream in {id(stream): stream for stream, _, _ in pending}.values():
        keys = stream.keys()
        ranks = _ranks(keys)
        indices = np.array([index for other, index, _ in pending if other is stream], dtype=np.int64)
        wanted = keys[indices]
        built: dict[int, dict[int, list[bytes]]] = {}
        for family in np.unique(wanted >> 32).tolist():
            built[family] = commands_of(family, np.unique(wanted[(wanted >> 32) == family] & 0xFFFFFFFF))
        for index, key in zip(indices.tolist(), wanted.tolist(), strict=True):
            commands[(id(stream), index)] = built[key >> 32][key & 0xFFFFFFFF][ranks[index]]
    for attempt in range(MAX_REDIRECTS + 1):
        if not pending:
            return
        if attempt == MAX_REDIRECTS:
            raise BulkWriteError(f"{len(pending):,} command(s) were still redirected (MOVED/ASK) after {MAX_REDIRECTS} "
                                 "tries: the cluster keeps moving their slots")
        if attempt:  # redirected again: the nodes have not agreed yet; give them a moment
            time.sleep(0.05 * 2 ** attempt)
            client.refresh_slots()
        targets: dict[tuple[bool, str, int], list[tuple[_NodeStream, int]]] = {}
        for stream, index, redirect in pending:
            targets.setdefault(redirect, []).append((stream, index))
        pending = []
        for (asking, host, port), items in targets.items():
            if before_send:
                before_send()
            replies = exchange(client.node_client(host, port), [commands[(id(stream), index)] for stream, index in items],
                               asking=asking, encoding=None)
            for (stream, index), reply in zip(items, replies, strict=True):
                redirect = redirect_of(reply)
                if redirect is not None:
                    pending.append((stream, index, redirect))
                else:
                    stream.replies[index] = reply if isinstance(reply, hiredis.ReplyError) else each(reply)


def _on_cluster(client: ClusterRedis, streams: list[_NodeStream], *, each: Callable[[Any], Any],
                commands_of: Callable[[int, np.ndarray], dict[int, list[bytes]]],
                progress: Callable[[int], None] | None = None, before_send: Callable[[], None] | None = None) -> None:
    """Run *streams* on their primaries, then send again what was redirected."""
    _run_on_primaries(streams, progress=progress, before_send=before_send, each=each)
    _resend_redirected(client, streams, each=each, commands_of=commands_of, before_send=before_send)


def _cluster_write(
    client: ClusterRedis, layout: Layout, gen: int, buckets: int, parsed: ParsedExport, crc: np.ndarray,
    tails: _CodeSegments, commute: bool, order: np.ndarray, bucket: np.ndarray, slice_rows: int, *,
    progress: Callable[[int], None] | None, before_send: Callable[[], None] | None,
) -> WriteResult:
    """write_generation on a cluster: each primary gets the writes to the buckets it owns."""
    primaries = _Primaries(client)
    owner = primaries.of_buckets(layout.prefix, gen, buckets)[bucket]
    streams: list[_NodeStream] = []
    for node, node_client in enumerate(primaries.clients):
        mine = owner == node
        if not mine.any():
            continue
        stream = _NodeStream(node_client)
        stream.slices = _write_slices(layout.prefix, gen, buckets, parsed, crc, tails, commute, order[mine],
                                      bucket[mine], slice_rows, stream.kinds, stream.details[WRITES])
        streams.append(stream)

    def commands_of(family: int, wanted: np.ndarray) -> dict[int, list[bytes]]:
        detail: list[tuple[np.ndarray, np.ndarray]] = []
        rows = order[np.isin(bucket, wanted)]
        data = _slice_protocol(layout.prefix, gen, buckets, parsed, crc, tails, rows, commute, detail)[0][0]
        return _split_commands(data, detail)

    _on_cluster(client, streams, each=_counted, commands_of=commands_of, progress=progress, before_send=before_send)
    result = WriteResult()
    for stream in streams:
        _tally(stream.replies, np.concatenate(stream.kinds) if stream.kinds else np.zeros(0, np.int8), result)
    return result


def _cluster_count_present(
    client: ClusterRedis, layout: Layout, gen: int, buckets: int, parsed: ParsedExport, rows: np.ndarray,
    bucket: np.ndarray, slice_rows: int, *, progress: Callable[[int], None] | None,
    before_send: Callable[[], None] | None,
) -> int:
    """count_present on a cluster: each primary looks up the barcodes of the buckets it owns."""
    primaries = _Primaries(client)
    owner = primaries.of_buckets(layout.prefix, gen, buckets)[bucket]
    streams: list[_NodeStream] = []
    for node, node_client in enumerate(primaries.clients):
        mine = owner == node
        if mine.any():
            stream = _NodeStream(node_client)
            stream.slices = _lookup_slices(layout.prefix, gen, parsed, rows[mine], bucket[mine], slice_rows,
                                           stream.details[LOOKUPS])
            streams.append(stream)

    def commands_of(family: int, wanted: np.ndarray) -> dict[int, list[bytes]]:
        chosen = np.isin(bucket, wanted)
        detail: list[tuple[np.ndarray, np.ndarray]] = []
        values = pc.take(parsed.source_barcodes, pa.array(rows[chosen]))
        data, _ = _runs_protocol(layout.prefix, gen, bucket[chosen], values, "\r\n$5\r\nHMGET\r\n$", extra_args=1,
                                 detail=detail)
        return _split_commands(data, detail)

    _on_cluster(client, streams, each=_counted, commands_of=commands_of, progress=progress, before_send=before_send)
    replies = [reply for stream in streams for reply in stream.replies]
    _refused(replies)
    return int(sum(replies))


def _cluster_on_every_bucket(client: ClusterRedis, layout: Layout, gen: int, buckets: int, head: bytes, tail: bytes,
                             *, before_send: Callable[[], None] | None, each: Callable[[Any], Any]) -> list[Any]:
    """on_every_bucket on a cluster: each primary is sent the command for the buckets it owns;
    the replies come back in bucket order."""
    primaries = _Primaries(client)
    owner = primaries.of_buckets(layout.prefix, gen, buckets)

    def command(bucket: int) -> bytes:
        key = layout.bucket_key(gen, bucket).encode()
        return b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail)

    def slices(mine: np.ndarray, detail: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[list[memoryview], int, int]]:
        for start in range(0, len(mine), BUCKETS_PER_SLICE):
            chunk = mine[start:start + BUCKETS_PER_SLICE]
            detail.append((chunk.astype(np.int64), np.zeros(0, dtype=np.int64)))  # offsets: built again one by one
            yield [memoryview(b"".join(command(bucket) for bucket in chunk.tolist()))], len(chunk), start + len(chunk)

    streams: list[_NodeStream] = []
    for node, node_client in enumerate(primaries.clients):
        mine = np.flatnonzero(owner == node)
        if len(mine):
            stream = _NodeStream(node_client)
            stream.slices = slices(mine, stream.details[WRITES])
            streams.append(stream)

    def commands_of(family: int, wanted: np.ndarray) -> dict[int, list[bytes]]:
        return {bucket: [command(bucket)] for bucket in wanted.tolist()}

    _on_cluster(client, streams, each=each, commands_of=commands_of, before_send=before_send)
    replies: list[Any] = [None] * buckets
    for stream in streams:
        for bucket, reply in zip((stream.keys() & 0xFFFFFFFF).tolist(), stream.replies, strict=True):
            replies[bucket] = reply
    _refused(replies)
    return replies
