"""What an answer means, for its item and for the run: plain functions over plain data.

The engine (:mod:`loan_discharge.run`) sends a scan-in, counts it in the item's :class:`Tries`,
and asks :func:`judge` what the answer (an :class:`alma.AlmaResponse` or an :class:`alma.AlmaError`)
means: the item is done, failed, left pending for the next run, or sent again after a backoff;
and whether the whole run stops (a redirect, a refused key, the daily quota, the quota floor, an
Alma that cannot be reached). When the run stops while an item is between sends,
:func:`when_stopped` says what is recorded for it. Nothing here sends, sleeps or writes, so the
tests drive every case from a table, without a server.

The scan-in's retry policy lives here, not in the Alma client: a POST that got no answer may have
been applied, and it is sent again only because a second scan-in of a returned item is harmless.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from alma import (
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNotFound,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaRedirected,
    AlmaResponse,
    AlmaServerError,
    AlmaUnauthorized,
)
from loan_discharge.barcodes import NOT_FOUND_REASON
from loan_discharge.items import NOT_SENT
from loan_discharge.outcomes import (
    OUTCOME_NOT_ON_LOAN,
    OUTCOME_RETURNED,
    OUTCOME_STILL_ON_LOAN,
    scan_outcome,
    unfinished_loan,
)

__all__ = [
    "ERROR",
    "Next",
    "RetryPolicy",
    "Tries",
    "Verdict",
    "floor_reason",
    "judge",
    "judge_lookup",
    "when_stopped",
]

ERROR = "error"  # the outcome cell of an item that failed


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


@dataclass(frozen=True)
class Tries:
    """How the sends of one item have gone so far."""

    sent: int = 0  # requests started (the item's ``attempts``, 429s included)
    rate_limited: int = 0  # 429 / PER_SECOND_THRESHOLD: rejected, not applied
    not_sent: int = 0  # no connection made: the request never left
    uncertain: int = 0  # timeout, dropped connection, 5xx: may have been applied

    def started(self) -> Tries:
        """One more request started."""
        return replace(self, sent=self.sent + 1)

    def after(self, answer: AlmaResponse | AlmaError) -> Tries:
        """Counted with *answer*, the answer to the latest request."""
        if isinstance(answer, AlmaRateLimited):
            return replace(self, rate_limited=self.rate_limited + 1)
        if isinstance(answer, AlmaNotSent):
            return replace(self, not_sent=self.not_sent + 1)
        if isinstance(answer, AlmaNoAnswer | AlmaServerError):
            return replace(self, uncertain=self.uncertain + 1)
        return self


class Next(Enum):
    """What happens to an item after an answer."""

    DONE = "done"  # returned: journalled as done
    FAILED = "failed"  # journalled as failed (outcome "error"); the next run tries it again
    PENDING = "pending"  # not finished, nothing applied (or the quota ran out): left for the next run
    RETRY = "retry"  # send it again after a backoff


@dataclass(frozen=True)
class Verdict:
    """What one answer means for its item, and whether the whole run stops."""

    next: Next
    outcome: str = ""  # the outcome cell: where a done item ended up, "error" for a failed one
    error: str = ""  # the error cell
    error_code: str | None = None
    backoff: int = 0  # RETRY: the failure count that sets the wait (RetryPolicy.delay)
    stop: str | None = None  # the run stops starting items, for this reason

    @property
    def done(self) -> bool:
        """Whether the item is done."""
        return self.next is Next.DONE


def floor_reason(remaining: int | None, floor: int) -> str | None:
    """Why the run stops when ``X-Exl-Api-Remaining`` is below ``daily_quota_floor``; None while it is not."""
    if remaining is not None and remaining < floor:
        return f"X-Exl-Api-Remaining is {remaining}, below daily_quota_floor {floor}"
    return None


def judge(
    answer: AlmaResponse | AlmaError,
    tries: Tries,
    policy: RetryPolicy,
    *,
    known_not_on_loan: bool = False,
    quota_floor: int = 0,
) -> Verdict:
    """What *answer* means for its item (*tries* already counts it) and for the run.

    *known_not_on_loan*: the export said the item was not on loan, so "in place" means just that.
    Below *quota_floor* calls left today the run stops, whatever the answer (error answers use the
    quota too); that reason wins over one the answer itself gives.
    """
    if isinstance(answer, AlmaResponse):
        verdict = _scanned(answer.body, known_not_on_loan)
    else:
        verdict = _failed_send(answer, tries, policy)
    counts_quota = not isinstance(answer, AlmaDailyQuotaExceeded | AlmaUnauthorized)
    floor = floor_reason(answer.remaining, quota_floor) if counts_quota else None
    return replace(verdict, stop=floor or verdict.stop)


def judge_lookup(error: AlmaError, tries: Tries, policy: RetryPolicy, *, quota_floor: int = 0) -> Verdict:
    """What an error answer to an item lookup (a GET: nothing was changed) means: the same as for a
    scan-in (retry, fail the barcode, stop the run), except that a barcode Alma does not know fails
    for good with the reason a person reads, and the quota floor stops the run as for a scan-in."""
    if isinstance(error, AlmaNotFound):
        verdict = Verdict(Next.FAILED, ERROR, f"{NOT_SENT}{NOT_FOUND_REASON} ({error.code}: {error.message})",
                          error.code)
    else:
        verdict = _failed_send(error, tries, policy)
    counts_quota = not isinstance(error, AlmaDailyQuotaExceeded | AlmaUnauthorized)
    floor = floor_reason(error.remaining, quota_floor) if counts_quota else None
    return replace(verdict, stop=floor or verdict.stop)


def _scanned(item: Any, known_not_on_loan: bool) -> Verdict:
    """A 200: where the item ended up."""
    outcome = scan_outcome(item)
    if outcome == OUTCOME_STILL_ON_LOAN:
        return Verdict(Next.FAILED, ERROR, "still on loan after the scan-in", "STILL_ON_LOAN")
    loan = unfinished_loan(item)
    if loan:  # not returned: the loan is lost, claimed returned, …
        return Verdict(Next.FAILED, ERROR, f"scanned in, but Alma still shows the item as {loan}: a scan-in does "
                       "not end that kind of loan; check it in Alma", "NEEDS_REVIEW")
    if outcome == OUTCOME_RETURNED and known_not_on_loan:
        outcome = OUTCOME_NOT_ON_LOAN
    return Verdict(Next.DONE, outcome)


def _failed(error: AlmaError, note: str = "", stop: str | None = None) -> Verdict:
    return Verdict(Next.FAILED, ERROR, f"{error.code}: {error.message}{note}", error.code, stop=stop)


def _failed_send(error: AlmaError, tries: Tries, policy: RetryPolicy) -> Verdict:
    """An error answer (or none): retry, fail the item, leave it pending; stop the run or not."""
    if isinstance(error, AlmaRateLimited):  # rejected by the gateway, not applied
        if tries.rate_limited > policy.max_rate_limited:
            return _failed(error, f" ({tries.rate_limited} times)")
        return Verdict(Next.RETRY, backoff=tries.rate_limited)
    if isinstance(error, AlmaNotSent):
        if tries.not_sent > policy.max_not_sent:
            # Alma cannot be reached at all: every other item would wait out the same retries.
            # Stop; nothing was sent, so this item stays pending like the rest.
            return Verdict(
                Next.PENDING, error=f"not sent: {error.code}: {error.message}",
                stop=f"cannot reach Alma ({error.code}: {error.message}); check base_url and the network, "
                "then run again: the items not done stay pending",
            )
        return Verdict(Next.RETRY, backoff=tries.not_sent)
    if isinstance(error, AlmaNoAnswer | AlmaServerError):
        if tries.uncertain >= policy.max_attempts:
            return _failed(error, f" (after {tries.sent} attempts)")
        # A second scan-in of a returned item is harmless (register_in_house_use=false).
        return Verdict(Next.RETRY, backoff=tries.uncertain)
    if isinstance(error, AlmaDailyQuotaExceeded):  # nothing was applied: the item waits for tomorrow
        return Verdict(
            Next.PENDING, error=f"{error.code}: {error.message}", error_code=error.code,
            stop=f"Alma's daily API quota is used up ({error.code}); run again after midnight GMT",
        )
    if isinstance(error, AlmaRedirected):
        # alma.md describes no redirect from Alma's API: a 3xx comes from something in front of it
        # (http:// for https://, a retired host name), and every other item would get it too.
        return _failed(error, stop=f"base_url answered a scan-in with a redirect ({error.message}): "
                       "set base_url to the address Alma's API answers at")
    if isinstance(error, AlmaUnauthorized):
        if error.key_refused:
            return _failed(error, stop=f"Alma refused the API key ({error.code}: {error.message}); "
                           "check apikey / ALMA_API_KEY")
        return _failed(error, stop=error.message)  # an HTML page: base_url is not Alma's API gateway
    return _failed(error)  # an Alma error about this item (bad ids, unknown desk, …): the run goes on


def when_stopped(tries: Tries, reason: str | None) -> Verdict | None:
    """What is recorded for an item whose run stopped (for *reason*) before it was finished.

    None: it was never sent, and is left as it was for the next run.
    """
    if tries.sent == 0:
        return None
    if tries.uncertain == 0:  # only rejected (429, not sent): nothing was applied
        return Verdict(Next.PENDING, error=f"not finished: {reason}")
    return Verdict(Next.FAILED, ERROR, f"not finished ({reason}); it may have been returned", "STOPPED")
