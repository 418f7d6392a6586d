"""Command line: ``python -m libcal_passagepoint run|status|purge``; options only, logic elsewhere.

Every command takes ``--config``, ``--cache`` and the options every tool has (``--version``,
``--quiet``, ``--verbose``, ``--log-file``), before or after the command's name. Logs go to stderr
through :func:`toolconfig.logs.setup_logging`: readable lines on a terminal, one JSON object per
line otherwise (cron, systemd); a pass's summary line is printed on stdout and logged with its counts.

Exit status: 0 all good, 1 some booking failed (the pass finished), 2 bad usage or configuration
(nothing was done).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import toolconfig
from toolconfig.logs import setup_logging

from .cache import Cache, CacheError, CacheMissing
from .cache_owner import check_no_cache_left_behind, claim_cache
from .config import Config, ConfigError, load_config
from .runner import CacheBusy, cache_lock, default_cache_path, run_passes
from .sync import CREDENTIALS_REFUSED, PassResult, cancellation_advice

__all__ = ["main", "parse_duration"]

log = logging.getLogger("libcal_passagepoint")


def parse_duration(text: str, *, bare: str | None = "s", name: str = "duration") -> float:
    """'30d', '12h', '90m', '45s' or '2w' -> seconds; a bare number means *bare* (None: refused)."""
    try:
        return toolconfig.parse_duration(text, bare=bare, name=name)
    except toolconfig.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _older_than(text: str) -> float:
    # A bare number is refused: "30" once meant 30 seconds here and deleted yesterday's bookings.
    return parse_duration(text, bare=None, name="--older-than")


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: use YYYY-MM-DD") from None


def _days(text: str) -> int:
    if not text.isdigit() or int(text) > 365:
        raise argparse.ArgumentTypeError(f"invalid --days {text!r}: use a whole number from 0 to 365")
    return int(text)


def _every(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("--every must be more than 0 seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    # Every default is SUPPRESS, so that an option given before the command is not reset by the
    # command's parser, which accepts the same options after it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", metavar="PATH", help="configuration file (default: config.yml in the working directory)")
    common.add_argument("--cache", metavar="PATH", help="SQLite cache file (default: LCPP.cache_path, relative to the configuration file)")
    toolconfig.add_logging_arguments(common)
    parser = argparse.ArgumentParser(
        prog="libcal-passagepoint", parents=[common],
        description="Pre-register patrons who booked a LibCal space as PassagePoint visitors.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="run one pass (or one every N seconds)")
    run.add_argument("--every", type=_every, nargs="?", const=0.0, metavar="SECONDS",
                     help="repeat every SECONDS (default: LCPP.interval) until SIGINT/SIGTERM")
    run.add_argument("--date", type=_date, help="first day to fetch, YYYY-MM-DD (default: LibCal's today)")
    run.add_argument("--days", type=_days, default=0, metavar="N", help="also fetch the N following days (0-365)")
    run.add_argument("--dry-run", action="store_true", help="fetch and plan; write nothing to PassagePoint or the cache")
    commands.add_parser("status", parents=[common], help="cache counts and the last pass's result")
    purge = commands.add_parser("purge", parents=[common], help="drop bookings that ended long ago")
    purge.add_argument("--older-than", type=_older_than, required=True, metavar="AGE",
                       help="with a unit: 30d (days), 12h (hours) or 2w (weeks)")
    return parser


def _fail(message: str) -> int:
    """Log why nothing was done; exit status 2."""
    log.error("%s", message)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    options: dict[str, Any] = vars(args)
    log_file = options.get("log_file")
    try:
        setup_logging("libcal_passagepoint", verbose=options.get("verbose", False), quiet=options.get("quiet", False),
                      log_file=log_file)
    except OSError as exc:
        print(f"error: cannot open --log-file {log_file}: {exc.strerror or exc}; nothing was done", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each summary line as it is printed (run --every, a pipe)
    config_path = os.path.abspath(options.get("config", "config.yml"))
    cache_override = options.get("cache")

    config: Config | None = None
    if args.command == "run" or cache_override is None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            return _fail(str(exc))
    cache_path = default_cache_path(config, cache_override)
    config_file = os.path.realpath(config_path)  # as the cache records it
    dry_run = args.command == "run" and args.dry_run
    with contextlib.ExitStack() as held:
        try:
            if not cache_override:
                check_no_cache_left_behind(config_file, cache_path)
            if args.command == "run" and not dry_run:
                held.enter_context(cache_lock(cache_path))  # before the cache is opened, or created
            # A dry run and status write nothing, not even a new file; purge never creates one either.
            read_only = dry_run or args.command == "status"
            cache = held.enter_context(Cache(cache_path, read_only=read_only, create=args.command == "run"))
            if args.command == "run":
                claim_cache(cache, config_file, given=cache_override is not None)
        except CacheMissing as exc:
            if cache_override:
                return _fail(f"{exc} (given by --cache): check the path; nothing was created")
            return _fail(
                f"{exc} (LCPP.cache_path of {config_path}): no pass has run with this configuration yet, "
                "or the file was moved; nothing was created"
            )
        except (CacheBusy, CacheError) as exc:
            return _fail(str(exc))
        if args.command == "status":
            return _status(cache, None if cache_override else config_file)
        if args.command == "purge":
            bookings, passes, patrons = cache.purge(older_than=args.older_than)
            line = (f"purged {bookings} booking(s), {patrons} patron(s) with no booking left and {passes} pass "
                    f"record(s) older than {toolconfig.format_duration(args.older_than)} from {cache.path}")
            print(line)
            log.info("%s", line, extra={"printed": True, "event": "purge", "bookings": bookings, "patrons": patrons,
                                        "passes": passes})
            return 0
        assert config is not None
        _say_where(cache, dry_run=dry_run)
        if args.date is not None and date.fromisoformat(args.date) < date.today():
            log.warning("--date %s is in the past: LibCal ignores a past date and answers with the bookings from "
                        "its today on", args.date)
        every = None if args.every is None else (args.every or float(config.interval))
        try:
            result = asyncio.run(run_passes(
                config, cache, every=every, date=args.date, days=args.days, dry_run=args.dry_run,
                on_result=_print_result,
            ))
        except CREDENTIALS_REFUSED as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return 0
    if every is not None:
        return 0
    return result.exit_status


def _say_where(cache: Cache, *, dry_run: bool) -> None:
    """Every run names its cache file; a new one is a warning, as every booking then looks new."""
    if dry_run:
        if cache.new:
            log.info("cache %s is empty or does not exist: the dry run plans as if nothing was registered", cache.path)
        else:
            log.info("cache %s (read only)", cache.path)
    elif cache.new:
        log.warning("created a new cache %s: every booking fetched counts as new (expected on the first run only)", cache.path)
    else:
        log.info("cache %s", cache.path)


def _print_result(result: PassResult) -> None:
    """Print a pass's summary line (and a dry run's plan) on stdout; log the line with the pass's counts."""
    if result.dry_run:
        failing = sum(plan.action.startswith("fail") for plan in result.planned)
        line = (f"dry run: {result.fetched} booking(s) fetched, {len(result.planned) - failing} to register, "
                f"{failing} would fail, skipped {_skips(result)}")
    else:
        line = (
            f"pass: {result.fetched} booking(s) fetched, {len(result.registered)} registered, "
            f"{len(result.failed)} failed, {len(result.uncertain)} uncertain, "
            f"{len(result.cancelled_after_registration)} cancelled after registration; skipped {_skips(result)}"
            + (f"; stopped early, {result.left} booking(s) left for the next pass" if result.stopped else "")
            + ("; interrupted" if result.interrupted else "")
        )
    shown = [line] + [f"  would {plan.action} {plan.book_id} ({plan.patron}) at {plan.destination} from {plan.start}"
                      for plan in result.planned]
    try:
        print("\n".join(shown), flush=True)
    except OSError as exc:  # a full disk or a closed pipe must not end `run --every`: the pass is saved
        log.warning("could not print the summary on standard output (%s); it would have shown:\n%s",
                    exc.strerror or exc, "\n".join(shown))
    log.info("%s", line, extra={"printed": True, "event": "summary", "dry_run": result.dry_run,
                                "exit_status": result.exit_status, **result.summary()})


def _skips(result: PassResult) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(result.skipped.items())) or "none"


def _status(cache: Cache, config_file: str | None) -> int:
    """Print the cache's state; *config_file* is the configuration that found it (None: --cache)."""
    counts = cache.counts()
    print(f"cache {cache.path} (schema {cache.schema_version})")
    recorded = cache.configuration
    if recorded is None:
        print("configuration not recorded yet (made by an earlier version; the next run records its own)")
    elif config_file is not None and recorded != config_file:
        print(f"configuration {recorded} (not {config_file}: run refuses this cache)")
    else:
        print(f"configuration {recorded}")
    print("bookings: " + ", ".join(f"{counts[k]} {k}" for k in ("registered", "failed", "uncertain", "intent", "cancelled")))
    print(f"cancelled after registration: {counts['cancelled_after_registration']}; patrons: {counts['patrons']}")
    last = cache.last_pass()
    if last is None:
        print("last pass: none yet")
    else:
        summary = last["summary"]
        when = datetime.fromtimestamp(last["finished_at"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(
            f"last pass: {when}, exit status {last['exit_status']}: {summary.get('fetched', 0)} fetched, "
            f"{summary.get('registered', 0)} registered, {summary.get('failed', 0)} failed, "
            f"{summary.get('uncertain', 0)} uncertain"
        )
        if summary.get("error"):
            print(f"  stopped: {summary['error']}")
        elif summary.get("stopped"):
            print(f"  stopped early, {summary.get('left', 0)} booking(s) left for the next pass: {summary['stopped']}")
        for error in summary.get("location_errors", []):
            print(f"  location error: {error}")
    now = time.time()
    for row in cache.in_state("uncertain"):
        if row["cancelled_at"]:  # its old reason says to create it by hand: no longer true
            print(f"uncertain {row['book_id']} ({row['patron']}) {cancellation_advice(row)}")
        else:
            print(f"uncertain {row['book_id']} ({row['patron']}): {row['reason']}")
    for row in cache.in_state("failed"):
        wait = max(0, int((row["next_retry_at"] or now) - now))
        print(f"failed {row['book_id']} ({row['patron']}), {row['attempts']} attempt(s), retry in {wait}s: {row['reason']}")
    for row in cache.in_state("registered"):
        if row["cancelled_at"]:
            print(f"cancelled after registration {row['book_id']} ({row['patron']}): "
                  f"remove pre-registration {row['prereg_id']} in PassagePoint")
    return 0
