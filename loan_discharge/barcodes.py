"""Discharge from a list of barcodes: the list, its results file, and what an item lookup means.

The barcode file (a scanner's output, one barcode per line, or a spreadsheet's CSV with a
``Barcode`` column) is never rewritten. Everything a run learns goes to the results file beside
it, ``<name>.results.csv``: one row per barcode with the ids, locations and process type Alma's
Retrieve Item by Barcode gave, then ``done``, ``outcome``, ``error``, ``attempts`` as in the CSV
mode. The results file is an items table whose rows are matched on the barcode
(``ItemsTable.key``): a later run reads it back, looks up only the barcodes not resolved yet and
scans in only what is not done. Plain data and files; the lookups themselves are in run.py.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loan_discharge.items import (
    ITEM_COLUMNS,
    NOT_SENT,
    STATUS_COLUMNS,
    DeskMap,
    InputError,
    ItemsTable,
    Plan,
    RowProblem,
    ScanRequest,
    _decode,
    _find_columns,
    _id_problem,
    normalise_header,
    plan_row,
    plan_rows,
    read_items,
    refused,
)

__all__ = [
    "BarcodeList",
    "LOOKUP_COLUMNS",
    "Lookup",
    "NOT_FOUND_REASON",
    "RESULT_HEADER",
    "apply_lookups",
    "barcode_summary",
    "build_barcode_plan",
    "columns_of_item",
    "fill_row",
    "format_barcodes",
    "not_on_loan_outcome",
    "read_barcodes",
    "resolved_plan",
    "results_file",
    "results_table",
]

# The results file's header: the Analytics export's names, so it reads like an items file.
RESULT_HEADER = [
    "Barcode", "MMS Id", "Holding Id", "Physical Item Id", "Library Code", "Location Code",
    "Temporary Physical Location In Use", "Temporary Library Code", "Temporary Location Code", "Process Type",
    *STATUS_COLUMNS,
]
LOOKUP_COLUMNS = ("mms_id", "holding_id", "item_pid", "library_code", "location_code", "temp_in_use",
                  "temp_library_code", "temp_location_code", "process_type")
NOT_FOUND_REASON = "no item in Alma has this barcode: check it (a mistyped or withdrawn barcode?)"
NOT_ON_LOAN = "not on loan"
_SPREADSHEET_NUMBER = re.compile(r"\d+(?:\.\d+)?[eE]\+\d+")  # 3.9E+13: Excel's way of showing a long number


@dataclass(frozen=True)
class Lookup:
    """A barcode to resolve (two API calls) before its scan-in."""

    row: int
    barcode: str


@dataclass
class BarcodeList:
    """The barcodes of a barcode file, each once, in file order, and what was left out."""

    path: Path
    barcodes: list[tuple[int, str]]  # (line, barcode)
    duplicates: list[tuple[int, str, int]] = field(default_factory=list)  # (line, barcode, its first line)
    blank_lines: int = 0


def read_barcodes(path: str | Path) -> BarcodeList:
    """Read a barcode file: one barcode per line (blank lines and a ``Barcode`` header line
    tolerated), or a CSV whose header has a ``Barcode`` column. Whitespace around a barcode (a
    scanner's CR, a spreadsheet's padding) is dropped; a barcode listed twice is kept once."""
    path = Path(path)
    text, _ = _decode(path, "barcode file", where="given to --barcodes",
                      save_as="save it as text (UTF-8), one barcode per line, or as CSV")
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise InputError(f"barcode file {path} is empty: it needs one barcode per line")
    cells: list[tuple[int, str]] = []
    header = lines[first]
    delimiter = "\t" if header.count("\t") > header.count(",") else ","
    names = [normalise_header(h) for h in next(csv.reader([header], delimiter=delimiter))]
    if len([name for name in names if name]) > 1:  # a CSV ("39000001," is one barcode and an empty cell)
        if "barcode" not in names:
            raise InputError(
                f"barcode file {path}: line {first + 1} has {len(names)} columns and none is 'Barcode' "
                f"(found: {header.strip()}); give the barcode column that header, or list one barcode per line"
            )
        column = names.index("barcode")
        reader = csv.reader(io.StringIO("\n".join(lines[first + 1:]), newline=""), delimiter=delimiter)
        for row in reader:
            cells.append((first + 1 + reader.line_num, row[column] if column < len(row) else ""))
    else:
        start = first + 1 if [name for name in names if name] == ["barcode"] else first
        cells = [(number + 1, line) for number, line in enumerate(lines) if number >= start]
    result = BarcodeList(path, [])
    seen: dict[str, int] = {}
    for line, cell in cells:
        barcode = cell.strip().rstrip(",;").strip()  # a spreadsheet's one-column CSV may end lines with a comma
        if not barcode:
            result.blank_lines += 1
        elif barcode in seen:
            result.duplicates.append((line, barcode, seen[barcode]))
        else:
            seen[barcode] = line
            result.barcodes.append((line, barcode))
    if not result.barcodes:
        raise InputError(f"barcode file {path} lists no barcode: it needs one barcode per line")
    return result


def format_barcodes(listing: BarcodeList, results: Path, to_look_up: int, max_lines: int = 10) -> str:
    """What the barcode file holds, as a person reads it: counts, duplicates with their lines."""
    out = [f"barcode file {listing.path}: {_count(len(listing.barcodes), 'barcode')}"
           + (f", {_count(listing.blank_lines, 'blank line')}" if listing.blank_lines else "")
           + f"; {to_look_up} to look up in Alma; results in {results}"]
    if listing.duplicates:
        shown = ", ".join(f"line {line} ({barcode}, as on line {first})"
                          for line, barcode, first in listing.duplicates[:max_lines])
        more = f" and {len(listing.duplicates) - max_lines} more" if len(listing.duplicates) > max_lines else ""
        out.append(f"  listed twice, sent once ({len(listing.duplicates)}): {shown}{more}")
    return "\n".join(out)


def barcode_summary(listing: BarcodeList, summary: Any, plan: Plan, results: Path) -> str:
    """The summary's line on the barcodes themselves: unknown to Alma (this run and before), listed twice."""
    unknown = summary.failed.get("401689", 0) + sum(1 for p in plan.problems if p.reason == NOT_FOUND_REASON)
    return (f"barcodes: {unknown} unknown to Alma (see the error column of {results}), "
            f"{len(listing.duplicates)} listed twice (sent once), {_count(listing.blank_lines, 'blank line')}")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def results_file(barcodes: Path) -> Path:
    """Where the results of a barcode file go: beside it, its whole name + ``.results.csv``
    (``scanned.txt`` -> ``scanned.txt.results.csv``: ``scanned.csv`` gets its own)."""
    return barcodes.with_name(f"{barcodes.name}.results.csv")


def results_table(listing: BarcodeList, path: Path) -> ItemsTable:
    """The results table for *listing*: read back from *path* when an earlier run wrote it (new
    barcodes are added at its end), else new. InputError if the file lists barcodes the barcode
    file no longer does (it belongs to another list: nothing of it is thrown away)."""
    if path.exists():
        table = read_items(path, "auto")
        table.key = "barcode"
        known = {table.get(row, "barcode") for row in range(len(table.rows))}
        listed = {barcode for _, barcode in listing.barcodes}
        gone = sorted(known - listed)
        if gone:
            raise InputError(
                f"results file {path} holds {len(gone)} barcodes that {listing.path} does not list (e.g. {gone[0]}): "
                f"it is the results of another list. Move it aside (or use another name for the barcode file) to "
                "start afresh; nothing was sent"
            )
        for _, barcode in listing.barcodes:
            if barcode not in known:
                row = [""] * len(table.header)
                row[table.columns["barcode"]] = barcode
                table.rows.append(row)
                table.lines.append(len(table.rows) + 1)
        return table
    header = list(RESULT_HEADER)
    columns = _find_columns(header, ITEM_COLUMNS)
    rows = []
    for _, barcode in listing.barcodes:
        row = [""] * len(header)
        row[columns["barcode"]] = barcode
        rows.append(row)
    return ItemsTable(path, header, rows, columns, lines=[n + 2 for n in range(len(rows))], key="barcode")


def columns_of_item(item: Mapping[str, Any]) -> dict[str, str]:
    """What Retrieve Item answered, as the results file's columns (alma-items-and-analytics.md §1)."""
    bib, holding, data = (item.get(k) or {} for k in ("bib_data", "holding_data", "item_data"))

    def value(field_value: Any) -> str:
        return str((field_value or {}).get("value") or "") if isinstance(field_value, dict) else str(field_value or "")

    in_temp = holding.get("in_temp_location")
    return {
        "mms_id": str(bib.get("mms_id") or ""),
        "holding_id": str(holding.get("holding_id") or ""),
        "item_pid": str(data.get("pid") or ""),
        "library_code": value(data.get("library")),
        "location_code": value(data.get("location")),
        "temp_in_use": "true" if in_temp is True or str(in_temp).lower() == "true" else "false",
        "temp_library_code": value(holding.get("temp_library")),
        "temp_location_code": value(holding.get("temp_location")),
        "process_type": value(data.get("process_type")),
    }


def fill_row(table: ItemsTable, row: int, columns: Mapping[str, str]) -> None:
    """Write a lookup's columns into *row*."""
    for name in LOOKUP_COLUMNS:
        table.rows[row][table.columns[name]] = columns.get(name, "")


def apply_lookups(table: ItemsTable, entries: Iterable[Mapping[str, Any]]) -> int:
    """Write journalled lookups (``kind`` lookup: barcode, columns) into the rows not resolved yet;
    return how many rows changed."""
    row_of = {table.get(row, "barcode"): row for row in range(len(table.rows))}
    changed = 0
    for entry in entries:
        row = row_of.get(str(entry.get("barcode") or ""))
        columns = entry.get("columns")
        if entry.get("kind") != "lookup" or row is None or not isinstance(columns, dict) or table.get(row, "item_pid"):
            continue
        fill_row(table, row, columns)
        changed += 1
    return changed


def resolved_plan(table: ItemsTable, row: int, desks: DeskMap, location_type: str) -> ScanRequest | str | None:
    """What a row whose item was found leads to: its scan-in; the reason it is not sent; or None
    when the item is not on loan (nothing to return: recorded as such, never scanned)."""
    reason = _id_problem(table, row)
    if reason is not None:
        return reason
    return None if _not_on_loan(table, row) else plan_row(table, row, desks, location_type)


def _not_on_loan(table: ItemsTable, row: int) -> bool:
    return "LOAN" not in table.get(row, "process_type").upper().split("_")


def not_on_loan_outcome(table: ItemsTable, row: int) -> str:
    process_type = table.get(row, "process_type")
    return f"{NOT_ON_LOAN} ({process_type.lower() if process_type else 'in place'}; not scanned)"


def build_barcode_plan(
    table: ItemsTable, desks: DeskMap, location_type: str, limit: int | None = None,
) -> tuple[Plan, list[Lookup]]:
    """Row by row: done already; resolved (a scan-in, or the reason it is not sent); refused
    earlier as unknown to Alma (reported again, not looked up again: clear its error cell to
    look it up once more); or a barcode to look up. *limit* counts scan-ins and lookups together."""

    def check(row: int) -> Lookup | str | RowProblem | None:
        barcode = table.get(row, "barcode")
        if not table.get(row, "item_pid"):
            if table.get(row, "error").startswith(NOT_SENT + NOT_FOUND_REASON):  # reported when it was found
                return replace(refused(table, row, NOT_FOUND_REASON), reported=True)
            if _SPREADSHEET_NUMBER.fullmatch(barcode):
                return (f"barcode {barcode} is a number a spreadsheet reformatted: save the list with the barcode "
                        "column formatted as text")
            return Lookup(row, barcode)
        reason = _id_problem(table, row)
        if reason is not None:
            return reason
        if _not_on_loan(table, row):  # found not on loan by a run killed before it recorded that: look again
            return Lookup(row, barcode)
        return None

    return plan_rows(table, desks, location_type, limit, check=check, same_item="same item as barcode line")
