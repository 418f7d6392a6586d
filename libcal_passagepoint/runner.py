"""Wires the configured clients together and runs one pass, or one every N seconds until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from alma import SlidingWindowLimiter
from toolconfig import format_duration

from .alerts import EmailAlerts
from .alma_users import AlmaUsers
from .cache import Cache, CacheError
from .config import Config
from .libcal import LibCalClient
from .passagepoint import PassagePointClient
from .sync import PassResult, run_pass

__all__ = ["alma_limiter", "CacheBusy", "Clients", "cache_lock", "default_cache_path", "open_clients", "run_passes"]

log = logging.getLogger("libcal_passagepoint")


class CacheBusy(Exception):
    """Another run holds the cache's lock."""


@dataclass
class Clients:
    """The three services' clients sharing one HTTP session (Alma: one client per zone's key)."""

    libcal: LibCalClient
    alma: AlmaUsers
    passagepoint: PassagePointClient


#: Of each sliding window, the part left for the jitter between a lookup's start and its arrival at Alma.
ALMA_ARRIVAL_MARGIN = 0.05


def alma_limiter(rate_per_second: float) -> SlidingWindowLimiter:
    """The limiter of every Alma lookup: at most *rate_per_second* starts in any sliding second,
    evenly spaced, with 50 ms of each window left for arrival jitter (25/s -> 25 per 1.05 s).

    The lookups share Alma's per-second threshold with every other tool of the institution, and a
    429 costs a lookup a backoff of a second or more, so this tool keeps the slack it always had
    (the leaky bucket this replaces drained at rate - 2) rather than loan_discharge's 10 ms.
    """
    return SlidingWindowLimiter.per_second(rate_per_second, margin=ALMA_ARRIVAL_MARGIN)


@contextlib.asynccontextmanager
async def open_clients(
    config: Config, *, limiter: contextlib.AbstractAsyncContextManager[Any] | None = None
) -> AsyncIterator[Clients]:
    """Clients for the configured services; the session is closed on exit.

    *limiter* paces every Alma request; by default ``alma_limiter(Alma.rate_per_second)``.
    """
    limiter = limiter or alma_limiter(config.alma.rate_per_second)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        pp = config.passagepoint
        yield Clients(
            libcal=LibCalClient(
                session, token_url=config.libcal.credentials_endpt, bookings_url=config.libcal.bookings_endpt,
                client_id=config.libcal.client_id, client_secret=config.libcal.client_secret, timeout=config.timeout,
                form_answers_param=config.libcal.form_answers_param,
            ),
            alma=AlmaUsers.configured(config.alma, session, limiter=limiter, timeout=config.timeout),
            passagepoint=PassagePointClient(
                session, api_root=pp.pp_api_root, username=pp.username, password=pp.password,
                login_endpt=pp.login_endpt, uniqueId_endpt=pp.uniqueId_endpt,
                create_visitor_endpt=pp.create_visitor_endpt, create_prereg_endpt=pp.create_prereg_endpt,
                get_destinations_endpt=pp.get_destinations_endpt, timeout=config.timeout,
            ),
        )


@contextlib.contextmanager
def cache_lock(cache_path: str) -> Iterator[None]:
    """Hold an exclusive flock on ``<cache>.lock`` so two runs never overlap; the file names the holder's pid.

    Take it before the cache is opened (or created). The kernel releases a flock when its process
    dies, however it dies, so a lock file left behind never blocks a later run. The lock is beside
    the real file: a cache reached through a symbolic link (a path, or a directory) is locked as
    the file itself, so a run given the link and a run given the file never both run.
    """
    path = f"{os.path.realpath(cache_path)}.lock"
    try:
        handle = open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+", encoding="ascii")
    except FileNotFoundError:
        raise CacheError(
            f"cannot use cache file {cache_path}: the directory {os.path.dirname(path)} does not exist "
            "(create it, or correct LCPP.cache_path or --cache)"
        ) from None
    except OSError as exc:
        raise CacheError(f"cannot create the lock file {path}: {exc.strerror}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(10):  # the holder writes its pid just after it took the lock
                handle.seek(0)
                holder = handle.read().strip()
                if holder:
                    break
                time.sleep(0.02)
            holder = holder or "unknown"
            raise CacheBusy(
                f"another libcal_passagepoint run (pid {holder}) holds {path}: nothing was done; "
                "run again when it has finished"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def run_passes(
    config: Config,
    cache: Cache,
    *,
    every: float | None = None,
    date: str | None = None,
    days: int = 0,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    on_result: Callable[[PassResult], None] | None = None,
    install_signal_handlers: bool = True,
) -> PassResult:
    """One pass, or one every *every* seconds until SIGINT/SIGTERM (or *stop*); returns the last result."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if install_signal_handlers:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, _stopper(stop, signum))
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
    for assumption in config.assumptions:  # an older config.yml: say what the original did instead
        log.warning("assumed: %s", assumption)
    alerts = None
    if config.email is not None and not dry_run:
        alerts = EmailAlerts(config.email, cache, interval=every or config.interval, timeout=config.timeout)
    try:
        async with open_clients(config) as clients:
            while True:
                result = await run_pass(
                    config, libcal=clients.libcal, alma=clients.alma, passagepoint=clients.passagepoint,
                    cache=cache, date=date, days=days, dry_run=dry_run, stop=stop, alerts=alerts,
                    concurrency=config.concurrency,
                )
                if on_result is not None:
                    on_result(result)
                if not dry_run and cache.purge_due():
                    purge_old_records(cache, config.retention)
                if every is None or stop.is_set():
                    return result
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every)
                if stop.is_set():
                    return result
    finally:
        for installed_signal in installed:
            loop.remove_signal_handler(installed_signal)


def purge_old_records(cache: Cache, retention: float) -> None:
    """Delete bookings that ended more than *retention* seconds ago and patrons with none left
    (the original's plan: "delete rows with past appointments"); run at most once a day."""
    bookings, passes, patrons = cache.purge(older_than=retention)
    log.info("purged %d booking(s) that ended more than %s ago, %d patron(s) with no booking left and "
             "%d pass record(s) (LCPP.retention)", bookings, format_duration(retention), patrons, passes)


def _stopper(stop: asyncio.Event, signum: int) -> Callable[[], None]:
    def handler() -> None:
        log.warning("%s received: finishing the current booking(s), then exiting", signal.Signals(signum).name)
        stop.set()

    return handler


def default_cache_path(config: Config | None, override: str | None) -> str:
    """The cache file, absolute: --cache (relative to the working directory, as any path typed on a
    command line), else LCPP.cache_path (which load_config resolved against the configuration's directory)."""
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if config is None:
        raise ValueError("no --cache and no configuration: nothing says where the cache is")
    return os.path.abspath(os.path.expanduser(config.cache_path))
