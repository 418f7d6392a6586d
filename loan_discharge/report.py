"""What a run tells its operator: the summary (printed, and logged with its counts) and the exit status.

Exit status: 0 all done; 1 the run finished but some items failed, some rows were not sent, or it
stopped early (progress saved); 2 nothing was done (bad usage, configuration or input, another
run working); 143 stopped by SIGTERM (progress saved).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loan_discharge.items import Plan
from loan_discharge.run import RunSummary, by_count

__all__ = ["exit_status", "format_summary", "nothing_to_send_status", "plan_fields", "summary_fields"]


def format_summary(summary: RunSummary, plan: Plan, items_file: Path) -> str:
    """The closing summary of a run."""
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in by_count(summary.outcomes))
    failed = ", ".join(f"{code}: {count}" for code, count in by_count(summary.failed))
    lines = [
        f"done: {summary.done}" + (f" ({outcomes})" if outcomes else ""),
        f"failed: {summary.failed_total}" + (f" ({failed}); see the error column of {items_file}" if failed else ""),
        f"skipped: {len(plan.problems)} not sent (see the plan above), {plan.already_done} already done"
        + (f", {plan.not_selected} left by --limit" if plan.not_selected else ""),
        f"elapsed: {summary.elapsed:.1f} s, {summary.requests} requests, {summary.request_rate:.1f} requests/s, "
        f"{summary.rate_limited} answered 429",
    ]
    if summary.stop_reason:
        lines.append(
            f"stopped early: {summary.stop_reason}. {summary.not_processed} items not finished; "
            f"progress is saved in {items_file}: run again to resume"
        )
    return "\n".join(lines)


def plan_fields(plan: Plan) -> dict[str, Any]:
    """The plan's counts, as fields of a JSON log line."""
    return {
        "rows": plan.total_rows,
        "already_done": plan.already_done,
        "to_send": len(plan.requests),
        "not_sent": len(plan.problems),
        "left_by_limit": plan.not_selected,
    }


def summary_fields(summary: RunSummary, plan: Plan) -> dict[str, Any]:
    """The summary's counts, as fields of a JSON log line (for a log shipper or jq)."""
    return {
        **plan_fields(plan),
        "done": summary.done,
        "outcomes": dict(summary.outcomes),
        "failed": summary.failed_total,
        "failed_by_code": dict(summary.failed),
        "not_finished": summary.not_processed,
        "requests": summary.requests,
        "rate_limited": summary.rate_limited,
        "elapsed_s": round(summary.elapsed, 1),
        "stop_reason": summary.stop_reason,
    }


def exit_status(summary: RunSummary, plan: Plan) -> int:
    """0 when every planned item is done and no row was refused; else 1 (progress is saved either way)."""
    if summary.stop_reason or summary.failed_total or summary.not_processed or plan.problems:
        return 1
    return 0


def nothing_to_send_status(plan: Plan) -> int:
    """A run with nothing to send: 0, unless rows were refused (they are not done)."""
    return 1 if plan.problems else 0
