"""The sync's decisions as plain functions over plain data: no server, no cache file, no clock.

What to register, skip or retry; why a booking fails before any call; what an Alma or
PassagePoint error means for a booking; when a failure is retried and whether it is news; which
alerts a pass sends. The passes in test_lcpp_sync.py run the same functions against the simulators.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from alma import (
    AlmaDailyQuotaExceeded,
    AlmaNoAnswer,
    AlmaNotFound,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaUnauthorized,
)
from libcal_passagepoint.alma_users import AlmaUser
from libcal_passagepoint.config import DEFAULT_PRIMARY_ID_PATTERN, Location
from libcal_passagepoint.decisions import (
    Alert,
    Decision,
    Failure,
    Outcome,
    alerts_for,
    booking_problem,
    decide,
    decide_booking,
    lookup_outcome,
    must_report,
    open_intent_failure,
    pass_stop_reason,
    patron_from_cache,
    plan,
    prereg_outcome,
    retry_delay,
    unexpected_outcome,
    visitor_outcome,
)
from libcal_passagepoint.libcal import Booking
from libcal_passagepoint.passagepoint import (
    PassagePointAuthError,
    PassagePointRequestError,
    PassagePointUnavailable,
)

GELMAN = Location(8827, "Gelman Library Study Spaces", "LibCal Gelman")
START = datetime.fromisoformat("2030-01-15T13:15:00-05:00")
END = datetime.fromisoformat("2030-01-15T15:15:00-05:00")
BEFORE, DURING, AFTER = START.timestamp() - 3600, START.timestamp() + 60, END.timestamp() + 60
STATUSES = ("Confirmed", "Mediated Approved")
PATTERN = re.compile(DEFAULT_PRIMARY_ID_PATTERN)


def booking(book_id: str = "cs_1", *, primary_id: str | None = "G00000001", status: str = "Confirmed",
            cancelled: bool = False) -> Booking:
    return Booking(book_id=book_id, lid=GELMAN.id, start=START, end=END, status=status, first_name="Ada",
                   last_name="Lovelace", email="ada@example.edu", primary_id=primary_id, cancelled=cancelled)


def row(state: str, **columns: Any) -> dict[str, Any]:
    """A booking's cache row as the decisions read it."""
    return {"state": state, "cancelled_at": None, "next_retry_at": None, **columns}


# -- decide: register, retry or skip --------------------------------------------------------------

@pytest.mark.parametrize(
    ("cached", "kw", "now", "reconcile", "expected"),
    [
        (None, {}, BEFORE, "report", ("register", None, None)),
        (None, {}, DURING, "report", ("register", None, None)),  # under way: still worth registering
        (None, {}, AFTER, "report", ("skip", "ended", None)),
        (None, {"status": "Mediated Tentative"}, BEFORE, "report", ("skip", "status", None)),
        (None, {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", None)),
        (row("registered"), {}, BEFORE, "report", ("skip", "registered", None)),
        (row("registered"), {"status": "Mediated Tentative"}, BEFORE, "report", ("skip", "registered", None)),
        (row("uncertain"), {}, BEFORE, "report", ("skip", "uncertain", None)),
        (row("cancelled"), {}, BEFORE, "report", ("skip", "cancelled", None)),
        (row("intent"), {}, BEFORE, "report", ("skip", "uncertain", None)),
        (row("intent"), {}, BEFORE, "recreate", ("retry", None, None)),
        (row("failed", next_retry_at=BEFORE + 60), {}, BEFORE, "report", ("skip", "waiting_retry", None)),
        (row("failed", next_retry_at=BEFORE - 60), {}, BEFORE, "report", ("retry", None, None)),
        (row("failed"), {}, BEFORE, "report", ("retry", None, None)),
        (row("failed", next_retry_at=AFTER - 60), {}, AFTER, "report", ("retry", None, None)),  # due, though over
        (row("failed"), {"status": "Mediated Tentative"}, BEFORE, "report", ("skip", "status", None)),
        (row("registered"), {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", "after_registration")),
        (row("uncertain"), {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", "after_registration")),
        (row("intent"), {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", "after_registration")),
        (row("registered", cancelled_at="2030-01-15T08:00:00+00:00"), {"cancelled": True}, BEFORE, "report",
         ("skip", "cancelled", None)),  # noted in an earlier pass
        (row("failed"), {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", "before_registration")),
        (row("cancelled"), {"cancelled": True}, BEFORE, "report", ("skip", "cancelled", None)),
    ],
    ids=[
        "new", "new-under-way", "new-ended", "new-other-status", "new-cancelled", "registered",
        "registered-status-changed", "uncertain", "cancelled-before", "intent-report", "intent-recreate",
        "failed-waiting", "failed-due", "failed-no-retry-time", "failed-due-ended", "failed-status-changed",
        "registered-then-cancelled", "uncertain-then-cancelled", "intent-then-cancelled",
        "cancellation-already-noted", "failed-then-cancelled", "cancelled-again",
    ],
)
def test_decide_booking(cached: dict[str, Any] | None, kw: dict[str, Any], now: float, reconcile: str,
                        expected: tuple[str, str | None, str | None]) -> None:
    """Each cache state, LibCal status, cancellation and time: what the pass does with the booking."""
    decision = decide_booking(booking(**kw), GELMAN, cached, now, statuses=STATUSES, reconcile=reconcile)
    assert (decision.action, decision.skipped, decision.cancellation) == expected


def test_decide_takes_the_fetched_bookings_and_their_cache_rows_by_book_id() -> None:
    """decide(bookings, cache rows, now) -> one Decision per booking, in the order fetched."""
    fetched = [(booking("cs_new"), GELMAN), (booking("cs_done"), GELMAN), (booking("cs_due"), GELMAN)]
    cached = {"cs_done": row("registered"), "cs_due": row("failed", next_retry_at=BEFORE - 1)}
    decisions = decide(fetched, cached, BEFORE, statuses=STATUSES, reconcile="report")
    assert [(d.booking.book_id, d.action, d.skipped) for d in decisions] == [
        ("cs_new", "register", None), ("cs_done", "skip", "registered"), ("cs_due", "retry", None)]


# -- why a booking fails before any call ----------------------------------------------------------

@pytest.mark.parametrize(
    ("primary_id", "missing", "expected"),
    [
        ("G00000001", {}, None),
        ("G00000001", {"LibCal Eckles": "no Eckles"}, None),
        (None, {}, ("no primary id: the LibCal booking has no answer to q12505 (if every booking says so, check "
                    "LibCal.primary_id_field and LibCal.form_answers_param)", "bad_primary_id", "no primary id")),
        ("G1 2; DROP", {}, ("the answer to q12505 is not a well-formed university id (LCPP.primary_id_pattern): "
                            "correct it in the LibCal booking", "bad_primary_id", "malformed primary id")),
        ("G00000001", {"LibCal Gelman": "destination 'LibCal Gelman' ... does not exist"},
         ("destination 'LibCal Gelman' ... does not exist", "destination", "unknown destination")),
        (None, {"LibCal Gelman": "no Gelman"},
         ("no primary id: the LibCal booking has no answer to q12505 (if every booking says so, check "
          "LibCal.primary_id_field and LibCal.form_answers_param)", "bad_primary_id", "no primary id")),
    ],
    ids=["fine", "other-destination-missing", "no-id", "malformed-id", "destination-missing", "id-checked-first"],
)
def test_booking_problem(primary_id: str | None, missing: dict[str, str], expected: tuple[str, str, str] | None) -> None:
    problem = booking_problem(booking(primary_id=primary_id), GELMAN, pattern=PATTERN, primary_id_field="q12505",
                              missing_destinations=missing)
    assert (None if problem is None else (problem.reason, problem.kind, problem.label)) == expected


def test_a_dry_run_plans_the_bookings_it_would_attempt_and_says_which_would_fail() -> None:
    decisions = [
        Decision(booking("cs_new"), GELMAN, "register"),
        Decision(booking("cs_again"), GELMAN, "retry"),
        Decision(booking("cs_noid", primary_id=None), GELMAN, "register"),
        Decision(booking("cs_bad", primary_id="no spaces allowed"), GELMAN, "retry"),
        Decision(booking("cs_done"), GELMAN, "skip", "registered"),
    ]
    planned = plan(decisions, pattern=PATTERN, primary_id_field="q12505")
    assert [(p.book_id, p.action, p.destination, p.start) for p in planned] == [
        ("cs_new", "register", "LibCal Gelman", "2030-01-15T13:15:00-05:00"),
        ("cs_again", "retry", "LibCal Gelman", "2030-01-15T13:15:00-05:00"),
        ("cs_noid", "fail (no primary id)", "LibCal Gelman", "2030-01-15T13:15:00-05:00"),
        ("cs_bad", "fail (malformed primary id)", "LibCal Gelman", "2030-01-15T13:15:00-05:00"),
    ]


# -- what an error means for the booking ----------------------------------------------------------

NO_ANSWER = PassagePointUnavailable("PassagePoint createPreReg: no answer (TimeoutError)", maybe_applied=True)
NOT_SENT = PassagePointUnavailable("PassagePoint createPreReg: cannot connect: refused", maybe_applied=False)
REFUSED = PassagePointRequestError("PassagePoint createPreReg answered HTTP 400: bad visitor", 400, "")
LOGIN_REFUSED = PassagePointAuthError("PassagePoint refused the login (HTTP 401: no)")
PREREG_AT = datetime.fromisoformat("2030-01-15T13:15:00-05:00").timestamp()


@pytest.mark.parametrize(
    ("exc", "reconcile", "cached_visitor", "expected"),
    [
        (NO_ANSWER, "report", False, Outcome(
            "uncertain", "createPreReg got no clear answer (PassagePoint createPreReg: no answer (TimeoutError)); it "
            "may have been created: check PassagePoint for visitor 42 at LibCal Gelman from 2030-01-15 18:15 UTC",
            "prereg_uncertain")),
        (NO_ANSWER, "recreate", False, Outcome(
            "fail", "PassagePoint createPreReg: no answer (TimeoutError)", "passagepoint")),
        (NOT_SENT, "report", False, Outcome(
            "fail", "PassagePoint createPreReg: cannot connect: refused", "passagepoint")),
        (NOT_SENT, "report", True, Outcome(
            "fail", "PassagePoint createPreReg: cannot connect: refused", "passagepoint")),
        (REFUSED, "report", False, Outcome(
            "fail", "PassagePoint createPreReg answered HTTP 400: bad visitor",
            "passagepoint")),
        (REFUSED, "report", True, Outcome(
            "fail", "PassagePoint createPreReg answered HTTP 400: bad visitor; the cached "
            "visitor id 42 was dropped, the next try looks the visitor up again", "passagepoint", forget_visitor=True)),
        (LOGIN_REFUSED, "report", True, Outcome("stop")),
    ],
    ids=["lost-answer", "lost-answer-recreate", "not-sent", "not-sent-cached-visitor", "refused",
         "refused-cached-visitor", "login-refused"],
)
def test_prereg_outcome(exc: Exception, reconcile: str, cached_visitor: bool, expected: Outcome) -> None:
    """createPreReg failed: uncertain only when it may have been applied and reconcile is report;
    a refusal for a cached visitor id drops it; refused credentials stop the pass."""
    assert isinstance(exc, PassagePointRequestError | PassagePointUnavailable | PassagePointAuthError)
    outcome = prereg_outcome(exc, reconcile=reconcile, visitor_id=42, cached_visitor=cached_visitor,
                             destination="LibCal Gelman", start=PREREG_AT)
    assert outcome == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PassagePointRequestError("PassagePoint createVisitor answered HTTP 500: oops", 500, ""), Outcome(
            "fail", "finding or creating the PassagePoint visitor failed: PassagePoint createVisitor answered HTTP "
            "500: oops", "passagepoint")),
        (NO_ANSWER, Outcome("fail", "finding or creating the PassagePoint visitor failed: PassagePoint createPreReg: "
                                    "no answer (TimeoutError)", "passagepoint")),
        (LOGIN_REFUSED, Outcome("stop")),
    ],
    ids=["error-answer", "no-answer", "login-refused"],
)
def test_visitor_outcome(exc: Exception, expected: Outcome) -> None:
    """A visitor that cannot be found or created fails the booking (a retry finds it by barcode)."""
    assert isinstance(exc, PassagePointRequestError | PassagePointUnavailable | PassagePointAuthError)
    assert visitor_outcome(exc) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (AlmaNotFound("no Alma user has this university id (tried 2 institution zones)"),
         Outcome("fail", "no Alma user has this university id (tried 2 institution zones)", "AlmaNotFound")),
        (AlmaDailyQuotaExceeded("Alma's daily API quota is used up: nothing succeeds until midnight GMT"),
         Outcome("fail", "Alma's daily API quota is used up: nothing succeeds until midnight GMT",
                 "AlmaDailyQuotaExceeded")),
    ],
    ids=["not-found", "daily-quota"],
)
def test_lookup_outcome_fails_the_booking_with_the_errors_name_as_its_kind(exc: Exception, expected: Outcome) -> None:
    assert isinstance(exc, AlmaNotFound | AlmaDailyQuotaExceeded)
    assert lookup_outcome(exc) == expected


def test_an_unexpected_error_fails_only_its_booking() -> None:
    assert unexpected_outcome(KeyError("start")) == Outcome("fail", "unexpected error: KeyError('start')", "unexpected")


def test_an_intent_left_open_is_uncertain_and_says_what_to_check() -> None:
    open_row = {"book_id": "cs_1", "patron": "Ada Lovelace", "visitor_id": 42, "destination": "LibCal Gelman",
                "start_time": int(PREREG_AT)}
    assert open_intent_failure(open_row) == Failure(
        "cs_1", "Ada Lovelace", "the previous run stopped between createPreReg and saving its answer: check "
        "PassagePoint for a pre-registration of visitor 42 at LibCal Gelman from 2030-01-15 18:15 UTC and create it "
        "by hand if it is missing", "prereg_uncertain")


# -- when to retry, whether to report ----------------------------------------------------------------

@pytest.mark.parametrize(("attempts", "seconds"), [(1, 300), (2, 600), (3, 1200), (7, 19200), (8, 21600), (30, 21600)])
def test_retry_delay_doubles_from_retry_base_up_to_retry_max(attempts: int, seconds: int) -> None:
    assert retry_delay(attempts, base=300, maximum=6 * 3600) == seconds


@pytest.mark.parametrize(
    ("previous", "reported"),
    [
        (None, True),
        ({"reason": "no primary id", "reported": 1}, False),
        ({"reason": "no primary id", "reported": 0}, True),
        ({"reason": "Alma answered HTTP 500", "reported": 1}, True),
    ],
    ids=["first-failure", "same-reason-reported", "same-reason-not-reported-yet", "new-reason"],
)
def test_a_failure_is_reported_once_per_reason(previous: dict[str, Any] | None, reported: bool) -> None:
    assert must_report(previous, "no primary id") is reported


# -- patrons ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cached", "expected"),
    [
        (None, None),
        ({"barcode": "2221", "user_group": "UGRD", "visitor_id": None}, None),  # dropped after a refusal
        ({"barcode": "2221", "user_group": "UGRD", "visitor_id": 42}, (AlmaUser("G1", "2221", "UGRD", ""), 42)),
    ],
    ids=["unknown", "visitor-dropped", "known"],
)
def test_a_known_patron_needs_no_alma_lookup(cached: dict[str, Any] | None, expected: object) -> None:
    assert patron_from_cache("G1", cached) == expected


# -- alerts -------------------------------------------------------------------------------------------

def test_alerts_of_a_pass_one_message_per_kind() -> None:
    failed = [Failure("cs_1", "Ada Lovelace", "no primary id", "bad_primary_id")]
    uncertain = [Failure("cs_2", "Grace Hopper", "check PassagePoint", "prereg_uncertain")]
    cancelled = [{"book_id": "cs_3", "patron": "Alan Turing", "prereg_id": 7}]
    alerts = alerts_for(new_failures=failed, uncertain=uncertain, cancelled=cancelled,
                        location_errors=["LibCal location 8827 (Gelman): LibCal answered HTTP 500"],
                        no_form_answers={8827: "none carries q12505", 9911: "none carries q12505 either"},
                        already_alerted={"8827"}, stopped="Alma's daily API quota is used up; the bookings not "
                                                          "looked up wait for the next pass")
    assert alerts == [
        Alert("booking_failed", "1 LibCal booking(s) could not be pre-registered", ["cs_1 (Ada Lovelace): no primary id"]),
        Alert("prereg_uncertain", "1 pre-registration(s) may or may not exist", ["cs_2 (Grace Hopper): check PassagePoint"]),
        Alert("booking_cancelled", "1 pre-registered booking(s) were cancelled in LibCal",
              ["cs_3 (Alan Turing): was cancelled in LibCal after pre-registration 7 was created: remove it in "
               "PassagePoint by hand (no API to delete it is known)"]),
        Alert("libcal_error", "LibCal bookings could not be fetched",
              ["LibCal location 8827 (Gelman): LibCal answered HTTP 500"]),
        Alert("pass_stopped", "a pass stopped before it had sent every booking",
              ["Alma's daily API quota is used up; the bookings not looked up wait for the next pass"]),
        Alert("no_form_answers", "LibCal sent bookings without the id question's answers",
              ["none carries q12505 either"]),  # 8827 was alerted about when it started
    ]


def test_a_quiet_pass_sends_no_alert() -> None:
    assert alerts_for(new_failures=[], uncertain=[], cancelled=[], location_errors=[], no_form_answers={8827: "x"},
                      already_alerted={"8827"}) == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NOT_SENT, "PassagePoint createPreReg: cannot connect: refused; the bookings not sent to PassagePoint wait "
                   "for the next pass"),
        (PassagePointUnavailable("PassagePoint login answered HTTP 503: down", maybe_applied=False),
         "PassagePoint login answered HTTP 503: down; the bookings not sent to PassagePoint wait for the next pass"),
        (AlmaNotSent("could not connect to Alma"),
         "Alma cannot be reached (could not connect to Alma); the bookings not looked up wait for the next pass"),
        (AlmaDailyQuotaExceeded("Alma's daily API quota is used up"),
         "Alma's daily API quota is used up; the bookings not looked up wait for the next pass"),
        (NO_ANSWER, None),  # it may have been applied: that booking's own outcome
        (REFUSED, None),
        (AlmaNoAnswer("no answer"), None),
        (AlmaRateLimited("429"), None),
    ],
    ids=["pp-not-sent", "pp-login-5xx", "alma-not-sent", "alma-daily-quota", "pp-no-answer", "pp-refused",
         "alma-no-answer", "alma-429"],
)
def test_pass_stop_reason(exc: Exception, expected: str | None) -> None:
    """Only errors that every later booking would meet too stop the pass."""
    assert pass_stop_reason(exc) == expected  # type: ignore[arg-type]


def test_a_refused_alma_key_stops_the_pass() -> None:
    assert lookup_outcome(AlmaUnauthorized("Alma refused API key #1")) == Outcome("stop")
    assert lookup_outcome(AlmaUnauthorized("an HTML page", key_refused=False)) == Outcome("stop")
