"""What a run tells its operator: the summary (printed, and logged with its counts) and the exit status.

Exit status, so that a wrapper (cron, a systemd unit) can tell "nothing needs a person" from
"needs a person":

- 0: nothing needs a person now. Every item is done, or the only rows left are ones an earlier
  run already refused and reported (their error column says why; they are listed again, and
  fixing them is up to whoever read the first report).
- 1: this run found something a person must look at: items that failed (still on loan, a lost
  or claimed-returned loan, an Alma error), rows refused for the first time, or the run stopped
  before the end (progress saved: run again).
- 2: nothing was done (bad usage, configuration or input, another run working).
- 130 / 143: stopped by Ctrl-C / SIGTERM (progress saved).
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
        f"skipped: {len(plan.problems)} not sent (see the plan above"
        + (f"; {len(plan.problems) - len(plan.new_problems)} reported by an earlier run" if plan.problems != plan.new_problems else "")
        + f"), {plan.already_done} already done"
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
        "not_sent_new": len(plan.new_problems),
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
    """1 when this run failed items, stopped early or refused rows no earlier run reported; else 0."""
    if summary.stop_reason or summary.failed_total or summary.not_processed or plan.new_problems:
        return 1
    return 0


def nothing_to_send_status(plan: Plan) -> int:
    """A run with nothing to send: 1 only when it refused rows no earlier run reported."""
    return 1 if plan.new_problems else 0
