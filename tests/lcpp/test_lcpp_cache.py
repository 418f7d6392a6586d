"""The SQLite cache on a real file: schema version, WAL, backoff, purge, alert throttling."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from libcal_passagepoint.cache import _MIGRATIONS, SCHEMA_VERSION, Cache, CacheError

DAY = 86400.0


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _book(book_id: str, end_time: float, *, primary_id: str = "G1") -> dict:
    return {"book_id": book_id, "lid": 8827, "primary_id": primary_id, "patron": "Ada Lovelace",
            "start_time": int(end_time - 3600), "end_time": int(end_time), "destination": "LibCal Gelman"}


def test_new_file_has_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    """A fresh cache is created at SCHEMA_VERSION with WAL journaling; reopening keeps it."""
    path = tmp_path / "c.sqlite3"
    with Cache(path) as cache:
        assert cache.schema_version == SCHEMA_VERSION == 3
        assert cache.journal_mode == "wal"
    with Cache(path) as cache:
        assert cache.schema_version == 3


def test_a_version_1_cache_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    """A cache written before held alerts existed (schema 1) gets the new tables; its bookings stay."""
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[1] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO bookings (book_id, lid, start_time, end_time, state, created_at, updated_at) "
               "VALUES ('cs_1', 8827, 1, 2, 'registered', 0, 0)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with Cache(path, read_only=True) as cache:  # a dry run reads the old file as it is
        assert cache.schema_version == 1 and cache.booking("cs_1")["state"] == "registered"
    with Cache(path, read_only=True, create=False) as cache:  # and so does status
        assert cache.schema_version == 1 and cache.counts()["registered"] == 1
    assert path.read_bytes() == before
    with Cache(path) as cache:
        assert cache.schema_version == 3 and cache.booking("cs_1")["state"] == "registered"
        assert cache.configuration is None
        cache.hold_alert("booking_failed", "subject", ["line"])
        assert cache.held_alerts() == {"booking_failed": (["subject"], ["line"])}


def test_the_cache_records_the_configuration_it_belongs_to(tmp_path: Path) -> None:
    """A new cache records no configuration; once recorded, the path is kept across opens and read
    by a read-only open; recording another replaces it."""
    path = tmp_path / "c.sqlite3"
    with Cache(path) as cache:
        assert cache.configuration is None
        cache.record_configuration("/etc/lcpp/config.yml")
    with Cache(path, read_only=True, create=False) as cache:
        assert cache.configuration == "/etc/lcpp/config.yml"
    with Cache(path) as cache:
        cache.record_configuration("/etc/lcpp2/config.yml")
        assert cache.configuration == "/etc/lcpp2/config.yml"


def test_a_version_2_cache_read_only_records_no_configuration(tmp_path: Path) -> None:
    """The previous version's cache (schema 2, no meta table), read as it is, records no configuration."""
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[1] + _MIGRATIONS[2] + "PRAGMA user_version = 2;")
    db.close()
    with Cache(path, read_only=True, create=False) as cache:
        assert (cache.schema_version, cache.configuration) == (2, None)


def test_newer_schema_is_refused_with_a_message(tmp_path: Path) -> None:
    """A cache written by a newer version of the tool is not touched."""
    path = tmp_path / "c.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(CacheError) as excinfo:
        Cache(path)
    assert str(excinfo.value) == (
        f"cache file {path} has schema version 7, newer than this tool's 3: upgrade the tool or point --cache at another file"
    )


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    """A file that is not SQLite gives a CacheError naming it."""
    path = tmp_path / "c.sqlite3"
    path.write_text("hello, this is not a database" * 100)
    with pytest.raises(CacheError, match=f"^cannot use cache file {path}: file is not a database$"):
        Cache(path)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 300), (2, 600), (3, 1200), (7, 19200), (8, 6 * 3600), (12, 6 * 3600)])
def test_failure_backoff_doubles_up_to_the_cap(tmp_path: Path, attempt: int, delay: int) -> None:
    """next_retry_at = now + retry_base * 2^(attempt-1), capped at retry_max."""
    clock = _Clock(1_000_000.0)
    with Cache(tmp_path / "c.sqlite3", clock=clock) as cache:
        for _ in range(attempt):
            cache.record_failure(_book("cs_1", 2e9), reason="r", retry_base=300, retry_max=6 * 3600)
        row = cache.booking("cs_1")
        assert (row["attempts"], row["next_retry_at"] - clock.now) == (attempt, delay)


def test_failure_is_reported_again_only_when_its_reason_changes(tmp_path: Path) -> None:
    """record_failure says whether to report: the first time, and when the reason changes."""
    with Cache(tmp_path / "c.sqlite3") as cache:
        book = _book("cs_1", 2e9)
        assert cache.record_failure(book, reason="a", retry_base=1, retry_max=10) is True
        cache.mark_reported(["cs_1"])
        assert cache.record_failure(book, reason="a", retry_base=1, retry_max=10) is False
        assert cache.record_failure(book, reason="b", retry_base=1, retry_max=10) is True


def test_registered_clears_the_failure(tmp_path: Path) -> None:
    """A booking that succeeds after failing has no reason or retry time left."""
    with Cache(tmp_path / "c.sqlite3") as cache:
        book = _book("cs_1", 2e9)
        cache.record_failure(book, reason="a", retry_base=1, retry_max=10)
        cache.record_intent(book, visitor_id=5, user=("G1", "2222", "UGRD"))
        assert cache.booking("cs_1")["state"] == "intent"
        assert cache.user("G1")["visitor_id"] == 5
        cache.record_registered(book, visitor_id=5, prereg_id=9)
        row = cache.booking("cs_1")
        assert (row["state"], row["prereg_id"], row["reason"], row["next_retry_at"]) == ("registered", 9, None, None)


def test_purge_drops_bookings_that_ended_before_the_cutoff_and_patrons_with_none_left(tmp_path: Path) -> None:
    """purge --older-than 30d removes bookings that ended over 30 days ago, the patrons (id, barcode)
    with no booking left, and old pass records; a purge is due again a day later."""
    clock = _Clock(100 * DAY)
    with Cache(tmp_path / "c.sqlite3", clock=clock) as cache:
        cache.record_intent(_book("cs_old", 60 * DAY, primary_id="G1"), visitor_id=1, user=("G1", "2221", "UGRD"))
        cache.record_registered(_book("cs_old", 60 * DAY, primary_id="G1"), visitor_id=1, prereg_id=1)
        cache.record_intent(_book("cs_recent", 120 * DAY, primary_id="G2"), visitor_id=2, user=("G2", "2222", "UGRD"))
        cache.record_registered(_book("cs_recent", 120 * DAY, primary_id="G2"), visitor_id=2, prereg_id=2)
        cache.finish_pass(cache.start_pass(), exit_status=0, summary={})
        clock.now = 100 * DAY + 31 * DAY
        cache.finish_pass(cache.start_pass(), exit_status=0, summary={})
        assert cache.purge_due()
        assert cache.purge(older_than=30 * DAY) == (1, 1, 1)  # cutoff: day 101
        assert cache.booking("cs_old") is None and cache.booking("cs_recent") is not None
        assert cache.user("G1") is None and cache.user("G2") is not None
        assert cache.last_pass() is not None
        assert not cache.purge_due()
        clock.now += DAY
        assert cache.purge_due()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_cache_and_its_wal_files_are_readable_by_their_owner_only(tmp_path: Path, umask: int) -> None:
    """They hold university ids, barcodes and names: 0600 whatever the umask."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        path = tmp_path / "c.sqlite3"
        with Cache(path) as cache:
            cache.record_registered(_book("cs_1", 2e9), visitor_id=1, prereg_id=1)
            modes = {name: stat.S_IMODE(os.stat(f"{path}{name}").st_mode) for name in ("", "-wal", "-shm")}
    finally:
        os.umask(previous)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


def test_a_world_readable_cache_of_an_earlier_version_is_tightened_when_used(tmp_path: Path) -> None:
    import os
    import stat

    path = tmp_path / "c.sqlite3"
    Cache(path).close()
    os.chmod(path, 0o644)
    Cache(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_alert_throttle_per_kind(tmp_path: Path) -> None:
    """An alert kind is due again only after the interval; other kinds are independent."""
    clock = _Clock(1000.0)
    with Cache(tmp_path / "c.sqlite3", clock=clock) as cache:
        assert cache.alert_due("booking_failed", interval=300)
        cache.alert_sent("booking_failed")
        clock.now += 299
        assert not cache.alert_due("booking_failed", interval=300)
        assert cache.alert_due("prereg_uncertain", interval=300)
        clock.now += 1
        assert cache.alert_due("booking_failed", interval=300)


def test_a_withdrawn_intent_puts_the_booking_back_as_it_was(tmp_path: Path) -> None:
    """createPreReg refused before it applied: a booking new to the cache is gone again, one that
    had failed is failed again with its attempts and retry time, and the patron's visitor id stays."""
    end = 2_000_000_000.0
    with Cache(tmp_path / "c.sqlite3", clock=_Clock(1_000.0)) as cache:
        cache.record_failure(_book("cs_failed", end), reason="PassagePoint createPreReg: HTTP 400", retry_base=300,
                             retry_max=3600, now=1_000.0)
        before = {"cs_new": cache.booking("cs_new"), "cs_failed": cache.booking("cs_failed")}
        for book_id, row in before.items():
            cache.record_intent(_book(book_id, end), visitor_id=77, user=("G1", "2221", "UGRD"))
            assert cache.booking(book_id)["state"] == "intent"
            cache.withdraw_intent(book_id, row)
        assert cache.booking("cs_new") is None
        assert dict(cache.booking("cs_failed")) == dict(before["cs_failed"])
        assert cache.user("G1")["visitor_id"] == 77
        assert cache.counts()["intent"] == 0
