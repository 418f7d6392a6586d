"""Command line: ``discharge_loans [--config FILE] [--dry-run] [--limit N]``.

Parses options, loads the configuration and the two CSV files, takes the run's lock (one run
at a time per items file and data directory; see lock.py), prints the plan, runs the discharge
and turns every error into a message. Exit status: 0 all done, 1 some items failed or
the run stopped early, Ctrl-C included (progress saved), 2 bad usage or configuration (nothing was
done), 143 terminated by SIGTERM (handled as Ctrl-C is: progress saved, the locks released).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Coroutine, Sequence
from types import FrameType
from typing import Any, TypeVar

if not __package__:  # run as a file: python loan_discharge/discharge_loans.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402
from tqdm import tqdm  # noqa: E402

from alma import AlmaClient, SlidingWindowLimiter  # noqa: E402
from loan_discharge.config import DEFAULT_CONFIG_FILE, ConfigError, DischargeConfig, load_config  # noqa: E402
from loan_discharge.items import (  # noqa: E402
    DeskMap,
    InputError,
    ItemsTable,
    Plan,
    apply_results,
    build_plan,
    format_plan,
    items_fingerprint,
    mark_problems,
    read_desks,
    read_items,
    write_items_atomic,
)
from loan_discharge.lock import RunLock, RunLocked  # noqa: E402
from loan_discharge.run import (  # noqa: E402
    JOURNAL,
    ItemResult,
    RetryPolicy,
    RunSummary,
    by_count,
    discharge,
    new_run_id,
    read_journal,
    results_path,
)

PROG = "discharge_loans"
TERMINATED_STATUS = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM

_T = TypeVar("_T")


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping the unit, `timeout`, `kill`): handled as Ctrl-C is."""


class _SigtermAsCtrlC:
    """The SIGTERM handler: what asyncio.run does for Ctrl-C, for SIGTERM.

    While a discharge runs, the first SIGTERM cancels its task, so the engine's clean-up saves
    every finished item and closes the journal, and ``run`` raises Terminated once it has ended.
    At any other time (or at a second SIGTERM) Terminated is raised where the program is, as a
    Ctrl-C raises KeyboardInterrupt; the ``with`` blocks on the way out release the locks.
    """

    def __init__(self) -> None:
        self.received = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        first = not self.received
        self.received = True
        if first and self._task is not None and self._loop is not None and not self._task.done():
            self._task.cancel()
            self._loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()
            return
        raise Terminated

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """asyncio.run(main), cancelled by SIGTERM; Terminated once the cancelled *main* has cleaned up."""

        async def attached() -> _T:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            try:
                return await main
            finally:
                self._task = self._loop = None

        try:
            return asyncio.run(attached())
        except asyncio.CancelledError:
            if self.received:
                raise Terminated from None
            raise


_sigterm = _SigtermAsCtrlC()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Return (discharge) loans in bulk through Alma's scan-in API."
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG_FILE, help=f"YAML configuration (default: {DEFAULT_CONFIG_FILE})")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; send nothing")
    parser.add_argument("--limit", type=_positive, metavar="N", help="process only the first N pending rows")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Into a log file (cron), each line as it is printed: a killed run keeps its last lines,
        # and they stay in order with the messages on stderr.
        sys.stdout.reconfigure(line_buffering=True)
    _sigterm.received = False
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, _sigterm) if in_main_thread else None
    try:
        return _main(args)
    except KeyboardInterrupt as exc:
        print(f"{_interruption(exc)} before any item was sent: run again to start", file=sys.stderr)
        return _interrupted_status(exc)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interruption(exc: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _interrupted_status(exc: KeyboardInterrupt) -> int:
    """Ctrl-C: 1, as any run that stopped early with its progress saved; SIGTERM: 143."""
    return TERMINATED_STATUS if isinstance(exc, Terminated) else 1


def _main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, need_key=not args.dry_run)  # a dry run sends nothing
        # Read now to refuse bad input before anything is created; a run reads the file again
        # once it holds the lock (another run may have rewritten it until then).
        table = read_items(config.loans_data_file, config.location_type)
        desks = read_desks(config.circ_desks_file)
        if args.dry_run:
            _plan(config, table, desks, args.limit)
            print("dry run: nothing was sent")
            return 0
    except (ConfigError, InputError) as exc:
        return _fail(str(exc))
    if not os.access(config.loans_data_file.parent, os.W_OK):
        return _fail(
            f"cannot write to {config.loans_data_file.parent}: the items file is rewritten with the "
            "results, so it must be in a writable directory"
        )
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create data_dir {config.data_dir}: {exc.strerror}")
    lock = RunLock(config.loans_data_file, config.data_dir)
    try:
        lock.acquire()
    except RunLocked as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot lock {exc.filename or config.data_dir}: {exc.strerror or exc}")
    with lock:
        for holder in lock.taken_over:
            print(f"took over the lock of an earlier run ({holder.describe()}) that ended without releasing it")
        try:
            table = read_items(config.loans_data_file, config.location_type)
            plan, journal_entries, merged = _plan(config, table, desks, args.limit)
        except InputError as exc:
            return _fail(str(exc))
        return _discharge(config, table, plan, journal_entries, merged)


def _plan(
    config: DischargeConfig, table: ItemsTable, desks: DeskMap, limit: int | None
) -> tuple[Plan, list[dict[str, Any]], int]:
    """Merge the journal of an interrupted run into *table* (in memory), plan, print the plan.

    Returns the plan, the journal's entries and how many results they added; InputError if the
    journal belongs to another items list.
    """
    journal_path = config.data_dir / JOURNAL
    journal_entries = read_journal(journal_path)
    this_list = items_fingerprint(table)
    foreign = [e for e in journal_entries if e.get("items", this_list) != this_list]
    if foreign:
        raise InputError(
            f"{journal_path} holds {len(foreign)} results of an interrupted run over a different items list "
            f"than {config.loans_data_file}: was a new export saved over the file before that run was "
            f"resumed? Nothing was sent. To resume that run, put its items file back and run again; "
            f"to start afresh with this file, move the journal aside (e.g. to {journal_path.with_suffix('.old')})"
        )
    merged = apply_results(table, journal_entries)
    plan = build_plan(table, desks, config.location_type, limit)
    print(format_plan(plan, config.loans_data_file, config.circ_desks_file))
    return plan, journal_entries, merged


def _discharge(
    config: DischargeConfig, table: ItemsTable, plan: Plan, journal_entries: list[dict[str, Any]], merged: int
) -> int:
    """Save the merged journal, send the plan's scan-ins, print the summary; the lock is held."""
    journal_path = config.data_dir / JOURNAL
    run_id = new_run_id(config.data_dir)
    mark_problems(table, plan)
    write_items_atomic(table)
    # Merged and saved: the journal's content is in the items file now. Set it aside, so that a
    # later export listing the same items (next semester) is not taken as already done.
    if merged:
        kept = config.data_dir / f"journal-merged-{run_id}.jsonl"
        os.replace(journal_path, kept)
        print(f"recovered {merged} results from the journal of an interrupted run (journal kept as {kept.name})")
    elif journal_entries:
        journal_path.unlink()
    if not plan.requests:
        print("nothing to send")
        return 1 if plan.problems else 0
    print(f"run {run_id}: results go to {config.loans_data_file}, raw answers to "
          f"{results_path(config.data_dir, run_id, 'N')}")
    finished: Counter[str] = Counter()
    try:
        summary = _sigterm.run(_run(config, table, plan, run_id, finished))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        left = len(plan.requests) - finished["done"] - finished["failed"]
        print(
            f"{_interruption(exc)}: {finished['done']} items done and {finished['failed']} failed in this run "
            f"are saved in {config.loans_data_file}; {left} not finished: run again to resume",
            file=sys.stderr,
        )
        return _interrupted_status(exc)
    # The run ended and every result is in the items file: its journal must not be merged into
    # the next export (the same items, borrowed again, would be taken as already done).
    journal_path.unlink(missing_ok=True)
    print(format_summary(summary, plan, config))
    if summary.stop_reason or summary.failed_total or summary.not_processed or plan.problems:
        return 1
    return 0


async def _run(
    config: DischargeConfig, table: ItemsTable, plan: Plan, run_id: str, finished: Counter[str]
) -> RunSummary:
    bar = tqdm(total=len(plan.requests), unit="item", disable=not sys.stderr.isatty(), file=sys.stderr)

    def on_item(result: ItemResult) -> None:
        bar.update(1)
        if result.done:
            finished["done"] += 1
        elif result.outcome == "error":
            finished["failed"] += 1

    connector = aiohttp.TCPConnector(limit=config.concurrency)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            client = AlmaClient(config.base_url, config.apikey or "", session, timeout=config.request_timeout)
            return await discharge(
                plan.requests,
                table,
                client=client,
                limiter=SlidingWindowLimiter(config.rate_limit),
                data_dir=config.data_dir,
                concurrency=config.concurrency,
                batch_size=config.batch_size,
                daily_quota_floor=config.daily_quota_floor,
                retry=RetryPolicy(max_attempts=config.max_attempts),
                echo=tqdm.write if not bar.disable else print,
                on_item=on_item,
                run_id=run_id,
            )
    finally:
        bar.close()


def format_summary(summary: RunSummary, plan: Plan, config: DischargeConfig) -> str:
    """The closing summary of a run."""
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in by_count(summary.outcomes))
    failed = ", ".join(f"{code}: {count}" for code, count in by_count(summary.failed))
    lines = [
        f"done: {summary.done}" + (f" ({outcomes})" if outcomes else ""),
        f"failed: {summary.failed_total}" + (f" ({failed}); see the error column of {config.loans_data_file}" if failed else ""),
        f"skipped: {len(plan.problems)} not sent (see the plan above), {plan.already_done} already done"
        + (f", {plan.not_selected} left by --limit" if plan.not_selected else ""),
        f"elapsed: {summary.elapsed:.1f} s, {summary.requests} requests, {summary.request_rate:.1f} requests/s, "
        f"{summary.rate_limited} answered 429",
    ]
    if summary.stop_reason:
        lines.append(
            f"stopped early: {summary.stop_reason}. {summary.not_processed} items not finished; "
            f"progress is saved in {config.loans_data_file}: run again to resume"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
