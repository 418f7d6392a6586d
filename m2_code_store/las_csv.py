"""Read a LAS "Export Item Barcodes → Barcodes by CUS/DATE" CSV into validated records.

Columns are found by header name (case, spacing, underscores and a byte-order mark do not
matter), never by position; two columns that mean the same (``Item barcode`` and
``ITEM  BARCODE``) are refused rather than one silently ignored. Lines may end in CR LF, LF or CR.
Values are trimmed. A row is skipped, with its line number and the reason, when its barcode is
blank or outside the barcode alphabet, its customer code is missing (and it has no Delete date),
it has the wrong number of fields, a value we read is not UTF-8 text (a stray Windows-1252 byte;
a header that is not UTF-8 refuses the file), or a date does not parse. A line with nothing in
it (only spaces, delimiters or a Ctrl-Z end-of-file mark) is a blank line: counted, not reported. Dates
may be ISO (``2024-05-01``) or US (``05/01/2024``, ``5/1/2024``); a blank Delete date means the
item is present.

A barcode that appears more than once: **the row with the latest event date wins**. A row's
event date is its Delete date when it has one, else its Accession date; a row with neither (or a
file without the Accession date column) has no date, which is older than any date. Rows with
equal event dates (or none) keep file order: the later row wins. File order alone would be wrong:
this export is sorted by CUStomer code, then DATE, so an item re-accessioned in 2025 under code
AA comes before its 2019 row deleted in 2024 under code NX. ``read_export`` therefore returns the
valid rows in stable event-date order, and the loader applies them in that order (the last one
wins). Skipped rows do not take part.

Line numbers are physical lines, the header being line 1. No value of this export holds a line
break, so a line where a quoted value opens and does not close (a stray ``"``) is reported as a
bad row and the lines after it are read as they are, instead of being swallowed into that value.
Every value a message quotes is shortened (:func:`shown`): one field can be megabytes long.
"""

from __future__ import annotations

import codecs
import csv
import functools
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from m2_code_store.rules import BARCODE_PATTERN, CUSTOMER_CODE_PATTERN, MAX_BARCODE_LENGTH, shown

COLUMNS = {  # our name -> the LAS header
    "barcode": "Item barcode",
    "customer_code": "Customer code",
    "delete_date": "Delete date",
    "accession_date": "Accession date",
}
REQUIRED = ("barcode", "customer_code", "delete_date")
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y")
NOT_UTF8_ROW = "not UTF-8 text: export the file again as CSV (UTF-8)"
OPEN_QUOTE_ROW = ('a quoted value opens on this line and does not close on it (a stray \'"\'?): fix or remove '
                  "the quote; the lines after it were read as they are")


class ExportError(Exception):
    """The file as a whole cannot be loaded (unreadable, not CSV, a required column missing)."""


@dataclass(frozen=True)
class BadRow:
    """A skipped row: its line number and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ParsedExport:
    """The valid rows of an export, in the order they apply, and the rows that were skipped.

    Valid rows are in stable event-date order (file order among equal dates), so for a barcode
    that appears more than once the last of its rows here is the one that wins.

    The columns are kept as read (``source_*``, skipped rows included) with ``apply_order``, the
    positions of the valid rows in the order they apply: the bulk writer takes rows through it
    once instead of copying the columns into order first. ``barcodes``, ``customer_codes`` and
    ``is_delete`` give the valid rows in order, built on first use.
    """

    source_barcodes: pa.Array  # string, every row as read
    source_codes: pa.Array  # string, every row as read (ignored on delete rows)
    source_deletes: np.ndarray  # bool, every row as read
    rows_read: int
    bad_rows: list[BadRow] = field(default_factory=list)
    blank_lines: int = 0
    apply_order: np.ndarray | None = None  # positions into source_*; None: all of them, as read
    # CRC-32 of each valid row's barcode (by source row): from read_export's hash_barcodes, or bulk's on first use
    row_crc: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.source_barcodes) if self.apply_order is None else len(self.apply_order)

    @functools.cached_property
    def order(self) -> np.ndarray:
        """Positions into ``source_*`` of the valid rows, in the order they apply."""
        if self.apply_order is None:
            return np.arange(len(self.source_barcodes), dtype=np.int64)
        return self.apply_order

    @functools.cached_property
    def barcodes(self) -> pa.Array:
        return self._take(self.source_barcodes)

    @functools.cached_property
    def is_delete(self) -> np.ndarray:
        return self.source_deletes if self.apply_order is None else self.source_deletes[self.apply_order]

    @functools.cached_property
    def customer_codes(self) -> pa.Array:
        """Customer codes of the valid rows in order; "" on delete rows."""
        return pc.if_else(pa.array(self.is_delete), pa.scalar("", pa.string()), self._take(self.source_codes))

    @functools.cached_property
    def code_dictionary(self) -> pa.DictionaryArray:
        """``source_codes`` dictionary-encoded (a few distinct codes): the loader encodes and
        hashes each distinct code once."""
        return pc.dictionary_encode(self.source_codes)

    def _take(self, column: pa.Array) -> pa.Array:
        return column if self.apply_order is None else pc.take(column, pa.array(self.apply_order))

    @property
    def upserts(self) -> int:
        return int(len(self) - self.deletes)

    @property
    def deletes(self) -> int:
        return int(self.is_delete.sum())


def normalise_header(name: str) -> str:
    """Header name folded for matching: no BOM, case-folded, single spaces, ``_`` as space."""
    return " ".join(name.replace("\ufeff", "").replace("_", " ").split()).casefold()


LINE_END = re.compile(rb"\r\n?|\n")


def _header_line(raw: bytes) -> tuple[bytes, int]:
    """The first line of *raw* without its line ending (CR LF, LF or CR alone), and where the next starts."""
    match = LINE_END.search(raw)
    return (raw[: match.start()], match.end()) if match else (raw, len(raw))


def _decode(raw: bytes, path: Path) -> tuple[bytes, str]:
    """UTF-8 bytes of the file (UTF-16 exports transcoded) and its delimiter."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExportError(f"{path} starts as UTF-16 text but is not UTF-16 throughout ({exc.reason}): "
                              "export it again as CSV (UTF-8)") from exc
    elif raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    first_line = _header_line(raw)[0]
    delimiter = "\t" if b"\t" in first_line and b"," not in first_line else ","
    try:
        first_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path} is not UTF-8 text: export it again as CSV (UTF-8)") from exc
    return raw, delimiter


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _column_indexes(header: list[str], path: Path) -> dict[str, int]:
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        positions.setdefault(normalise_header(name), []).append(i)
    indexes = {}
    for ours, theirs in COLUMNS.items():
        found = positions.get(normalise_header(theirs), [])
        if len(found) > 1:
            names = [header[i].replace("\ufeff", "").strip() for i in found]
            remove = "remove one" if len(found) == 2 else "remove all but one"
            if len(set(names)) == 1:
                times = "twice" if len(found) == 2 else f"{len(found)} times"
                numbers = _and_list([str(i + 1) for i in found])
                raise ExportError(f"column {shown(names[0])} appears {times} in {path.name} (columns {numbers}): {remove}")
            raise ExportError(
                f"columns {_and_list([shown(n) for n in names])} in {path.name} {'both' if len(found) == 2 else 'all'} "
                f"mean {theirs!r}: {remove}"
            )
        if found:
            indexes[ours] = found[0]
    missing = [COLUMNS[name] for name in REQUIRED if name not in indexes]
    if missing:
        found_names = [shown(h.strip()) for h in header[:12]] + ([f"… {len(header) - 12:,} more"] if len(header) > 12 else [])
        found_text = ", ".join(found_names) or "nothing"
        missing_names = _and_list([repr(m) for m in missing])
        raise ExportError(
            f"column{'s' if len(missing) > 1 else ''} {missing_names} not found in {path.name} (found: {found_text}): is this the LAS "
            "'Barcodes by CUS/DATE' export?"
        )
    return indexes


def _parse_date(value: str) -> date | None:
    """The date *value* names in one of DATE_FORMATS, or None (blank or unparseable)."""
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def _date_column(values: pa.Array) -> tuple[np.ndarray, list[str], list[date | None]]:
    """Each row's index into the column's distinct values, those values, and each one parsed.

    A date column holds few distinct values, so they are parsed once each in Python.
    """
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary.to_pylist()
    return encoded.indices.to_numpy(zero_copy_only=False), distinct, [_parse_date(v) if v else None for v in distinct]


def read_export(path: str | Path, *, hash_barcodes: Callable[[pa.Array], np.ndarray | None] | None = None,
                ) -> ParsedExport:
    """Parse and validate a LAS export; raise ExportError if the file cannot be used at all.

    Three steps: read the bytes and find the columns (:func:`_open_export`), read the rows with
    Arrow, recovering from lines that would break it (:class:`_RowReader`), then decide which rows
    are bad and in what order the good ones apply (:func:`_validate`).

    *hash_barcodes*, if given, is called with the barcode column (every row as read, bad ones
    too) on a thread of its own while the rows are checked: what it returns, the CRC-32 of each
    row's barcode or None, is ``parsed.row_crc`` (bulk.barcode_crcs; None: bulk hashes the valid
    rows when it needs them).
    """
    path = Path(path)
    raw, delimiter, header, indexes = _open_export(path)
    reader = _RowReader(path, delimiter, header, indexes)
    reader.raw, raw = raw, b""  # the reader lets go of the file's bytes as soon as Arrow has read them
    rows = reader.read()
    if hash_barcodes is None:
        return _validate(rows, "accession_date" in indexes)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2-read") as pool:
        hashed = pool.submit(hash_barcodes, rows.columns["barcode"])
        parsed = _validate(rows, "accession_date" in indexes)
        parsed.row_crc = hashed.result()
    return parsed


def _open_export(path: Path) -> tuple[bytes, str, list[str], dict[str, int]]:
    """The file's bytes (UTF-8, header line ended), its delimiter, header and our columns' indexes."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path} not found") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror}") from exc
    raw, delimiter = _decode(raw, path)
    if raw.endswith(b"\x1a"):  # Ctrl-Z, the DOS end-of-file mark, can follow the last field
        raw = raw.rstrip(b"\x1a")
    header_bytes, _ = _header_line(raw)
    if len(header_bytes) == len(raw):
        raw += b"\n"  # a header without a line ending, which Arrow cannot skip
    header_line = header_bytes.decode("utf-8")
    if not header_line.strip():
        raise ExportError(f"{path} is empty or has no header line")
    try:
        header = next(csv.reader([header_line], delimiter=delimiter))
    except csv.Error as exc:  # a header name over 128 KB
        raise ExportError(f"the header line of {path.name} cannot be read as CSV ({exc}): is this the LAS "
                          "'Barcodes by CUS/DATE' export?") from exc
    return raw, delimiter, header, _column_indexes(header, path)


@dataclass
class _Rows:
    """What Arrow read: our columns (trimmed), each row's line number, and the lines it skipped."""

    columns: dict[str, pa.Array]  # barcode, customer_code, delete_date and maybe accession_date
    lines: np.ndarray  # the physical line of each row of the columns
    invalid: list[tuple[int, str]]  # lines with the wrong number of fields
    blank_short_lines: list[int]  # lines with too few fields but nothing in them
    blanked_lines: dict[int, str]  # lines blanked out before reading (reason): read as blank, reported as bad

    @property
    def count(self) -> int:
        return len(self.columns["barcode"])


class _RowReader:
    """Reads the rows with Arrow; a row that is not UTF-8 or opens a quote it never closes is
    blanked out and reported, so it cannot stop the read or swallow the lines after it."""

    def __init__(self, path: Path, delimiter: str, header: list[str], indexes: dict[str, int]) -> None:
        self.path, self.delimiter, self.header, self.indexes = path, delimiter, header, indexes
        self.names = [f"c{i}" for i in range(len(header))]
        self.raw = b""
        self.invalid: list[tuple[int, str]] = []
        self.blank_short_lines: list[int] = []
        self._not_blank = re.compile(f"[^\\s\x1a{re.escape(delimiter)}]")  # Ctrl-Z: an old DOS end-of-file mark

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        if row.actual_columns < row.expected_columns and not self._not_blank.search(row.text or ""):
            self.blank_short_lines.append(row.number)
        else:
            self.invalid.append((row.number, f"wrong number of fields ({row.actual_columns}, expected {row.expected_columns})"))
        return "skip"

    def _arrow(self, raw: bytes) -> pa.Table:
        """The table of *raw*: parsed on every core, and again on one when a row was bad or blank
        (Arrow gives an invalid row its line number only when it reads the file in order)."""
        table = self._arrow_read(raw, threads=True)
        if self.invalid or self.blank_short_lines:
            table = self._arrow_read(raw, threads=False)
        return table

    def _arrow_read(self, raw: bytes, *, threads: bool) -> pa.Table:
        self.invalid.clear()
        self.blank_short_lines.clear()
        with _unreadable_row_text_ignored():
            return pacsv.read_csv(
                pa.BufferReader(raw),
                read_options=pacsv.ReadOptions(use_threads=threads, skip_rows=1, column_names=self.names, block_size=8 << 20),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter, invalid_row_handler=self._on_invalid, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in self.names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    include_columns=[self.names[i] for i in self.indexes.values()],
                ),
            )

    def _checked(self, raw: bytes) -> tuple[pa.Table, bytes, list[int]]:
        """The table, the bytes it was read from, and the lines blanked out as not UTF-8."""
        try:
            return self._arrow(raw), raw, []
        except pa.ArrowInvalid as exc:
            # Rare: a row that is not UTF-8 (Arrow's conversion fails, or its invalid-row handler
            # cannot decode a short row). Blank those rows out, read again, and report them.
            blanked, lines = _blank_out_non_utf8(raw, self.delimiter, len(self.header), sorted(self.indexes.values()))
            try:
                if not lines:
                    raise exc
                return self._arrow(blanked), blanked, lines
            except pa.ArrowInvalid as again:
                if "UTF8" in str(again):
                    raise ExportError(f"{self.path} is not UTF-8 text: export it again as CSV (UTF-8)") from again
                raise ExportError(f"{self.path} could not be read as CSV: {again}") from again

    def read(self) -> _Rows:
        # A quoted value that opens and never closes would swallow every line after it. Lines with
        # an odd number of quotes are checked before reading; should a record still span lines (an
        # even number of quotes, one of them literal), every line with a quote is checked and it is
        # read again.
        fields = len(self.header)
        raw, self.raw = self.raw, b""
        read_from, open_quote_lines = _blank_out_open_quotes(raw, self.delimiter, fields, every_line=False)
        table, read_from, not_utf8_lines = self._checked(read_from)
        records = table.num_rows + len(self.invalid) + len(self.blank_short_lines) + 1
        if b'"' in read_from and records != _physical_lines(read_from):  # without quotes, a record is a line
            read_from, open_quote_lines = _blank_out_open_quotes(raw, self.delimiter, fields, every_line=True)
            table, read_from, not_utf8_lines = self._checked(read_from)
        del raw, read_from  # memory: the columns below are all that is kept
        total_records = table.num_rows + len(self.invalid) + len(self.blank_short_lines)
        lines = np.arange(2, total_records + 2, dtype=np.int64)
        if self.invalid or self.blank_short_lines:
            skipped = [n for n, _ in self.invalid] + self.blank_short_lines
            lines = np.setdiff1d(lines, np.fromiter(skipped, dtype=np.int64, count=len(skipped)), assume_unique=True)
        columns = {}
        for name, index in self.indexes.items():  # one column at a time, each chunked original let go at once
            columns[name] = _trimmed(table[self.names[index]].combine_chunks())
            table = table.drop_columns([self.names[index]])
        return _Rows(
            columns=columns,
            lines=lines,
            invalid=list(self.invalid),
            blank_short_lines=list(self.blank_short_lines),
            blanked_lines={**dict.fromkeys(open_quote_lines, OPEN_QUOTE_ROW), **dict.fromkeys(not_utf8_lines, NOT_UTF8_ROW)},
        )


def _validate(rows: _Rows, has_accession: bool) -> ParsedExport:
    """Which rows are bad (and why), which are blank, and the order the good ones apply in."""
    barcodes, codes, deleted = rows.columns["barcode"], rows.columns["customer_code"], rows.columns["delete_date"]
    accession = rows.columns["accession_date"] if has_accession else None
    zero = pa.scalar(0, pa.int32())
    blank_barcode = pc.equal(pc.binary_length(barcodes), zero)
    blank_line = pc.and_(blank_barcode, pc.and_(pc.equal(pc.binary_length(codes), zero), pc.equal(pc.binary_length(deleted), zero)))
    if accession is not None:
        blank_line = pc.and_(blank_line, pc.equal(pc.binary_length(accession), zero))
    is_delete = pc.greater(pc.binary_length(deleted), zero)

    problems: list[tuple[pa.Array | np.ndarray, str | Callable[[int], str]]] = [
        (blank_barcode, "blank barcode"),
        (pc.and_(pc.invert(blank_barcode), _not_matching(barcodes, BARCODE_PATTERN, MAX_BARCODE_LENGTH)),
         lambda i: _barcode_problem(barcodes[i].as_py())),
        (pc.and_(pc.invert(is_delete), pc.equal(pc.binary_length(codes), zero)), "missing customer code"),
        (pc.and_(pc.greater(pc.binary_length(codes), zero), _not_matching(codes, CUSTOMER_CODE_PATTERN, 32)),
         lambda i: f"customer code {shown(codes[i].as_py())} is not 1-32 letters, digits, '.', '_' or '-'"),
    ]
    date_columns = [(deleted, "Delete date")] + ([(accession, "Accession date")] if accession is not None else [])
    event_rank = _event_ranks(date_columns, problems)

    blank_np = blank_line.to_numpy(zero_copy_only=False)
    bad_mask = np.zeros(rows.count, dtype=bool)
    reasons: dict[int, str] = {}
    if rows.blanked_lines:  # read as blank rows, reported as bad ones
        blanked = np.isin(rows.lines, list(rows.blanked_lines))
        blank_np = blank_np & ~blanked
        bad_mask |= blanked
        reasons.update({i: rows.blanked_lines[int(rows.lines[i])] for i in np.flatnonzero(blanked).tolist()})
    for mask, reason in problems:
        mask_np = (mask if isinstance(mask, np.ndarray) else mask.to_numpy(zero_copy_only=False)) & ~blank_np
        for i in np.flatnonzero(mask_np & ~bad_mask):
            reasons[int(i)] = reason if isinstance(reason, str) else reason(int(i))
        bad_mask |= mask_np

    bad_rows = [BadRow(n, reason) for n, reason in rows.invalid]
    bad_rows += [BadRow(int(rows.lines[i]), reason) for i, reason in reasons.items()]
    bad_rows.sort(key=lambda bad: bad.line)

    keep = ~(bad_mask | blank_np)
    blank_lines = int(blank_np.sum()) + len(rows.blank_short_lines)
    total_records = rows.count + len(rows.invalid) + len(rows.blank_short_lines)
    return ParsedExport(
        source_barcodes=barcodes,
        source_codes=codes,
        source_deletes=is_delete.to_numpy(zero_copy_only=False),
        rows_read=total_records - blank_lines,
        bad_rows=bad_rows,
        blank_lines=blank_lines,
        apply_order=_apply_order(keep, event_rank),
    )


def _event_ranks(date_columns: list[tuple[pa.Array, str]],
                 problems: list[tuple[pa.Array | np.ndarray, str | Callable[[int], str]]]) -> np.ndarray:
    """Each row's event date (Delete date, else Accession date) as its rank among the file's
    distinct dates (0: no date), so rows sort in event order with a radix sort of small integers;
    unparseable dates are added to *problems*."""
    encoded = [_date_column(values) for values, _ in date_columns]
    ranked = sorted({day for _, _, days in encoded for day in days if day is not None})
    rank_type = np.uint16 if len(ranked) <= np.iinfo(np.uint16).max else np.uint32
    rank_of: dict[date | None, int] = {day: rank for rank, day in enumerate(ranked, start=1)}
    ranks = []
    for (values, label), (indices, distinct, days) in zip(date_columns, encoded, strict=True):
        unparseable = np.array([bool(value) and day is None for value, day in zip(distinct, days, strict=True)])
        problems.append((unparseable[indices] if len(indices) else np.zeros(0, dtype=bool),
                         functools.partial(_unparseable_date, values, label)))
        ranks.append(np.array([rank_of.get(day, 0) for day in days], dtype=rank_type)[indices])
    return ranks[0] if len(ranks) == 1 else np.where(ranks[0] > 0, ranks[0], ranks[1])


def _apply_order(keep: np.ndarray, event_rank: np.ndarray) -> np.ndarray | None:
    """Positions of the kept rows in stable event order; None when that is every row as read."""
    kept_rank = event_rank[keep]
    if np.all(kept_rank[1:] >= kept_rank[:-1]):  # already in event order
        return None if keep.all() else np.flatnonzero(keep)
    order = np.argsort(kept_rank, kind="stable")
    return order if keep.all() else np.flatnonzero(keep)[order]


def _line_starts(raw: bytes) -> np.ndarray:
    """Byte offset where each physical line starts (lines end at CR LF, LF or CR), and len(raw) last."""
    data = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))
    ends = ends[~((data[ends] == ord("\n")) & (ends > 0) & (data[np.maximum(ends - 1, 0)] == ord("\r")))]  # CR LF: one end
    crlf = (data[ends] == ord("\r")) & (data[np.minimum(ends + 1, len(data) - 1)] == ord("\n")) & (ends + 1 < len(data))
    starts = ends + 1 + crlf
    if len(starts) and starts[-1] == len(raw):
        return np.concatenate(([0], starts))
    return np.concatenate(([0], starts, [len(raw)]))


def _physical_lines(raw: bytes) -> int:
    """Physical lines in *raw*, the header included (counted in C: this runs for every file)."""
    ends = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    return ends + (0 if raw.endswith((b"\n", b"\r")) else 1)


def _open_quote_pattern(delimiter: str) -> str:
    """A regular expression for a line whose every quoted value closes on it (quotes open a value
    only at its start, as for Arrow; ``""`` inside one is a literal quote)."""
    d = re.escape(delimiter)
    field = f'(?:"(?:[^"]|"")*"(?:[^"{d}][^{d}]*)?|[^"{d}][^{d}]*|)'
    return f"^{field}(?:{d}{field})*[\r\n]*$"


def _blank_out_open_quotes(raw: bytes, delimiter: str, fields: int, *, every_line: bool) -> tuple[bytes, list[int]]:
    """*raw* with every line where a quoted value opens and does not close replaced by an empty
    record, and those lines' numbers (header = 1). Only lines with an odd number of quotes are
    checked unless *every_line*."""
    if b'"' not in raw:
        return raw, []
    starts = _line_starts(raw)
    quotes = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord('"'))
    per_line = np.bincount(np.searchsorted(starts, quotes, side="right") - 1, minlength=len(starts) - 1)
    suspects = np.flatnonzero(per_line > 0 if every_line else per_line % 2 == 1)
    suspects = suspects[suspects > 0]  # the header was read already
    if not len(suspects):
        return raw, []
    data = pa.py_buffer(raw)
    lines = pa.Array.from_buffers(pa.binary(), len(starts) - 1, [None, pa.py_buffer(starts.astype(np.int32).tobytes()), data])
    closed = pc.match_substring_regex(pc.take(lines, pa.array(suspects)), _open_quote_pattern(delimiter))
    open_lines = suspects[~closed.to_numpy(zero_copy_only=False)]
    if not len(open_lines):
        return raw, []
    pieces, last = [], 0
    empty = delimiter.encode() * (fields - 1)
    for line in open_lines.tolist():
        start, end = int(starts[line]), int(starts[line + 1])
        end = len(raw[start:end].rstrip(b"\r\n")) + start
        pieces += [raw[last:start], empty]
        last = end
    return b"".join([*pieces, raw[last:]]), (open_lines + 1).tolist()


def _blank_out_non_utf8(raw: bytes, delimiter: str, fields: int, used: list[int]) -> tuple[bytes, list[int]]:
    """*raw* with every record that is not UTF-8 text replaced by an empty one, and their line numbers.

    A record counts when the bytes of a column we read are not UTF-8, or when it has the wrong
    number of fields (Arrow must decode those to report them). Only called after Arrow refused
    the file, so plain Python is fine here.
    """
    pieces, last, lines = [], 0, []
    for record, start, end, values in _records_with_high_bytes(raw, delimiter):
        try:
            raw[start:end].decode("utf-8")
            continue
        except UnicodeDecodeError:
            pass
        if record == 0 or (len(values) == fields and all(_is_utf8(values[i]) for i in used)):
            continue
        pieces += [raw[last:start], delimiter.encode() * (fields - 1)]
        last = end
        lines.append(record + 1)
    return b"".join([*pieces, raw[last:]]) if lines else raw, lines


def _records_with_high_bytes(raw: bytes, delimiter: str) -> Iterator[tuple[int, int, int, list[str]]]:
    """Index (header: 0), byte span without line ending and fields (Latin-1) of each record of *raw*
    that holds a byte over 0x7F.

    Records end at CR LF, LF or CR, as Arrow splits them; when the file has double quotes, Python's
    csv module (which, like Arrow, opens a quoted value only at the start of a field) finds where
    a record with a quoted line break ends.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    high = np.flatnonzero(data >= 0x80)
    if not len(high):
        return
    if b'"' not in raw:  # every line is a record: vectorised
        ends = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))
        ends = ends[~((data[ends] == ord("\n")) & (ends > 0) & (data[ends - 1] == ord("\r")))]  # CR LF: one end
        crlf = (data[ends] == ord("\r")) & (data[np.minimum(ends + 1, len(data) - 1)] == ord("\n"))
        starts = np.concatenate(([0], ends + 1 + crlf))
        ends = np.concatenate((ends, [len(data)]))
        for record in np.unique(np.searchsorted(ends, high)).tolist():
            start, end = int(starts[record]), int(ends[record])
            try:
                values = next(csv.reader([raw[start:end].decode("latin-1")], delimiter=delimiter), [])
            except csv.Error:
                values = []
            yield record, start, end, values
        return
    offset = 0

    def physical_lines() -> Iterator[str]:
        nonlocal offset
        for line in raw.splitlines(keepends=True):  # bytes split at CR LF, LF and CR only
            offset += len(line)
            yield line.decode("latin-1")

    start, next_high = 0, 0
    try:
        for record, values in enumerate(csv.reader(physical_lines(), delimiter=delimiter)):
            if next_high < len(high) and high[next_high] < offset:
                end = len(raw[start:offset].rstrip(b"\r\n")) + start
                yield record, start, end, values
                next_high = int(np.searchsorted(high, offset))
                if next_high == len(high):
                    return
            start = offset
    except csv.Error:
        return  # not CSV Python can follow: the file is refused as not UTF-8


def _is_utf8(latin1: str) -> bool:
    try:
        latin1.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@contextmanager
def _unreadable_row_text_ignored() -> Iterator[None]:
    """Silence the traceback Arrow prints when a short row's text is not UTF-8; the read fails anyway."""
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


_EDGE_BYTES = np.zeros(256, dtype=bool)
_EDGE_BYTES[[9, 10, 11, 12, 13, 32]] = True  # ASCII white space
_EDGE_BYTES[128:] = True  # any non-ASCII byte might belong to Unicode white space


def _trimmed(values: pa.Array) -> pa.Array:
    """*values* with white space trimmed; the trim only runs when some value may need it."""
    if values.type != pa.string() or values.null_count or len(values) == 0:
        return pc.utf8_trim_whitespace(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)
    data_buffer = values.buffers()[2]
    if data_buffer is None:
        return values
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    filled = offsets[1:] > offsets[:-1]
    starts, ends = offsets[:-1][filled], offsets[1:][filled] - 1
    if _EDGE_BYTES[data[starts]].any() or _EDGE_BYTES[data[ends]].any():
        return pc.utf8_trim_whitespace(values)
    return values


def _not_matching(values: pa.Array, pattern: str, max_length: int) -> pa.Array:
    """Mask of values that do not match *pattern*; the regex runs only where a cheap check fails."""
    plain = pc.and_(pc.ascii_is_alnum(values), pc.less_equal(pc.binary_length(values), pa.scalar(max_length, pa.int32())))
    suspects = np.flatnonzero(~plain.to_numpy(zero_copy_only=False))
    result = np.zeros(len(values), dtype=bool)
    if len(suspects):
        matched = pc.match_substring_regex(pc.take(values, pa.array(suspects)), pattern)
        result[suspects] = ~matched.to_numpy(zero_copy_only=False)
    return pa.array(result)


def _unparseable_date(values: pa.Array, label: str, i: int) -> str:
    return f"unparseable {label} {shown(values[i].as_py())} (expected YYYY-MM-DD or MM/DD/YYYY)"


def _barcode_problem(barcode: str) -> str:
    if len(barcode) > MAX_BARCODE_LENGTH:
        return f"barcode {shown(barcode)} is longer than {MAX_BARCODE_LENGTH} characters"
    return f"barcode {shown(barcode)} has characters outside A-Z, a-z, 0-9, '.', '_' and '-'"


def duplicate_count(parsed: ParsedExport) -> int:
    """How many valid rows are overridden by a later row (in event order) for the same barcode."""
    return len(parsed.barcodes) - pc.count_distinct(parsed.barcodes).as_py()


