"""loan_discharge.lock: one run per items file and data directory (real flock on real files).

The cross-process behaviour (a second command refused, kill -9 takeover) is tested with real
processes in test_discharge_cli.py; these tests pin the edge cases inside one process (flock
locks belong to an open file, so two RunLocks in one process exclude each other as two
processes would).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import pytest

from loan_discharge.lock import RunLock, RunLocked


@pytest.fixture
def items(tmp_path: Path) -> Path:
    path = tmp_path / "items.csv"
    path.write_text("MMS Id\n")
    return path


def test_the_holder_is_recorded_and_a_second_run_is_refused_naming_it(tmp_path: Path, items: Path) -> None:
    """Both lock files name the holder; a second RunLock is refused with that record; release removes them."""
    with RunLock(items, tmp_path / ".") as held:
        record = json.loads((tmp_path / "discharge.lock").read_text())
        assert record == json.loads((tmp_path / "items.csv.lock").read_text())
        assert (record["pid"], record["host"], record["items_file"], record["data_dir"]) == (
            os.getpid(), socket.gethostname(), str(items), str(tmp_path),
        )
        with pytest.raises(RunLocked) as refused:
            RunLock(items, tmp_path).acquire()
        assert str(refused.value) == (
            f"another discharge run (pid {os.getpid()} on {socket.gethostname()}, started {record['started']}) "
            f"is working on {items} in {tmp_path}: wait for it to finish; nothing was sent"
        )
        assert held.taken_over == []
    assert not (tmp_path / "discharge.lock").exists() and not (tmp_path / "items.csv.lock").exists()
    RunLock(items, tmp_path).acquire().release()  # free again


def test_a_refused_run_holds_neither_lock(tmp_path: Path, items: Path) -> None:
    """Refused on the items file after taking its data_dir: the data_dir lock is let go at once."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with RunLock(items, tmp_path / "a"), pytest.raises(RunLocked):
        RunLock(items, tmp_path / "b").acquire()
    assert not (tmp_path / "b" / "discharge.lock").exists()
    other = tmp_path / "other.csv"
    other.write_text("MMS Id\n")
    RunLock(other, tmp_path / "b").acquire().release()


def test_a_lock_file_left_behind_is_taken_over_and_its_record_reported(tmp_path: Path, items: Path) -> None:
    """A lock file whose flock is free (its process died) is taken over; taken_over names the dead run once."""
    dead = {"pid": 4242, "host": "elsewhere", "started": "2025-01-01 00:00:00 UTC",
            "items_file": str(items), "data_dir": str(tmp_path)}
    (tmp_path / "discharge.lock").write_text(json.dumps(dead))
    (tmp_path / "items.csv.lock").write_text(json.dumps(dead))
    with RunLock(items, tmp_path) as lock:
        assert [h.describe() for h in lock.taken_over] == ["pid 4242 on elsewhere, started 2025-01-01 00:00:00 UTC"]
        assert json.loads((tmp_path / "discharge.lock").read_text())["pid"] == os.getpid()


def test_a_holder_that_has_not_written_its_record_yet_is_still_a_holder(tmp_path: Path, items: Path) -> None:
    """An empty lock file held by someone: refused, with a message that does not invent a pid."""
    fd = os.open(tmp_path / "discharge.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunLocked) as refused:
            RunLock(items, tmp_path).acquire()
    finally:
        os.close(fd)
    assert str(refused.value) == (
        f"another discharge run holds {tmp_path / 'discharge.lock'}: wait for it to finish; nothing was sent"
    )


def test_a_lock_file_removed_between_open_and_flock_is_not_trusted(
    tmp_path: Path, items: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder releases (removing the file) after we opened it and before we lock it: we must lock
    the new file at the path, not the removed one, or a third run would find the path free."""
    first = RunLock(items, tmp_path).acquire()
    real_flock = fcntl.flock

    def holder_releases_first(fd: int, operation: int) -> None:
        first.release()  # a no-op once released
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_releases_first)
    second = RunLock(items, tmp_path).acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    other = tmp_path / "other.csv"
    other.write_text("MMS Id\n")
    with pytest.raises(RunLocked):  # the same data_dir (only that lock decides)
        RunLock(other, tmp_path).acquire()
    second.release()
