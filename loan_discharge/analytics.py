"""Discharge straight from the Analytics report: fetch every page, check the columns, save it as CSV.

The report's column headings are the CSV export's headers, so the fetched rows are written as the
CSV a person would have exported (ids as text, an absent cell empty) into ``data_dir/analytics/``,
and the run goes on exactly as a CSV run over that file: same plan, journal, resume. A report
that cannot be used (no such path, a key without Analytics permission, columns missing) is
refused before any scan-in, with what to fix.

Paging (alma-items-and-analytics.md §2): the first call names the path; the answer's resumption
token (only the first answer has one) is sent on every later call until ``IsFinished``. "Still
loading" answers (not finished, no rows) are waited out. The server keeps the cursor, so a page
lost to a timeout or a 5xx cannot be asked for again: the report is read again from the start.
"""

from __future__ import annotations

import asyncio
import calendar
import csv
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

import alma
from alma import (
    AlmaClient,
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNoMoreRows,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaReportNotFound,
    AlmaServerError,
    AlmaUnauthorized,
    SlidingWindowLimiter,
)
from loan_discharge.config import DischargeConfig
from loan_discharge.items import (
    DISPLAY_NAMES,
    ITEM_COLUMNS,
    NOT_SENT,
    STATUS_COLUMNS,
    InputError,
    _find_columns,
    normalise_header,
    read_items,
    required_item_columns,
)
from loan_discharge.resume import journal_path

__all__ = ["ReportError", "fetch_report", "fetch_from_config", "report_copy", "report_session", "report_table",
           "saved_reports", "save_report", "report_lock_path", "carry_over"]

PAGE_ROWS = 1000  # the most Alma gives per answer
STILL_LOADING_WAIT = 2.0  # seconds between calls while Analytics says the report is still loading
STILL_LOADING_LIMIT = 300.0  # then give up
RESTARTS = 3  # times the report is read again from the start after a lost page
RECENTLY = 24 * 3600.0  # Analytics refreshes once a day: items returned this recently are listed still

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


def report_session() -> aiohttp.ClientSession:
    """A session for reading a report: aiohttp's own re-send of a GET whose connection dropped is
    off (:func:`alma.session`): Analytics keeps the cursor on the server, so if the lost answer was
    served, that re-send would get the next page and one page would be skipped without a sign. The
    drop reaches :func:`fetch_report`, which reads the report again from the start."""
    return alma.session()


class ReportError(Exception):
    """The report cannot be used; nothing was sent to scan-in. The message says what to fix."""


async def fetch_report(
    client: AlmaClient,
    limiter: Any,
    path: str,
    *,
    limit: int = PAGE_ROWS,
    sleep: Sleep = asyncio.sleep,
) -> tuple[list[str], list[list[str]]]:
    """Every row of the report at *path*: (column headings, rows of cells), each call through *limiter*."""
    restarts = 0
    rate_limited = 0
    while True:
        token: str | None = None
        headings: dict[str, str] | None = None
        tables: dict[str, str] = {}
        rows: list[dict[str, str]] = []
        waited = 0.0
        try:
            while True:
                async with limiter:
                    pass
                try:
                    page = await client.analytics_report(path=path, token=token, limit=limit)
                except AlmaRateLimited:  # the gateway refused the call: the cursor did not move
                    rate_limited += 1
                    if rate_limited > 12:
                        raise
                    await sleep(min(30.0, 0.5 * 2 ** rate_limited))
                    continue
                except AlmaNoMoreRows:
                    if token is None:
                        raise
                    break  # the last answer said "not finished" after all: there is nothing more
                token = token or page.token
                if headings is None and page.headings:
                    headings, tables = page.headings, page.tables or {}
                rows.extend(page.rows)
                if page.finished:
                    break
                if token is None and page.rows:
                    raise ReportError(f"Analytics report {path}: Alma's answer says the report is not finished but "
                                      "gave no resumption token to ask for the rest; try again later")
                if not page.rows:  # still loading (without a token yet: the path is asked again)
                    if waited >= STILL_LOADING_LIMIT:
                        raise ReportError(f"Analytics report {path} was still loading after {waited:.0f} s: "
                                          "try again later (or check in Analytics that it runs)")
                    await sleep(STILL_LOADING_WAIT)
                    waited += STILL_LOADING_WAIT
        except (AlmaNoAnswer, AlmaServerError) as exc:
            restarts += 1
            if restarts > RESTARTS:
                raise ReportError(f"Analytics report {path}: a page was lost {restarts} times ({exc.code}: "
                                  f"{exc.message}); try again later") from exc
            await sleep(min(30.0, 2.0 * restarts))
            continue
        except AlmaReportNotFound as exc:
            raise ReportError(
                f"Analytics has no report at {path!r} (Alma: {exc.message}): check the path; it is the report's "
                "catalog path as Analytics shows it, e.g. /shared/<Your Institution>/Reports/<report name>"
            ) from exc
        except AlmaUnauthorized as exc:
            if not exc.key_refused:  # base_url is not Alma's API: the message says so and what to set
                raise ReportError(f"Analytics report {path}: {exc.message}") from exc
            raise ReportError(
                f"Alma refused the API key for Analytics ({exc.code}: {exc.message}): the key needs read "
                "permission for the Analytics API; many institutions use a separate key for it: set "
                "analytics_apikey (or ALMA_ANALYTICS_API_KEY)"
            ) from exc
        except AlmaDailyQuotaExceeded as exc:
            raise ReportError(f"Alma's daily API quota is used up ({exc.code}); run again after midnight GMT") from exc
        except AlmaNotSent as exc:
            raise ReportError(f"cannot reach Alma ({exc.code}: {exc.message}); check base_url and the network") from exc
        except AlmaError as exc:
            raise ReportError(f"Analytics report {path}: Alma answered {exc.code}: {exc.message}") from exc
        return _table(path, headings, tables, rows)


def _table(path: str, headings: dict[str, str] | None, tables: dict[str, str],
           rows: list[dict[str, str]]) -> tuple[list[str], list[list[str]]]:
    if not headings:
        if not rows:
            return [], []
        raise ReportError(f"Analytics report {path}: the answers carried no column headings, so its columns "
                          "cannot be told apart")
    columns = sorted(headings, key=lambda name: int(re.sub(r"\D", "", name) or 0))
    needed = {alias for aliases in ITEM_COLUMNS.values() for alias in aliases}
    seen: dict[str, str] = {}
    for column in columns:
        key = normalise_header(headings[column])
        if key in seen and key in needed:
            where = " and ".join(repr(tables.get(c, "") or "?") for c in (seen[key], column))
            raise ReportError(
                f"Analytics report {path} has the column {headings[column]!r} twice (under {where}): which one the "
                "discharge should use cannot be told; remove the other from the report in Analytics. Nothing was sent"
            )
        seen.setdefault(key, column)
    return [headings[c] for c in columns], [[row.get(c, "") for c in columns] for row in rows]


def report_table(path: str, header: list[str], location_type: str) -> None:
    """Refuse a report whose columns lack what a discharge needs (ReportError names them)."""
    found = _find_columns(header, ITEM_COLUMNS)
    missing = [DISPLAY_NAMES[name] for name in required_item_columns(location_type) if name not in found]
    if missing:
        raise ReportError(
            f"Analytics report {path} has no column {', '.join(repr(m) for m in missing)} (it has: "
            f"{', '.join(header) or 'no columns'}): add {'it' if len(missing) == 1 else 'them'} to the report "
            "in Analytics; nothing was sent"
        )


def _slug(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.rstrip("/").rsplit("/", 1)[-1]).strip("_") or "report"
    return f"{name[:60]}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def report_lock_path(data_dir: Path, path: str) -> Path:
    """The name runs over the report at *path* lock on (its saved copies are beside it)."""
    return data_dir / "analytics" / f"{_slug(path)}.csv"


def saved_reports(data_dir: Path, path: str) -> list[Path]:
    """The copies of the report at *path* saved by earlier runs, oldest first."""
    folder = data_dir / "analytics"
    if not folder.is_dir():
        return []

    def order(copy: Path) -> tuple[str, int]:  # ….csv, then ….2.csv, ….3.csv fetched in the same second
        match = re.search(r"-fetched-(\w+?)(?:\.(\d+))?\.csv$", copy.name)
        return (match.group(1), int(match.group(2) or 1)) if match else (copy.name, 0)

    return sorted(folder.glob(f"{_slug(path)}-fetched-*.csv"), key=order)


def save_report(data_dir: Path, path: str, header: list[str], rows: list[list[str]], now: float | None = None) -> Path:
    """Write the fetched rows as CSV into ``data_dir/analytics/`` (a new file each fetch, written
    whole or not at all); its path."""
    folder = data_dir / "analytics"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_slug(path)}-fetched-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}.csv"
    suffix = 1
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.stem.split('.')[0]}.{suffix}.csv")
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


async def fetch_from_config(config: DischargeConfig, path: str) -> tuple[list[str], list[list[str]]]:
    """:func:`fetch_report` with the base URL, key, timeout and rate limit of *config*."""
    async with report_session() as session:
        key = config.analytics_apikey or config.apikey or ""
        client = AlmaClient(config.base_url, key, session, timeout=config.request_timeout)
        return await fetch_report(client, SlidingWindowLimiter(config.rate_limit), path)


def report_copy(
    config: DischargeConfig, path: str, run: Callable[[Coroutine[Any, Any, Any]], Any],
) -> tuple[Path, int | None]:
    """The copy of the report at *path* this run works on, and how many rows were fetched for it.

    After a run that was interrupted (its journal is in data_dir), the copy that run fetched, and
    None: fetching again would list the same loans minus those returned, and that run's results
    belong to its copy. Otherwise the report is fetched (*run* runs the coroutine: the command's
    SIGTERM-aware event loop), checked (ReportError) and saved as a new copy. The run's locks must
    be held."""
    copies = saved_reports(config.data_dir, path)
    if copies and journal_path(config).exists():
        return copies[-1], None
    header, rows = run(fetch_from_config(config, path))
    report_table(path, header, config.location_type)
    now = time.time()
    header, rows = carry_over(copies, header, rows, config.location_type, now)
    return save_report(config.data_dir, path, header, rows, now), len(rows)


def _fetched_at(copy: Path) -> float | None:
    """When a copy was fetched, from its name (``…-fetched-20261201T230524Z.csv``)."""
    match = re.search(r"-fetched-(\d{8}T\d{6}Z)", copy.name)
    if not match:
        return None
    return calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ"))


def carry_over(
    copies: list[Path], header: list[str], rows: list[list[str]], location_type: str, now: float,
) -> tuple[list[str], list[list[str]]]:
    """The fetched rows with the status columns, filled from earlier copies where they still hold.

    Analytics serves yesterday's data (it is refreshed once a day), so a report fetched again
    within :data:`RECENTLY` of a run that returned an item still lists it: such an item is marked
    done as that run recorded it, not sent again. A row the latest copy refused (``not sent: …``)
    and that comes back unchanged keeps that error, so it counts as reported, not new.
    """
    done: dict[str, list[str]] = {}
    refused: dict[tuple[str, ...], str] = {}
    for number, copy in enumerate(copies):
        fetched = _fetched_at(copy)
        latest = number == len(copies) - 1
        if not latest and (fetched is None or now - fetched > RECENTLY):
            continue
        try:
            table = read_items(copy, location_type)
        except InputError:
            continue  # a copy a person edited beyond reading: it carries nothing over
        width = len([h for h in table.header if normalise_header(h) not in STATUS_COLUMNS])
        for row in range(len(table.rows)):
            cells = table.rows[row]
            if table.is_done(row) and fetched is not None and now - fetched <= RECENTLY:
                done[table.get(row, "item_pid")] = [table.get(row, name) for name in STATUS_COLUMNS]
            elif latest and table.get(row, "error").startswith(NOT_SENT):
                refused[tuple(cell.strip() for cell in cells[:width])] = table.get(row, "error")
    pid = _find_columns(header, ITEM_COLUMNS).get("item_pid")
    out = []
    for fetched_row in rows:
        status = ["", "", "", ""]
        item = fetched_row[pid].strip() if pid is not None else ""
        key = tuple(cell.strip() for cell in fetched_row)
        if item and item in done:
            status = list(done[item])
            status[1] = status[1] if "earlier run" in status[1] else f"{status[1]} (by an earlier run)"
        elif key in refused:
            status = ["False", "", refused[key], ""]
        out.append(fetched_row + status)
    return header + list(STATUS_COLUMNS), out
