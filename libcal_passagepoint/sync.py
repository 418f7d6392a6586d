"""One sync pass: fetch LibCal bookings -> decide what is new -> register in PassagePoint -> save.

The decisions (what to register, skip or retry, what an answer means) are plain functions in
decisions.py; this module fetches, calls them, talks to the services and saves the answers.

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
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from alma import AlmaError, AlmaUnauthorized

from .alma_users import AlmaUser, AlmaUsers
from .cache import Cache
from .config import Config, Location
from .decisions import (
    Decision,
    Failure,
    Outcome,
    PlannedBooking,
    alerts_for,
    booking_problem,
    cancellation_advice,
    category_for,
    decide,
    destination_check,
    format_when,
    lacks_form_answers,
    lookup_outcome,
    open_intent_failure,
    pass_stop_reason,
    patron_from_cache,
    plan,
    prereg_outcome,
    unexpected_outcome,
    visitor_outcome,
)
from .libcal import Booking, LibCalAuthError, LibCalClient, LibCalError, parse_bookings
from .passagepoint import (
    PassagePointAuthError,
    PassagePointClient,
    PassagePointError,
    PassagePointUnavailable,
)

#: Errors that mean a configured credential (or endpoint) is refused: no booking can succeed, the
#: pass stops and the command exits 2.
CREDENTIALS_REFUSED = (LibCalAuthError, PassagePointAuthError, AlmaUnauthorized)

__all__ = [
    "CREDENTIALS_REFUSED",
    "Alerts",
    "Failure",
    "PassResult",
    "PlannedBooking",
    "cancellation_advice",
    "category_for",
    "destination_check",
    "lacks_form_answers",
    "run_pass",
]

log = logging.getLogger("libcal_passagepoint")
T = TypeVar("T")


class Alerts(Protocol):
    """Where a pass sends what a person must hear about (see alerts.py)."""

    async def notify(self, kind: str, subject: str, lines: list[str]) -> None:
        """Send one message of this kind (the implementation decides about throttling)."""

    async def flush(self) -> None:
        """Send what throttling held back, where it may go out now (once per pass, after notify)."""


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
    stopped: str | None = None  # why the pass stopped before it had sent every booking
    left: int = 0  # bookings not sent (a signal, or the pass stopped): tried again by the next pass
    dry_run: bool = False

    @property
    def exit_status(self) -> int:
        """1 if a booking failed, a location could not be fetched or the pass stopped early, else 0."""
        return 1 if (self.failed or self.uncertain or self.location_errors or self.no_form_answers
                     or self.stopped) else 0

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
            "stopped": self.stopped,
            "left": self.left,
        }

    def skip(self, reason: str) -> None:
        """Count one booking skipped for *reason*."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _book_row(booking: Booking, location: Location) -> dict[str, Any]:
    """The booking as the cache stores it."""
    return {
        "book_id": booking.book_id,
        "lid": booking.lid,
        "primary_id": booking.primary_id,
        "patron": booking.patron,
        "start_time": int(booking.start.timestamp()),
        "end_time": int(booking.end.timestamp()),
        "destination": location.destination,
    }


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
    result = PassResult(dry_run=dry_run)
    if dry_run:
        decisions = await _fetch_and_decide(config, libcal, cache, result, date=date, days=days, now=now)
        result.planned = plan(decisions, pattern=re.compile(config.primary_id_pattern),
                              primary_id_field=config.libcal.primary_id_field)
        return result

    pass_id = cache.start_pass()
    if config.reconcile == "report":
        # An intent left open means the process died between createPreReg and the save.
        for row in cache.in_state("intent"):
            failure = open_intent_failure(row)
            cache.record_uncertain(failure.book_id, failure.reason)
            result.uncertain.append(failure)
    try:
        decisions = await _fetch_and_decide(config, libcal, cache, result, date=date, days=days, now=now)
        _save_cancellations(cache, decisions, now)
        todo = [decision for decision in decisions if decision.action != "skip"]
        result.attempted = len(todo)
        if todo:
            registration = _Registration(
                config, alma=alma, passagepoint=passagepoint, cache=cache, result=result, stop=stop or asyncio.Event(),
                now=now, slots=asyncio.Semaphore(max(1, concurrency)), on_prereg_created=on_prereg_created,
            )
            await registration.run(todo)
    except CREDENTIALS_REFUSED as exc:
        # What was registered before the refusal is saved, what failed or is uncertain is reported,
        # and the pass is on record as stopped.
        try:
            await _report(config, cache, result, alerts)
        finally:
            cache.finish_pass(pass_id, exit_status=2, summary={**result.summary(), "error": str(exc)})
        raise

    result.cancelled_after_registration.extend(row["book_id"] for row in cache.unreported_cancellations())
    await _report(config, cache, result, alerts)
    cache.finish_pass(pass_id, exit_status=result.exit_status, summary=result.summary())
    return result


async def _fetch_and_decide(
    config: Config, libcal: LibCalClient, cache: Cache, result: PassResult, *, date: str | None, days: int, now: float
) -> list[Decision]:
    """Fetch every location's bookings, read their cache rows, and decide what to do with each."""
    fetched = await _fetch(config, libcal, result, date, days)
    result.fetched = len(fetched)
    cached = cache.bookings(booking.book_id for booking, _ in fetched)
    decisions = decide(fetched, cached, now, statuses=config.libcal.statuses, reconcile=config.reconcile)
    for decision in decisions:
        if decision.skipped:
            result.skip(decision.skipped)
    return decisions


def _save_cancellations(cache: Cache, decisions: list[Decision], now: float) -> None:
    """Note in the cache the bookings cancelled in LibCal that it knows (reported later, once)."""
    cancelled_at = datetime.fromtimestamp(now, UTC).isoformat()
    for decision in decisions:
        if decision.cancellation == "after_registration":
            cache.mark_cancelled_after_registration(decision.booking.book_id, cancelled_at)
        elif decision.cancellation == "before_registration":
            cache.record_cancelled(_book_row(decision.booking, decision.location), cancelled_at=cancelled_at)


class _LookupsStopped(Exception):
    """Alma lookups stopped in this pass (out of reach, daily quota): the patron is not looked up."""


class _OncePerPatron(Generic[T]):
    """One call per patron, its answer shared by all of the patron's bookings in the pass: bookings
    running concurrently never look one patron up twice in Alma, nor create two visitors."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Future[T]] = {}

    async def get(self, primary_id: str, call: Callable[[], Awaitable[T]]) -> T:
        """The answer of *call* for this patron, started by the first booking that asks."""
        if primary_id not in self._tasks:
            self._tasks[primary_id] = asyncio.ensure_future(call())
        # shielded: a booking cancelled while it waits must not cancel the call other bookings share
        return await asyncio.shield(self._tasks[primary_id])

    def cancel(self) -> None:
        """Cancel the calls still running (the pass is over)."""
        for task in self._tasks.values():
            task.cancel()


@dataclass
class _Registration:
    """The register step of a pass: for each booking to attempt, the calls in order, each answer saved.

    At most ``slots`` bookings are in PassagePoint's hands at once; Alma lookups run concurrently
    under the client's own limiter. Once ``stop`` (a signal, for every pass) or ``halted`` (this pass
    cannot go on) is set, no new booking is looked up or enters PassagePoint.
    """

    config: Config
    alma: AlmaUsers
    passagepoint: PassagePointClient
    cache: Cache
    result: PassResult
    stop: asyncio.Event
    now: float
    slots: asyncio.Semaphore
    on_prereg_created: Callable[[str, int], None] | None = None
    missing_destinations: dict[str, str] = field(default_factory=dict)
    users: _OncePerPatron[tuple[AlmaUser, int | None]] = field(default_factory=_OncePerPatron)
    visitors: _OncePerPatron[int] = field(default_factory=_OncePerPatron)
    fatal: list[Exception] = field(default_factory=list)
    halted: asyncio.Event = field(default_factory=asyncio.Event)  # this pass only; ``stop`` is the signal's
    lookups_halted: asyncio.Event = field(default_factory=asyncio.Event)  # Alma: patrons in the cache go on
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pattern = re.compile(self.config.primary_id_pattern)

    async def run(self, todo: list[Decision]) -> None:
        """Attempt every booking; raise the first refusal of credentials after the others finished."""
        # Before any Alma lookup: PassagePoint out of reach, or refusing the login, fails them all.
        try:
            await self.passagepoint.ready()  # logs in unless a token is held
        except PassagePointUnavailable as exc:
            self._stop_pass(pass_stop_reason(exc) or str(exc))
        if self.config.check_destinations and not self.halted.is_set():
            await self._check_destinations()  # a request in every pass, so a token held is no blind spot
        try:
            await asyncio.gather(*(self._guarded(decision) for decision in todo))
        finally:
            self.users.cancel()
            self.visitors.cancel()
        if self.fatal:
            raise self.fatal[0]

    async def _check_destinations(self) -> None:
        try:
            known = await self.passagepoint.get_destinations()
        except PassagePointError as exc:  # an optional check (even a 401 for it), unless PassagePoint is out of reach
            if (reason := pass_stop_reason(exc)) is not None:
                self._stop_pass(reason)
            else:
                log.warning("could not list PassagePoint destinations (%s); going on without checking them", exc)
            return
        self.missing_destinations, warning = destination_check(known, self.config.libcal.locations)
        if warning:
            log.warning("%s", warning)

    async def _guarded(self, decision: Decision) -> None:
        try:
            await self._register(decision)
        except CREDENTIALS_REFUSED as exc:
            # Credentials refused: no booking can succeed. Let the ones in flight finish, start no more.
            self.fatal.append(exc)
            self.halted.set()
        except Exception as exc:  # bad data must never stop the pass
            log.exception("unexpected error on booking %s", decision.booking.book_id)
            self._save(decision, unexpected_outcome(exc))

    async def _register(self, decision: Decision) -> None:
        booking, location = decision.booking, decision.location
        problem = booking_problem(booking, location, pattern=self.pattern,
                                  primary_id_field=self.config.libcal.primary_id_field,
                                  missing_destinations=self.missing_destinations)
        if problem is not None:
            self._fail(decision, problem.reason, problem.kind)
            return
        primary_id = booking.primary_id
        assert primary_id is not None  # booking_problem fails a booking without one
        if self.stop.is_set() or self.halted.is_set():
            self._leave()
            return
        try:
            user, visitor_id = await self.users.get(primary_id, functools.partial(self._patron, primary_id))
        except _LookupsStopped:
            self._leave()
            return
        except AlmaError as exc:
            if self._left_by_outage(exc, lookups_only=True):  # patrons already known still go on
                return
            outcome = lookup_outcome(exc)
            if outcome.verdict == "stop":
                raise
            self._save(decision, outcome)
            return
        async with self.slots:
            if self.stop.is_set() or self.halted.is_set():
                self._leave()
                return
            cached_visitor = visitor_id is not None
            if visitor_id is None:
                try:
                    visitor_id = await self.visitors.get(primary_id, functools.partial(self._create_visitor, booking, user))
                except PassagePointError as exc:
                    if self._left_by_outage(exc):
                        return
                    outcome = visitor_outcome(exc)
                    if outcome.verdict == "stop":
                        raise
                    self._save(decision, outcome)
                    return
                if self.stop.is_set() or self.halted.is_set():  # stopped while the visitor was made
                    self._leave()
                    return
            row = _book_row(booking, location)
            before = self.cache.booking(booking.book_id)
            self.cache.record_intent(row, visitor_id=visitor_id, user=(primary_id, user.barcode, user.user_group))
            try:
                prereg_id = await self.passagepoint.create_prereg(
                    start=row["start_time"], end=row["end_time"], visitor_id=visitor_id, destination=location.destination,
                )
            except PassagePointError as exc:
                if self._left_by_outage(exc):  # not sent: as if never tried
                    self.cache.withdraw_intent(booking.book_id, before)
                    return
                outcome = prereg_outcome(exc, reconcile=self.config.reconcile, visitor_id=visitor_id,
                                         cached_visitor=cached_visitor, destination=location.destination,
                                         start=row["start_time"])
                if outcome.verdict == "stop":  # refused at login or with a 401: nothing was applied
                    self.cache.withdraw_intent(booking.book_id, before)
                    raise
                if outcome.forget_visitor:
                    self.cache.forget_visitor(primary_id)
                self._save(decision, outcome)
                return
            if self.on_prereg_created is not None:
                self.on_prereg_created(booking.book_id, prereg_id)
            self.cache.record_registered(row, visitor_id=visitor_id, prereg_id=prereg_id)
            self.result.registered.append(booking.book_id)
            log.info("registered booking %s (%s) as pre-registration %s", booking.book_id, booking.patron, prereg_id)

    async def _patron(self, primary_id: str) -> tuple[AlmaUser, int | None]:
        """The patron's barcode and group (and visitor id, if known): from the cache, else from Alma."""
        known = patron_from_cache(primary_id, self.cache.user(primary_id))
        if known is not None:
            return known
        if self.lookups_halted.is_set():
            raise _LookupsStopped
        return await self.alma.lookup_user(primary_id), None

    async def _create_visitor(self, booking: Booking, user: AlmaUser) -> int:
        pp = self.config.passagepoint
        return await self.passagepoint.find_or_create_visitor(
            unique_id=user.barcode,
            first_name=booking.first_name,
            last_name=booking.last_name,
            email=booking.email,
            category=category_for(user, pp.user_mapping, pp.default_category),
            mobile_phone=user.primary_id,
        )

    def _stop_pass(self, reason: str, *, lookups_only: bool = False) -> None:
        """No booking can succeed now (PassagePoint), or none that needs Alma (*lookups_only*): start
        no more of them. The first reason is the one reported."""
        if self.result.stopped is None:
            self.result.stopped = reason
            log.error("pass stopped: %s", reason)
        (self.lookups_halted if lookups_only else self.halted).set()

    def _left_by_outage(self, exc: AlmaError | PassagePointError, *, lookups_only: bool = False) -> bool:
        """If *exc* stops the pass (:func:`pass_stop_reason`), stop it and count this booking as left."""
        reason = pass_stop_reason(exc)
        if reason is None:
            return False
        self._stop_pass(reason, lookups_only=lookups_only)
        self._leave()
        return True

    def _leave(self) -> None:
        """A booking not sent, because of a signal or a stopped pass: its cache row is untouched."""
        self.result.left += 1
        if self.stop.is_set():
            self.result.interrupted = True

    def _save(self, decision: Decision, outcome: Outcome) -> None:
        """Store a failed or uncertain booking as its Outcome says."""
        booking = decision.booking
        if outcome.verdict == "uncertain":
            self.cache.record_uncertain(booking.book_id, outcome.reason)
            self.result.uncertain.append(Failure(booking.book_id, booking.patron, outcome.reason, outcome.kind))
        else:
            self._fail(decision, outcome.reason, outcome.kind)

    def _fail(self, decision: Decision, reason: str, kind: str) -> None:
        """Store the failure with its next retry time; one reported before with this reason is a repeat."""
        booking = decision.booking
        config = self.config
        report = self.cache.record_failure(_book_row(booking, decision.location), reason=reason,
                                           retry_base=config.retry_base, retry_max=config.retry_max, now=self.now)
        self.result.failed.append(Failure(booking.book_id, booking.patron, reason, kind if report else "repeat"))


async def _report(config: Config, cache: Cache, result: PassResult, alerts: Alerts | None) -> None:
    new_failures = [f for f in result.failed if f.kind != "repeat"]
    for failure in new_failures:
        row = cache.booking(failure.book_id)
        retry = f"; next try after {format_when(row['next_retry_at'])}" if row and row["next_retry_at"] else ""
        log.error("booking %s (%s) failed: %s%s", failure.book_id, failure.patron, failure.reason, retry)
    for failure in result.uncertain:
        log.error("booking %s (%s) is uncertain: %s", failure.book_id, failure.patron, failure.reason)
    cancelled = [row for book_id in result.cancelled_after_registration if (row := cache.booking(book_id)) is not None]
    for row in cancelled:
        log.warning("booking %s (%s) %s", row["book_id"], row["patron"], cancellation_advice(row))
    if alerts is not None:
        for alert in alerts_for(new_failures=new_failures, uncertain=result.uncertain, cancelled=cancelled,
                                location_errors=result.location_errors, no_form_answers=result.no_form_answers,
                                already_alerted=cache.flags("no_form_answers"), stopped=result.stopped):
            await alerts.notify(alert.kind, alert.subject, alert.lines)
        await alerts.flush()
    cache.set_flags("no_form_answers", {str(lid) for lid in result.no_form_answers})
    cache.mark_reported([f.book_id for f in new_failures] + [f.book_id for f in result.uncertain])
    cache.mark_reported(result.cancelled_after_registration, cancellation=True)

