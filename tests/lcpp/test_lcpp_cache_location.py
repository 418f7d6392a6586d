"""Where the cache lives: beside the configuration, whatever the working directory; one run at a time.

Real processes started from another working directory than the configuration's, with no terminal
(as cron runs them), against the simulators: PassagePoint has no endpoint to delete a
pre-registration, so a second cache (or a second run at once) would register every booking again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from lcpp_sims import DAY, Sims, write_config
from logtext import messages

from libcal_passagepoint.cache import Cache
from libcal_passagepoint.config import load_config
from libcal_passagepoint.runner import CacheBusy, cache_lock

UNREACHABLE = {"libcal": "http://127.0.0.1:1", "alma": "http://127.0.0.1:1", "pp": "http://127.0.0.1:1"}


def _config_in(directory: Path, sims: Sims, cache_path: str | None) -> Path:
    """The fixture's config.yml written in *directory*, with this cache_path (None: the default)."""
    directory.mkdir(parents=True, exist_ok=True)
    line = "" if cache_path is None else f"  cache_path: {cache_path}\n"
    text = re.sub(r"  cache_path: .*\n", line, sims.config_path.read_text(encoding="utf-8"))
    path = directory / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


async def _start(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libcal_passagepoint", *args, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    return await _finish(await _start(*args, cwd=cwd))


def _messages(err: str) -> list[str]:
    """The log messages of a run with no terminal: one JSON object per line."""
    return [json.loads(line)["message"] for line in err.splitlines() if line.startswith("{")]


def _preregs_per_visitor(sims: Sims) -> Counter[str]:
    return Counter(str(prereg["visitorId"]) for prereg in sims.pp.preregs)


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.parametrize(
    ("cache_path", "where"),
    [(None, "lcpp_cache.sqlite3"), ("state/lcpp.sqlite3", "state/lcpp.sqlite3")],
    ids=["default", "relative"],
)
async def test_cron_and_by_hand_runs_share_the_cache_beside_the_config(
    sims: Sims, tmp_path: Path, cache_path: str | None, where: str
) -> None:
    """A run from cron (another working directory) and one by hand from the config's directory use ONE cache.

    A relative LCPP.cache_path (and the default) resolve against the configuration file's directory,
    so the second run finds the first one's bookings and registers none of them again.
    """
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    config = _config_in(etc, sims, cache_path)
    (etc / "state").mkdir()
    elsewhere.mkdir()
    for n in range(1, 4):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=8 + 2 * n)
    cache = etc / where

    code, out, err = await _cli("run", "--config", str(config), "--date", DAY, cwd=elsewhere)  # cron
    assert code == 0, err
    assert out.startswith("pass: 3 booking(s) fetched, 3 registered")
    first_log = _messages(err)

    code, out, err = await _cli("run", "--date", DAY, cwd=etc)  # by hand, default config.yml
    assert code == 0, err
    assert out.startswith("pass: 3 booking(s) fetched, 0 registered"), out
    assert "skipped 3 registered" in out
    assert len(sims.pp.preregs) == 3
    assert set(_preregs_per_visitor(sims).values()) == {1}
    assert _files(elsewhere) == []
    assert cache.is_file()
    # Each run says where its cache is; the first says it created it.
    assert first_log[0] == f"created a new cache {cache}: every booking fetched counts as new (expected on the first run only)"
    assert _messages(err)[0] == f"cache {cache}"


def _as_made_by_the_previous_version(path: Path) -> None:
    """Turn a cache into what the version before this one left: schema 2, no configuration recorded."""
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE meta; PRAGMA user_version = 2;")
    db.close()


def _recorded_configuration(path: Path) -> str | None:
    with Cache(path, read_only=True, create=False) as cache:
        return cache.configuration


@pytest.mark.parametrize("made_by", ["previous-version", "this-version-with---cache"])
async def test_a_cache_left_in_the_working_directory_by_an_earlier_version_is_not_replaced_by_an_empty_one(
    sims: Sims, tmp_path: Path, made_by: str
) -> None:
    """Upgrading: cron's cache is in $HOME (earlier versions), none is beside the config yet.

    The run refuses (exit 2, says to move it) instead of starting an empty cache beside the
    configuration and registering every booking again; once moved, nothing is registered twice
    and the cache records its configuration. A cache made by the previous version records no
    configuration, so the message also says what to do if it is another configuration's; one
    that records this configuration (run with --cache) is this configuration's.
    """
    etc, home = tmp_path / "etc", tmp_path / "home"
    config = _config_in(etc, sims, None)
    home.mkdir()
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    code, _, err = await _cli("run", "--config", str(config), "--cache", "lcpp_cache.sqlite3", "--date", DAY, cwd=home)
    assert code == 0, err  # what an earlier version did from cron: the cache in the working directory
    assert len(sims.pp.preregs) == 1
    if made_by == "previous-version":
        _as_made_by_the_previous_version(home / "lcpp_cache.sqlite3")

    refused = await asyncio.gather(*(
        _cli(*args, "--config", str(config), cwd=home)
        for args in (["run", "--date", DAY], ["run", "--dry-run", "--date", DAY], ["status"], ["purge", "--older-than", "30d"])
    ))
    if made_by == "previous-version":
        message = (
            f"error: no cache at {etc / 'lcpp_cache.sqlite3'}, but {home / 'lcpp_cache.sqlite3'} exists and records "
            "no configuration: versions before this one kept the cache in the working directory. If it is this "
            f"configuration's, move it (with any -wal file beside it) to {etc / 'lcpp_cache.sqlite3'}; if it is "
            "another configuration's, run that one first (the cache then records it); or pass --cache to choose. "
            "Nothing was done"
        )
    else:
        message = (
            f"error: no cache at {etc / 'lcpp_cache.sqlite3'}, but {home / 'lcpp_cache.sqlite3'} exists and records "
            f"this configuration ({config}): move it (with any -wal file beside it) to {etc / 'lcpp_cache.sqlite3'}, "
            "or pass --cache to choose; nothing was done"
        )
    assert [(code, out, messages(err)) for code, out, err in refused] == [(2, "", [message])] * 4
    assert len(sims.pp.preregs) == 1
    assert _files(etc) == ["config.yml"]

    (home / "lcpp_cache.sqlite3").rename(etc / "lcpp_cache.sqlite3")
    code, out, err = await _cli("run", "--config", str(config), "--date", DAY, cwd=home)
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 0 registered")
    assert len(sims.pp.preregs) == 1
    assert _recorded_configuration(etc / "lcpp_cache.sqlite3") == str(config)


async def test_another_configurations_cache_in_the_working_directory_is_never_offered(sims: Sims, tmp_path: Path) -> None:
    """Config B's first run, typed in config A's directory (beside A's live cache): B gets its own
    new cache beside B's config; A's cache is not offered to B (following such advice gave B A's
    cache and made A start an empty one, registering every booking again); A is unaffected."""
    etc_a, etc_b, home = tmp_path / "etc" / "lcpp", tmp_path / "etc2", tmp_path / "home"
    config_a, config_b = _config_in(etc_a, sims, None), _config_in(etc_b, sims, None)
    home.mkdir()
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    code, out, err = await _cli("run", "--date", DAY, cwd=etc_a)  # A, by hand in its directory
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 1 registered")
    cache_a, cache_b = etc_a / "lcpp_cache.sqlite3", etc_b / "lcpp_cache.sqlite3"
    assert _recorded_configuration(cache_a) == str(config_a)
    before = cache_a.read_bytes()

    code, out, err = await _cli("status", "--config", "../../etc2/config.yml", cwd=etc_a)
    assert (code, out, messages(err)) == (2, "", [
        f"error: cache file {cache_b} does not exist (LCPP.cache_path of {config_b}): no pass has run with this "
        "configuration yet, or the file was moved; nothing was created"
    ])
    code, out, err = await _cli("run", "--config", "../../etc2/config.yml", "--date", "2030-02-01", cwd=etc_a)
    assert code == 0, err
    assert out.startswith("pass: 0 booking(s) fetched, 0 registered")
    assert _messages(err)[0] == (
        f"created a new cache {cache_b}: every booking fetched counts as new (expected on the first run only)"
    )
    assert _recorded_configuration(cache_b) == str(config_b)
    code, out, _ = await _cli("status", "--config", "../../etc2/config.yml", cwd=etc_a)
    assert (code, out.splitlines()[:2]) == (0, [f"cache {cache_b} (schema 3)", f"configuration {config_b}"])

    assert cache_a.read_bytes() == before
    code, out, err = await _cli("run", "--config", str(config_a), "--date", DAY, cwd=home)  # A, from cron
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 0 registered")
    assert _messages(err)[0] == f"cache {cache_a}"
    assert len(sims.pp.preregs) == 1


async def test_a_cache_that_records_another_configuration_is_refused_unless_given_by_cache(sims: Sims, tmp_path: Path) -> None:
    """A configuration directory copied with its cache (cp -r etc etc2): the copy's run refuses the
    cache, which records the first configuration (exit 2, dry run too, nothing sent, file unchanged).
    `run --cache` is the operator saying whose it is: it runs, says so, and the cache then records the
    new configuration; the first configuration's own cache still records it."""
    etc, etc2 = tmp_path / "etc", tmp_path / "etc2"
    config = _config_in(etc, sims, None)
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    code, _, err = await _cli("run", "--config", str(config), "--date", DAY, cwd=tmp_path)
    assert code == 0, err
    shutil.copytree(etc, etc2)
    config2, cache2 = etc2 / "config.yml", etc2 / "lcpp_cache.sqlite3"
    before = cache2.read_bytes()
    requests = sims.pp.count("")

    refused = await asyncio.gather(*(
        _cli(*args, "--config", str(config2), cwd=tmp_path)
        for args in (["run", "--date", DAY], ["run", "--dry-run", "--date", DAY])
    ))
    message = (
        f"error: cache {cache2} belongs to {config} (recorded in it), not to {config2}: give this configuration "
        f"its own LCPP.cache_path, or, if it replaces {config} (moved or renamed), run once with --cache {cache2} "
        "to make the cache its own; nothing was done"
    )
    assert [(code, out, messages(err)[-1]) for code, out, err in refused] == [(2, "", message)] * 2
    assert sims.pp.count("") == requests
    assert cache2.read_bytes() == before
    code, out, _ = await _cli("status", "--config", str(config2), cwd=tmp_path)  # status says so, and reads on
    assert (code, out.splitlines()[1]) == (0, f"configuration {config} (not {config2}: run refuses this cache)")

    code, out, err = await _cli("run", "--config", str(config2), "--cache", str(cache2), "--date", DAY, cwd=tmp_path)
    assert code == 0, err
    assert out.startswith("pass: 1 booking(s) fetched, 0 registered")
    assert f"cache {cache2} belonged to {config}; it now belongs to {config2} (given by --cache)" in _messages(err)
    code, out, err = await _cli("run", "--config", str(config2), "--date", DAY, cwd=tmp_path)
    assert (code, out.startswith("pass: 1 booking(s) fetched, 0 registered")) == (0, True), err
    code, out, err = await _cli("run", "--config", str(config), "--date", DAY, cwd=tmp_path)
    assert (code, out.startswith("pass: 1 booking(s) fetched, 0 registered")) == (0, True), err
    assert _recorded_configuration(etc / "lcpp_cache.sqlite3") == str(config)
    assert _recorded_configuration(cache2) == str(config2)
    assert len(sims.pp.preregs) == 1


async def test_status_prints_the_absolute_cache_path(sims: Sims, tmp_path: Path) -> None:
    """`status` names the cache by its absolute path, whether found from the config or given as a relative --cache,
    and the configuration it belongs to."""
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    config = _config_in(etc, sims, None)
    elsewhere.mkdir()
    code, _, err = await _cli("run", "--config", str(config), "--date", DAY, cwd=elsewhere)
    assert code == 0, err
    cache = etc / "lcpp_cache.sqlite3"

    code, out, _ = await _cli("status", "--config", str(config), cwd=elsewhere)
    assert (code, out.splitlines()[:2]) == (0, [f"cache {cache} (schema 3)", f"configuration {config}"])
    code, out, _ = await _cli("status", "--cache", "../etc/lcpp_cache.sqlite3", cwd=elsewhere)
    assert (code, out.splitlines()[:2]) == (0, [f"cache {cache} (schema 3)", f"configuration {config}"])
    code, out, _ = await _cli("purge", "--older-than", "30d", cwd=etc)
    assert (code, out.strip()) == (0, f"purged 0 booking(s), 0 patron(s) with no booking left and 0 pass record(s) "
                                      f"older than 30d from {cache}")


@pytest.mark.parametrize("command", [["status"], ["purge", "--older-than", "30d"]], ids=["status", "purge"])
@pytest.mark.parametrize("source", ["--cache", "config"])
async def test_status_and_purge_refuse_a_cache_that_does_not_exist(tmp_path: Path, command: list[str], source: str) -> None:
    """`status`/`purge` on a missing cache exit 2 naming its absolute path, and create nothing (no empty cache)."""
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    config = write_config(etc / "config.yml", **UNREACHABLE)
    if source == "--cache":
        args = [*command, "--cache", "lcpp_cache.sqlite3"]
        expected = (
            f"error: cache file {elsewhere / 'lcpp_cache.sqlite3'} does not exist (given by --cache): "
            "check the path; nothing was created"
        )
    else:
        args = [*command, "--config", str(config)]
        expected = (
            f"error: cache file {etc / 'lcpp_cache.sqlite3'} does not exist (LCPP.cache_path of {config}): "
            "no pass has run with this configuration yet, or the file was moved; nothing was created"
        )
    code, out, err = await _cli(*args, cwd=elsewhere)
    assert (code, out, messages(err)) == (2, "", [expected])
    assert _files(elsewhere) == []
    assert _files(etc) == ["config.yml"]


def _not_a_cache(path: Path, kind: str) -> str:
    """Write a file that is not a cache of this tool; returns how the refusal describes it."""
    if kind == "empty":
        path.write_bytes(b"")
        return f"cache file {path} is empty, not a libcal_passagepoint cache: check the path (a run creates the cache)"
    if kind == "other-sqlite":
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE loans (barcode TEXT); CREATE TABLE items (pid TEXT); INSERT INTO loans VALUES ('39001');")
        db.close()
        return f"{path} is not a libcal_passagepoint cache (an SQLite database with the tables items, loans): check the path"
    path.write_text("barcode,customer_code\n39001,NX\n" * 100, encoding="utf-8")
    return f"cannot use cache file {path}: file is not a database"


@pytest.mark.parametrize("kind", ["empty", "other-sqlite", "not-sqlite"])
@pytest.mark.parametrize("command", [["status"], ["purge", "--older-than", "30d"]], ids=["status", "purge"])
async def test_status_and_purge_refuse_a_file_that_is_not_a_cache_and_leave_it_unchanged(
    tmp_path: Path, command: list[str], kind: str
) -> None:
    """`status`/`purge --cache FILE` on an existing file that is not a cache of this tool (0 bytes,
    another program's SQLite database, a CSV) exit 2 with one line; the file is not modified and
    nothing is created beside it."""
    path = tmp_path / "empty.sqlite3"
    expected = _not_a_cache(path, kind)
    before = path.read_bytes()
    code, out, err = await _cli(*command, "--cache", path.name, cwd=tmp_path)
    assert (code, out, messages(err)) == (2, "", [f"error: {expected}"])
    assert path.read_bytes() == before
    assert _files(tmp_path) == [path.name]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
async def test_run_refuses_another_programs_database_and_leaves_it_unchanged(tmp_path: Path, dry_run: bool) -> None:
    """`run` never writes its schema into an SQLite database of another program (exit 2, one line);
    a dry run does not read it as an empty cache either. (A 0-byte file is a new cache to `run`.)"""
    config = write_config(tmp_path / "config.yml", **UNREACHABLE, lcpp="  cache_path: other.sqlite3\n")
    path = tmp_path / "other.sqlite3"
    expected = _not_a_cache(path, "other-sqlite")
    before = path.read_bytes()
    code, out, err = await _cli("run", *(["--dry-run"] if dry_run else []), "--config", str(config), cwd=tmp_path)
    assert (code, out) == (2, "")
    assert messages(err)[-1] == f"error: {expected}"
    assert path.read_bytes() == before


async def test_run_refuses_a_cache_directory_that_does_not_exist(tmp_path: Path) -> None:
    """A cache_path in a missing directory is a configuration error (exit 2), not a new cache somewhere."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = write_config(etc / "config.yml", **UNREACHABLE, lcpp="  cache_path: stat/lcpp.sqlite3\n")
    code, out, err = await _cli("run", "--config", str(config), cwd=tmp_path)
    assert (code, out) == (2, "")
    assert messages(err)[-1] == (
        f"error: cannot use cache file {etc / 'stat/lcpp.sqlite3'}: the directory {etc / 'stat'} does not exist "
        "(create it, or correct LCPP.cache_path or --cache)"
    )
    assert _files(etc) == ["config.yml"]


async def test_two_runs_at_once_register_each_booking_once(sims: Sims, tmp_path: Path) -> None:
    """A second run started (from another directory) while one is mid-pass exits 2 naming the first one's pid.

    PassagePoint then holds exactly one pre-registration per booking. The first run is held still
    (SIGSTOP) while the second one starts and ends, so the overlap does not depend on timing.
    """
    sims.pp.latency = (0.05, 0.05)
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    config = _config_in(etc, sims, None)
    config.write_text(config.read_text(encoding="utf-8").replace("  timeout: 2\n", "  timeout: 30\n"), encoding="utf-8")
    elsewhere.mkdir()
    for n in range(1, 13):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n:02d}", pid, hour=6 + n)

    first = await _start("run", "--date", DAY, cwd=etc)
    for _ in range(1000):
        if sims.pp.count("") or first.returncode is not None:
            break
        await asyncio.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # mid-pass, holding the lock
    try:
        assert sims.pp.count(""), "the first run never reached PassagePoint"
        code2, out2, err2 = await _cli("run", "--config", str(config), "--date", DAY, cwd=elsewhere)
    finally:
        first.send_signal(signal.SIGCONT)
    code1, out1, err1 = await _finish(first)

    assert code1 == 0, err1
    assert out1.startswith("pass: 12 booking(s) fetched, 12 registered")
    assert (code2, out2) == (2, "")
    lock = etc / "lcpp_cache.sqlite3.lock"
    assert messages(err2)[-1] == (
        f"error: another libcal_passagepoint run (pid {first.pid}) holds {lock}: nothing was done; "
        "run again when it has finished"
    )
    assert len(sims.pp.preregs) == 12
    assert set(_preregs_per_visitor(sims).values()) == {1}


def test_the_lock_of_a_killed_run_does_not_block_the_next_one(tmp_path: Path) -> None:
    """The kernel drops a flock when its process dies (kill -9 included): the lock file left behind is harmless."""
    cache = str(tmp_path / "lcpp_cache.sqlite3")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, cache], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(CacheBusy, match=rf"\(pid {holder.pid}\)"), cache_lock(cache):
            pass
    finally:
        holder.kill()
        holder.wait()
    with cache_lock(cache):
        assert Path(f"{cache}.lock").read_text() == f"{os.getpid()}\n"


def test_a_cache_reached_through_a_symbolic_link_has_the_same_lock(tmp_path: Path) -> None:
    """--cache given as a link to the cache file (or through a linked directory) locks the file
    itself: a run holding the real path makes the run given the link wait its turn (exit 2)."""
    real = tmp_path / "etc" / "lcpp_cache.sqlite3"
    real.parent.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cache.sqlite3").symlink_to(real)
    (tmp_path / "etc-link").symlink_to(real.parent, target_is_directory=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(real)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for linked in (tmp_path / "other" / "cache.sqlite3", tmp_path / "etc-link" / "lcpp_cache.sqlite3"):
            with pytest.raises(CacheBusy, match=rf"\(pid {holder.pid}\) holds {real}\.lock"), cache_lock(str(linked)):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["cache.sqlite3"]


HOLD_LOCK = """
import sys, time
from libcal_passagepoint.runner import cache_lock
with cache_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_relative_cache_path_resolves_against_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config makes LCPP.cache_path absolute: relative to the file's real directory, '~' expanded, absolute kept."""
    etc, other, home = tmp_path / "etc", tmp_path / "other", tmp_path / "home"
    for directory in (etc, other, home):
        directory.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(other)
    cases = {
        None: etc / "lcpp_cache.sqlite3",
        "cache.db": etc / "cache.db",
        "../var/c.db": tmp_path / "var" / "c.db",
        "~/c.db": home / "c.db",
        "/srv/lcpp/c.db": Path("/srv/lcpp/c.db"),
    }
    for cache_path, expected in cases.items():
        lcpp = "" if cache_path is None else f"  cache_path: {cache_path}\n"
        path = write_config(etc / "config.yml", **UNREACHABLE, lcpp=lcpp)
        assert load_config("../etc/config.yml", environ={}).cache_path == str(expected)
    # A config.yml reached through a symlink: its cache is beside the real file, whichever name is used.
    os.symlink(path, other / "config.yml")
    write_config(path, **UNREACHABLE)
    assert load_config(other / "config.yml", environ={}).cache_path == str(etc / "lcpp_cache.sqlite3")
