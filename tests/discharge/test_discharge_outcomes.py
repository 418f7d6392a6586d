"""loan_discharge.outcomes: where a scanned-in item ended up, read from Alma's item object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loan_discharge import outcomes
from loan_discharge.outcomes import scan_outcome
from simulators.alma import SCAN_IN_EXAMPLE

EXAMPLE = json.loads(SCAN_IN_EXAMPLE)  # the recorded real answer, shared/reference/examples/alma_scan_in_200.json


def with_state(process_type: str, base_status: str, info: str) -> dict[str, Any]:
    return {
        "item_data": {"base_status": {"value": base_status}, "process_type": {"value": process_type, "desc": None}},
        "additional_info": info,
    }


@pytest.mark.parametrize(
    ("item", "outcome"),
    [
        (with_state("", "1", "Item's destination is: Reshelve to rcppa RECAP."), outcomes.OUTCOME_RETURNED),
        (with_state("TRANSIT", "0", "Item's destination is: LAW."), outcomes.OUTCOME_TRANSIT),
        (with_state("HOLDSHELF", "0", "Item's destination is: On Hold Shelf."), outcomes.OUTCOME_HOLD_SHELF),
        (with_state("", "0", "Item's destination is: On Hold Shelf. Request/Process Type: Patron physical item request"), outcomes.OUTCOME_HOLD_SHELF),
        (with_state("WORK_ORDER_DEPARTMENT", "0", ""), outcomes.OUTCOME_WORK_ORDER),
        (with_state("LOAN", "0", ""), outcomes.OUTCOME_STILL_ON_LOAN),
        (with_state("MISSING", "0", ""), "not in place (missing)"),
        (with_state("TRANSIT_TO_REMOTE_STORAGE", "0", ""), outcomes.OUTCOME_TRANSIT),
        (with_state("LOST_LOAN", "0", ""), "needs review (LOST_LOAN)"),
        (with_state("CLAIM_RETURNED_LOAN", "0", ""), "needs review (CLAIM_RETURNED_LOAN)"),
        (with_state("LOST_LOAN_AND_PAID", "0", ""), "needs review (LOST_LOAN_AND_PAID)"),
    ],
)
def test_scan_outcome(item: dict[str, Any], outcome: str) -> None:
    """The outcome comes from process_type, base_status and additional_info, as alma.md describes."""
    assert scan_outcome(item) == outcome


def test_recorded_real_answer_is_returned_and_in_place() -> None:
    """The real recorded scan-in answer (examples/alma_scan_in_200.json) reads as returned and in place."""
    assert scan_outcome(EXAMPLE) == outcomes.OUTCOME_RETURNED
