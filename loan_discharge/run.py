"""The discharge engine: rate-limited concurrent scan-ins, retries, journal, per-batch saves.

``run_discharge`` takes everything it uses as arguments (the Alma client, the rate limiter, the
journal, a per-batch callback, the sleep function and random source), so tests drive it against
the simulator with fast clocks. ``discharge`` wires it to the files under ``data_dir``. The client,
its exceptions and the limiter are the shared ones (package ``alma``); the retry policy for
scan-ins is this module's: a POST that got no answer may have been applied.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alma import (
    AlmaClient,
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaRedirected,
    AlmaResponse,
    AlmaServerError,
    AlmaUnauthorized,
)
from loan_discharge.items import (
    ItemsTable,
    ScanRequest,
    apply_results,
    items_fingerprint,
    write_items_atomic,
)
from loan_discharge.outcomes import (
    OUTCOME_NOT_ON_LOAN,
    OUTCOME_RETURNED,
    OUTCOME_STILL_ON_LOAN,
    scan_outcome,
)

__all__ = [
    "JOURNAL",
    "RetryPolicy",
    "ItemResult",
    "RunSummary",
    "Journal",
    "read_journal",
    "run_discharge",
    "discharge",
    "new_run_id",
    "results_path",
]

Sleep = Callable[[float], Awaitable[None]]

JOURNAL = "journal.jsonl"  # in data_dir: one line per completed item of the current run


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again, and how long to wait (exponential backoff with full jitter)."""

    max_attempts: int = 3  # sends of one item that may have been applied (timeout, 5xx)
    max_rate_limited: int = 12  # 429s of one item before it is recorded as failed
    max_not_sent: int = 5  # connection failures before sending
    backoff_base: float = 0.5
    backoff_cap: float = 20.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the *failures*-th failure of one item."""
        return rng.uniform(0.5, 1.0) * min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))


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

    def journal_entry(self) -> dict[str, Any]:
        """The line journalled for this item."""
        return {
            "item_pid": self.request.item_pid,
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
) -> RunSummary:
    """Scan in every request; call *on_item* as each completes and *on_batch* as each batch completes.

    *limiter* is an async context manager entered before every request (one request start each).
    Stops starting new items on DAILY_THRESHOLD, an unaccepted key, X-Exl-Api-Remaining below
    *daily_quota_floor*, or an Alma that cannot be reached; items in flight finish and are saved.
    """
    retry = retry or RetryPolicy()
    rng = rng or random.Random()
    summary = RunSummary(planned=len(requests))
    stop = asyncio.Event()
    batches: dict[int, list[ItemResult]] = {}
    remaining_in_batch = Counter(i // batch_size for i in range(len(requests)))
    next_index = 0

    def request_stop(reason: str) -> None:
        if not stop.is_set():
            summary.stop_reason = reason
            stop.set()

    def check_floor(remaining: int | None) -> None:
        if remaining is not None and remaining < daily_quota_floor:
            request_stop(f"X-Exl-Api-Remaining is {remaining}, below daily_quota_floor {daily_quota_floor}")

    async def send(request: ScanRequest) -> ItemResult | None:
        attempts = uncertain = rate_limited = not_sent = 0
        responses: list[dict[str, Any]] = []

        def failed(exc: AlmaError, note: str = "") -> ItemResult:
            return ItemResult(request, False, "error", f"{exc.code}: {exc.message}{note}", exc.code, attempts, responses)

        def answered(exc: AlmaError) -> None:
            responses.append(_raw(exc))
            check_floor(exc.remaining)  # error answers use the daily quota too

        while True:
            if stop.is_set():
                if attempts == 0:
                    return None  # never sent: left for the next run
                if uncertain == 0:  # only rejected (429, not sent): nothing was applied
                    return ItemResult(
                        request, False, "", f"not finished: {summary.stop_reason}", None, attempts, responses
                    )
                return ItemResult(
                    request, False, "error", f"not finished ({summary.stop_reason}); it may have been returned",
                    "STOPPED", attempts, responses,
                )
            async with limiter:
                if stop.is_set():
                    continue  # the run stopped while this item waited for its start: not sent
                attempts += 1
                summary.requests += 1
            try:
                response = await client.scan_in(
                    request.mms_id, request.holding_id, request.item_pid,
                    library=request.library, circ_desk=request.circ_desk,
                )
            except AlmaRateLimited as exc:
                answered(exc)
                summary.rate_limited += 1
                rate_limited += 1
                if rate_limited > retry.max_rate_limited:
                    return failed(exc, f" ({rate_limited} times)")
                await sleep(retry.delay(rate_limited, rng))
                continue
            except AlmaNotSent as exc:
                answered(exc)
                not_sent += 1
                if not_sent > retry.max_not_sent:
                    # Alma cannot be reached at all: every other item would wait out the same
                    # retries. Stop; nothing was sent, so this item stays pending like the rest.
                    request_stop(f"cannot reach Alma ({exc.code}: {exc.message}); check base_url and the "
                                 "network, then run again: the items not done stay pending")
                    return ItemResult(request, False, "", f"not sent: {exc.code}: {exc.message}", None,
                                      attempts, responses)
                await sleep(retry.delay(not_sent, rng))
                continue
            except (AlmaNoAnswer, AlmaServerError) as exc:
                answered(exc)
                uncertain += 1
                if uncertain >= retry.max_attempts:
                    return failed(exc, f" (after {attempts} attempts)")
                # A second scan-in of a returned item is harmless (register_in_house_use=false).
                await sleep(retry.delay(uncertain, rng))
                continue
            except AlmaDailyQuotaExceeded as exc:
                responses.append(_raw(exc))
                request_stop(f"Alma's daily API quota is used up ({exc.code}); run again after midnight GMT")
                return ItemResult(request, False, "", f"{exc.code}: {exc.message}", exc.code, attempts, responses)
            except AlmaRedirected as exc:
                answered(exc)
                # alma.md describes no redirect from Alma's API: a 3xx comes from something in front of it
                # (http:// for https://, a retired host name), and every other item would get it too.
                request_stop(f"base_url answered a scan-in with a redirect ({exc.message}): "
                             "set base_url to the address Alma's API answers at")
                return failed(exc)
            except AlmaUnauthorized as exc:
                responses.append(_raw(exc))
                if exc.key_refused:
                    request_stop(f"Alma refused the API key ({exc.code}: {exc.message}); check apikey / ALMA_API_KEY")
                else:  # an HTML page: base_url is not Alma's API gateway, the message says so
                    request_stop(exc.message)
                return failed(exc)
            except AlmaError as exc:
                answered(exc)
                return failed(exc)
            responses.append(_raw(response))
            check_floor(response.remaining)
            outcome = scan_outcome(response.body)
            if outcome == OUTCOME_STILL_ON_LOAN:
                return ItemResult(
                    request, False, "error", "still on loan after the scan-in", "STILL_ON_LOAN", attempts, responses
                )
            if outcome == OUTCOME_RETURNED and request.known_not_on_loan:
                outcome = OUTCOME_NOT_ON_LOAN
            return ItemResult(request, True, outcome, "", None, attempts, responses)

    def finish(index: int, result: ItemResult | None) -> None:
        batch = index // batch_size
        if result is None:
            summary.not_processed += 1
        else:
            if result.done:
                summary.done += 1
                summary.outcomes[result.outcome] += 1
            elif result.error_code and result.outcome == "error":
                summary.failed[result.error_code] += 1
            else:
                summary.not_processed += 1
            batches.setdefault(batch, []).append(result)
            on_item(result)
        remaining_in_batch[batch] -= 1
        if remaining_in_batch[batch] == 0 and batch in batches:
            on_batch(batch, batches.pop(batch))

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(requests):
            index = next_index
            next_index += 1
            result = None if stop.is_set() else await send(requests[index])
            finish(index, result)

    started = clock()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
    finally:
        summary.elapsed = clock() - started
        for batch in sorted(batches):  # batches cut short by an error or a stop
            on_batch(batch, batches.pop(batch))
    return summary


def by_count(counter: Counter[Any]) -> list[tuple[Any, int]]:
    """Counter items, largest first, ties by name: the same order whatever order items completed in."""
    return sorted(counter.items(), key=lambda pair: (-pair[1], str(pair[0])))


def _batch_snippet(number: int, results: Iterable[ItemResult]) -> str:
    results = list(results)
    outcomes = Counter(r.outcome for r in results if r.done)
    failures = Counter(r.error_code for r in results if not r.done and r.outcome == "error")
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
    echo: Callable[[str], None] = print,
    on_item: Callable[[ItemResult], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    run_id: str | None = None,
) -> RunSummary:
    """Run the scan-ins, journalling each item to data_dir/JOURNAL and rewriting the items file per batch.

    The raw answers of batch N go to ``results_path(data_dir, run_id, N)``, a new file: a file of
    that name is never overwritten (the run fails loudly instead).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id(data_dir)
    journal = Journal(data_dir / JOURNAL)
    items = items_fingerprint(table)

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
        echo(_batch_snippet(number, results))

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
        )
    finally:
        journal.close()
