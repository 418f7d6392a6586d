"""Where a scanned-in item ended up: a plain function over Alma's item object (alma.md).

There is no field that says "the loan was returned": the outcome is read from
``item_data.base_status``, ``item_data.process_type`` and ``additional_info``. A scan-in that
leaves the item in transit or on the hold shelf has still returned the loan.
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
]

OUTCOME_RETURNED = "returned and in place"
OUTCOME_TRANSIT = "in transit"
OUTCOME_HOLD_SHELF = "on hold shelf"
OUTCOME_NOT_ON_LOAN = "not on loan"
OUTCOME_WORK_ORDER = "in work order"
OUTCOME_STILL_ON_LOAN = "still on loan"


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
    if process_type == "TRANSIT" or "in transit" in info:
        return OUTCOME_TRANSIT
    if process_type in ("HOLDSHELF", "HOLD_SHELF") or "hold shelf" in info:
        return OUTCOME_HOLD_SHELF
    if process_type.startswith("WORK_ORDER"):
        return OUTCOME_WORK_ORDER
    if base_status == "1":
        return OUTCOME_RETURNED
    return f"not in place ({process_type.lower() or 'no process type'})"
