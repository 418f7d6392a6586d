"""Where a scanned-in item ended up: a plain function over Alma's item object (alma.md).

There is no field that says "the loan was returned": the outcome is read from
``item_data.base_status``, ``item_data.process_type`` and ``additional_info``. A scan-in that
leaves the item in transit or on the hold shelf has still returned the loan. One that leaves it in
a loan process of another kind (``LOST_LOAN``, ``CLAIM_RETURNED_LOAN``, ``LOST_LOAN_AND_PAID``: any
process type with ``LOAN`` as one of its words) has not: a person has to look at it in Alma.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "scan_outcome",
    "OUTCOME_RETURNED",
    "OUTCOME_TRANSIT",
    "OUTCOME_HOLD_SHELF",
    "OUTCOME_NOT_ON_LOAN",
    "OUTCOME_WORK_ORDER",
    "OUTCOME_STILL_ON_LOAN",
    "needs_review",
    "unfinished_loan",
]

OUTCOME_RETURNED = "returned and in place"
OUTCOME_TRANSIT = "in transit"
OUTCOME_HOLD_SHELF = "on hold shelf"
OUTCOME_NOT_ON_LOAN = "not on loan"
OUTCOME_WORK_ORDER = "in work order"
OUTCOME_STILL_ON_LOAN = "still on loan"
NEEDS_REVIEW = "needs review"  # the outcome's start for a loan process a scan-in does not end


def needs_review(outcome: str) -> bool:
    """Whether *outcome* is one a person must look at in Alma (lost, claimed returned, …)."""
    return outcome.startswith(NEEDS_REVIEW)


def unfinished_loan(item: dict[str, Any]) -> str | None:
    """The process type of a loan other than a plain one, which a scan-in does not end
    (``LOST_LOAN``, ``CLAIM_RETURNED_LOAN``, ``LOST_LOAN_AND_PAID``, …); None otherwise."""
    process_type = _value((item.get("item_data") or {}).get("process_type")).upper()
    return process_type if "LOAN" in process_type.split("_") and process_type != "LOAN" else None


def _value(field: Any) -> str:
    if isinstance(field, dict):
        return str(field.get("value") or "")
    return str(field or "")


def scan_outcome(item: dict[str, Any]) -> str:
    """Where a scanned-in item ended up, from item_data.base_status/process_type and additional_info."""
    item_data = item.get("item_data") or {}
    process_type = _value(item_data.get("process_type")).upper()
    base_status = _value(item_data.get("base_status"))
    info = str(item.get("additional_info") or "").lower()
    if process_type == "LOAN":
        return OUTCOME_STILL_ON_LOAN
    if unfinished_loan(item):
        return f"{NEEDS_REVIEW} ({process_type})"
    if process_type.startswith("TRANSIT") or "in transit" in info:  # TRANSIT, TRANSIT_TO_REMOTE_STORAGE
        return OUTCOME_TRANSIT
    if process_type in ("HOLDSHELF", "HOLD_SHELF") or "hold shelf" in info:
        return OUTCOME_HOLD_SHELF
    if process_type.startswith("WORK_ORDER"):
        return OUTCOME_WORK_ORDER
    if base_status == "1":
        return OUTCOME_RETURNED
    return f"not in place ({process_type.lower() or 'no process type'})"
