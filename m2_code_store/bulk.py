"""Write parsed records into one generation of the store, fast.

The rows go in slices, in ParsedExport order (event-date order, see las_csv). For each slice the bucket of every barcode is computed
with a vectorised CRC-32 (the same value as ``zlib.crc32``, which readers use), the rows are
grouped by bucket with a stable sort (file order kept inside a bucket), the Redis protocol for
the whole slice is built with Arrow, and it streams over one connection in chunks of about a
megabyte; replies are read one chunk behind, so Redis works on one slice while the next is built.

Inside a bucket, consecutive rows of the same kind become one ``HSET key f v f v …`` or
``HDEL key f f …``, in that order, so Redis applies "the latest row wins" itself, and its replies
(fields added, fields removed) give the exact change in the record count.
"""

from __future__ import annotations

import functools
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from m2_code_store.fingerprints import Fingerprints
from m2_code_store.las_csv import ParsedExport
from m2_code_store.store import Layout

CHUNK_BYTES = 1 << 20
HSET, HDEL, HMGET = 0, 1, 2  # the kinds of command in a write stream
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
    kept: int = 0  # with compare_with: the file's barcodes (present once applied) that generation holds


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


def _crc16_table() -> np.ndarray:
    """CRC-32 of two bytes at a time: entry x is the table applied to x's low byte, then its high one."""
    x = np.arange(1 << 16, dtype=np.uint32)
    low = CRC_TABLE[x & 0xFF]
    return (CRC_TABLE[(low ^ (x >> 8)) & 0xFF] ^ (low >> 8)).astype(np.uint32)


CRC_TABLE_16 = _crc16_table()


def crc32_array(array: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """``zlib.crc32`` of every string in *array* (UTF-8 bytes), or of those at positions *rows*, vectorised.

    Strings all of one length are read two bytes at a time, down the columns of a 2-D view.
    Otherwise the loop runs once per byte position of the longest string hashed: callers pass
    only rows that passed validation (barcodes of at most 48 characters), so one huge value in
    a skipped row costs nothing here.
    """
    if rows is not None and 2 * len(rows) >= len(array) and _fixed_width(array, None) is not None:
        return crc32_array(array)[rows]  # most rows: hashing them all in place beats gathering them
    fixed = _fixed_width(array, rows)
    if fixed is not None:
        width = fixed.shape[1]
        crc = np.full(len(fixed), 0xFFFFFFFF, dtype=np.uint32)
        pairs = np.ascontiguousarray(fixed[:, :width - width % 2]).view("<u2")
        for k in range(width // 2):
            crc = CRC_TABLE_16[(crc ^ pairs[:, k]) & 0xFFFF] ^ (crc >> 16)
        if width % 2:
            crc = CRC_TABLE[(crc ^ fixed[:, width - 1]) & 0xFF] ^ (crc >> 8)
        return crc ^ np.uint32(0xFFFFFFFF)
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
    """True when no barcode has both a set row and a delete row in *parsed*."""
    deletes = parsed.source_deletes[parsed.order]
    if not deletes.any() or deletes.all():
        return True
    deleted = pc.take(parsed.source_barcodes, pa.array(parsed.order[deletes]))
    in_deleted = pc.is_in(parsed.source_barcodes, value_set=deleted).to_numpy(zero_copy_only=False)
    return not np.any(in_deleted[parsed.order] & ~deletes)


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
    rows: np.ndarray, commute: bool, compare: tuple[int, np.ndarray] | None = None,
) -> tuple[list[memoryview], np.ndarray]:
    """The Redis protocol for the source rows *rows* (in apply order), and the kind (HSET, HDEL,
    HMGET) of each command.

    With *compare* (a generation with as many buckets, and which source rows to look up: final
    rows, see :func:`final_rows`), those rows' barcodes are also looked up in that generation,
    one HMGET per bucket, from the same sorted barcodes.
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
    if compare is None:
        return [data], run_kinds
    other_gen, lookup = compare
    keep = lookup[sorted_rows]  # still sorted by bucket
    if not keep.any():
        return [data], run_kinds
    lookups, count = _runs_protocol(prefix, other_gen, bucket[keep], pc.filter(sorted_barcodes, pa.array(keep)),
                                    "\r\n$5\r\nHMGET\r\n$", extra_args=1)
    return [data, lookups], np.concatenate([run_kinds, np.full(count, HMGET, dtype=np.int8)])


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

    def slices() -> Iterator[tuple[list[memoryview], int, int]]:
        for start in range(0, buckets, BUCKETS_PER_SLICE):
            stop = min(start + BUCKETS_PER_SLICE, buckets)
            keys = [layout.bucket_key(gen, bucket).encode() for bucket in range(start, stop)]
            yield [memoryview(b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail) for key in keys]))], len(keys), stop

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
    compare_with: int | None = None,
    lookup: np.ndarray | None = None,
) -> WriteResult:
    """Apply *parsed* (upserts and deletes, in ParsedExport order) to generation *gen* of *buckets*
    buckets; *progress* and *before_send* as for :func:`_stream`.

    *compare_with*, a generation that also has *buckets* buckets, is counted in the same stream:
    ``kept`` is what :func:`count_present` would answer, without sorting and taking the barcodes
    a second time (the ``--replace`` shrink check). *lookup* (a mask over the source rows, a
    subset of the final rows) limits the lookups to those rows; by default every final row.
    """
    result = WriteResult()
    total = len(parsed)
    if total == 0:
        return result
    slice_rows = slice_rows or SLICE_ROWS_MIN
    kinds: list[np.ndarray] = []
    tails = _CodeSegments.of(parsed.source_codes, parsed.source_deletes)
    crc = row_crc(parsed)  # once for the file; each slice masks it
    commute = _kinds_commute(parsed)
    compare = None
    if compare_with is not None:
        if lookup is None:
            lookup = np.zeros(len(parsed.source_barcodes), dtype=bool)
            lookup[final_rows(parsed)] = True
        compare = (compare_with, lookup)
    # The rows sorted by bucket once (stable: apply order holds within a bucket) and the slices
    # cut where a bucket ends, so each bucket gets one command per kind of row, not one per slice.
    bucket = crc[parsed.order] & np.uint32(buckets - 1)
    by_bucket = np.argsort(bucket.astype(np.uint16) if buckets <= 1 << 16 else bucket, kind="stable")
    order, bucket = parsed.order[by_bucket], bucket[by_bucket]
    del by_bucket

    def slices() -> Iterator[tuple[list[memoryview], int, int]]:
        first = 0
        while first < total:
            last = min(first + slice_rows, total)
            if last < total:
                last = int(np.searchsorted(bucket, bucket[last - 1], side="right"))
            data, run_kinds = _slice_protocol(layout.prefix, gen, buckets, parsed, crc, tails, order[first:last], commute,
                                              compare)
            kinds.append(run_kinds)
            yield data, len(run_kinds), last
            first = last

    replies = _stream(client, slices(), progress=progress, before_send=before_send, each=_counted)
    _tally(replies, np.concatenate(kinds), result)
    return result


def _counted(reply: int | list) -> int:
    """An HSET or HDEL reply (fields added or removed), or how many fields an HMGET found."""
    return reply if isinstance(reply, int) else len(reply) - reply.count(None)


def row_crc(parsed: ParsedExport) -> np.ndarray:
    """CRC-32 of every valid row's barcode, by source row (skipped rows are never hashed); computed
    once per file and kept on *parsed*."""
    if parsed.row_crc is None:
        crc = np.zeros(len(parsed.source_barcodes), dtype=np.uint32)
        crc[parsed.order] = crc32_array(parsed.source_barcodes, parsed.order)
        parsed.row_crc = crc
    return parsed.row_crc


def file_fingerprints(parsed: ParsedExport, buckets: int, final: np.ndarray) -> Fingerprints:
    """The fingerprints of what *parsed* leaves in an empty generation of *buckets* buckets
    (*final*: its :func:`final_rows`)."""
    bucket = row_crc(parsed)[final] & np.uint32(buckets - 1)
    return Fingerprints.of(bucket, digest64_array(parsed.source_barcodes, final), buckets)


def touched_buckets(parsed: ParsedExport, buckets: int) -> np.ndarray:
    """The buckets (of a generation of *buckets* buckets) that applying *parsed* writes to."""
    return np.unique(row_crc(parsed)[parsed.order] & np.uint32(buckets - 1))


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
    return order[last & ~parsed.source_deletes[order]]


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
) -> int:
    """How many of the barcodes present once *parsed* is applied (:func:`final_rows`) generation
    *gen* already holds, counted from Redis' HMGET answers bucket by bucket (each command touches
    one key: cluster-safe). Nothing but the count is kept of the answers."""
    rows = final_rows(parsed)
    if len(rows) == 0:
        return 0
    # One HMGET per bucket with all its barcodes (per-command overhead is most of Redis' work
    # here): the rows sorted by bucket once, the slices cut where a bucket ends.
    bucket = row_crc(parsed)[rows] & np.uint32(buckets - 1)
    bucket = bucket.astype(np.uint16) if buckets <= 1 << 16 else bucket
    by_bucket = np.argsort(bucket, kind="stable")
    rows, bucket = rows[by_bucket], bucket[by_bucket]

    def slices() -> Iterator[tuple[list[memoryview], int, int]]:
        first = 0
        while first < len(rows):
            last = min(first + slice_rows, len(rows))
            if last < len(rows):
                last = int(np.searchsorted(bucket, bucket[last - 1], side="right"))
            values = pc.take(parsed.source_barcodes, pa.array(rows[first:last]))
            data, runs = _runs_protocol(layout.prefix, gen, bucket[first:last], values, "\r\n$5\r\nHMGET\r\n$",
                                        extra_args=1)
            yield [data], runs, last
            first = last

    replies = _stream(client, slices(), progress=progress, before_send=before_send,
                      each=_counted)
    _refused(replies)
    return int(sum(replies))


def _runs_protocol(prefix: str, gen: int, bucket: np.ndarray, values: pa.Array, command: str,
                   *, extra_args: int) -> tuple[memoryview, int]:
    """One command per bucket run: ``*N<command><key>`` then each value as a bulk string; the
    values come sorted by *bucket*.

    *command* is the protocol between the array length and the key's ``$len``; *extra_args*
    counts the arguments it holds besides the key and the values.
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
    result.kept += int(values[kinds == HMGET].sum())
