"""loan_discharge.decisions (and the engine's bookkeeping): what each answer means for its item and
for the run, as tables, without a server."""

from __future__ import annotations

import random
from typing import Any

import pytest

from alma import (
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNotFound,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaRedirected,
    AlmaRequestError,
    AlmaResponse,
    AlmaServerError,
    AlmaUnauthorized,
    AlmaUnexpectedResponse,
)
from loan_discharge.decisions import (
    Next,
    RetryPolicy,
    Tries,
    Verdict,
    floor_reason,
    judge,
    when_stopped,
)
from loan_discharge.items import ScanRequest
from loan_discharge.run import Batches, ItemResult, RunSummary

POLICY = RetryPolicy()  # 3 uncertain sends, 12 429s, 5 connection failures
FLOOR_STOP = "X-Exl-Api-Remaining is 10, below daily_quota_floor 100"


def item(process_type: str = "", base_status: str = "1", info: str = "") -> dict[str, Any]:
    return {"item_data": {"base_status": {"value": base_status}, "process_type": {"value": process_type}},
            "additional_info": info}


def ok(body: dict[str, Any], remaining: int | None = None) -> AlmaResponse:
    return AlmaResponse(url="/bibs/1/holdings/2/items/3?op=scan", status=200, body=body, remaining=remaining)


RATE_LIMITED = AlmaRateLimited("HTTP requests are more than allowed per second", code="PER_SECOND_THRESHOLD", status=429)
NOT_SENT = AlmaNotSent("cannot connect to https://alma.example: Connection refused", code="CANNOT_CONNECT")
TIMEOUT = AlmaNoAnswer("no answer within 30 s", code="TIMEOUT")
BAD_GATEWAY = AlmaServerError("Bad Gateway", status=502)
QUOTA = AlmaDailyQuotaExceeded("Daily threshold reached", code="DAILY_THRESHOLD", status=429, remaining=10)
REDIRECT = AlmaRedirected("HTTP 301 redirect to https://alma.example/x, not followed", location="https://alma.example/x",
                          status=301, remaining=10)
KEY_REFUSED = AlmaUnauthorized("API-key not defined", code="UNAUTHORIZED", status=400, remaining=10)
NOT_THE_GATEWAY = AlmaUnauthorized("base_url https://alma.example answered HTTP 401 with an HTML page", key_refused=False,
                                   status=401)
BAD_ID = AlmaRequestError("The parameter item_pid is invalid.", code="40166411", status=400)
UNKNOWN = AlmaNotFound("No items found for barcode", code="401689", status=400)
ODD_200 = AlmaUnexpectedResponse("200 without item_data", status=200)


@pytest.mark.parametrize(
    ("answer", "known_not_on_loan", "verdict"),
    [
        (ok(item()), False, Verdict(Next.DONE, "returned and in place")),
        (ok(item()), True, Verdict(Next.DONE, "not on loan")),
        (ok(item("TRANSIT", "0")), True, Verdict(Next.DONE, "in transit")),  # moved: it was on loan after all
        (ok(item("HOLDSHELF", "0")), False, Verdict(Next.DONE, "on hold shelf")),
        (ok(item("LOAN", "0")), False, Verdict(Next.FAILED, "error", "still on loan after the scan-in", "STILL_ON_LOAN")),
        (ok(item(), remaining=10), False, Verdict(Next.DONE, "returned and in place", stop=FLOOR_STOP)),
        (ok(item("LOST_LOAN", "0")), False, Verdict(
            Next.FAILED, "error", "scanned in, but Alma still shows the item as LOST_LOAN: a scan-in does not end "
            "that kind of loan; check it in Alma", "NEEDS_REVIEW")),
        (ok(item("TRANSIT_TO_REMOTE_STORAGE", "0")), False, Verdict(Next.DONE, "in transit")),
    ],
    ids=["returned", "not-on-loan", "transit", "hold-shelf", "still-on-loan", "below-floor", "lost-loan",
         "to-remote-storage"],
)
def test_what_a_200_means(answer: AlmaResponse, known_not_on_loan: bool, verdict: Verdict) -> None:
    """A 200 is done with the outcome its item object shows, unless the item is still on loan;
    "in place" is "not on loan" when the export said so; a quota below the floor stops the run."""
    assert judge(answer, Tries(sent=1), POLICY, known_not_on_loan=known_not_on_loan, quota_floor=100) == verdict


@pytest.mark.parametrize(
    ("error", "tries", "verdict"),
    [
        # rejected by the gateway, not applied: retried 12 times, then failed
        (RATE_LIMITED, Tries(sent=1, rate_limited=1), Verdict(Next.RETRY, backoff=1)),
        (RATE_LIMITED, Tries(sent=12, rate_limited=12), Verdict(Next.RETRY, backoff=12)),
        (RATE_LIMITED, Tries(sent=13, rate_limited=13), Verdict(
            Next.FAILED, "error", "PER_SECOND_THRESHOLD: HTTP requests are more than allowed per second (13 times)",
            "PER_SECOND_THRESHOLD")),
        # never sent: retried 5 times, then Alma is unreachable: the item stays pending and the run stops
        (NOT_SENT, Tries(sent=5, not_sent=5), Verdict(Next.RETRY, backoff=5)),
        (NOT_SENT, Tries(sent=6, not_sent=6), Verdict(
            Next.PENDING, error="not sent: CANNOT_CONNECT: cannot connect to https://alma.example: Connection refused",
            stop="cannot reach Alma (CANNOT_CONNECT: cannot connect to https://alma.example: Connection refused); "
            "check base_url and the network, then run again: the items not done stay pending")),
        # may have been applied: max_attempts sends in all, attempts counting the 429s too
        (TIMEOUT, Tries(sent=1, uncertain=1), Verdict(Next.RETRY, backoff=1)),
        (BAD_GATEWAY, Tries(sent=4, rate_limited=2, uncertain=2), Verdict(Next.RETRY, backoff=2)),
        (BAD_GATEWAY, Tries(sent=5, rate_limited=2, uncertain=3), Verdict(
            Next.FAILED, "error", "HTTP 502: Bad Gateway (after 5 attempts)", "HTTP 502")),
        (TIMEOUT, Tries(sent=3, uncertain=3), Verdict(
            Next.FAILED, "error", "TIMEOUT: no answer within 30 s (after 3 attempts)", "TIMEOUT")),
        # stop the run: the quota (the item waits for tomorrow), a redirect, a refused key, not the gateway
        (QUOTA, Tries(sent=1), Verdict(
            Next.PENDING, error="DAILY_THRESHOLD: Daily threshold reached", error_code="DAILY_THRESHOLD",
            stop="Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT")),
        (REDIRECT, Tries(sent=1), Verdict(
            Next.FAILED, "error", "REDIRECTED: HTTP 301 redirect to https://alma.example/x, not followed", "REDIRECTED",
            stop=FLOOR_STOP)),  # the quota floor, checked first, wins
        (KEY_REFUSED, Tries(sent=1), Verdict(
            Next.FAILED, "error", "UNAUTHORIZED: API-key not defined", "UNAUTHORIZED",
            stop="Alma refused the API key (UNAUTHORIZED: API-key not defined); check apikey / ALMA_API_KEY")),
        (NOT_THE_GATEWAY, Tries(sent=1), Verdict(
            Next.FAILED, "error", "HTTP 401: base_url https://alma.example answered HTTP 401 with an HTML page",
            "HTTP 401", stop="base_url https://alma.example answered HTTP 401 with an HTML page")),
        # this item's own problem: failed, the run goes on
        (BAD_ID, Tries(sent=1), Verdict(Next.FAILED, "error", "40166411: The parameter item_pid is invalid.", "40166411")),
        (UNKNOWN, Tries(sent=1), Verdict(Next.FAILED, "error", "401689: No items found for barcode", "401689")),
        (ODD_200, Tries(sent=1), Verdict(Next.FAILED, "error", "HTTP 200: 200 without item_data", "HTTP 200")),
    ],
    ids=["429-first", "429-12th", "429-13th", "not-sent-5th", "not-sent-6th", "timeout-first", "502-second",
         "502-third", "timeout-third", "daily-quota", "redirect", "key-refused", "html-401", "bad-id", "not-found",
         "unexpected-200"],
)
def test_what_an_error_means(error: AlmaError, tries: Tries, verdict: Verdict) -> None:
    """Which errors are sent again (and after which backoff), which fail the item, which leave it
    pending, and which stop the run (*tries* already counts the answer judged)."""
    assert judge(error, tries, POLICY, quota_floor=100) == verdict


@pytest.mark.parametrize(
    ("error", "stop"),
    [
        (AlmaRequestError("bad id", code="40166411", status=400, remaining=10), FLOOR_STOP),  # error answers use quota
        (AlmaRequestError("bad id", code="40166411", status=400, remaining=100), None),
        (AlmaRequestError("bad id", code="40166411", status=400), None),  # no X-Exl-Api-Remaining header
        (QUOTA, "Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT"),
        (KEY_REFUSED, "Alma refused the API key (UNAUTHORIZED: API-key not defined); check apikey / ALMA_API_KEY"),
    ],
)
def test_the_quota_floor_stops_the_run_after_any_answer_but_the_quota_and_a_refused_key(
    error: AlmaError, stop: str | None
) -> None:
    """X-Exl-Api-Remaining below the floor stops the run after an error answer too; the daily quota
    and a refused key report their own reason."""
    assert judge(error, Tries(sent=1), POLICY, quota_floor=100).stop == stop


@pytest.mark.parametrize(
    ("remaining", "floor", "reason"),
    [(None, 100, None), (100, 100, None), (99, 100, "X-Exl-Api-Remaining is 99, below daily_quota_floor 100"),
     (0, 0, None)],
)
def test_floor_reason(remaining: int | None, floor: int, reason: str | None) -> None:
    """Only a remaining count strictly below the floor stops a run; floor 0 never does."""
    assert floor_reason(remaining, floor) == reason


@pytest.mark.parametrize(
    ("tries", "verdict"),
    [
        (Tries(), None),  # never sent: left as it was
        (Tries(sent=3, rate_limited=3), Verdict(Next.PENDING, error="not finished: quota")),
        (Tries(sent=1, not_sent=1), Verdict(Next.PENDING, error="not finished: quota")),
        (Tries(sent=2, rate_limited=1, uncertain=1), Verdict(
            Next.FAILED, "error", "not finished (quota); it may have been returned", "STOPPED")),
    ],
    ids=["never-sent", "only-429s", "only-not-sent", "maybe-applied"],
)
def test_what_a_stop_means_for_an_item_between_sends(tries: Tries, verdict: Verdict | None) -> None:
    """An item the run stopped under: nothing recorded if never sent; pending if nothing can have been
    applied; failed (STOPPED) if a send may have been applied, so the file says so."""
    assert when_stopped(tries, "quota") == verdict


@pytest.mark.parametrize(
    ("answer", "counted"),
    [
        (RATE_LIMITED, Tries(sent=1, rate_limited=1)),
        (NOT_SENT, Tries(sent=1, not_sent=1)),
        (TIMEOUT, Tries(sent=1, uncertain=1)),
        (BAD_GATEWAY, Tries(sent=1, uncertain=1)),
        (BAD_ID, Tries(sent=1)),
        (ok(item()), Tries(sent=1)),
    ],
)
def test_tries_count_each_kind_of_answer(answer: AlmaResponse | AlmaError, counted: Tries) -> None:
    """A started request counts as sent; its answer counts as rejected, not sent, uncertain or neither."""
    assert Tries().started().after(answer) == counted


class Extremes(random.Random):
    """uniform() at one end of its range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 0.25, 0.5), (2, 0.5, 1.0), (4, 2.0, 4.0), (10, 10.0, 20.0)])
def test_backoff_doubles_with_full_jitter_up_to_the_cap(failures: int, low: float, high: float) -> None:
    """The wait after the n-th failure is between half and all of min(cap, base * 2^(n-1))."""
    assert POLICY.delay(failures, Extremes(high=False)) == low
    assert POLICY.delay(failures, Extremes(high=True)) == high


def result(n: int, verdict: Verdict) -> ItemResult:
    request = ScanRequest(row=n, mms_id="99", holding_id="22", item_pid=f"23{n}", library="MAIN", circ_desk="DESK")
    return ItemResult.of(request, verdict, 1, [])


DONE = Verdict(Next.DONE, "returned and in place")
FAILED = Verdict(Next.FAILED, "error", "40166411: bad id", "40166411")
PENDING = Verdict(Next.PENDING, error="DAILY_THRESHOLD: used up", error_code="DAILY_THRESHOLD")


def test_the_summary_counts_done_failed_and_not_processed() -> None:
    """Done counts per outcome, failed per code; a pending item (even with a code) and one never sent are not processed."""
    summary = RunSummary()
    for entry in (result(0, DONE), result(1, DONE), result(2, FAILED), result(3, PENDING), None):
        summary.record(entry)
    assert (summary.done, dict(summary.outcomes)) == (2, {"returned and in place": 2})
    assert dict(summary.failed) == {"40166411": 1} and summary.failed_total == 1
    assert summary.not_processed == 2


def test_a_batch_completes_when_its_last_item_finishes_in_any_order() -> None:
    """Items finish out of order: a batch is handed over once, when its last item is in; a batch whose
    items were never sent is not; what a stop cut short is handed over at the end, in order."""
    batches = Batches(7, 3)  # batches 0: items 0-2, 1: items 3-5, 2: item 6
    assert batches.add(1, result(1, DONE)) is None
    assert batches.add(3, result(3, FAILED)) is None
    assert batches.add(0, result(0, DONE)) is None
    completed = batches.add(2, result(2, DONE))
    assert completed is not None and completed[0] == 0
    assert [r.request.row for r in completed[1]] == [1, 0, 2]
    assert batches.add(6, None) is None  # never sent: an empty batch is not saved
    assert batches.add(4, None) is None
    assert [(number, [r.request.row for r in results]) for number, results in batches.cut_short()] == [(1, [3])]
    assert batches.cut_short() == []
