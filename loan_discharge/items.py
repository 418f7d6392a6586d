"""The items CSV (an Alma Analytics export) and the desks CSV: reading, validation, desk resolution, plan.

Everything here is plain data and files; nothing talks to Alma. Ids stay strings throughout
(Alma ids exceed 2**53, so a float would corrupt them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = [
    "InputError",
    "ItemsTable",
    "DeskMap",
    "ScanRequest",
    "RowProblem",
    "Plan",
    "read_items",
    "read_desks",
    "build_plan",
    "plan_row",
    "plan_rows",
    "refused",
    "apply_results",
    "mark_problems",
    "write_items_atomic",
    "format_plan",
    "normalise_header",
]

# Analytics header (normalised) -> the name this module uses. First match wins.
ITEM_COLUMNS: dict[str, tuple[str, ...]] = {
    "mms_id": ("mms id",),
    "holding_id": ("holding id",),
    "item_pid": ("physical item id", "item id", "item pid"),
    "library_code": ("library code", "library code (active)"),
    "location_code": ("location code",),
    "temp_location_code": ("temporary location code",),
    "temp_library_code": ("temporary library code (active)", "temporary library code"),
    "temp_in_use": ("temporary physical location in use",),
    "barcode": ("barcode",),
    "process_type": ("process type",),
    "done": ("done",),
    "outcome": ("outcome",),
    "error": ("error",),
    "attempts": ("attempts",),
}
# How a missing column is named in messages: the real Analytics header.
DISPLAY_NAMES = {
    "mms_id": "MMS Id",
    "holding_id": "Holding Id",
    "item_pid": "Physical Item Id (or Item Id)",
    "library_code": "Library Code",
    "location_code": "Location Code",
    "temp_location_code": "Temporary Location Code",
}
STATUS_COLUMNS = ("done", "outcome", "error", "attempts")
DESK_COLUMNS: dict[str, tuple[str, ...]] = {
    "location_code": ("location code", "location"),
    "circ_desk": ("circ desk", "circulation desk", "desk"),
    "library_code": ("library code", "library"),
}
T = TypeVar("T")
TRUE_WORDS = {"true", "yes", "y", "1"}
NOT_SENT = "not sent: "  # the error cell of a refused row starts so


class InputError(Exception):
    """The items or desks file cannot be used as it is; the message names the file and the fix."""


def normalise_header(header: str) -> str:
    """Analytics header -> comparison key: no byte-order mark, lower case, single spaces for _ and runs of blanks."""
    return " ".join(header.replace("\ufeff", "").replace("_", " ").split()).lower()


@dataclass
class ItemsTable:
    """The items CSV as read: original header and cells, plus where each known column is."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    columns: dict[str, int]
    encoding: str = "utf-8"
    delimiter: str = ","
    lines: list[int] = field(default_factory=list)  # line in the file where each row starts
    key: str = "item_pid"  # the column results are matched on: "barcode" for a barcode list's results
    line_end: str = "\n"  # as the file had it: "\r\n" for a file saved on Windows
    target: Path | None = None  # the file read, a symbolic link resolved when it was read: rewritten there

    def get(self, row: int, name: str) -> str:
        """The stripped cell of *row* in column *name*, or '' when the file has no such column."""
        index = self.columns.get(name)
        if index is None:
            return ""
        return self.rows[row][index].strip()

    def set(self, row: int, name: str, value: str) -> None:
        """Set a status cell of *row* (on one line: see :func:`one_line`)."""
        self.rows[row][self.columns[name]] = one_line(value)

    def line_number(self, row: int) -> int:
        """The line of *row* in the file as a person counts (header is line 1)."""
        return self.lines[row] if self.lines else row + 2

    def is_done(self, row: int) -> bool:
        """Whether *row* is marked done (True/yes/1)."""
        return self.get(row, "done").lower() in TRUE_WORDS


@dataclass(frozen=True)
class Desk:
    """One circulation desk: where to scan in."""

    library: str | None
    circ_desk: str


@dataclass
class DeskMap:
    """location code (optionally per library) -> circulation desk."""

    by_library: dict[tuple[str, str], Desk] = field(default_factory=dict)
    by_location: dict[str, Desk] = field(default_factory=dict)

    def lookup(self, library: str, location: str) -> Desk | None:
        """The desk for *location* in *library*: a library-specific row wins over a general one."""
        return self.by_library.get((library, location)) or self.by_location.get(location)


@dataclass(frozen=True)
class ScanRequest:
    """One scan-in to send."""

    row: int
    mms_id: str
    holding_id: str
    item_pid: str
    library: str
    circ_desk: str
    barcode: str = ""
    known_not_on_loan: bool = False


@dataclass(frozen=True)
class RowProblem:
    """A row that will not be sent, and why (``reason`` groups rows with the same fix).

    ``reported``: an earlier run already wrote this reason into the row's error column, so a
    person has been told (it does not make this run's exit status 1).
    """

    line: int
    item_pid: str
    reason: str
    reported: bool = False


@dataclass
class Plan:
    """What a run will do: the scan-ins to send, the rows refused, the rows already done."""

    requests: list[ScanRequest]
    problems: list[RowProblem]
    already_done: int
    total_rows: int
    not_selected: int = 0

    @property
    def new_problems(self) -> list[RowProblem]:
        """Rows refused that no earlier run reported."""
        return [problem for problem in self.problems if not problem.reported]

    def counts_by_desk(self) -> Counter[tuple[str, str]]:
        """Number of scan-ins per (library, circ_desk)."""
        return Counter((r.library, r.circ_desk) for r in self.requests)


def one_line(value: str) -> str:
    """*value* with its line breaks as spaces: a status cell (an error message from Alma, say) never
    spans lines, so the file stays one row a line, as reading it again requires."""
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _decode(path: Path, what: str, *, where: str = "in the configuration",
            save_as: str = "export it from Analytics as CSV (UTF-8)") -> tuple[str, str]:
    """Read *path* as text, detecting UTF-16 and UTF-8 byte-order marks."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found: check the path {where}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what} {path} is not UTF-8 or UTF-16 text (byte {exc.start}): {save_as}"
        ) from exc


def _read_rows(
    path: Path, what: str, *, refuse_extra_cells: bool = False
) -> tuple[list[str], list[list[str]], list[int], str, str, str]:
    """Header, non-blank rows, the file line where each row starts, encoding, delimiter, line end."""
    text, encoding = _decode(path, what)
    first_line = text.split("\n", 1)[0]
    line_end = "\r\n" if first_line.endswith("\r") else "\n"
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    # strict: a quote that is never closed, or text after a closing quote, is an error. The default
    # reader takes every line after a stray quote as one cell: those items would be neither sent nor
    # counted. (A properly quoted cell over two lines, a note, is read as it is.)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    previous_line = 0
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(previous_line + 1)
            previous_line = reader.line_num
    except csv.Error as exc:
        raise InputError(
            f"{what} {path}, line {previous_line + 1}: a quote in this row is not closed where a cell ends "
            f"({exc}, line {reader.line_num}), so the lines after it would be read as one cell: correct the "
            "quote (or remove it) and run again; nothing was sent"
        ) from None
    if not rows:
        raise InputError(f"{what} {path} is empty: it needs a header line and at least one row")
    header = [cell.replace("\ufeff", "").strip() for cell in rows[0]]
    width = len(header)
    body = []
    for line, row in zip(lines[1:], rows[1:], strict=True):
        if refuse_extra_cells and any(cell.strip() for cell in row[width:]):
            # The file is rewritten with width columns: these cells would be lost.
            raise InputError(
                f"{what} {path}, line {line}: {len(row)} cells, but the header has {width}: "
                "give the extra column a header or remove the extra cells"
            )
        body.append((row + [""] * width)[:width] if len(row) != width else row)
    return header, body, lines[1:], encoding, delimiter, line_end


def _find_columns(header: list[str], wanted: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    normalised = {normalise_header(h): i for i, h in reversed(list(enumerate(header)))}
    columns: dict[str, int] = {}
    for name, aliases in wanted.items():
        for alias in aliases:
            if alias in normalised:
                columns[name] = normalised[alias]
                break
    return columns


def required_item_columns(location_type: str) -> tuple[str, ...]:
    """Columns the items CSV must have for *location_type*."""
    base = ("mms_id", "holding_id", "item_pid", "library_code")
    if location_type == "temp":
        return base + ("temp_location_code",)
    return base + ("location_code",)


def read_items(path: str | os.PathLike[str], location_type: str = "auto") -> ItemsTable:
    """Read the items CSV, check its columns, add the status columns if missing."""
    path = Path(path)
    header, rows, lines, encoding, delimiter, line_end = _read_rows(path, "items file", refuse_extra_cells=True)
    columns = _find_columns(header, ITEM_COLUMNS)
    missing = [name for name in required_item_columns(location_type) if name not in columns]
    if missing:
        names = ", ".join(f"'{DISPLAY_NAMES[m]}'" for m in missing)
        raise InputError(
            f"items file {path}: column {names} not found (found: {', '.join(header)}); "
            f"export the Analytics report with {'that column' if len(missing) == 1 else 'those columns'}"
            + (" or set location_type" if "temp_location_code" in missing else "")
        )
    for name in STATUS_COLUMNS:
        if name not in columns:
            columns[name] = len(header)
            header.append(name)
            for row in rows:
                row.append("")
    return ItemsTable(path, header, rows, columns, encoding, delimiter, lines, line_end=line_end,
                      target=Path(os.path.realpath(path)))


def read_desks(path: str | os.PathLike[str]) -> DeskMap:
    """Read the desks CSV (location_code, circ_desk[, library_code]) into a DeskMap."""
    path = Path(path)
    header, rows, lines, _, _, _ = _read_rows(path, "desks file")
    columns = _find_columns(header, DESK_COLUMNS)
    missing = [name for name in ("location_code", "circ_desk") if name not in columns]
    if missing:
        raise InputError(
            f"desks file {path}: column {', '.join(repr(m) for m in missing)} not found "
            f"(found: {', '.join(header)}); the file needs location_code,circ_desk[,library_code]"
        )
    desks = DeskMap()
    seen: dict[tuple[str | None, str], int] = {}
    for number, row in zip(lines, rows, strict=True):
        location = row[columns["location_code"]].strip()
        desk_code = row[columns["circ_desk"]].strip()
        library = row[columns["library_code"]].strip() if "library_code" in columns else ""
        if not location or not desk_code:
            raise InputError(
                f"desks file {path}, line {number}: empty {'location_code' if not location else 'circ_desk'}: "
                "fill it in or delete the line"
            )
        key = (library or None, location)
        desk = Desk(library or None, desk_code)
        if key in seen:
            previous = desks.by_library.get((library, location)) if library else desks.by_location.get(location)
            if previous != desk:
                where = f"location '{location}'" + (f" in library '{library}'" if library else "")
                raise InputError(
                    f"desks file {path}, line {number}: {where} is mapped twice "
                    f"(also on line {seen[key]}, to a different desk): keep one, or add a library_code column"
                )
            continue
        seen[key] = number
        if library:
            desks.by_library[(library, location)] = desk
        else:
            desks.by_location[location] = desk
    return desks


def _valid_id(value: str) -> bool:
    return value.isdigit() and value.isascii()


def _in_temp_location(table: ItemsTable, row: int) -> bool:
    if "temp_in_use" in table.columns:
        return table.get(row, "temp_in_use").lower() in TRUE_WORDS
    return bool(table.get(row, "temp_location_code"))


def build_plan(table: ItemsTable, desks: DeskMap, location_type: str, limit: int | None = None) -> Plan:
    """Decide, row by row, what to send: a desk for each pending row, or the reason it is not sent."""
    plan, _ = plan_rows(table, desks, location_type, limit, check=lambda row: _id_problem(table, row),
                        same_item="same Physical Item Id as line")
    return plan


def plan_rows(
    table: ItemsTable, desks: DeskMap, location_type: str, limit: int | None, *,
    check: Callable[[int], T | str | RowProblem | None], same_item: str,
) -> tuple[Plan, list[T]]:
    """The walk every plan makes: rows done are counted; each other row is *check*ed first (None:
    sendable; a reason or a RowProblem: refused; anything else: a job the caller does first, such
    as a barcode to look up); a sendable row is sent once per item (*same_item* names the row it
    repeats), at its desk (:func:`plan_row`). *limit* keeps the first scan-ins, then jobs."""
    requests: list[ScanRequest] = []
    problems: list[RowProblem] = []
    jobs: list[T] = []
    already_done = 0
    first_line_of_item: dict[str, int] = {}
    for row in range(len(table.rows)):
        item_pid = table.get(row, "item_pid")
        if table.is_done(row):
            already_done += 1
            first_line_of_item.setdefault(item_pid, table.line_number(row))
            continue
        checked = check(row)
        if item_pid in first_line_of_item and checked is None:
            checked = f"{same_item} {first_line_of_item[item_pid]}: the item is sent once"
        planned = plan_row(table, row, desks, location_type) if checked is None else checked
        if isinstance(planned, RowProblem):
            problems.append(planned)
        elif isinstance(planned, str):
            problems.append(refused(table, row, planned))
        elif isinstance(planned, ScanRequest):
            first_line_of_item[item_pid] = table.line_number(row)
            requests.append(planned)
        else:
            jobs.append(planned)
    not_selected = 0
    if limit is not None and len(requests) + len(jobs) > limit:
        not_selected = len(requests) + len(jobs) - limit
        requests = requests[:limit]
        jobs = jobs[:max(0, limit - len(requests))]
    return Plan(requests, problems, already_done, len(table.rows), not_selected), jobs


def refused(table: ItemsTable, row: int, reason: str) -> RowProblem:
    """*row* refused for *reason*; ``reported`` when an earlier run already wrote that reason into it."""
    reported = table.get(row, "error") == one_line(f"{NOT_SENT}{reason}").strip()  # as set() wrote it
    return RowProblem(table.line_number(row), table.get(row, "item_pid"), reason, reported)


def plan_row(table: ItemsTable, row: int, desks: DeskMap, location_type: str) -> ScanRequest | str:
    """The scan-in for a row with valid ids: its desk from its (temporary or permanent) location;
    or why it cannot be sent."""
    use_temp = location_type == "temp" or (location_type == "auto" and _in_temp_location(table, row))
    if use_temp:
        location = table.get(row, "temp_location_code")
        library = table.get(row, "temp_library_code") or table.get(row, "library_code")
        if not location:
            return "empty Temporary Location Code (location_type is temp)"
    else:
        location = table.get(row, "location_code")
        library = table.get(row, "library_code")
        if not location:
            return "empty Location Code"
    desk = desks.lookup(library, location)
    if desk is None:
        return f"no circulation desk mapped for location '{location}' in library '{library}'"
    scan_library = desk.library or library
    if not scan_library:
        return "empty Library Code and no library_code for its desk"
    process_type = table.get(row, "process_type").lower()
    return ScanRequest(
        row=row,
        mms_id=table.get(row, "mms_id"),
        holding_id=table.get(row, "holding_id"),
        item_pid=table.get(row, "item_pid"),
        library=scan_library,
        circ_desk=desk.circ_desk,
        barcode=table.get(row, "barcode"),
        known_not_on_loan="process_type" in table.columns and process_type not in ("loan", ""),
    )


def _id_problem(table: ItemsTable, row: int) -> str | None:
    for name, label in (("mms_id", "MMS Id"), ("holding_id", "Holding Id"), ("item_pid", "Physical Item Id")):
        value = table.get(row, name)
        if not value:
            return f"missing {label}"
        if not _valid_id(value):
            return f"{label} '{value}' is not an Alma id (digits only): export the report without number formatting"
    return None


def mark_problems(table: ItemsTable, plan: Plan) -> None:
    """Write each refused row's reason into its error column, so the file says why it was not sent."""
    row_of_line = {table.line_number(row): row for row in range(len(table.rows))}
    for problem in plan.problems:
        row = row_of_line[problem.line]
        table.set(row, "done", "False")
        table.set(row, "error", f"{NOT_SENT}{problem.reason}")


def items_fingerprint(table: ItemsTable) -> str:
    """A short hash of the item ids listed in *table*: journal entries carry it, so the results of
    one items list are never merged into another (a new export saved over the old file)."""
    keys = sorted(table.get(row, table.key) for row in range(len(table.rows)))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def apply_results(table: ItemsTable, results: Iterable[Mapping[str, object]]) -> int:
    """Write journal/result entries (item_pid or barcode, done, outcome, error, attempts) into the
    table, matched on its ``key`` column; return rows that changed. Lookup entries are not results."""
    rows_of_item: dict[str, list[int]] = {}
    for row in range(len(table.rows)):
        rows_of_item.setdefault(table.get(row, table.key), []).append(row)
    changed = 0
    for entry in results:
        if entry.get("kind") == "lookup":
            continue
        for row in rows_of_item.get(str(entry.get(table.key) or ""), []) if entry.get(table.key) else []:
            if table.is_done(row) and not entry.get("done"):
                continue  # a later failure never undoes a recorded return
            values = {
                "done": "True" if entry.get("done") else "False",
                "outcome": one_line(str(entry.get("outcome") or "")),
                "error": one_line(str(entry.get("error") or "")),
                "attempts": str(entry.get("attempts") or ""),
            }
            if any(table.get(row, name) != value for name, value in values.items()):
                for name, value in values.items():
                    table.set(row, name, value)
                changed += 1
            break  # duplicates of an item stay as they are: only the first row was sent
    return changed


def write_items_atomic(table: ItemsTable) -> None:
    """Rewrite the items file: temporary file in the same directory, fsync, rename over the original
    (over the file a symbolic link named when the table was read, not over the link: the link
    stays, and the file it named, which the run's lock is beside, gets the results, even if the link
    has been pointed elsewhere since)."""
    path = table.target or Path(os.path.realpath(table.path))
    encoding = "utf-16" if table.encoding == "utf-16" else table.encoding
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as handle:
            writer = csv.writer(handle, delimiter=table.delimiter, lineterminator=table.line_end)
            writer.writerow(table.header)
            writer.writerows(table.rows)
            handle.flush()
            os.fchmod(handle.fileno(), _mode_of(path))  # mkstemp makes it 0600
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _mode_of(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o644


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def format_plan(plan: Plan, items_path: Path, desks_path: Path, max_lines: int = 10, to_look_up: int = 0) -> str:
    """The plan as a person reads it: counts per library and desk, then every problem grouped by fix."""
    out = [
        f"{'results' if to_look_up else 'items'} file {items_path}: {plan.total_rows} rows, {plan.already_done} already "
        f"done, {len(plan.requests)} to send" + (f" (and {to_look_up} to look up first)" if to_look_up else "")
        + f", {len(plan.problems)} not sent"
        + (f", {plan.not_selected} left for a later run (--limit)" if plan.not_selected else "")
    ]
    counts = plan.counts_by_desk()
    if counts:
        out.append("scan-ins per library / circulation desk:")
        for (library, desk), count in sorted(counts.items()):
            out.append(f"  {library:<12} {desk:<20} {count}")
    groups: dict[str, list[RowProblem]] = {}
    for problem in plan.problems:
        groups.setdefault(problem.reason, []).append(problem)
    if groups:
        out.append("rows that will not be sent:")
        for reason, problems in groups.items():
            hint = f": add it to {desks_path}" if reason.startswith("no circulation desk") else ""
            lines = ", ".join(str(p.line) for p in problems[:max_lines])
            more = f" and {len(problems) - max_lines} more" if len(problems) > max_lines else ""
            out.append(f"  {reason} ({len(problems)} item{'s' if len(problems) != 1 else ''}){hint}; lines {lines}{more}")
    return "\n".join(out)

