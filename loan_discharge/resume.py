"""The resume protocol: everything a run decides and does before its first scan-in, and after its last.

A run that was killed (``kill -9``, a crash, a power cut) leaves ``data_dir/journal.jsonl``: one line
per item it finished, which the items file may not have yet. The next run, holding the locks
(:mod:`loan_discharge.lock`), reads the items file again, checks that the journal belongs to this
items list (:func:`resume`), merges it into the table and plans; :func:`save_resumed` then writes
the merged table and sets the journal aside, so that a later export listing the same items is not
taken as already done; :func:`finish` removes the journal of a run that ended. A dry run calls
:func:`resume` alone: the plan from the files as they are, nothing written.

Every refusal is :class:`CannotStart` (nothing was done; the message says what to do), or
:class:`~loan_discharge.items.InputError` for the files themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loan_discharge.barcodes import (
    BarcodeList,
    Lookup,
    apply_lookups,
    build_barcode_plan,
    read_barcodes,
    results_file,
    results_table,
)
from loan_discharge.config import DischargeConfig
from loan_discharge.items import (
    DeskMap,
    ItemsTable,
    Plan,
    apply_results,
    build_plan,
    items_fingerprint,
    mark_problems,
    read_desks,
    read_items,
    write_items_atomic,
)
from loan_discharge.lock import RunLock, RunLocked
from loan_discharge.run import JOURNAL, read_journal

__all__ = [
    "CannotStart",
    "Resumed",
    "barcode_config",
    "read_barcode_inputs",
    "finish",
    "journal_path",
    "read_inputs",
    "resume",
    "save_resumed",
    "take_locks",
]


class CannotStart(Exception):
    """The run cannot start, and nothing was done; the message says why and what to do."""


@dataclass
class Resumed:
    """Where a run starts from: the items file with an interrupted run's journal merged in, and the plan."""

    table: ItemsTable
    plan: Plan
    journal: Path
    journal_entries: int  # lines in the journal of an interrupted run (0: there was none)
    recovered: int  # rows of the items file those lines changed
    lookups: list[Lookup] = field(default_factory=list)  # barcodes to look up (a barcode list's run)
    desks: DeskMap | None = None


def journal_path(config: DischargeConfig) -> Path:
    """The journal of the run working in ``data_dir``."""
    return config.data_dir / JOURNAL


def read_inputs(config: DischargeConfig) -> tuple[ItemsTable, DeskMap]:
    """The items file and the desks file, checked; InputError names the file and the fix."""
    return read_items(config.items_file, config.location_type), read_desks(config.circ_desks_file)


def read_barcode_inputs(config: DischargeConfig, barcodes: Path) -> tuple[BarcodeList, ItemsTable, DeskMap]:
    """A barcode list, its results table (read back, or new) and the desks file, checked."""
    listing = read_barcodes(barcodes)
    return listing, results_table(listing, config.items_file), read_desks(config.circ_desks_file)


def barcode_config(config: DischargeConfig, barcodes: Path) -> DischargeConfig:
    """*config* for a run over a barcode list: its items table is the results file beside the list."""
    return replace(config, loans_data_file=results_file(barcodes))


def resume(config: DischargeConfig, table: ItemsTable, desks: DeskMap, limit: int | None = None) -> Resumed:
    """Merge the journal of an interrupted run into *table* (in memory only) and plan the run.

    CannotStart if the journal belongs to another items list (a new export saved over the file
    before the interrupted run was resumed): its results must not be taken for this list's.
    """
    journal = journal_path(config)
    entries = read_journal(journal)
    if table.key == "barcode":  # a barcode list may have grown since: its entries belong if their barcode is listed
        listed = {table.get(row, "barcode") for row in range(len(table.rows))}
        foreign = sum(1 for entry in entries if str(entry.get("barcode") or "") not in listed)
    else:
        foreign = _foreign_entries(entries, items_fingerprint(table))
    if foreign:
        raise CannotStart(
            f"{journal} holds {foreign} results of an interrupted run over a different items list "
            f"than {config.items_file}: was a new export saved over the file before that run was "
            f"resumed? Nothing was sent. To resume that run, put its items file back and run again; "
            f"to start afresh with this file, move the journal aside (e.g. to {journal.with_suffix('.old')})"
        )
    if table.key == "barcode":  # a barcode list's results: the journalled lookups first
        recovered = apply_lookups(table, entries) + apply_results(table, entries)
        plan, lookups = build_barcode_plan(table, desks, config.location_type, limit)
        return Resumed(table, plan, journal, len(entries), recovered, lookups, desks)
    recovered = apply_results(table, entries)
    plan = build_plan(table, desks, config.location_type, limit)
    return Resumed(table, plan, journal, len(entries), recovered, [], desks)


def _foreign_entries(entries: list[dict[str, Any]], this_list: str) -> int:
    """How many journal lines name another items list (lines of older versions name none: taken as this one's)."""
    return sum(1 for entry in entries if entry.get("items", this_list) != this_list)


def take_locks(config: DischargeConfig) -> RunLock:
    """Check that the run can write what it must, and take its locks (one run at a time).

    The items file is rewritten beside itself, so its directory must be writable; ``data_dir``
    is created if missing. CannotStart names what is in the way: a directory, or the run that
    holds a lock.
    """
    items_dir = Path(os.path.realpath(config.items_file)).parent  # a link's file is rewritten where it is
    if not os.access(items_dir, os.W_OK):
        raise CannotStart(
            f"cannot write to {items_dir}: the run writes its results to {config.items_file.name} there (an items "
            "file is rewritten with them; a barcode list's results file is created beside the list), so it must be "
            "a writable directory"
        )
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotStart(f"cannot create data_dir {config.data_dir}: {exc.strerror}") from exc
    lock = RunLock(config.items_file, config.data_dir)
    try:
        return lock.acquire()
    except RunLocked as exc:
        raise CannotStart(str(exc)) from exc
    except OSError as exc:
        raise CannotStart(f"cannot lock {exc.filename or config.data_dir}: {exc.strerror or exc}") from exc


def save_resumed(resumed: Resumed, run_id: str) -> Path | None:
    """Write the merged items file (refused rows say why in their error column) and set the journal aside.

    Returns where the journal was kept (``journal-merged-<run>.jsonl``) when it added results,
    else None (a journal that added nothing is removed). The locks must be held.
    """
    mark_problems(resumed.table, resumed.plan)
    write_items_atomic(resumed.table)
    # Merged and saved: the journal's content is in the items file now. Set it aside, so that a
    # later export listing the same items (next semester) is not taken as already done.
    if resumed.recovered:
        kept = resumed.journal.with_name(f"journal-merged-{run_id}.jsonl")
        os.replace(resumed.journal, kept)
        return kept
    if resumed.journal_entries:
        resumed.journal.unlink()
    return None


def finish(config: DischargeConfig) -> None:
    """After a run that ended with every result in the items file: remove its journal, so that it is
    never merged into the next export (the same items, borrowed again, would be taken as already done)."""
    journal_path(config).unlink(missing_ok=True)
