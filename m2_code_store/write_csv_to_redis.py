"""Load a LAS barcode export into the customer code store.

    write_csv_to_redis FILE.csv [BATCHSIZE] [--replace [--force]] [--dry-run]

Exit status: 0 every row loaded; 1 the load finished but rows were skipped, or it stopped part-way
(Redis failed, or another loader took the lock while this one was stalled): the message says what
the store holds, and re-running is safe; 2 nothing was done (bad usage, a file that cannot be used,
no store, another load running, a refused --replace); 130 (Ctrl-C) or 143 (SIGTERM) interrupted,
with one line saying what the store holds.
"""

from __future__ import annotations

import argparse
import importlib.abc
import logging
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python m2_code_store/write_csv_to_redis.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from m2_code_store.bulk import barcode_crcs
from m2_code_store.config import (
    StoreTarget,
    describe_error,
    embedded_note,
    has_terminal,
    open_store,
)
from m2_code_store.embedded import EmbeddedServerError
from m2_code_store.las_csv import BadRow, ExportError, ParsedExport, duplicate_count, read_export
from m2_code_store.loader import DEFAULT_MAX_SHRINK, LoadError, LoadStopped, LockLost, load
from m2_code_store.progress import Progress
from toolconfig import ConfigError, add_logging_arguments
from toolconfig.logs import setup_logging

SHOWN_BAD_ROWS = 20
log = logging.getLogger("m2_code_store")


DESCRIPTION = ("Load a LAS 'Barcodes by CUS/DATE' export (Item barcode, Accession date, Customer code, "
               "Delete date) into the M2 customer code store.")
EPILOG = ("The store is REDIS_URL, else REDIS_ENDPOINT_ENCRYPTED (KMS), else (M2_STORE=embedded, or a person at a "
          "terminal) the embedded local Redis.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The loader's arguments: one definition for write_csv_to_redis and m2-code-store load."""
    parser.add_argument("csv_file", type=Path, help="the LAS export (CSV, UTF-8)")
    parser.add_argument(
        "batch_size", nargs="?", type=int, default=100,
        help="accepted for compatibility with the original loader (default 100); the loader sizes "
        "its own network batches, so speed does not depend on it",
    )
    parser.add_argument("--replace", action="store_true",
                        help="make the file the complete new data set, switched atomically; barcodes not in it stop resolving")
    parser.add_argument("--force", action="store_true", help="with --replace: replace even if many records would go")
    parser.add_argument("--max-shrink", type=float, default=DEFAULT_MAX_SHRINK, metavar="SHARE",
                        help=f"with --replace: refuse when the new data set is smaller by more than this share (default {DEFAULT_MAX_SHRINK})")
    parser.add_argument("--dry-run", action="store_true", help="parse and validate the whole file; never connect to Redis")
    add_logging_arguments(parser)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations argparse cannot express (exit 2 with the message)."""
    if args.batch_size < 1:
        parser.error(f"BATCHSIZE must be a positive whole number (got {args.batch_size})")
    if not 0 <= args.max_shrink <= 1:
        parser.error(f"--max-shrink must be between 0 and 1 (got {args.max_shrink})")
    if args.force and not args.replace:
        parser.error("--force only makes sense with --replace")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="write_csv_to_redis", description=DESCRIPTION, epilog=EPILOG)
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def report_bad_rows(bad_rows: list[BadRow], csv_file: Path) -> None:
    """Log the first skipped rows; write them all next to the file when there are more."""
    for bad in bad_rows[:SHOWN_BAD_ROWS]:
        log.warning("skipped %s %s", csv_file.name, bad)
    if len(bad_rows) > SHOWN_BAD_ROWS:
        listing = csv_file.with_name(csv_file.name + ".skipped.txt")
        try:
            listing.write_text("".join(f"{bad}\n" for bad in bad_rows), encoding="utf-8")
            where = f"all {len(bad_rows):,} are listed in {listing}"
        except OSError as exc:
            where = f"could not write the full list to {listing}: {exc.strerror}"
        log.warning("… and %s more skipped rows: %s", f"{len(bad_rows) - SHOWN_BAD_ROWS:,}", where)


def summary(parsed: ParsedExport, seconds: float, *, written: str, deleted: str, removed: int | None = None,
            records: int | None = None, store: StoreTarget | None = None, unsent: int = 0) -> str:
    """The closing line of every run that read the file; it names the store it used."""
    rate = parsed.rows_read / seconds if seconds > 0 else 0
    removed_text = "" if removed is None else f" ({removed:,} removed from the store)"
    unsent_text = f"; {unsent:,} rows not sent (the store held what they say)" if unsent else ""
    records_text = "" if records is None else f"; {records:,} records in the store"
    store_text = "" if store is None else f"; store: {store.shown}"
    return (
        f"read {parsed.rows_read:,} rows: {written} written, {deleted} deleted{removed_text}, "
        f"{len(parsed.bad_rows):,} skipped{unsent_text}{records_text}; {seconds:.2f} s, {rate:,.0f} rows/s{store_text}"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the load cleans up and says what the store holds."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def stop_reason(cause: BaseException, target: StoreTarget) -> str:
    """Why a load stopped, for the message's first words."""
    if isinstance(cause, Terminated):
        return "terminated (SIGTERM)"
    if isinstance(cause, KeyboardInterrupt):
        return "interrupted"
    if isinstance(cause, LockLost):
        return str(cause)
    redis_error = cause if isinstance(cause, redis.exceptions.RedisError) else cause.__cause__
    if isinstance(redis_error, redis.exceptions.RedisError):
        return f"Redis failed during the load ({type(redis_error).__name__}: {describe_error(redis_error, target)})"
    if isinstance(cause, LoadError):
        return str(cause)
    return f"the load failed ({type(cause).__name__}: {cause})"


class _NoPandas(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` fail, as it does where pandas is not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("the loader does not use pandas")
        return None


def _keep_pandas_out() -> None:
    """pyarrow imports pandas the first time it converts a Python value, only to check for pandas
    types; the loader has none. Where pandas is installed (a development environment) that costs
    0.3 s and 50 MB for nothing."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def _return_memory_promptly() -> None:
    """Arrow's default allocator (mimalloc) keeps freed memory for reuse, so the loader's RSS
    climbs to the sum of its phases; jemalloc told to return freed pages at once keeps the peak
    near what is live (measured on a 2M-row --replace: about 400 MB down to about 300), at no
    measurable cost in time. Skipped where the pyarrow build has no jemalloc."""
    import pyarrow as pa  # the loader reads with it anyway; imported here, not for --help

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the loader; returns the exit status."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Load with parsed arguments (``write_csv_to_redis`` and ``m2-code-store load``); the exit status."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        setup_logging("m2_code_store", verbose=args.verbose, quiet=args.quiet, log_file=args.log_file)
        _keep_pandas_out()
        _return_memory_promptly()
        return _run(args)
    except KeyboardInterrupt as exc:  # before the load started: nothing was written
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        log.error("%s before anything was written: the store is unchanged", what)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        parsed = read_export(args.csv_file, hash_barcodes=barcode_crcs)
    except ExportError as exc:
        log.error("%s", exc)
        return 2
    report_bad_rows(parsed.bad_rows, args.csv_file)
    status = 1 if parsed.bad_rows else 0

    def finish(written: str, deleted: str, removed: int | None = None, records: int | None = None,
               store: StoreTarget | None = None, unsent: int = 0) -> None:
        line = summary(parsed, time.perf_counter() - started, written=written, deleted=deleted,
                       removed=removed, records=records, store=store, unsent=unsent)
        print(line)
        log.info("%s", line, extra={"printed": True, "event": "summary", "rows_read": parsed.rows_read,
                                    "skipped": len(parsed.bad_rows), "records": records})

    if args.dry_run:
        duplicates = duplicate_count(parsed)
        print(
            f"dry run, nothing written: {parsed.upserts:,} rows would be written and {parsed.deletes:,} "
            f"deleted{' as the complete new data set (--replace)' if args.replace else ''}; "
            f"{duplicates:,} rows repeat a barcode (the row with the latest date wins)"
        )
        finish("0", "0")
        return status

    try:
        target, client = open_store(timeout=30, interactive=has_terminal())
    except (ConfigError, EmbeddedServerError) as exc:
        log.error("%s. Nothing was written.", exc)
        return 2
    if note := embedded_note(target):
        log.warning("%s", note)

    progress = Progress(len(parsed), enabled=not args.quiet)
    try:
        result = load(client, parsed, replace=args.replace, force=args.force, max_shrink=args.max_shrink,
                      source=args.csv_file.name, progress=progress.update, phase=progress.phase)
    except LoadStopped as exc:
        progress.close()
        log.error("%s: %s.", stop_reason(exc.cause, target), exc.state)
        if isinstance(exc.cause, KeyboardInterrupt):
            return 143 if isinstance(exc.cause, Terminated) else 130
        if exc.whole:  # a new data set, switched in whole or not at all
            written = {True: f"{parsed.upserts:,}", None: "?", False: "0"}[exc.switched]
            finish(written, "0", store=target)
        else:
            finish(f"up to {exc.rows_sent:,}", "?", store=target)
        return 1
    except LoadError as exc:  # another load runs, or a refused --replace: nothing was changed
        progress.close()
        log.error("%s", exc)
        finish("0", "0", store=target)
        return 2
    except redis.exceptions.RedisError as exc:  # taking the lock failed
        progress.close()
        log.error("Redis failed before the load started (%s: %s): nothing was written. Re-running the same "
                  "command is safe.", type(exc).__name__, describe_error(exc, target))
        return 2
    finally:
        client.close()
    progress.close()
    if result.rebuilt:
        log.info("the store had outgrown its buckets, so this load rebuilt it into %s buckets (memory per "
                 "record stays low)", f"{result.buckets:,}")
    for note in result.notes or []:
        log.warning("%s", note)
    finish(f"{parsed.upserts:,}", f"{parsed.deletes:,}", result.removed, result.records, store=target,
           unsent=result.unsent)
    if result.interrupted is not None:  # too late to stop: the new data set was already live
        log.error("%s after the switch: the new data set is live (generation %d); the previous one is deleted "
                  "by the next load", stop_reason(result.interrupted, target), result.generation)
        return 143 if isinstance(result.interrupted, Terminated) else 130
    return status


def exit_now(status: int) -> None:
    """End a finished load's process at once, its output flushed: finalising an interpreter that
    imported numpy, pyarrow and redis takes 0.1-0.2 s (measured) that a command whose work is
    written, logged and printed has no use for. Nothing the loader starts needs an exit handler
    (its threads are done, its connections closed, an embedded redis-server runs on its own)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            pass
    os._exit(status)


if __name__ == "__main__":  # the command itself starts in m2_code_store.__main__ (its start-up Ctrl-C guard)
    from m2_code_store.__main__ import write_csv_to_redis

    write_csv_to_redis()
