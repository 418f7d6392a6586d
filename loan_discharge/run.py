"""The discharge engine: rate-limited concurrent scan-ins, the journal, per-batch saves.

``run_discharge`` only does I/O: it enters the limiter, sends, sleeps, and hands each completed
item and batch to a callback; what an answer means (done, failed, retry, stop the run) is decided
by the plain functions of :mod:`loan_discharge.decisions`, and the counting by :class:`RunSummary`
and :class:`Batches`. It takes everything it uses as arguments (the Alma client, the rate limiter,
the callbacks, the sleep function and random source), so tests drive it against the simulator with
fast clocks. ``discharge`` wires it to the files under ``data_dir``. The client, its exceptions and
the limiter are the shared ones (package ``alma``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

import alma
from alma import AlmaClient, AlmaError, AlmaRateLimited, AlmaResponse, ItemIds, SlidingWindowLimiter
from loan_discharge.barcodes import (
    Lookup,
    columns_of_item,
    fill_row,
    not_on_loan_outcome,
    resolved_plan,
)
from loan_discharge.config import DischargeConfig
from loan_discharge.decisions import (
    ERROR,
    Next,
    RetryPolicy,
    Tries,
    Verdict,
    judge,
    judge_lookup,
    when_stopped,
)
from loan_discharge.items import (
    NOT_SENT,
    DeskMap,
    ItemsTable,
    ScanRequest,
    apply_results,
    items_fingerprint,
    write_items_atomic,
)

__all__ = [
    "JOURNAL",
    "Batches",
    "RetryPolicy",
    "ItemResult",
    "RunSummary",
    "Journal",
    "read_journal",
    "run_discharge",
    "discharge",
    "discharge_from_config",
    "new_run_id",
    "results_path",
]

Sleep = Callable[[float], Awaitable[None]]
log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"  # in data_dir: one line per completed item of the current run


@dataclass
class ItemResult:
    """What happened to one item."""

    request: ScanRequest
    done: bool
    outcome: str
    error: str = ""
    error_code: str | None = None
    attempts: int = 0
    responses: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, request: ScanRequest, verdict: Verdict, attempts: int, responses: list[dict[str, Any]]) -> ItemResult:
        """The result an item's final verdict records."""
        return cls(request, verdict.done, verdict.outcome, verdict.error, verdict.error_code, attempts, responses)

    @property
    def failed(self) -> bool:
        """Tried and failed (the outcome "error"), as opposed to done or left pending."""
        return not self.done and self.outcome == ERROR and bool(self.error_code)

    def journal_entry(self) -> dict[str, Any]:
        """The line journalled for this item."""
        return {
            "item_pid": self.request.item_pid,
            "barcode": self.request.barcode,
            "done": self.done,
            "outcome": self.outcome,
            "error": self.error,
            "attempts": self.attempts,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@dataclass
class RunSummary:
    """Totals of one run."""

    planned: int = 0
    done: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    rate_limited: int = 0
    not_processed: int = 0
    elapsed: float = 0.0
    stop_reason: str | None = None

    def record(self, result: ItemResult | None) -> None:
        """Count an item's result (None: never sent, left for the next run)."""
        if result is not None and result.done:
            self.done += 1
            self.outcomes[result.outcome] += 1
        elif result is not None and result.failed:
            self.failed[str(result.error_code)] += 1
        else:
            self.not_processed += 1

    @property
    def failed_total(self) -> int:
        """Items that were tried and failed."""
        return sum(self.failed.values())

    @property
    def request_rate(self) -> float:
        """Requests started per second over the run."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


class Journal:
    """Append-only JSON lines, one per completed item.

    Each line is one ``os.write`` on an O_APPEND descriptor: once it returns, the line is in the
    operating system's hands and survives ``kill -9`` of this process. ``sync()`` (after every
    batch) fsyncs it against power loss; an item lost that way is only sent again, which is harmless.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # A torn last line (a write cut short) would otherwise swallow the first new entry.
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry as a line."""
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def sync(self) -> None:
        """Flush the journal to disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's entries; a torn last line (process killed mid-write) is ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "item_pid" in entry:
            entries.append(entry)
    return entries


_issued_run_ids: set[str] = set()  # by this process, whose runs all share one pid


def new_run_id(data_dir: Path, now: float | None = None) -> str:
    """A name for a run's files that no file in *data_dir* and no other run of this process uses.

    UTC start time and pid: the pid tells apart runs of different processes started in the same
    second; a name already taken gets a suffix (.2, .3, ...).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    run_id = base = f"{stamp}-{os.getpid()}"
    suffix = 1
    while run_id in _issued_run_ids or any(data_dir.glob(f"*-{run_id}[.-]*")):
        suffix += 1
        run_id = f"{base}.{suffix}"
    _issued_run_ids.add(run_id)
    return run_id


def results_path(data_dir: Path, run_id: str, batch: int | str) -> Path:
    """Where the raw answers of one batch of one run go: results-<run id>-batch-<n>.json."""
    return data_dir / f"results-{run_id}-batch-{batch}.json"


def _raw(answer: AlmaError | AlmaResponse) -> dict[str, Any]:
    body = answer.response if isinstance(answer, AlmaError) else answer.body
    return {"url": answer.url, "status": answer.status, "response": body}


class Batches:
    """Which batch each item of a run belongs to, and when a batch is complete (every item finished)."""

    def __init__(self, items: int, size: int) -> None:
        self.size = size
        self._left = Counter(index // size for index in range(items))
        self._results: dict[int, list[ItemResult]] = {}

    def add(self, index: int, result: ItemResult | None) -> tuple[int, list[ItemResult]] | None:
        """Record the result of item *index* (None: never sent); the batch (number from 0, results)
        if this completed it and it has results to save."""
        batch = index // self.size
        if result is not None:
            self._results.setdefault(batch, []).append(result)
        self._left[batch] -= 1
        if self._left[batch] == 0 and batch in self._results:
            return batch, self._results.pop(batch)
        return None

    def cut_short(self) -> list[tuple[int, list[ItemResult]]]:
        """The batches with results that never completed (the run stopped or failed), in order; forgotten."""
        left = sorted(self._results.items())
        self._results.clear()
        return left


async def run_discharge(
    requests: Sequence[ScanRequest],
    *,
    client: AlmaClient,
    limiter: Any,
    concurrency: int,
    batch_size: int,
    on_item: Callable[[ItemResult], None],
    on_batch: Callable[[int, list[ItemResult]], None],
    daily_quota_floor: int = 0,
    retry: RetryPolicy | None = None,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    lookups: Sequence[Lookup] = (),
    on_found: Callable[[Lookup, dict[str, Any]], ScanRequest | Verdict] | None = None,
) -> RunSummary:
    """Scan in every request; call *on_item* as each completes and *on_batch* as each batch completes.

    *limiter* is an async context manager entered before every request (one request start each).
    Stops starting new items when :func:`~loan_discharge.decisions.judge` says so (DAILY_THRESHOLD,
    a refused key, a redirect, X-Exl-Api-Remaining below *daily_quota_floor*, an Alma that cannot be
    reached); items in flight finish and are saved.

    *lookups* are barcodes to resolve first, each through the same limiter: Retrieve Item by
    Barcode (a 302), then the item's URL; *on_found* says what the item found leads to (its
    scan-in, sent at once by the same worker, or a final verdict). The workers take the requests
    and then the lookups, so lookups and scan-ins overlap and the limiter stays busy.
    """
    policy = retry or RetryPolicy()
    rng = rng or random.Random()
    jobs: list[ScanRequest | Lookup] = [*requests, *lookups]
    summary = RunSummary(planned=len(jobs))
    stop = asyncio.Event()
    batches = Batches(len(jobs), batch_size)
    next_index = 0

    def request_stop(reason: str) -> None:
        if not stop.is_set():  # the first reason is the one reported
            summary.stop_reason = reason
            stop.set()

    async def resolve(lookup: Lookup) -> ItemResult | None:
        """Find the item of *lookup*'s barcode (two calls), then do what *on_found* says."""
        placeholder = ScanRequest(lookup.row, "", "", "", "", "", barcode=lookup.barcode)
        tries = Tries()
        responses: list[dict[str, Any]] = []
        ids: ItemIds | None = None
        while True:
            if stop.is_set():
                return None  # a GET changed nothing: the barcode stays to be looked up
            async with limiter:
                if stop.is_set():
                    continue
                tries = tries.started()
                summary.requests += 1
            answer: AlmaResponse | AlmaError | ItemIds
            try:
                answer = await (client.get_item(ids) if ids is not None else client.item_by_barcode(lookup.barcode))
            except AlmaError as exc:
                answer = exc
            if isinstance(answer, ItemIds):  # the 302: the second call goes through the limiter too
                responses.append({"url": f"items?item_barcode={lookup.barcode}", "status": 302,
                                  "response": f"bibs/{answer.mms_id}/holdings/{answer.holding_id}/items/{answer.item_pid}"})
                ids, tries = answer, Tries()
                continue
            responses.append(_raw(answer))
            if isinstance(answer, AlmaResponse):
                if on_found is None:
                    raise TypeError("lookups need on_found")
                found = on_found(lookup, answer.body)
                if isinstance(found, ScanRequest):
                    return await send(found, responses)
                return ItemResult.of(replace(placeholder, item_pid=ids.item_pid if ids else ""), found,
                                     tries.sent, responses)
            tries = tries.after(answer)
            summary.rate_limited += isinstance(answer, AlmaRateLimited)
            verdict = judge_lookup(answer, tries, policy, quota_floor=daily_quota_floor)
            if verdict.stop:
                request_stop(verdict.stop)
            if verdict.next is Next.RETRY:
                await sleep(policy.delay(verdict.backoff, rng))
                continue
            if verdict.next is Next.PENDING:
                return None
            return ItemResult.of(placeholder, verdict, tries.sent, responses)

    async def send(request: ScanRequest, earlier: list[dict[str, Any]] | None = None) -> ItemResult | None:
        tries = Tries()
        responses: list[dict[str, Any]] = list(earlier or [])
        while True:
            if stop.is_set():
                verdict = when_stopped(tries, summary.stop_reason)
                return None if verdict is None else ItemResult.of(request, verdict, tries.sent, responses)
            async with limiter:
                if stop.is_set():
                    continue  # the run stopped while this item waited for its start: not sent
                tries = tries.started()
                summary.requests += 1
            answer: AlmaResponse | AlmaError
            try:
                answer = await client.scan_in(
                    request.mms_id, request.holding_id, request.item_pid,
                    library=request.library, circ_desk=request.circ_desk,
                )
            except AlmaError as exc:
                answer = exc
            responses.append(_raw(answer))
            tries = tries.after(answer)
            summary.rate_limited += isinstance(answer, AlmaRateLimited)
            verdict = judge(answer, tries, policy, known_not_on_loan=request.known_not_on_loan,
                            quota_floor=daily_quota_floor)
            if verdict.stop:
                request_stop(verdict.stop)
            if verdict.next is not Next.RETRY:
                return ItemResult.of(request, verdict, tries.sent, responses)
            await sleep(policy.delay(verdict.backoff, rng))

    def finish(index: int, result: ItemResult | None) -> None:
        summary.record(result)
        if result is not None:
            on_item(result)
        completed = batches.add(index, result)
        if completed is not None:
            on_batch(*completed)

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(jobs):
            index = next_index
            next_index += 1
            job = jobs[index]
            if stop.is_set():
                result = None
            elif isinstance(job, Lookup):
                result = await resolve(job)
            else:
                result = await send(job)
            finish(index, result)

    started = clock()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(jobs))))))
    finally:
        summary.elapsed = clock() - started
        for batch, results in batches.cut_short():  # batches cut short by an error or a stop
            on_batch(batch, results)
    return summary


def by_count(counter: Counter[Any]) -> list[tuple[Any, int]]:
    """Counter items, largest first, ties by name: the same order whatever order items completed in."""
    return sorted(counter.items(), key=lambda pair: (-pair[1], str(pair[0])))


def _batch_snippet(number: int, results: Iterable[ItemResult]) -> str:
    results = list(results)
    outcomes = Counter(r.outcome for r in results if r.done)
    failures = Counter(r.error_code for r in results if r.failed)
    parts = [f"{count} {outcome}" for outcome, count in by_count(outcomes)]
    if failures:
        parts.append("failed: " + ", ".join(f"{code} x{count}" for code, count in by_count(failures)))
    return f"batch {number}: {len(results)} items: " + ("; ".join(parts) or "nothing finished")


async def discharge(
    requests: Sequence[ScanRequest],
    table: ItemsTable,
    *,
    client: AlmaClient,
    limiter: Any,
    data_dir: Path,
    concurrency: int,
    batch_size: int,
    daily_quota_floor: int = 0,
    retry: RetryPolicy | None = None,
    echo: Callable[[str], None] | None = None,
    on_item: Callable[[ItemResult], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    run_id: str | None = None,
    lookups: Sequence[Lookup] = (),
    desks: DeskMap | None = None,
    location_type: str = "auto",
) -> RunSummary:
    """Run the scan-ins, journalling each item to data_dir/JOURNAL and rewriting the items file per batch.

    The raw answers of batch N go to ``results_path(data_dir, run_id, N)``, a new file: a file of
    that name is never overwritten (the run fails loudly instead). Each batch is reported in one
    line, to *echo* if given, else logged. *lookups* (a barcode list's results table): each item
    found is journalled at once with its ids and locations, so a resumed run does not look it up
    again, then mapped to its desk (*desks*, *location_type*) and scanned in.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id(data_dir)
    journal = Journal(data_dir / JOURNAL)
    items = items_fingerprint(table)

    looked_up = 0

    def found(lookup: Lookup, item: dict[str, Any]) -> ScanRequest | Verdict:
        nonlocal looked_up
        looked_up += 1
        columns = columns_of_item(item)
        fill_row(table, lookup.row, columns)
        journal.append({"kind": "lookup", "barcode": lookup.barcode, "item_pid": columns["item_pid"],
                        "columns": columns, "items": items})
        planned = resolved_plan(table, lookup.row, desks or DeskMap(), location_type)
        if planned is None:
            return Verdict(Next.DONE, not_on_loan_outcome(table, lookup.row))
        if isinstance(planned, str):
            return Verdict(Next.FAILED, ERROR, f"{NOT_SENT}{planned}", "NOT_SENT")
        return planned

    def item_done(result: ItemResult) -> None:
        journal.append({**result.journal_entry(), "items": items})
        if on_item is not None:
            on_item(result)

    def batch_done(batch: int, results: list[ItemResult]) -> None:
        number = batch + 1
        raw = [dict(item_pid=r.request.item_pid, attempt=i + 1, **resp) for r in results for i, resp in enumerate(r.responses)]
        with open(results_path(data_dir, run_id, number), "x", encoding="utf-8") as handle:
            handle.write(json.dumps(raw, indent=1))
        apply_results(table, (r.journal_entry() for r in results))
        write_items_atomic(table)
        journal.sync()
        snippet = _batch_snippet(number, results)
        if echo is not None:
            echo(snippet)
        else:
            log.info("%s", snippet, extra={"event": "batch", "batch": number, "items": len(results)})

    try:
        return await run_discharge(
            requests,
            client=client,
            limiter=limiter,
            concurrency=concurrency,
            batch_size=batch_size,
            on_item=item_done,
            on_batch=batch_done,
            daily_quota_floor=daily_quota_floor,
            retry=retry,
            sleep=sleep,
            lookups=lookups,
            on_found=found,
        )
    finally:
        if looked_up:  # items found but not scanned (the run stopped) keep their ids in the file
            write_items_atomic(table)
        journal.close()


async def discharge_from_config(
    config: DischargeConfig,
    table: ItemsTable,
    requests: Sequence[ScanRequest],
    *,
    run_id: str,
    on_item: Callable[[ItemResult], None] | None = None,
    lookups: Sequence[Lookup] = (),
    desks: DeskMap | None = None,
) -> RunSummary:
    """``discharge`` with the client, limiter and limits of *config*, over a session of its own."""
    connector = aiohttp.TCPConnector(limit=config.concurrency)
    async with alma.session(connector=connector) as session:  # every request, re-sends too, through the limiter
        client = AlmaClient(config.base_url, config.apikey or "", session, timeout=config.request_timeout)
        return await discharge(
            requests,
            table,
            client=client,
            limiter=SlidingWindowLimiter(config.rate_limit),
            data_dir=config.data_dir,
            concurrency=config.concurrency,
            batch_size=config.batch_size,
            daily_quota_floor=config.daily_quota_floor,
            retry=RetryPolicy(max_attempts=config.max_attempts),
            on_item=on_item,
            run_id=run_id,
            lookups=lookups,
            desks=desks,
            location_type=config.location_type,
        )
