"""Whole buckets as Redis ``RESTORE`` payloads, built vectorised: a new generation in one command a bucket.

Filling an empty generation with ``HSET`` makes Redis search each bucket's ziplist for every
field it adds (a bucket of 30 records: 30 searches of a growing list) and grow the list once a
field: 85% of its 0.85 s of CPU for a 2M-record load went there (perf). ``RESTORE`` takes the
finished ziplist instead, which Redis checks and copies: 0.12 s for the same records. Only a new
generation can be written this way: RESTORE creates a key, it cannot add to one.

The payload is what ``DUMP`` gives for a hash that ``HSET`` built from the same fields in the same
order (tests compare the two byte for byte): type 13 (a hash as a ziplist), the ziplist as an
RDB string, RDB version 9 (Redis 5 and 6.2; Redis 7 and Valkey load it as they load an older
dump, converting it to a listpack) and the CRC-64 Redis checks. Each entry is encoded as Redis
encodes it: a value that is a canonical 64-bit integer as the smallest integer that holds it,
anything else as a string, so the data set takes the same memory as one written with HSET.

A server that refuses RESTORE (an older RDB version, a command renamed or denied by an ACL) is
found by the first bucket; the loader then writes with HSET (see loader.py).
"""

from __future__ import annotations

import functools
import struct

import anycrc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RDB_TYPE_HASH_ZIPLIST = 13
RDB_VERSION = 9
ZIPLIST_HEADER = 10  # zlbytes (u32), zltail (u32), zllen (u16)
ZIPLIST_END = b"\xff"
MAX_ENTRY = 253  # an entry shorter than 254 bytes is announced by a one-byte "previous length"


@functools.cache
def _crc64() -> anycrc.CRC:
    return anycrc.Model("CRC64-REDIS")  # Jones polynomial, reflected, initial value 0: what Redis checks


def crc64(data: bytes | memoryview) -> int:
    """Redis' CRC-64 of *data*."""
    return int(_crc64().calc(data))


def _canonical_integer(value: bytes) -> int | None:
    """*value* as Redis' ``string2ll`` reads it (decimal, no sign but '-', no leading zero, 64-bit),
    when the ziplist would store it as an integer (shorter than 32 bytes); else None."""
    if not 0 < len(value) < 32:
        return None
    digits = value[1:] if value.startswith(b"-") else value
    if not digits.isdigit() or not digits.isascii() or (digits.startswith(b"0") and value != b"0"):
        return None
    number = int(value)
    return number if -(1 << 63) <= number < 1 << 63 else None


def entry(value: bytes) -> bytes:
    """The ziplist entry (without its previous-length byte) Redis makes of *value*."""
    number = _canonical_integer(value)
    if number is not None:
        if 0 <= number <= 12:
            return bytes([0xF1 + number])
        if -(1 << 7) <= number < 1 << 7:
            return b"\xfe" + struct.pack("<b", number)
        if -(1 << 15) <= number < 1 << 15:
            return b"\xc0" + struct.pack("<h", number)
        if -(1 << 23) <= number < 1 << 23:
            return b"\xf0" + struct.pack("<i", number)[:3]
        if -(1 << 31) <= number < 1 << 31:
            return b"\xd0" + struct.pack("<i", number)
        return b"\xe0" + struct.pack("<q", number)
    if len(value) <= 63:
        return bytes([len(value)]) + value
    if len(value) <= 16383:
        return bytes([0x40 | len(value) >> 8, len(value) & 0xFF]) + value
    return b"\x80" + struct.pack(">I", len(value)) + value


@functools.cache
def _single_bytes() -> pa.Array:
    return pa.array([bytes([i]) for i in range(256)], type=pa.binary())


# Integer entries by size: (smallest, largest, header byte, bytes of the value).
_INTEGER_CLASSES = (
    (-(1 << 7), (1 << 7) - 1, 0xFE, 1),
    (-(1 << 15), (1 << 15) - 1, 0xC0, 2),
    (-(1 << 23), (1 << 23) - 1, 0xF0, 3),
    (-(1 << 31), (1 << 31) - 1, 0xD0, 4),
    (-(1 << 63), (1 << 63) - 1, 0xE0, 8),
)


def entries(values: pa.Array) -> pa.Array:
    """The ziplist entry of every value (as :func:`entry`), as a binary array; values are at most
    63 bytes (barcodes and customer codes are much shorter).

    Plain decimal values of up to 18 digits are converted by Arrow; the rare value that may be a
    19-digit or negative integer is encoded one at a time.
    """
    values = values.cast(pa.binary())
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    if len(values) and int(lengths.max()) > 63:
        raise ValueError("a value longer than 63 bytes")
    as_text = values.cast(pa.string())
    decimal = pc.and_(pc.ascii_is_decimal(as_text), pc.greater(pc.binary_length(values), 0)).to_numpy(zero_copy_only=False)
    leading_zero = pc.starts_with(as_text, "0").to_numpy(zero_copy_only=False) & (lengths > 1)
    number = decimal & ~leading_zero & (lengths <= 18)
    slow = np.flatnonzero(pc.starts_with(as_text, "-").to_numpy(zero_copy_only=False)
                          | (decimal & ~leading_zero & (lengths > 18)))
    if number.all():
        result = _integer_entries(pc.cast(as_text, pa.int64()).to_numpy(zero_copy_only=False))
    elif not number.any():
        result = pc.binary_join_element_wise(pc.take(_single_bytes(), pa.array(lengths)), values, b"")
    else:  # some of each: each kind encoded apart, then put back in place
        numbers_at, strings_at = np.flatnonzero(number), np.flatnonzero(~number)
        strings = pc.take(values, pa.array(strings_at))
        parts = pa.concat_arrays([
            _integer_entries(pc.cast(pc.take(as_text, pa.array(numbers_at)), pa.int64()).to_numpy(zero_copy_only=False)),
            pc.binary_join_element_wise(pc.take(_single_bytes(), pa.array(lengths[strings_at])), strings, b""),
        ])
        positions = np.empty(len(values), dtype=np.int64)
        positions[numbers_at] = np.arange(len(numbers_at))
        positions[strings_at] = len(numbers_at) + np.arange(len(strings_at))
        result = pc.take(parts, pa.array(positions))
    if len(slow):
        fixed = pa.array([entry(value) for value in pc.take(values, pa.array(slow)).to_pylist()], type=pa.binary())
        positions = np.arange(len(values))
        positions[slow] = len(values) + np.arange(len(slow))
        result = pc.take(pa.concat_arrays([result, fixed]), pa.array(positions))
    return result


def _integer_entries(numbers: np.ndarray) -> pa.Array:
    """The ziplist entries of integers: each in the smallest encoding that holds it."""
    header = np.zeros(len(numbers), dtype=np.uint8)
    size = np.zeros(len(numbers), dtype=np.int64)
    for smallest, largest, byte, width in reversed(_INTEGER_CLASSES):
        fits = (numbers >= smallest) & (numbers <= largest)
        header[fits], size[fits] = byte, width + 1
    immediate = (numbers >= 0) & (numbers <= 12)
    header[immediate], size[immediate] = (0xF1 + numbers[immediate]).astype(np.uint8), 1
    matrix = np.empty((len(numbers), 9), dtype=np.uint8)
    matrix[:, 0] = header
    matrix[:, 1:] = numbers.astype("<i8").view(np.uint8).reshape(len(numbers), 8)
    if len(numbers) and (size == size[0]).all():  # one encoding for all (a barcode export, nearly always)
        return _from_matrix(np.ascontiguousarray(matrix[:, :size[0]]), size)
    return _from_matrix(matrix, size)


def _from_matrix(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array of the first *lengths[i]* bytes of each row of *matrix*."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    if len(lengths) and (lengths == matrix.shape[1]).all():
        data = matrix.ravel()
    else:
        data = matrix[np.arange(matrix.shape[1]) < lengths[:, None]]
    return pa.Array.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


_TRAILER = ZIPLIST_END + struct.pack("<H", RDB_VERSION) + bytes(8) + b"\r\n"  # the CRC's 8 bytes filled in later


def restore_protocol(key_head: str, bucket: np.ndarray, barcode_entries: pa.Array,
                     code_entries: pa.Array) -> tuple[memoryview, np.ndarray]:
    """``RESTORE key 0 payload`` for every bucket in *bucket* (one value a record, sorted by
    bucket, records in the order they go into the ziplist), keys ``{key_head}{bucket}``; returns the
    protocol and the number of records of each command.

    *barcode_entries* and *code_entries* are each record's field and value as :func:`entries`.
    """
    count = len(bucket)
    barcode_lengths = pc.binary_length(barcode_entries).to_numpy(zero_copy_only=False).astype(np.int64)
    code_lengths = pc.binary_length(code_entries).to_numpy(zero_copy_only=False).astype(np.int64)
    if count and max(int(barcode_lengths.max()), int(code_lengths.max())) >= MAX_ENTRY:
        raise ValueError("a ziplist entry longer than 252 bytes")
    is_first = np.ones(count, dtype=bool)
    is_first[1:] = bucket[1:] != bucket[:-1]
    firsts = np.flatnonzero(is_first)
    lasts = np.append(firsts[1:] - 1, count - 1)
    records = lasts - firsts + 1

    # Every entry's "previous length" byte is the whole length of the entry before it, its own
    # previous-length byte included; the first entry of a ziplist has 0.
    previous_code = np.zeros(count, dtype=np.int64)
    previous_code[1:] = 1 + code_lengths[:-1]
    previous_code[is_first] = 0
    row_bytes = 2 + barcode_lengths + code_lengths
    body = np.add.reduceat(row_bytes, firsts) if count else np.zeros(0, dtype=np.int64)
    zlbytes = ZIPLIST_HEADER + body + 1
    zltail = ZIPLIST_HEADER + body - 1 - code_lengths[lasts]
    zllen = np.minimum(2 * records, 0xFFFF)

    # The payload's head: type, the ziplist's RDB string length (1, 2 or 5 bytes), the ziplist header.
    head = np.zeros((len(firsts), 16), dtype=np.uint8)
    head[:, 0] = RDB_TYPE_HASH_ZIPLIST
    short, medium = zlbytes < 64, (zlbytes >= 64) & (zlbytes < 16384)
    length_size = np.where(short, 1, np.where(medium, 2, 5))
    head[short, 1] = zlbytes[short]
    head[medium, 1] = 0x40 | (zlbytes[medium] >> 8)
    head[medium, 2] = zlbytes[medium] & 0xFF
    long = ~(short | medium)
    head[long, 1] = 0x80
    head[long, 2:6] = zlbytes[long].astype(">u4").view(np.uint8).reshape(-1, 4)
    fields = np.zeros((len(firsts), 10), dtype=np.uint8)
    fields[:, 0:4] = zlbytes.astype("<u4").view(np.uint8).reshape(-1, 4)
    fields[:, 4:8] = zltail.astype("<u4").view(np.uint8).reshape(-1, 4)
    fields[:, 8:10] = zllen.astype("<u2").view(np.uint8).reshape(-1, 2)
    for size in (1, 2, 5):
        at = length_size == size
        head[at, 1 + size:11 + size] = fields[at]
    head_lengths = 11 + length_size
    payload_lengths = head_lengths + body + len(_TRAILER) - 2  # the trailer ends with the protocol's \r\n

    keys = pc.binary_join_element_wise(pa.scalar(key_head, pa.binary()),
                                       pc.cast(pa.array(bucket[firsts]), pa.string()).cast(pa.binary()), b"")
    commands = pc.binary_join_element_wise(
        pa.scalar(b"*4\r\n$7\r\nRESTORE\r\n$"), pc.cast(pc.binary_length(keys), pa.string()).cast(pa.binary()),
        pa.scalar(b"\r\n"), keys, pa.scalar(b"\r\n$1\r\n0\r\n$"),
        pc.cast(pa.array(payload_lengths), pa.string()).cast(pa.binary()), pa.scalar(b"\r\n"), b"",
    )
    command_lengths = pc.binary_length(commands).to_numpy(zero_copy_only=False).astype(np.int64)
    headers = pc.binary_join_element_wise(commands, _from_matrix(head, head_lengths), b"")
    headers = pa.concat_arrays([headers, pa.array([b""], type=pa.binary())])  # last: "no header"
    header_of_row = np.full(count, len(firsts), dtype=np.int32)
    header_of_row[firsts] = np.arange(len(firsts), dtype=np.int32)
    trailer_of_row = np.zeros(count, dtype=np.int32)
    trailer_of_row[lasts] = 1
    singles = _single_bytes()
    protocol = pc.binary_join_element_wise(
        pc.take(headers, pa.array(header_of_row)),
        pc.take(singles, pa.array(previous_code)),
        barcode_entries,
        pc.take(singles, pa.array(1 + barcode_lengths)),
        code_entries,
        pc.take(pa.array([b"", _TRAILER], type=pa.binary()), pa.array(trailer_of_row)),
        b"",
    )
    offsets = np.frombuffer(protocol.buffers()[1], dtype=np.int32, count=count + 1, offset=protocol.offset * 4)
    data = np.frombuffer(protocol.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].copy()
    offsets = offsets.astype(np.int64) - offsets[0]
    crc_at = offsets[lasts + 1] - 10
    view, calc = data.data, _crc64().calc
    crcs = np.array([calc(view[start:end]) for start, end in zip((offsets[firsts] + command_lengths).tolist(),
                                                                  crc_at.tolist(), strict=True)], dtype=np.uint64)
    data[crc_at[:, None] + np.arange(8)] = crcs.astype("<u8").view(np.uint8).reshape(-1, 8)
    return view, records
