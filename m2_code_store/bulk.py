"""Write parsed records into one generation of the store, fast.

The rows go in slices of file order. For each slice the bucket of every barcode is computed
with a vectorised CRC-32 (the same value as ``zlib.crc32``, which readers use), the rows are
grouped by bucket with a stable sort (file order kept inside a bucket), the Redis protocol for
the whole slice is built with Arrow, and it streams over one connection in chunks of about a
megabyte; replies are read one chunk behind, so Redis works on one slice while the next is built.

Inside a bucket, consecutive rows of the same kind become one ``HSET key f v f v …`` or
``HDEL key f f …``, in file order, so Redis applies "the last row wins" itself, and its replies
(fields added, fields removed) give the exact change in the record count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from m2_code_store.las_csv import ParsedExport
from m2_code_store.store import Layout

CHUNK_BYTES = 1 << 20
SLICE_ROWS_MIN = 500_000  # a slice per ~32 rows a bucket: fewer, fuller commands


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()


@dataclass
class WriteResult:
    """What Redis reported for one write pass."""

    added: int = 0  # fields that did not exist before (HSET replies)
    removed: int = 0  # fields that existed and were deleted (HDEL replies)
    commands: int = 0


class BulkWriteError(Exception):
    """Redis refused a command during a bulk write (e.g. out of memory)."""


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and data bytes of an Arrow string array, without copying."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    data_buffer = array.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(1, np.uint8)
    return offsets, data


def crc32_array(array: pa.Array) -> np.ndarray:
    """``zlib.crc32`` of every string in *array* (UTF-8 bytes), vectorised."""
    offsets, data = _string_buffers(array)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    crc = np.full(len(array), 0xFFFFFFFF, dtype=np.uint32)
    longest = int(lengths.max()) if len(array) else 0
    for pos in range(longest):
        live = lengths > pos
        if live.all():
            crc = CRC_TABLE[(crc ^ data[starts + pos]) & 0xFF] ^ (crc >> 8)
        else:
            idx = np.flatnonzero(live)
            c = crc[idx]
            crc[idx] = CRC_TABLE[(c ^ data[starts[idx] + pos]) & 0xFF] ^ (c >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def bucket_numbers(barcodes: pa.Array, buckets: int) -> np.ndarray:
    """``crc32(barcode) & (buckets - 1)`` for every barcode, as store.bucket_of computes it."""
    numbers = crc32_array(barcodes) & np.uint32(buckets - 1)
    return numbers.astype(np.uint16) if buckets <= 1 << 16 else numbers  # uint16 sorts by radix


def _kinds_commute(barcodes: pa.Array, deletes: np.ndarray) -> bool:
    """True when no barcode has both a set row and a delete row among *barcodes*."""
    deleted = pc.filter(barcodes, pa.array(deletes))
    kept = pc.filter(barcodes, pa.array(~deletes))
    return not pc.any(pc.is_in(kept, value_set=deleted)).as_py()


def _protocol(barcodes: pa.Array, codes: pa.Array, deletes: np.ndarray) -> pa.Array:
    """RESP bulk strings per record: ``$n\\r\\nbarcode\\r\\n`` plus ``$m\\r\\ncode\\r\\n`` for a set."""
    crlf = pa.scalar("\r\n")
    dollar = pa.scalar("$")

    def bulk(values: pa.Array) -> list:
        return [dollar, pc.cast(pc.binary_length(values), pa.string()), crlf, values, crlf]

    if deletes.all():
        return pc.binary_join_element_wise(*bulk(barcodes), "")
    field_value = pc.binary_join_element_wise(*bulk(barcodes), *bulk(codes), "")
    if not deletes.any():
        return field_value
    return pc.if_else(pa.array(deletes), pc.binary_join_element_wise(*bulk(barcodes), ""), field_value)


class _Stream:
    """Commands out in ~1 MiB writes; replies read one write behind."""

    def __init__(self, connection, result: WriteResult) -> None:
        self.connection = connection
        self.result = result
        self.parts: list = []
        self.size = 0
        self.unsent: list[bool] = []  # kinds of buffered commands (True = HDEL)
        self.in_flight: deque[list[bool]] = deque()  # kinds per sent write, replies unread

    def command(self, header: bytes, body: memoryview, is_delete: bool) -> None:
        self.parts.append(header)
        self.parts.append(body)
        self.size += len(header) + len(body)
        self.unsent.append(is_delete)
        if self.size >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.connection.send_packed_command([b"".join(self.parts)], check_health=False)
            self.in_flight.append(self.unsent)
            self.parts, self.size, self.unsent = [], 0, []
        while len(self.in_flight) > 1:
            self._read(self.in_flight.popleft())

    def finish(self) -> None:
        self.flush()
        while self.in_flight:
            self._read(self.in_flight.popleft())

    def _read(self, kinds: list[bool]) -> None:
        errors = []
        result = self.result
        read = self.connection.read_response
        for is_delete in kinds:
            try:
                reply = read()
            except redis.exceptions.ResponseError as exc:
                errors.append(str(exc))
                continue
            result.commands += 1
            if is_delete:
                result.removed += reply
            else:
                result.added += reply
        if errors:
            raise BulkWriteError(f"Redis refused {len(errors)} command(s): {errors[0]}")


def write_generation(
    client: redis.Redis,
    layout: Layout,
    gen: int,
    buckets: int,
    parsed: ParsedExport,
    *,
    progress: Callable[[int], None] | None = None,
    slice_rows: int | None = None,
) -> WriteResult:
    """Apply *parsed* (upserts and deletes, in file order) to generation *gen* of *buckets* buckets."""
    result = WriteResult()
    total = len(parsed.barcodes)
    slice_rows = slice_rows or max(SLICE_ROWS_MIN, buckets * 32)
    connection = client.connection_pool.get_connection()
    stream = _Stream(connection, result)
    try:
        for first in range(0, total, slice_rows):
            last = min(first + slice_rows, total)
            _write_slice(stream, layout, gen, buckets, parsed, first, last)
            if progress:
                progress(last)
        stream.finish()
    except BaseException:
        connection.disconnect()  # replies may be unread: never hand this connection back mid-stream
        raise
    finally:
        client.connection_pool.release(connection)
    return result


def _write_slice(stream: _Stream, layout: Layout, gen: int, buckets: int, parsed: ParsedExport, first: int, last: int) -> None:
    barcodes = parsed.barcodes.slice(first, last - first)
    bucket = bucket_numbers(barcodes, buckets)
    deletes = parsed.is_delete[first:last]
    if deletes.any() and not deletes.all() and _kinds_commute(barcodes, deletes):
        # No barcode is both set and deleted in this slice: sets may go before deletes in a
        # bucket, one HSET and one HDEL per bucket instead of a command per alternation.
        sort_key = (bucket.astype(np.uint32) << 1) | deletes
        sort_key = sort_key.astype(np.uint16) if buckets <= 1 << 15 else sort_key
    else:
        sort_key = bucket
    order = np.argsort(sort_key, kind="stable")
    bucket = bucket[order]
    deletes = deletes[order]
    take = pa.array(order)
    pieces = _protocol(pc.take(barcodes, take), pc.take(parsed.customer_codes.slice(first, last - first), take), deletes)
    offsets, _ = _string_buffers(pieces)
    data = memoryview(pieces.buffers()[2])

    # A run: consecutive records with the same bucket and the same kind (set / delete).
    change = np.flatnonzero((bucket[1:] != bucket[:-1]) | (deletes[1:] != deletes[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(bucket)]))
    prefix = layout.prefix
    for start, end, b, is_delete, begin, stop in zip(
        starts.tolist(), ends.tolist(), bucket[starts].tolist(), deletes[starts].tolist(),
        offsets[starts].tolist(), offsets[ends].tolist(), strict=True,
    ):
        key = f"{prefix}:{gen}:{b:x}"
        if is_delete:
            header = f"*{2 + end - start}\r\n$4\r\nHDEL\r\n${len(key)}\r\n{key}\r\n"
        else:
            header = f"*{2 + 2 * (end - start)}\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n"
        stream.command(header.encode(), data[begin:stop], is_delete)
