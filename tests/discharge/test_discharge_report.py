"""loan_discharge.report: the summary a run prints and logs, and its exit status, from plain data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loan_discharge.items import Plan, RowProblem, ScanRequest
from loan_discharge.report import (
    exit_status,
    format_summary,
    nothing_to_send_status,
    summary_fields,
)
from loan_discharge.run import RunSummary

ITEMS = Path("/srv/discharge/items.csv")
REQUEST = ScanRequest(row=0, mms_id="99", holding_id="22", item_pid="23", library="MAIN", circ_desk="DESK")
PROBLEM = RowProblem(line=5, item_pid="235", reason="empty Location Code")
REPORTED = RowProblem(line=6, item_pid="236", reason="empty Location Code", reported=True)


def plan(*, problems: int = 0, not_selected: int = 0, reported: int = 0) -> Plan:
    return Plan([REQUEST] * 3, [PROBLEM] * problems + [REPORTED] * reported, already_done=2,
                total_rows=5 + problems + reported, not_selected=not_selected)


@pytest.mark.parametrize(
    ("summary", "problems", "reported", "status"),
    [
        (RunSummary(done=3), 0, 0, 0),
        (RunSummary(done=3), 1, 0, 1),  # a row refused for the first time: a person must hear of it
        (RunSummary(done=3), 0, 2, 0),  # refused rows an earlier run reported: nothing new
        (RunSummary(done=3), 1, 2, 1),
        (RunSummary(done=2, failed=Counter({"40166411": 1})), 0, 2, 1),
        (RunSummary(done=2, failed=Counter({"NEEDS_REVIEW": 1})), 0, 0, 1),
        (RunSummary(done=2, not_processed=1), 0, 0, 1),
        (RunSummary(done=3, stop_reason="X-Exl-Api-Remaining is 5, below daily_quota_floor 10"), 0, 0, 1),
    ],
    ids=["all-done", "row-not-sent", "reported-before", "new-and-reported", "failed", "needs-review",
         "not-finished", "stopped"],
)
def test_exit_status_is_1_when_this_run_found_something_for_a_person(
        summary: RunSummary, problems: int, reported: int, status: int) -> None:
    """0 nothing needs a person; 1 when an item failed, a row was refused for the first time, an
    item was left unfinished, or the run stopped early."""
    assert exit_status(summary, plan(problems=problems, reported=reported)) == status


def test_nothing_to_send_is_0_unless_rows_were_refused_for_the_first_time() -> None:
    """A run with nothing left: 1 only for rows refused that no earlier run reported (the case
    that used to exit 1 forever, run after run, once every other item was done)."""
    assert [nothing_to_send_status(plan(problems=p, reported=r)) for p, r in ((0, 0), (2, 0), (0, 3), (1, 3))] == [
        0, 1, 0, 1]


def test_the_summary_of_a_run_that_stopped_early() -> None:
    """Every count, the failed codes with where to look, and how to resume."""
    summary = RunSummary(
        done=5, outcomes=Counter({"returned and in place": 4, "in transit": 1}), failed=Counter({"40166411": 1}),
        requests=9, rate_limited=3, not_processed=2, elapsed=2.0,
        stop_reason="Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT",
    )
    assert format_summary(summary, plan(problems=1, not_selected=4), ITEMS).splitlines() == [
        "done: 5 (4 returned and in place, 1 in transit)",
        f"failed: 1 (40166411: 1); see the error column of {ITEMS}",
        "skipped: 1 not sent (see the plan above), 2 already done, 4 left by --limit",
        "elapsed: 2.0 s, 9 requests, 4.5 requests/s, 3 answered 429",
        "stopped early: Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT. "
        f"2 items not finished; progress is saved in {ITEMS}: run again to resume",
    ]
    fields = summary_fields(summary, plan(problems=1, not_selected=4))
    assert fields == {
        "rows": 6, "already_done": 2, "to_send": 3, "not_sent": 1, "not_sent_new": 1, "left_by_limit": 4,
        "done": 5, "outcomes": {"returned and in place": 4, "in transit": 1}, "failed": 1,
        "failed_by_code": {"40166411": 1}, "not_finished": 2, "requests": 9, "rate_limited": 3, "elapsed_s": 2.0,
        "stop_reason": "Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT",
    }
