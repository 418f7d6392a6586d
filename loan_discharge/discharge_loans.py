"""Command line: ``discharge_loans [--config FILE] [--barcodes FILE | --analytics-report PATH] [--dry-run]
[--limit N] [--quiet|--verbose] [--log-file PATH]``.

The items come from the Analytics CSV export (``loans_data_file``), a barcode list (``--barcodes``:
each barcode looked up in Alma, results in ``FILE.results.csv`` beside it) or the Analytics
report itself (``--analytics-report`` or ``analytics_report``: fetched into ``data_dir/analytics/``,
then run as a CSV run).

Parses options, calls the library (configuration, the resume protocol in resume.py, the engine in
run.py), prints the plan and the summary on stdout, and logs everything else (human-readable on a
terminal, one JSON object per line otherwise). Exit status: 0 all done, 1 some items failed or the
run stopped early, Ctrl-C included (progress saved), 2 bad usage or configuration (nothing was
done), 143 terminated by SIGTERM (handled as Ctrl-C is: progress saved, the locks released).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

if not __package__:  # run as a file: python loan_discharge/discharge_loans.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from loan_discharge import resume  # noqa: E402
from loan_discharge.analytics import ReportError, report_copy, report_lock_path  # noqa: E402
from loan_discharge.barcodes import BarcodeList, barcode_summary, format_barcodes  # noqa: E402
from loan_discharge.config import DEFAULT_CONFIG_FILE, ConfigError, DischargeConfig, load_config  # noqa: E402
from loan_discharge.items import DeskMap, InputError, ItemsTable, Plan, format_plan, read_desks  # noqa: E402
from loan_discharge.lock import RunLock  # noqa: E402
from loan_discharge.report import (  # noqa: E402
    exit_status,
    format_summary,
    nothing_to_send_status,
    plan_fields,
    summary_fields,
)
from loan_discharge.run import (  # noqa: E402
    ItemResult,
    RunSummary,
    discharge_from_config,
    new_run_id,
    results_path,
)
from loan_discharge.sigterm import SigtermAsCtrlC, interrupted_status, interruption  # noqa: E402
from toolconfig import add_logging_arguments  # noqa: E402
from toolconfig.logs import setup_logging  # noqa: E402

PROG = "discharge_loans"
DRY_RUN_KEY_NOTE = ("an API key is configured; a dry run sends nothing, so whether Alma accepts it is "
                    "only known when a run sends its first request")
log = logging.getLogger("loan_discharge")
_sigterm = SigtermAsCtrlC()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Return (discharge) loans in bulk through Alma's scan-in API."
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG_FILE, help=f"YAML configuration (default: {DEFAULT_CONFIG_FILE})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--barcodes", type=Path, metavar="FILE",
                        help="look up the items of a barcode list (one per line, or a CSV with a Barcode column) "
                             "and return them; results go to FILE.results.csv beside it")
    source.add_argument("--analytics-report", metavar="PATH",
                        help="read the items from this Analytics report (its catalog path, e.g. "
                             "'/shared/Your Institution/Reports/items_to_discharge') instead of loans_data_file")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; send nothing")
    parser.add_argument("--limit", type=_positive, metavar="N", help="process only the first N pending rows")
    add_logging_arguments(parser)
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Into a log file (cron), each line as it is printed: a killed run keeps its last lines.
        sys.stdout.reconfigure(line_buffering=True)
    try:
        setup_logging("loan_discharge", verbose=args.verbose, quiet=args.quiet, log_file=args.log_file)
    except OSError as exc:
        print(f"{PROG}: cannot open --log-file {args.log_file}: {exc.strerror or exc}; nothing was sent", file=sys.stderr)
        return 2
    _sigterm.received = False
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, _sigterm) if in_main_thread else None
    try:
        return _main(args)
    except KeyboardInterrupt as exc:
        log.error("%s before any item was sent: run again to start", interruption(exc))
        return interrupted_status(exc)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)  # a dry run needs the key too: it checks that one is set
        log.debug("configuration %s: %r", args.config, config)  # the repr hides the key
        report = args.analytics_report or (config.analytics_report if args.barcodes is None else None)
        if report is not None:
            return _from_report(replace(config, loans_data_file=None, analytics_report=report), args)
        if args.barcodes is not None:
            config = resume.barcode_config(config, args.barcodes)
        # Read now to refuse bad input before anything is created; a run reads the files again
        # once it holds the locks (another run may have rewritten them until then).
        listing = _read(config, args.barcodes)
        if args.dry_run:
            resumed = resume.resume(config, *_inputs(config, args.barcodes), args.limit)
            _print_plan(config, resumed, listing)
            _show(DRY_RUN_KEY_NOTE)
            _finish_line("dry run: nothing was sent", resumed.plan)
            return 0
        lock = resume.take_locks(config)
    except (ConfigError, InputError, resume.CannotStart) as exc:
        log.error("%s", exc)
        return 2
    with lock:
        _log_takeover(lock)
        return _locked_run(config, args, listing)


def _read(config: DischargeConfig, barcodes: Path | None) -> BarcodeList | None:
    """Check the inputs (InputError); the barcode list, for a barcode run."""
    if barcodes is None:
        resume.read_inputs(config)
        return None
    return resume.read_barcode_inputs(config, barcodes)[0]


def _inputs(config: DischargeConfig, barcodes: Path | None) -> tuple[ItemsTable, DeskMap]:
    if barcodes is None:
        return resume.read_inputs(config)
    _, table, desks = resume.read_barcode_inputs(config, barcodes)
    return table, desks


def _locked_run(config: DischargeConfig, args: argparse.Namespace, listing: BarcodeList | None) -> int:
    """Read the inputs again (the locks are held now), merge an interrupted run's journal, plan, run."""
    try:
        resumed = resume.resume(config, *_inputs(config, args.barcodes), args.limit)
    except (InputError, resume.CannotStart) as exc:
        log.error("%s", exc)
        return 2
    _print_plan(config, resumed, listing)
    return _discharge(config, resumed, quiet=args.quiet, listing=listing)


def _log_takeover(lock: RunLock) -> None:
    for holder in lock.taken_over:
        log.warning("took over the lock of an earlier run (%s) that ended without releasing it",
                    holder.describe(), extra={"event": "lock_taken_over", "holder_pid": holder.pid,
                                              "holder_host": holder.host})


def _from_report(config: DischargeConfig, args: argparse.Namespace) -> int:
    """A run over the Analytics report: fetch it (or, after an interrupted run, resume the copy that
    run fetched), save it in data_dir/analytics/, then run over that CSV as over an export."""
    path = config.analytics_report or ""
    read_desks(config.circ_desks_file)  # refuse a bad desks file before anything is fetched
    if args.dry_run:
        _show(f"dry run: the Analytics report {path} would be fetched from {config.base_url} (a dry run sends "
              "nothing, so neither the report nor its columns were checked)")
        _show(DRY_RUN_KEY_NOTE)
        _show("dry run: nothing was sent")
        return 0
    lock_path = report_lock_path(config.data_dir, path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = resume.take_locks(replace(config, loans_data_file=lock_path))
    except OSError as exc:
        log.error("cannot create %s: %s; nothing was sent", lock_path.parent, exc.strerror or exc)
        return 2
    except resume.CannotStart as exc:
        log.error("%s", exc)
        return 2
    with lock:
        _log_takeover(lock)
        try:
            saved, fetched = report_copy(config, path, _sigterm.run)
        except ReportError as exc:
            log.error("%s", exc)
            return 2
        if fetched is None:
            log.warning("an interrupted run over this report left results to finish: resuming it over the copy it "
                        "fetched (%s); the report is fetched again by the next run", saved,
                        extra={"event": "report_resumed", "file": str(saved)})
        else:
            log.info("Analytics report %s: %d rows fetched, saved as %s", path, fetched, saved,
                     extra={"event": "report_fetched", "rows": fetched, "file": str(saved)})
        return _locked_run(replace(config, loans_data_file=saved), args, None)


_stdout_lost: list[str] = []  # why stdout could not be written, once it could not


def _show(text: str) -> None:
    """Print *text* on stdout. A stdout that cannot take it (a full disk, a reader that left) is a
    warning, not the end of a run whose results are saved: from then on the text goes to the log."""
    if not _stdout_lost:
        try:
            print(text, flush=True)
            return
        except OSError as exc:
            _stdout_lost.append(str(exc.strerror or exc))
            devnull = os.open(os.devnull, os.O_WRONLY)  # what is left in stdout's buffer goes nowhere, quietly
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
    log.warning("could not print on standard output (%s); it would have shown:\n%s", _stdout_lost[0], text)


def _print_plan(config: DischargeConfig, resumed: resume.Resumed, listing: BarcodeList | None) -> None:
    plan = resumed.plan
    text = format_plan(plan, config.items_file, config.circ_desks_file, to_look_up=len(resumed.lookups))
    if listing is not None:
        text = format_barcodes(listing, config.items_file, len(resumed.lookups)) + "\n" + text
    _show(text)
    log.info("%s", text.splitlines()[0], extra={"printed": True, "event": "plan", **plan_fields(plan),
                                                 "to_look_up": len(resumed.lookups)})


def _finish_line(line: str, plan: Plan) -> None:
    """The last line of a run that sent nothing: printed, and logged with the plan's counts."""
    _show(line)
    log.info("%s", line, extra={"printed": True, "event": "summary", **plan_fields(plan)})


def _discharge(config: DischargeConfig, resumed: resume.Resumed, *, quiet: bool, listing: BarcodeList | None = None) -> int:
    """Save the merged journal, send the plan's scan-ins, print the summary; the locks are held."""
    plan = resumed.plan
    run_id = new_run_id(config.data_dir)
    kept = resume.save_resumed(resumed, run_id)
    if kept is not None:
        log.info("recovered %d results from the journal of an interrupted run (journal kept as %s)",
                 resumed.recovered, kept.name, extra={"event": "recovered", "recovered": resumed.recovered})
    if not plan.requests and not resumed.lookups:
        _finish_line("nothing to send", plan)
        return nothing_to_send_status(plan)
    log.info("run %s: results go to %s, raw answers to %s", run_id, config.items_file,
             results_path(config.data_dir, run_id, "N"), extra={"event": "start", "run_id": run_id})
    finished: Counter[str] = Counter()
    try:
        summary = _sigterm.run(_run(config, resumed, run_id, finished, show_bar=not quiet and sys.stderr.isatty()))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        left = len(plan.requests) + len(resumed.lookups) - finished["done"] - finished["failed"]
        log.error(
            "%s: %d items done and %d failed in this run are saved in %s; %d not finished: run again to resume",
            interruption(exc), finished["done"], finished["failed"], config.items_file, left,
            extra={"event": "interrupted", "done": finished["done"], "failed": finished["failed"], "not_finished": left},
        )
        return interrupted_status(exc)
    resume.finish(config)  # every result is in the items file: the journal goes
    text = format_summary(summary, plan, config.items_file)
    if listing is not None:
        text += "\n" + barcode_summary(listing, summary, plan, config.items_file)
    _show(text)
    log.info("%s", "; ".join(text.splitlines()), extra={"printed": True, "event": "summary", **summary_fields(summary, plan)})
    return exit_status(summary, plan)


async def _run(
    config: DischargeConfig, resumed: resume.Resumed, run_id: str, finished: Counter[str], *, show_bar: bool
) -> RunSummary:
    """The engine, with a progress bar on a terminal (log lines are written above it)."""
    bar = tqdm(total=len(resumed.plan.requests) + len(resumed.lookups), unit="item", disable=not show_bar,
               file=sys.stderr)

    def on_item(result: ItemResult) -> None:
        bar.update(1)
        if result.done:
            finished["done"] += 1
        elif result.failed:
            finished["failed"] += 1

    redirect = logging_redirect_tqdm(loggers=[log]) if show_bar else contextlib.nullcontext()
    try:
        with redirect:
            return await discharge_from_config(config, resumed.table, resumed.plan.requests, run_id=run_id,
                                               on_item=on_item, lookups=resumed.lookups, desks=resumed.desks)
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
