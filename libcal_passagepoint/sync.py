"""One sync pass: fetch LibCal bookings -> decide what is new -> register in PassagePoint -> save.

The pass never stops for one bad booking: a missing or malformed primary id, a user Alma does not
know, a PassagePoint error each fail only their booking, which is stored with its reason and a
``next_retry_at`` (doubling backoff) and reported once. Crash safety: the intent is committed to
the cache before ``createPreReg``; an intent still open at the start of the next pass means the
process died in between, so the booking is marked ``uncertain`` and reported (PassagePoint has no
endpoint to list or delete pre-registrations), and only re-created when the configuration says
``LCPP.reconcile: recreate``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from alma import AlmaError

from .alma_users import AlmaUser, AlmaUsers
from .cache import Cache
from .config import Config, Location
from .libcal import Booking, LibCalAuthError, LibCalClient, LibCalError, parse_bookings
from .passagepoint import (
    PassagePointAuthError,
    PassagePointClient,
    PassagePointError,
    PassagePointUnavailable,
)

__all__ = ["Alerts", "Failure", "PassResult", "PlannedBooking", "cancellation_advice", "run_pass"]

log = logging.getLogger("libcal_passagepoint")


class Alerts(Protocol):
    """Where a pass sends what a person must hear about (see alerts.py)."""

    async def notify(self, kind: str, subject: str, lines: list[str]) -> None:
        """Send one message of this kind (the implementation decides about throttling)."""

    async def flush(self) -> None:
        """Send what throttling held back, where it may go out now (once per pass, after notify)."""


@dataclass(frozen=True)
class Failure:
    """A booking that could not be registered in this pass."""

    book_id: str
    patron: str
    reason: str
    kind: str


@dataclass(frozen=True)
class PlannedBooking:
    """What a dry run would do with a booking."""

    book_id: str
    patron: str
    primary_id: str | None
    start: str
    destination: str
    action: str


@dataclass
class PassResult:
    """What one pass did; ``exit_status`` is 0 when nothing failed, else 1."""

    fetched: int = 0
    attempted: int = 0
    registered: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    uncertain: list[Failure] = field(default_factory=list)
    cancelled_after_registration: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    location_errors: list[str] = field(default_factory=list)
    no_form_answers: dict[int, str] = field(default_factory=dict)  # location id -> why its rows were not used
    bad_rows: list[str] = field(default_factory=list)
    planned: list[PlannedBooking] = field(default_factory=list)
    interrupted: bool = False
    dry_run: bool = False

    @property
    def exit_status(self) -> int:
        """1 if a booking failed or a location could not be fetched in this pass, else 0."""
        return 1 if (self.failed or self.uncertain or self.location_errors or self.no_form_answers) else 0

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for the cache and ``status``."""
        return {
            "fetched": self.fetched,
            "attempted": self.attempted,
            "registered": len(self.registered),
            "failed": len(self.failed),
            "uncertain": len(self.uncertain),
            "cancelled_after_registration": len(self.cancelled_after_registration),
            "skipped": dict(self.skipped),
            "location_errors": list(self.location_errors),
            "no_form_answers": list(self.no_form_answers.values()),
            "interrupted": self.interrupted,
        }

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _book_row(booking: Booking, location: Location) -> dict[str, Any]:
    return {
        "book_id": booking.book_id,
        "lid": booking.lid,
        "primary_id": booking.primary_id,
        "patron": booking.patron,
        "start_time": int(booking.start.timestamp()),
        "end_time": int(booking.end.timestamp()),
        "destination": location.destination,
    }


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cancellation_advice(row: Any) -> str:
    """What to do about a booking cancelled in LibCal after its pre-registration was (maybe) created."""
    if row["prereg_id"] is not None:
        return (f"was cancelled in LibCal after pre-registration {row['prereg_id']} was created: remove it in "
                "PassagePoint by hand (no API to delete it is known)")
    return (f"was cancelled in LibCal while its pre-registration is uncertain: if PassagePoint has a pre-registration "
            f"of visitor {row['visitor_id']} at {row['destination']} from {_when(row['start_time'])}, remove it by "
            "hand (do not create one)")


def category_for(user: AlmaUser, mapping: dict[str, str], default: str) -> str:
    """The PassagePoint category of an Alma user: mapped by group code, else by group description."""
    for key in (user.user_group, user.user_group_desc):
        if key and mapping.get(key):  # an entry left blank counts as not mapped
            return mapping[key]
    return default


def lacks_form_answers(rows: list[Any], primary_id_field: str) -> bool:
    """True when LibCal sent several bookings and no row carries the id question's key at all: the
    form answers were not sent (a wrong parameter spelling or question id). A single row without it
    may be one patron's omission: that booking fails on its own."""
    return len(rows) > 1 and not any(isinstance(row, dict) and primary_id_field in row for row in rows)


def destination_check(known: list[str] | None, locations: Iterable[Location]) -> tuple[dict[str, str], str | None]:
    """Reasons to fail the bookings of each mapped destination PassagePoint positively lacks, and a
    warning when its getDestinations answer cannot tell (its shape is not public).

    An answer that is empty, not understood (*known* None), or names none of the mapped
    destinations is far more likely misread than proof that every destination is gone: nothing
    fails on it.
    """
    mapped: dict[str, list[Location]] = {}
    for location in locations:
        mapped.setdefault(location.destination, []).append(location)
    off = "set LCPP.check_destinations: false to stop asking"
    if not known:
        return {}, f"PassagePoint's getDestinations answer was empty or not understood: destinations not checked ({off})"
    if not set(known) & set(mapped):
        shown = ", ".join(repr(name) for name in list(known)[:5])
        return {}, (f"PassagePoint's getDestinations answer names none of the mapped destinations (it names {shown}"
                    f"{', …' if len(known) > 5 else ''}): taken as not understood, destinations not checked ({off})")
    return {
        destination: (f"destination {destination!r} (PassagePoint.location_mapping for LibCal location "
                      f"{', '.join(str(location.id) for location in where)}) does not exist in PassagePoint: "
                      "create it there or fix the mapping")
        for destination, where in mapped.items() if destination not in known
    }, None


@dataclass
class _Work:
    booking: Booking
    location: Location
    row: dict[str, Any]


async def _fetch(config: Config, libcal: LibCalClient, result: PassResult, date: str | None, days: int) -> list[tuple[Booking, Location]]:
    async def one(location: Location) -> list[tuple[Booking, Location]]:
        try:
            rows = await libcal.fetch_bookings(location.id, date=date, days=days)
        except LibCalAuthError:
            raise
        except LibCalError as exc:
            message = f"LibCal location {location.id} ({location.name}): {exc}"
            log.error("could not fetch bookings: %s", message)
            result.location_errors.append(message)
            return []
        if lacks_form_answers(rows, config.libcal.primary_id_field):
            message = (
                f"LibCal returned {len(rows)} booking row(s) for location {location.id} ({location.name}) and none "
                f"carries {config.libcal.primary_id_field}: LibCal did not send the form answers. Check that "
                f"LibCal.primary_id_field is the id of the question that asks for the university id, and that "
                f"this LibCal instance honours {config.libcal.form_answers_param}=1 (LibCal.form_answers_param); "
                "none of these bookings was attempted"
            )
            log.error("%s", message)
            result.no_form_answers[location.id] = message
            return []
        bookings, problems = parse_bookings(rows, config.libcal.primary_id_field)
        for problem in problems:
            log.warning("skipped an unusable LibCal row: %s", problem)
        result.bad_rows.extend(problems)
        return [(booking, location) for booking in bookings]

    fetched: list[tuple[Booking, Location]] = []
    seen: set[str] = set()
    for location in config.libcal.locations:  # sequential: a few requests, and a stable order
        for booking, where in await one(location):
            if booking.book_id not in seen:
                seen.add(booking.book_id)
                fetched.append((booking, where))
    return fetched


async def run_pass(
    config: Config,
    *,
    libcal: LibCalClient,
    alma: AlmaUsers,
    passagepoint: PassagePointClient,
    cache: Cache,
    date: str | None = None,
    days: int = 0,
    dry_run: bool = False,
    now: float | None = None,
    stop: asyncio.Event | None = None,
    alerts: Alerts | None = None,
    concurrency: int = 8,
    on_prereg_created: Callable[[str, int], None] | None = None,
) -> PassResult:
    """Run one pass and return what happened; only LibCal/PassagePoint auth errors propagate."""
    now = time.time() if now is None else now
    stop = stop or asyncio.Event()
    result = PassResult(dry_run=dry_run)
    pass_id = None if dry_run else cache.start_pass()

    # Reconcile: an intent left open means the process died between createPreReg and the save.
    if not dry_run and config.reconcile == "report":
        for row in cache.in_state("intent"):
            reason = (
                f"the previous run stopped between createPreReg and saving its answer: check PassagePoint "
                f"for a pre-registration of visitor {row['visitor_id']} at {row['destination']} from "
                f"{_when(row['start_time'])} and create it by hand if it is missing"
            )
            cache.record_uncertain(row["book_id"], reason)
            result.uncertain.append(Failure(row["book_id"], row["patron"], reason, "prereg_uncertain"))

    fetched = await _fetch(config, libcal, result, date, days)
    result.fetched = len(fetched)
    cached = cache.bookings(booking.book_id for booking, _ in fetched)
    statuses = set(config.libcal.statuses)
    todo: list[_Work] = []
    for booking, location in fetched:
        row = cached.get(booking.book_id)
        state = row["state"] if row else None
        if booking.cancelled:
            result._skip("cancelled")
            if dry_run:
                continue
            if state in ("registered", "uncertain", "intent") and row["cancelled_at"] is None:
                cache.mark_cancelled_after_registration(booking.book_id, datetime.fromtimestamp(now, UTC).isoformat())
            elif state == "failed":
                cache.record_cancelled(_book_row(booking, location), cancelled_at=datetime.fromtimestamp(now, UTC).isoformat())
            continue
        if state in ("registered", "uncertain", "cancelled"):
            result._skip(state)
            continue
        if state == "intent" and config.reconcile == "report":
            result._skip("uncertain")
            continue
        if booking.status not in statuses:
            result._skip("status")
            continue
        if state == "failed" and row["next_retry_at"] and row["next_retry_at"] > now:
            result._skip("waiting_retry")
            continue
        if state is None and booking.end.timestamp() <= now:
            result._skip("ended")
            continue
        todo.append(_Work(booking, location, _book_row(booking, location)))

    if dry_run:
        pattern = re.compile(config.primary_id_pattern)
        for work in todo:
            action = "retry" if work.booking.book_id in cached else "register"
            if work.booking.primary_id is None:
                action = "fail (no primary id)"
            elif not pattern.fullmatch(work.booking.primary_id):
                action = "fail (malformed primary id)"
            result.planned.append(PlannedBooking(
                work.booking.book_id, work.booking.patron, work.booking.primary_id,
                work.booking.start.isoformat(), work.location.destination, action,
            ))
        return result

    result.attempted = len(todo)
    if todo:
        await _register(config, todo, alma=alma, passagepoint=passagepoint, cache=cache, result=result,
                        stop=stop, concurrency=concurrency, on_prereg_created=on_prereg_created, now=now)

    for row in cache.unreported_cancellations():
        result.cancelled_after_registration.append(row["book_id"])
    await _report(config, cache, result, alerts)
    cache.finish_pass(pass_id, exit_status=result.exit_status, summary=result.summary())
    return result


async def _register(
    config: Config,
    todo: list[_Work],
    *,
    alma: AlmaUsers,
    passagepoint: PassagePointClient,
    cache: Cache,
    result: PassResult,
    stop: asyncio.Event,
    concurrency: int,
    on_prereg_created: Callable[[str, int], None] | None,
    now: float,
) -> None:
    pattern = re.compile(config.primary_id_pattern)
    pp_slots = asyncio.Semaphore(max(1, concurrency))
    users: dict[str, asyncio.Task[tuple[AlmaUser | None, int | None]]] = {}
    visitors: dict[str, asyncio.Task[int]] = {}
    destinations_checked: dict[str, str | None] = {}

    def fail(work: _Work, reason: str, kind: str) -> None:
        if cache.record_failure(work.row, reason=reason, retry_base=config.retry_base, retry_max=config.retry_max, now=now):
            result.failed.append(Failure(work.booking.book_id, work.booking.patron, reason, kind))
        else:
            result.failed.append(Failure(work.booking.book_id, work.booking.patron, reason, "repeat"))

    async def resolve_user(primary_id: str) -> tuple[AlmaUser | None, int | None]:
        row = cache.user(primary_id)
        if row is not None and row["visitor_id"] is not None:
            return AlmaUser(primary_id, row["barcode"], row["user_group"], ""), int(row["visitor_id"])
        return await alma.lookup_user(primary_id), None

    async def create_visitor(work: _Work, user: AlmaUser) -> int:
        booking = work.booking
        return await passagepoint.find_or_create_visitor(
            unique_id=user.barcode,
            first_name=booking.first_name,
            last_name=booking.last_name,
            email=booking.email,
            category=category_for(user, config.passagepoint.user_mapping, config.passagepoint.default_category),
            mobile_phone=user.primary_id,
        )

    if config.check_destinations:
        try:
            known = await passagepoint.get_destinations()
        except PassagePointError as exc:  # an optional check: even a 401 for it (bad credentials fail the next call)
            log.warning("could not list PassagePoint destinations (%s); going on without checking them", exc)
        else:
            missing, warning = destination_check(known, config.libcal.locations)
            destinations_checked.update(missing)
            if warning:
                log.warning("%s", warning)

    async def process(work: _Work) -> None:
        booking = work.booking
        primary_id = booking.primary_id
        if primary_id is None:
            fail(work, f"no primary id: the LibCal booking has no answer to {config.libcal.primary_id_field} (if every "
                       "booking says so, check LibCal.primary_id_field and LibCal.form_answers_param)", "bad_primary_id")
            return
        if not pattern.fullmatch(primary_id):
            fail(work, f"the answer to {config.libcal.primary_id_field} is not a well-formed university id "
                       "(LCPP.primary_id_pattern): correct it in the LibCal booking", "bad_primary_id")
            return
        problem = destinations_checked.get(work.location.destination)
        if problem:
            fail(work, problem, "destination")
            return
        if primary_id not in users:
            users[primary_id] = asyncio.ensure_future(resolve_user(primary_id))
        try:
            user, visitor_id = await asyncio.shield(users[primary_id])
        except AlmaError as exc:
            fail(work, str(exc), type(exc).__name__)
            return
        cached_visitor = visitor_id is not None
        async with pp_slots:
            if stop.is_set():
                result.interrupted = True
                return
            try:
                if visitor_id is None:
                    if primary_id not in visitors:
                        visitors[primary_id] = asyncio.ensure_future(create_visitor(work, user))
                    visitor_id = await asyncio.shield(visitors[primary_id])
                cache.record_intent(work.row, visitor_id=visitor_id, user=(primary_id, user.barcode, user.user_group))
            except PassagePointAuthError:
                raise
            except PassagePointError as exc:
                fail(work, f"finding or creating the PassagePoint visitor failed: {exc}", "passagepoint")
                return
            try:
                prereg_id = await passagepoint.create_prereg(
                    start=work.row["start_time"], end=work.row["end_time"],
                    visitor_id=visitor_id, destination=work.location.destination,
                )
            except PassagePointAuthError:
                raise
            except PassagePointUnavailable as exc:
                if exc.maybe_applied and config.reconcile == "report":
                    reason = (
                        f"createPreReg got no clear answer ({exc}); it may have been created: check PassagePoint "
                        f"for visitor {visitor_id} at {work.location.destination} from {_when(work.row['start_time'])}"
                    )
                    cache.record_uncertain(booking.book_id, reason)
                    result.uncertain.append(Failure(booking.book_id, booking.patron, reason, "prereg_uncertain"))
                else:
                    fail(work, f"PassagePoint createPreReg: {exc}", "passagepoint")
                return
            except PassagePointError as exc:
                note = ""
                if cached_visitor:
                    # The visitor may have been removed or merged in PassagePoint since it was
                    # cached: the next try looks it up (or creates it) again by barcode.
                    cache.forget_visitor(primary_id)
                    note = f"; the cached visitor id {visitor_id} was dropped, the next try looks the visitor up again"
                fail(work, f"PassagePoint createPreReg: {exc}{note}", "passagepoint")
                return
            if on_prereg_created is not None:
                on_prereg_created(booking.book_id, prereg_id)
            cache.record_registered(work.row, visitor_id=visitor_id, prereg_id=prereg_id)
            result.registered.append(booking.book_id)
            log.info("registered booking %s (%s) as pre-registration %s", booking.book_id, booking.patron, prereg_id)

    fatal: list[Exception] = []

    async def guarded(work: _Work) -> None:
        try:
            await process(work)
        except (PassagePointAuthError, LibCalAuthError) as exc:
            # Credentials refused: no booking can succeed. Let the ones in flight finish, start no more.
            fatal.append(exc)
            stop.set()
        except Exception as exc:  # bad data must never stop the pass
            log.exception("unexpected error on booking %s", work.booking.book_id)
            fail(work, f"unexpected error: {exc!r}", "unexpected")

    try:
        await asyncio.gather(*(guarded(work) for work in todo))
    finally:
        for task in [*users.values(), *visitors.values()]:
            task.cancel()
    if fatal:
        raise fatal[0]


async def _report(config: Config, cache: Cache, result: PassResult, alerts: Alerts | None) -> None:
    new_failures = [f for f in result.failed if f.kind != "repeat"]
    for failure in new_failures:
        row = cache.booking(failure.book_id)
        retry = f"; next try after {_when(row['next_retry_at'])}" if row and row["next_retry_at"] else ""
        log.error("booking %s (%s) failed: %s%s", failure.book_id, failure.patron, failure.reason, retry)
    for failure in result.uncertain:
        log.error("booking %s (%s) is uncertain: %s", failure.book_id, failure.patron, failure.reason)
    cancelled = [cache.booking(book_id) for book_id in result.cancelled_after_registration]
    for row in cancelled:
        log.warning("booking %s (%s) %s", row["book_id"], row["patron"], cancellation_advice(row))
    if alerts is not None:
        if new_failures:
            await alerts.notify(
                "booking_failed", f"{len(new_failures)} LibCal booking(s) could not be pre-registered",
                [f"{f.book_id} ({f.patron}): {f.reason}" for f in new_failures],
            )
        if result.uncertain:
            await alerts.notify(
                "prereg_uncertain", f"{len(result.uncertain)} pre-registration(s) may or may not exist",
                [f"{f.book_id} ({f.patron}): {f.reason}" for f in result.uncertain],
            )
        if cancelled:
            await alerts.notify(
                "booking_cancelled", f"{len(cancelled)} pre-registered booking(s) were cancelled in LibCal",
                [f"{r['book_id']} ({r['patron']}): {cancellation_advice(r)}" for r in cancelled],
            )
        if result.location_errors:
            await alerts.notify("libcal_error", "LibCal bookings could not be fetched", list(result.location_errors))
        # Mailed when a location starts lacking the answers, not again every pass until it is fixed.
        already = cache.flags("no_form_answers")
        new = [message for lid, message in result.no_form_answers.items() if str(lid) not in already]
        if new:
            await alerts.notify("no_form_answers", "LibCal sent bookings without the id question's answers", new)
        await alerts.flush()
    cache.set_flags("no_form_answers", {str(lid) for lid in result.no_form_answers})
    cache.mark_reported([f.book_id for f in new_failures] + [f.book_id for f in result.uncertain])
    cache.mark_reported(result.cancelled_after_registration, cancellation=True)
