"""loan_discharge.resume: the journal of an interrupted run is checked, merged, saved and set aside;
a run that cannot start says why. Plain functions on real files; the command's end-to-end runs
(kill -9, a second run, a new export) are in test_discharge_cli.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loan_discharge import resume
from loan_discharge.config import DischargeConfig
from loan_discharge.items import items_fingerprint, read_items

HEADER = "MMS Id,Holding Id,Physical Item Id,Library Code,Location Code"


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


@pytest.fixture
def config(tmp_path: Path) -> DischargeConfig:
    """Three items in stacks (mapped) and one in attic (not mapped)."""
    rows = [HEADER] + [f"{pid('99', n)},{pid('22', n)},{pid('23', n)},MAIN,{'attic' if n == 3 else 'stacks'}"
                       for n in range(4)]
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n")
    return DischargeConfig(apikey=None, loans_data_file=tmp_path / "items.csv", circ_desks_file=tmp_path / "desks.csv",
                           data_dir=tmp_path / "data")


def write_journal(config: DischargeConfig, *entries: dict[str, object]) -> Path:
    path = resume.journal_path(config)
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def done(n: int, items: str | None) -> dict[str, object]:
    entry: dict[str, object] = {"item_pid": pid("23", n), "done": True, "outcome": "returned and in place",
                                "error": "", "attempts": 1}
    return entry if items is None else {**entry, "items": items}


def test_without_a_journal_the_plan_is_the_files(config: DischargeConfig) -> None:
    """No journal: nothing recovered, the plan sends every mapped row and lists the rest."""
    resumed = resume.resume(config, *resume.read_inputs(config))
    assert (resumed.journal_entries, resumed.recovered) == (0, 0)
    assert [r.item_pid for r in resumed.plan.requests] == [pid("23", n) for n in range(3)]
    assert [p.line for p in resumed.plan.problems] == [5]


def test_the_journal_is_merged_in_memory_only(config: DischargeConfig) -> None:
    """An interrupted run's results are taken as done for the plan, but resume() writes nothing
    (a dry run calls it alone); lines of older versions, without the items fingerprint, count."""
    table, desks = resume.read_inputs(config)
    before = config.loans_data_file.read_bytes()
    journal = write_journal(config, done(0, items_fingerprint(table)), done(1, None))
    resumed = resume.resume(config, table, desks, limit=None)
    assert (resumed.journal_entries, resumed.recovered, resumed.plan.already_done) == (2, 2, 2)
    assert [r.item_pid for r in resumed.plan.requests] == [pid("23", 2)]
    assert config.loans_data_file.read_bytes() == before and journal.exists()


def test_a_journal_of_another_items_list_cannot_start(config: DischargeConfig) -> None:
    """A journal from another export (a new one saved over the file) is refused, saying both ways on."""
    journal = write_journal(config, done(0, "0123456789abcdef"), done(1, None))
    with pytest.raises(resume.CannotStart) as refused:
        resume.resume(config, *resume.read_inputs(config))
    assert str(refused.value) == (
        f"{journal} holds 1 results of an interrupted run over a different items list than {config.loans_data_file}: "
        "was a new export saved over the file before that run was resumed? Nothing was sent. To resume that run, "
        "put its items file back and run again; to start afresh with this file, move the journal aside "
        f"(e.g. to {journal.with_suffix('.old')})"
    )


def test_saving_writes_the_merged_file_and_sets_the_journal_aside(config: DischargeConfig) -> None:
    """Saved: merged results and the reasons of refused rows are in the file; the journal is kept
    under the run's name, so the next export of the same items is not taken as done."""
    table, desks = resume.read_inputs(config)
    journal = write_journal(config, done(0, items_fingerprint(table)))
    kept = resume.save_resumed(resume.resume(config, table, desks), "20270115T080000Z-42")
    assert kept == config.data_dir / "journal-merged-20270115T080000Z-42.jsonl"
    assert kept.exists() and not journal.exists()
    rows = [row[-4:] for row in read_items(config.loans_data_file).rows]
    assert rows[0] == ["True", "returned and in place", "", "1"]
    assert rows[3] == ["False", "", "not sent: no circulation desk mapped for location 'attic' in library 'MAIN'", ""]


@pytest.mark.parametrize("journal", ["nothing new", "none"])
def test_a_journal_that_adds_nothing_is_removed_not_kept(config: DischargeConfig, journal: str) -> None:
    """A journal whose results the file already has is removed; without a journal, nothing is kept."""
    table, desks = resume.read_inputs(config)
    if journal == "nothing new":
        write_journal(config, done(0, None))
        resume.save_resumed(resume.resume(config, table, desks), "first")  # the file now has item 0 done
        write_journal(config, done(0, None))
        table, desks = resume.read_inputs(config)
    resumed = resume.resume(config, table, desks)
    assert resumed.recovered == 0
    assert resume.save_resumed(resumed, "second") is None
    assert not resume.journal_path(config).exists()
    assert not (config.data_dir / "journal-merged-second.jsonl").exists()


def test_finish_removes_the_journal(config: DischargeConfig) -> None:
    """A run that ended removes its journal; finishing without one is fine."""
    journal = write_journal(config, done(0, None))
    resume.finish(config)
    assert not journal.exists()
    resume.finish(config)


def test_the_locks_are_taken_once_and_a_second_run_cannot_start(config: DischargeConfig) -> None:
    """take_locks creates data_dir and holds the run's locks; a second run is refused naming the first."""
    with resume.take_locks(config):
        assert (config.data_dir / "discharge.lock").exists()
        with pytest.raises(resume.CannotStart) as refused:
            resume.take_locks(config)
        assert str(refused.value).startswith(f"another discharge run (pid {os.getpid()} on ")
        assert str(refused.value).endswith("wait for it to finish; nothing was sent")
    assert not (config.data_dir / "discharge.lock").exists()


def test_a_data_dir_that_cannot_be_created_cannot_start(config: DischargeConfig) -> None:
    """data_dir is a file: refused, naming it."""
    config.data_dir.write_text("not a directory")
    with pytest.raises(resume.CannotStart, match=r"^cannot create data_dir .*/data: File exists$"):
        resume.take_locks(config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_items_file_in_a_read_only_directory_cannot_start(config: DischargeConfig) -> None:
    """The items file is rewritten beside itself: a read-only directory is refused before anything is done."""
    directory = config.loans_data_file.parent
    directory.chmod(0o555)
    try:
        with pytest.raises(resume.CannotStart) as refused:
            resume.take_locks(config)
    finally:
        directory.chmod(0o755)
    assert str(refused.value) == (
        f"cannot write to {directory}: the run writes its results to {config.loans_data_file.name} there (an items "
        "file is rewritten with them; a barcode list's results file is created beside the list), so it must be a "
        "writable directory"
    )
    assert not config.data_dir.exists()
