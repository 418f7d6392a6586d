"""What a sync pass does, decided without talking to anyone: plain functions over plain data.

A pass (sync.py) fetches, asks these functions what to do, calls the services and saves the
answers; every choice is made here, where tests/test_lcpp_decisions.py checks it without a server:

- :func:`decide`: for each fetched booking, register it, retry it, or skip it (and why), and what
  the cache must note about a cancellation
- :func:`booking_problem`: why a booking fails before any call (no or malformed university id, a
  destination PassagePoint lacks); :func:`plan`: what a dry run would do
- :func:`lookup_outcome`, :func:`visitor_outcome`, :func:`prereg_outcome`: what an Alma or
  PassagePoint error means for the booking (an :class:`Outcome`: it failed with which reason and
  kind, it is uncertain, or the pass stops); :func:`pass_stop_reason`: which errors stop the pass
  (a service out of reach, Alma's daily quota); :func:`open_intent_failure`: what an intent left
  open by a crash means
- :func:`retry_delay`, :func:`must_report`: when a failed booking is tried again, and whether its
  failure is news
- :func:`alerts_for`: the alert messages of a pass; :func:`destination_check`,
  :func:`lacks_form_answers`, :func:`category_for`, :func:`patron_from_cache`,
  :func:`cancellation_advice`
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from alma import AlmaDailyQuotaExceeded, AlmaError, AlmaNotSent, AlmaUnauthorized

from .alma_users import AlmaUser
from .config import Location
from .libcal import Booking
from .passagepoint import PassagePointAuthError, PassagePointError, PassagePointUnavailable

__all__ = [
    "Alert",
    "CachedRow",
    "Decision",
    "Failure",
    "Outcome",
    "PlannedBooking",
    "Problem",
    "alerts_for",
    "booking_problem",
    "cancellation_advice",
    "category_for",
    "decide",
    "decide_booking",
    "destination_check",
    "format_when",
    "lacks_form_answers",
    "lookup_outcome",
    "must_report",
    "open_intent_failure",
    "patron_from_cache",
    "plan",
    "pass_stop_reason",
    "prereg_outcome",
    "retry_delay",
    "unexpected_outcome",
    "visitor_outcome",
]


class CachedRow(Protocol):
    """A booking's (or patron's) row in the cache, read by column name: an ``sqlite3.Row`` or a dict."""

    def __getitem__(self, key: str, /) -> Any: ...


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


# -- which bookings to attempt --------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What a pass does with one fetched booking.

    ``action``: ``register`` (new), ``retry`` (in the cache and due again) or ``skip``; ``skipped``
    says why (the key counted in the pass's summary); ``cancellation`` what the cache must note about a
    booking cancelled in LibCal: ``after_registration`` (its pre-registration exists, or may: someone
    must remove it) or ``before_registration`` (it had failed: never try it again).
    """

    booking: Booking
    location: Location
    action: Literal["register", "retry", "skip"]
    skipped: str | None = None
    cancellation: Literal["after_registration", "before_registration"] | None = None


def decide(
    fetched: Iterable[tuple[Booking, Location]],
    cached: Mapping[str, CachedRow],
    now: float,
    *,
    statuses: Collection[str],
    reconcile: str,
) -> list[Decision]:
    """One Decision per fetched booking, given the cache's rows of those bookings (by book id)."""
    return [decide_booking(booking, location, cached.get(booking.book_id), now, statuses=statuses, reconcile=reconcile)
            for booking, location in fetched]


def decide_booking(
    booking: Booking, location: Location, row: CachedRow | None, now: float, *, statuses: Collection[str], reconcile: str
) -> Decision:
    """The Decision for one booking and its cache row (None: never seen)."""
    state = row["state"] if row is not None else None

    def skip(reason: str) -> Decision:
        return Decision(booking, location, "skip", reason)

    if booking.cancelled:
        if state in ("registered", "uncertain", "intent") and row is not None and row["cancelled_at"] is None:
            return Decision(booking, location, "skip", "cancelled", "after_registration")
        if state == "failed":
            return Decision(booking, location, "skip", "cancelled", "before_registration")
        return skip("cancelled")
    if state in ("registered", "uncertain", "cancelled"):
        return skip(state)
    if state == "intent" and reconcile == "report":  # reported as uncertain when the pass began
        return skip("uncertain")
    if booking.status not in statuses:
        return skip("status")
    if state == "failed" and row is not None and row["next_retry_at"] and row["next_retry_at"] > now:
        return skip("waiting_retry")
    if state is None and booking.end.timestamp() <= now:
        return skip("ended")
    return Decision(booking, location, "register" if row is None else "retry")


@dataclass(frozen=True)
class Problem:
    """Why a booking fails before any call is made; ``label`` is a dry run's short form."""

    reason: str
    kind: str
    label: str


def booking_problem(
    booking: Booking,
    location: Location,
    *,
    pattern: re.Pattern[str],
    primary_id_field: str,
    missing_destinations: Mapping[str, str] | None = None,
) -> Problem | None:
    """A missing or malformed university id, or a destination PassagePoint lacks (by destination:
    the reasons from :func:`destination_check`); None when the booking can be attempted."""
    if booking.primary_id is None:
        return Problem(f"no primary id: the LibCal booking has no answer to {primary_id_field} (if every booking "
                       "says so, check LibCal.primary_id_field and LibCal.form_answers_param)",
                       "bad_primary_id", "no primary id")
    if not pattern.fullmatch(booking.primary_id):
        return Problem(f"the answer to {primary_id_field} is not a well-formed university id "
                       "(LCPP.primary_id_pattern): correct it in the LibCal booking", "bad_primary_id",
                       "malformed primary id")
    missing = (missing_destinations or {}).get(location.destination)
    if missing:
        return Problem(missing, "destination", "unknown destination")
    return None


def plan(decisions: Iterable[Decision], *, pattern: re.Pattern[str], primary_id_field: str) -> list[PlannedBooking]:
    """What a dry run prints: each booking it would attempt, and whether it would fail at once."""
    planned = []
    for decision in decisions:
        if decision.action == "skip":
            continue
        booking = decision.booking
        problem = booking_problem(booking, decision.location, pattern=pattern, primary_id_field=primary_id_field)
        planned.append(PlannedBooking(
            booking.book_id, booking.patron, booking.primary_id, booking.start.isoformat(),
            decision.location.destination, f"fail ({problem.label})" if problem else decision.action,
        ))
    return planned


# -- what an answer means ------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What an error means for one booking.

    ``fail``: stored failed with ``reason`` and ``kind``, retried on backoff; ``uncertain``: the
    pre-registration may exist, reported and never re-created automatically; ``stop``: no booking
    can succeed (credentials refused), the pass stops. ``forget_visitor``: drop the patron's
    cached visitor id, so the next try finds or creates the visitor again.
    """

    verdict: Literal["fail", "uncertain", "stop"]
    reason: str = ""
    kind: str = ""
    forget_visitor: bool = False


STOP = Outcome("stop")


def lookup_outcome(exc: AlmaError) -> Outcome:
    """An Alma user lookup failed (AlmaUsers already retried what a retry helps): the booking fails,
    its kind the error's name (AlmaNotFound, AlmaRateLimited, ...); a refused API key (or a
    users_endpt that is not Alma's gateway) stops the pass, as no lookup can succeed."""
    if isinstance(exc, AlmaUnauthorized):
        return STOP
    return Outcome("fail", str(exc), type(exc).__name__)


def visitor_outcome(exc: PassagePointError) -> Outcome:
    """Finding or creating the PassagePoint visitor failed."""
    if isinstance(exc, PassagePointAuthError):
        return STOP
    return Outcome("fail", f"finding or creating the PassagePoint visitor failed: {exc}", "passagepoint")


def prereg_outcome(
    exc: PassagePointError, *, reconcile: str, visitor_id: int, cached_visitor: bool, destination: str, start: float
) -> Outcome:
    """createPreReg failed. A lost answer (``maybe_applied``) is uncertain unless LCPP.reconcile is
    ``recreate``; a refusal for a visitor id taken from the cache drops that id (the visitor may
    have been removed or merged in PassagePoint since)."""
    if isinstance(exc, PassagePointAuthError):
        return STOP
    if isinstance(exc, PassagePointUnavailable):
        if exc.maybe_applied and reconcile == "report":
            return Outcome("uncertain", f"createPreReg got no clear answer ({exc}); it may have been created: check "
                                        f"PassagePoint for visitor {visitor_id} at {destination} from {format_when(start)}",
                           "prereg_uncertain")
        return Outcome("fail", _about_prereg(exc), "passagepoint")
    if cached_visitor:
        return Outcome("fail", f"{_about_prereg(exc)}; the cached visitor id {visitor_id} was dropped, "
                               "the next try looks the visitor up again", "passagepoint", forget_visitor=True)
    return Outcome("fail", _about_prereg(exc), "passagepoint")


def _about_prereg(exc: PassagePointError) -> str:
    """The error as a reason that names createPreReg once (the client's own messages mostly do)."""
    text = str(exc)
    return text if text.startswith("PassagePoint createPreReg") else f"PassagePoint createPreReg: {text}"


def pass_stop_reason(exc: AlmaError | PassagePointError) -> str | None:
    """Why no booking of the pass can succeed after this error, or None when it concerns one booking.

    A service that cannot be reached (nothing was sent), or Alma's daily quota used up, would fail
    every booking after it, each with its own retry backoff: the pass stops there instead, and the
    bookings it did not send keep their state for the next pass.
    """
    if isinstance(exc, PassagePointUnavailable) and not exc.maybe_applied:
        return f"{exc}; the bookings not sent to PassagePoint wait for the next pass"
    if isinstance(exc, AlmaNotSent):
        return f"Alma cannot be reached ({exc}); the bookings not looked up wait for the next pass"
    if isinstance(exc, AlmaDailyQuotaExceeded):
        return f"{exc}; the bookings not looked up wait for the next pass"
    return None


def unexpected_outcome(exc: Exception) -> Outcome:
    """Anything else that went wrong with one booking: it fails alone, bad data never stops a pass."""
    return Outcome("fail", f"unexpected error: {exc!r}", "unexpected")


def open_intent_failure(row: CachedRow) -> Failure:
    """An intent still open when a pass begins: the process died between createPreReg and saving
    its answer, so the pre-registration may exist (PassagePoint cannot list them)."""
    reason = (
        f"the previous run stopped between createPreReg and saving its answer: check PassagePoint "
        f"for a pre-registration of visitor {row['visitor_id']} at {row['destination']} from "
        f"{format_when(row['start_time'])} and create it by hand if it is missing"
    )
    return Failure(row["book_id"], row["patron"], reason, "prereg_uncertain")


def retry_delay(attempts: int, *, base: int, maximum: int) -> int:
    """Seconds until a booking that failed *attempts* times is tried again: *base* doubling, capped."""
    return int(min(maximum, base * 2 ** (attempts - 1)))


def must_report(previous: CachedRow | None, reason: str) -> bool:
    """Whether a failure is news: a first failure, a new reason, or one not reported yet."""
    return previous is None or previous["reason"] != reason or not previous["reported"]


# -- patrons, destinations, what LibCal sent -------------------------------------------------------

def category_for(user: AlmaUser, mapping: dict[str, str], default: str) -> str:
    """The PassagePoint category of an Alma user: mapped by group code, else by group description."""
    for key in (user.user_group, user.user_group_desc):
        if key and mapping.get(key):  # an entry left blank counts as not mapped
            return mapping[key]
    return default


def patron_from_cache(primary_id: str, row: CachedRow | None) -> tuple[AlmaUser, int] | None:
    """A patron seen before (cached barcode and visitor id) needs no Alma lookup and no visitor call."""
    if row is None or row["visitor_id"] is None:
        return None
    return AlmaUser(primary_id, row["barcode"], row["user_group"], ""), int(row["visitor_id"])


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


def cancellation_advice(row: CachedRow) -> str:
    """What to do about a booking cancelled in LibCal after its pre-registration was (maybe) created."""
    if row["prereg_id"] is not None:
        return (f"was cancelled in LibCal after pre-registration {row['prereg_id']} was created: remove it in "
                "PassagePoint by hand (no API to delete it is known)")
    return (f"was cancelled in LibCal while its pre-registration is uncertain: if PassagePoint has a pre-registration "
            f"of visitor {row['visitor_id']} at {row['destination']} from {format_when(row['start_time'])}, remove it by "
            "hand (do not create one)")


# -- what to tell people --------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    """One alert message: its kind (the unit of throttling), subject and one line per booking."""

    kind: str
    subject: str
    lines: list[str]


def alerts_for(
    *,
    new_failures: Sequence[Failure],
    uncertain: Sequence[Failure],
    cancelled: Sequence[CachedRow],
    location_errors: Sequence[str],
    no_form_answers: Mapping[int, str],
    already_alerted: Collection[str] = (),
    stopped: str | None = None,
) -> list[Alert]:
    """The alert messages of a pass. A location that lacks the form answers is alerted about when it
    starts to (its id not in *already_alerted*), not again every pass until it is fixed."""
    alerts = []
    if new_failures:
        alerts.append(Alert("booking_failed", f"{len(new_failures)} LibCal booking(s) could not be pre-registered",
                            [f"{f.book_id} ({f.patron}): {f.reason}" for f in new_failures]))
    if uncertain:
        alerts.append(Alert("prereg_uncertain", f"{len(uncertain)} pre-registration(s) may or may not exist",
                            [f"{f.book_id} ({f.patron}): {f.reason}" for f in uncertain]))
    if cancelled:
        alerts.append(Alert("booking_cancelled", f"{len(cancelled)} pre-registered booking(s) were cancelled in LibCal",
                            [f"{r['book_id']} ({r['patron']}): {cancellation_advice(r)}" for r in cancelled]))
    if location_errors:
        alerts.append(Alert("libcal_error", "LibCal bookings could not be fetched", list(location_errors)))
    if stopped:
        alerts.append(Alert("pass_stopped", "a pass stopped before it had sent every booking", [stopped]))
    new = [message for lid, message in no_form_answers.items() if str(lid) not in already_alerted]
    if new:
        alerts.append(Alert("no_form_answers", "LibCal sent bookings without the id question's answers", new))
    return alerts


def format_when(epoch: float) -> str:
    """An epoch time as messages show it: ``2030-01-15 18:15 UTC``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
