"""The discharge_loans command: plan, dry run, exit statuses, messages, resume after kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from logtext import messages

from loan_discharge.discharge_loans import main
from loan_discharge.items import read_items
from loan_discharge.run import read_journal
from simulators.alma import AlmaItem, AlmaState
from simulators.thread import SimulatorThread

KEY = "cli-secret-key-5678"
pytestmark = pytest.mark.usefixtures("api_key")  # ALMA_API_KEY=KEY in every test (conftest.py)
REPO = Path(__file__).resolve().parents[2]
HEADER = "\ufeffMMS Id,Holding Id,Physical Item Id,Library Code,Location Code,Temporary Location Code,Temporary Physical Location In Use"


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


def write_inputs(tmp_path: Path, state: AlmaState, count: int, *, unmapped: int = 0) -> None:
    """count on-loan items in MAIN/stacks (the last `unmapped` in an unmapped location) and the desks file."""
    rows = [HEADER]
    for n in range(count):
        location = "attic" if n >= count - unmapped else "stacks"
        state.add_item(AlmaItem(pid("99", n), pid("22", n), pid("23", n), f"39{n}", "MAIN", location))
        rows.append(f"{pid('99', n)},{pid('22', n)},{pid('23', n)},MAIN,{location},,No")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n", encoding="utf-8")


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "loan_discharge_config.yml"
    path.write_text(
        f"loans_data_file: items.csv\ncirc_desks_file: desks.csv\ndata_dir: data\nbase_url: {base_url}\n{extra}",
        encoding="utf-8",
    )
    return path


def test_full_run_then_resume_sends_nothing(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clean run exits 0 with a summary; a second run finds every row done and sends nothing.
    The plan and the summary go to stdout; progress (one line per batch) is logged on stderr."""
    write_inputs(tmp_path, state, 30)
    config = write_config(tmp_path, sim.base_url, "batch_size: 20\n")
    assert main(["--config", str(config)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"items file {tmp_path / 'items.csv'}: 30 rows, 0 already done, 30 to send, 0 not sent"
    logged = messages(err)
    assert "batch 1: 20 items: 20 returned and in place" in logged
    assert "batch 2: 10 items: 10 returned and in place" in logged
    assert not any(line.startswith("batch ") for line in lines)
    assert "done: 30 (30 returned and in place)" in lines
    assert "failed: 0" in lines
    assert "skipped: 0 not sent (see the plan above), 0 already done" in lines
    assert any(re.fullmatch(r"elapsed: \d+\.\d s, 30 requests, \d+\.\d requests/s, 0 answered 429", line) for line in lines)
    assert KEY not in out + err
    assert len(state.scans) == 30
    assert all(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows)

    assert main(["--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"items file {tmp_path / 'items.csv'}: 30 rows, 30 already done, 0 to send, 0 not sent",
        "nothing to send",
    ]
    assert len(state.requests) == 30
    assert KEY not in out + err
    assert not any(KEY in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_quota_stop_exits_1_and_the_next_run_resumes(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """DAILY_THRESHOLD mid-run: exit 1 with a message saying progress is saved; the next run does the rest."""
    write_inputs(tmp_path, state, 12)
    state.remaining = 5
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "done: 5 (5 returned and in place)" in lines
    assert lines[-1] == (
        "stopped early: Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT. "
        f"7 items not finished; progress is saved in {tmp_path / 'items.csv'}: run again to resume"
    )
    sim.call(setattr, state, "remaining", 100)
    assert main(["--config", str(config)]) == 0
    assert "5 already done, 7 to send" in capsys.readouterr().out
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(12)]


def test_dry_run_sends_nothing_and_writes_nothing(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints counts per desk and every problem, with no request and no file change."""
    write_inputs(tmp_path, state, 5, unmapped=2)
    config = write_config(tmp_path, sim.base_url)
    before = (tmp_path / "items.csv").read_bytes()
    assert main(["--config", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"items file {tmp_path / 'items.csv'}: 5 rows, 0 already done, 3 to send, 2 not sent",
        "scan-ins per library / circulation desk:",
        "  MAIN         DEFAULT_CIRC_DESK    3",
        "rows that will not be sent:",
        f"  no circulation desk mapped for location 'attic' in library 'MAIN' (2 items): add it to {tmp_path / 'desks.csv'}; lines 5, 6",
        "an API key is configured; a dry run sends nothing, so whether Alma accepts it is only known when a run "
        "sends its first request",
        "dry run: nothing was sent",
    ]
    assert state.requests == []
    assert (tmp_path / "items.csv").read_bytes() == before
    assert not (tmp_path / "data").exists()


def test_dry_run_checks_that_an_api_key_is_configured(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dry run sends nothing, so it cannot check the key with Alma; it checks that one is set,
    and says that is all it checked."""
    monkeypatch.delenv("ALMA_API_KEY")
    write_inputs(tmp_path, state, 2)
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "apikey" in err and "ALMA_API_KEY" in err
    monkeypatch.setenv("ALMA_API_KEY", KEY)
    assert main(["--config", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "an API key is configured; a dry run sends nothing, so whether Alma accepts it is only known when a run "
        "sends its first request",
        "dry run: nothing was sent",
    ]
    assert state.requests == []


def test_unmapped_rows_make_exit_1_and_are_explained_in_the_file(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows never sent are not 'all done': exit 1, and their error column says why."""
    write_inputs(tmp_path, state, 4, unmapped=1)
    assert main(["--config", str(write_config(tmp_path, sim.base_url))]) == 1
    assert "skipped: 1 not sent (see the plan above), 0 already done" in capsys.readouterr().out
    last = read_items(tmp_path / "items.csv").rows[-1]
    assert last[-4:] == ["False", "", "not sent: no circulation desk mapped for location 'attic' in library 'MAIN'", ""]
    assert len(state.scans) == 3


def test_limit_then_the_rest(tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit 4 sends the first four pending rows; the next run sends the remaining ones."""
    write_inputs(tmp_path, state, 10)
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config), "--limit", "4"]) == 0
    assert "skipped: 0 not sent (see the plan above), 0 already done, 6 left by --limit" in capsys.readouterr().out
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(4)]
    assert main(["--config", str(config)]) == 0
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(10)]


def test_original_tool_configuration_runs(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration of the original tool (apikey in the file, location_type temp) runs unchanged, from its directory."""
    monkeypatch.delenv("ALMA_API_KEY")
    state.add_item(AlmaItem(pid("99", 1), pid("22", 1), pid("23", 1), "391", "MAIN", "stacks", "MAIN", "reserve"))
    (tmp_path / "loans.csv").write_text(
        "MMS Id,Holding Id,Item Id,Library Code,Location Code,Temporary Location Code\n"
        f"{pid('99', 1)},{pid('22', 1)},{pid('23', 1)},MAIN,stacks,reserve\n"
    )
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nreserve,RESERVES_DESK\n")
    (tmp_path / "loan_discharge_config.yml").write_text(
        f"apikey: {KEY}\nloans_data_file: ./loans.csv\ncirc_desks_file: ./desks.csv\ndata_dir: ./data\n"
        f"location_type: temp\nbase_url: {sim.base_url}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert state.scans == [(pid("23", 1), "MAIN", "RESERVES_DESK", False)]
    assert read_items(tmp_path / "loans.csv").rows[0][-4:] == ["True", "returned and in place", "", "1"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-config", "configuration file {tmp}/missing.yml not found: create it (see the template in the README) or pass --config PATH"),
        ("bad-location-type", "{tmp}/loan_discharge_config.yml: location_type must be one of auto, temp, perm, not 'both'"),
        ("missing-column", "items file {tmp}/items.csv: column 'Holding Id' not found (found: MMS Id, Physical Item Id, Library Code, Location Code); export the Analytics report with that column"),
        ("no-key", "{tmp}/loan_discharge_config.yml: apikey is missing (set it in the file or in the environment variable ALMA_API_KEY)"),
        ("no-desks", "desks file {tmp}/desks.csv not found: check the path in the configuration"),
    ],
)
def test_bad_usage_exits_2_with_a_message_and_sends_nothing(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], setup: str, message: str,
) -> None:
    """Every configuration or input problem: exit 2, one actionable line on stderr, no request."""
    write_inputs(tmp_path, state, 3)
    config = write_config(tmp_path, sim.base_url)
    argv = ["--config", str(config)]
    if setup == "no-config":
        argv = ["--config", str(tmp_path / "missing.yml")]
    elif setup == "bad-location-type":
        config.write_text(config.read_text() + "location_type: both\n")
    elif setup == "missing-column":
        (tmp_path / "items.csv").write_text(f"MMS Id,Physical Item Id,Library Code,Location Code\n{pid('99', 0)},{pid('23', 0)},MAIN,stacks\n")
    elif setup == "no-key":
        monkeypatch.delenv("ALMA_API_KEY")
    elif setup == "no-desks":
        (tmp_path / "desks.csv").unlink()
    assert main(argv) == 2
    assert messages(capsys.readouterr().err) == [f"error: {message.format(tmp=tmp_path)}"]
    assert state.requests == []


def test_bad_limit_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--limit 0 is refused by the parser with exit 2."""
    with pytest.raises(SystemExit) as caught:
        main(["--limit", "0"])
    assert caught.value.code == 2
    assert "--limit: must be a whole number >= 1, not '0'" in capsys.readouterr().err


def test_version_quiet_verbose_and_log_file(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """The options every command has: --version; --quiet leaves only warnings and errors on stderr
    (the plan and the summary are still printed); --verbose adds debug lines (the configuration,
    without the key); --log-file appends JSON lines, the summary among them with its counts."""
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and re.fullmatch(r"discharge_loans \S+\n", capsys.readouterr().out)

    write_inputs(tmp_path, state, 4, unmapped=1)
    config = write_config(tmp_path, sim.base_url, "batch_size: 2\n")
    log_file = tmp_path / "discharge.log"
    assert main(["--config", str(config), "--quiet", "--log-file", str(log_file)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("items file ") and "done: 3 (3 returned and in place)" in out
    assert messages(err) == []
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"time", "level", "message"} <= set(entry) for entry in entries)
    assert [e["message"] for e in entries if e.get("event") == "batch"] == ["batch 1: 2 items: 2 returned and in place",
                                                                          "batch 2: 1 items: 1 returned and in place"]
    (summary,) = [e for e in entries if e.get("event") == "summary"]
    assert summary["message"].startswith("done: 3 (3 returned and in place); failed: 0; skipped: 1 not sent")
    assert {k: summary[k] for k in ("rows", "to_send", "not_sent", "done", "failed", "not_finished", "requests",
                                    "rate_limited", "stop_reason")} == {
        "rows": 4, "to_send": 3, "not_sent": 1, "done": 3, "failed": 0, "not_finished": 0, "requests": 3,
        "rate_limited": 0, "stop_reason": None,
    }
    assert summary["outcomes"] == {"returned and in place": 3}

    # Nothing new needs a person: the unmapped row was reported by the first run (its error column says so).
    assert main(["--config", str(config), "--verbose", "--log-file", str(log_file)]) == 0
    err = capsys.readouterr().err
    assert any(line.startswith(f"debug: configuration {config}: DischargeConfig(") for line in messages(err))
    assert KEY not in err and KEY not in log_file.read_text()


def test_an_unwritable_log_file_exits_2_before_anything_is_done(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file in a directory that does not exist: exit 2, one line naming it, nothing sent."""
    write_inputs(tmp_path, state, 2)
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config), "--log-file", str(tmp_path / "no" / "such.log")]) == 2
    assert capsys.readouterr().err == (
        f"discharge_loans: cannot open --log-file {tmp_path / 'no' / 'such.log'}: No such file or directory; "
        "nothing was sent\n"
    )
    assert state.requests == []


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, str(REPO / "loan_discharge" / "discharge_loans.py")],
        [sys.executable, "-m", "loan_discharge"],
        [str(Path(sys.executable).parent / "discharge_loans")],
    ],
    ids=["file", "module", "console-script"],
)
def test_three_ways_to_run(tmp_path: Path, state: AlmaState, command: list[str]) -> None:
    """The file, the module and the console script all run (a dry run here, from another directory)."""
    write_inputs(tmp_path, state, 2)
    config = write_config(tmp_path, "http://127.0.0.1:9")
    result = subprocess.run([*command, "--config", str(config), "--dry-run"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("dry run: nothing was sent\n")


def test_kill_9_mid_run_loses_nothing_and_resends_only_what_was_in_flight(tmp_path: Path) -> None:
    """kill -9 during a run, then run again: every journalled item stays done and is never sent again."""
    state = AlmaState(per_second_limit=40, latency=(0.1, 0.3), api_keys={KEY})
    write_inputs(tmp_path, state, 80)
    with SimulatorThread(state) as sim:
        config = write_config(tmp_path, sim.base_url, "rate_limit: 40\nbatch_size: 1000\n")
        command = [sys.executable, "-m", "loan_discharge", "--config", str(config)]
        env = {**os.environ, "ALMA_API_KEY": KEY}
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        journal = tmp_path / "data" / "journal.jsonl"
        deadline = time.monotonic() + 30
        while len(read_journal(journal)) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        journalled = {e["item_pid"] for e in read_journal(journal) if e["done"]}
        # Let the simulator finish reading what the killed process had already sent: until the
        # count of requests it has seen stays the same for 0.3 s.
        seen, settled = -1, time.monotonic()
        while time.monotonic() - settled < 0.3:
            count = sim.call(lambda: len(state.requests))
            if count != seen:
                seen, settled = count, time.monotonic()
            time.sleep(0.02)
        sent_before = set(sim.call(lambda: [r["path"].rsplit("/", 1)[-1] for r in state.requests]))
        assert 25 <= len(journalled) < 80
        # The batch is 1000 items, so the CSV itself was never rewritten with results: only the journal has them.
        assert not any(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows)

        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stdout + second.stderr
        took_over = messages(second.stderr)[0]
        plan_line = second.stdout.splitlines()[0]
        assert re.fullmatch(
            rf"warning: took over the lock of an earlier run \(pid {process.pid} on {re.escape(socket.gethostname())}, "
            r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\) that ended without releasing it",
            took_over,
        )
        assert f"{len(journalled)} already done" in plan_line
        assert any(line.startswith(f"recovered {len(journalled)} results from the journal of an interrupted run")
                   for line in messages(second.stderr))
        scans = Counter(sim.call(lambda: [s[0] for s in state.scans]))

    assert set(scans) == {pid("23", n) for n in range(80)}
    assert all(scans[item] == 1 for item in journalled)
    resent = {item for item, count in scans.items() if count > 1}
    in_flight = sent_before - journalled
    assert resent <= in_flight
    assert len(in_flight) <= 48  # at most the concurrency (ceil(40 * 1.2))
    assert all(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows)


def test_a_new_export_after_a_finished_run_is_sent_again(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run that finished, its journal is not taken for the next export: the same items, on loan again, are sent."""
    write_inputs(tmp_path, state, 3)
    export = (tmp_path / "items.csv").read_bytes()
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config)]) == 0
    assert not (tmp_path / "data" / "journal.jsonl").exists()

    def loan_again() -> None:
        for item in state.items.values():
            item.status = "loan"

    sim.call(loan_again)  # next semester: the same items are borrowed again and exported anew
    (tmp_path / "items.csv").write_bytes(export)
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"items file {tmp_path / 'items.csv'}: 3 rows, 0 already done, 3 to send, 0 not sent"
    assert "recovered" not in out + err
    assert Counter(s[0] for s in state.scans) == {pid("23", n): 2 for n in range(3)}


def test_journal_of_another_items_list_is_refused_not_merged(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted run's journal, then a different export saved over the items file: exit 2,
    nothing sent, the new file untouched; the journal of the same list still resumes."""
    write_inputs(tmp_path, state, 3)
    config = write_config(tmp_path, sim.base_url)
    journal = tmp_path / "data" / "journal.jsonl"
    journal.parent.mkdir()
    entry = {"item_pid": pid("23", 0), "done": True, "outcome": "returned and in place"}
    journal.write_text(json.dumps({**entry, "items": "0123456789abcdef"}) + "\n")
    before = (tmp_path / "items.csv").read_bytes()
    assert main(["--config", str(config)]) == 2
    (err,) = messages(capsys.readouterr().err)
    assert err.startswith(f"error: {journal} holds 1 results of an interrupted run over a different items list than ")
    assert "Nothing was sent." in err and "move the journal aside" in err
    assert state.scans == [] and (tmp_path / "items.csv").read_bytes() == before

    from loan_discharge.items import items_fingerprint, read_items

    same_list = items_fingerprint(read_items(tmp_path / "items.csv", "auto"))
    journal.write_text(json.dumps({**entry, "items": same_list}) + "\n")
    assert main(["--config", str(config)]) == 0
    (kept,) = [line for line in messages(capsys.readouterr().err) if line.startswith("recovered")]
    assert re.fullmatch(
        r"recovered 1 results from the journal of an interrupted run \(journal kept as (journal-merged-\S+\.jsonl)\)", kept
    )
    assert (tmp_path / "data" / kept.split()[-1].rstrip(")")).exists() and not journal.exists()
    assert sorted(s[0] for s in state.scans) == [pid("23", 1), pid("23", 2)]


# --- one run at a time, kill -9 takeover, Ctrl-C: real processes against a gated simulator -------


class Gate:
    """Holds every request the simulator admits (at its latency sleep) until let through."""

    def __init__(self, sim: SimulatorThread) -> None:
        self.sim = sim
        self.semaphore = asyncio.Semaphore(0)
        sim.state.latency = (0.001, 0.001)  # every request now takes the latency sleep, i.e. waits here
        sim.state.sleep = self.wait

    async def wait(self, _seconds: float) -> None:
        await self.semaphore.acquire()

    def let_through(self, count: int) -> None:
        for _ in range(count):
            self.sim.call(self.semaphore.release)


def cron_environment() -> dict[str, str]:
    """This environment as cron gives it: with the key, and no PYTHONUNBUFFERED (output to a file is buffered)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "ALMA_API_KEY": KEY}


@pytest.fixture
def start() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start discharge_loans as an operator does (no terminal, output to a pipe); none outlives the test."""
    started: list[subprocess.Popen[str]] = []

    def start_run(config: Path, cwd: Path | str = REPO) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "loan_discharge", "--config", str(config)], cwd=cwd, env=cron_environment(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(process)
        return process

    yield start_run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def run_to_end(config: Path, cwd: Path | str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """discharge_loans run to its end with no terminal, as cron runs it."""
    return subprocess.run(
        [sys.executable, "-m", "loan_discharge", "--config", str(config)], cwd=cwd,
        env=cron_environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def wait_until(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def requests_seen(sim: SimulatorThread) -> int:
    return sim.call(lambda: len(sim.state.requests))


def holder_pattern(pid: int, items: Path, data_dir: Path) -> str:
    return (
        rf"another discharge run \(pid {pid} on {re.escape(socket.gethostname())}, started "
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\) is working on {re.escape(str(items))} in {re.escape(str(data_dir))}"
    )


@pytest.mark.parametrize("second", ["same-config-other-cwd", "same-items-file-own-data-dir", "same-data-dir-other-items-file"])
def test_a_second_run_while_one_is_running_exits_2_at_once_and_sends_nothing(
    tmp_path: Path, start: Callable[..., subprocess.Popen[str]], second: str
) -> None:
    """While a run works on an items file with a data_dir, a run sharing either one is refused at once
    (exit 2, naming the running process); the first run finishes alone, every item scanned once,
    its raw answer files its own."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    write_inputs(tmp_path, state, 20)
    with SimulatorThread(state) as sim:
        gate = Gate(sim)
        config = write_config(tmp_path, sim.base_url, "rate_limit: 1000\nbatch_size: 5\n")
        first = start(config)
        wait_until(lambda: requests_seen(sim) == 20, "the first run has sent its first requests")

        other = tmp_path / "other"
        other.mkdir()
        if second == "same-config-other-cwd":
            second_config = config
        elif second == "same-items-file-own-data-dir":
            second_config = write_config(other, sim.base_url)
            second_config.write_text(second_config.read_text().replace("items.csv", str(tmp_path / "items.csv")))
            (other / "desks.csv").write_text((tmp_path / "desks.csv").read_text())
        else:
            write_inputs(other, AlmaState(), 3)
            second_config = write_config(other, sim.base_url)
            second_config.write_text(second_config.read_text().replace("data_dir: data", f"data_dir: {tmp_path / 'data'}"))
        started = time.monotonic()
        refused = run_to_end(second_config, cwd=other, timeout=10)
        assert time.monotonic() - started < 5  # at once, not after the first run
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stdout == ""
        (refusal,) = messages(refused.stderr)
        assert re.fullmatch(
            rf"error: {holder_pattern(first.pid, tmp_path / 'items.csv', tmp_path / 'data')}: "
            r"wait for it to finish; nothing was sent",
            refusal,
        )
        assert requests_seen(sim) == 20  # only the first run's, held at the gate

        gate.let_through(20)
        out, err = first.communicate(timeout=20)
        assert first.returncode == 0, out + err
        scans = Counter(sim.call(lambda: [s[0] for s in state.scans]))
    assert scans == {pid("23", n): 1 for n in range(20)}
    run_id = re.search(r"^run (\S+): ", "\n".join(messages(err)), re.M).group(1)  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [f"results-{run_id}-batch-{n}.json" for n in range(1, 5)]
    assert not (tmp_path / "items.csv.lock").exists()  # released: the lock files are gone


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_resumes(
    tmp_path: Path, start: Callable[..., subprocess.Popen[str]]
) -> None:
    """kill -9 leaves the lock files behind, but the kernel dropped the locks: the next run takes them
    over at once, says whose they were, and resumes; no item is scanned twice. The killed run's
    output (to a pipe, as under cron) kept the lines it had printed."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    write_inputs(tmp_path, state, 30)
    with SimulatorThread(state) as sim:
        gate = Gate(sim)
        config = write_config(tmp_path, sim.base_url, "rate_limit: 1000\nconcurrency: 10\n")
        first = start(config, cwd=tmp_path)
        gate.let_through(12)
        journal = tmp_path / "data" / "journal.jsonl"
        wait_until(lambda: len(read_journal(journal)) == 12 and requests_seen(sim) == 22, "12 items are journalled")
        os.kill(first.pid, signal.SIGKILL)
        killed_output, _ = first.communicate()
        assert killed_output.splitlines()[0].startswith("items file ")  # its log kept what it had printed
        left = json.loads((tmp_path / "data" / "discharge.lock").read_text())
        assert (left["pid"], left["items_file"]) == (first.pid, str(tmp_path / "items.csv"))
        assert (tmp_path / "items.csv.lock").exists()

        sim.call(setattr, state, "sleep", asyncio.sleep)  # new requests pass; the dead run's 10 stay held, never applied
        second = run_to_end(config, cwd="/")
        scans = Counter(sim.call(lambda: [s[0] for s in state.scans]))
    assert second.returncode == 0, second.stdout + second.stderr
    logged = messages(second.stderr)
    assert re.fullmatch(
        rf"warning: took over the lock of an earlier run \(pid {first.pid} on {re.escape(socket.gethostname())}, "
        r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\) that ended without releasing it",
        logged[0],
    )
    assert second.stdout.splitlines()[0] == f"items file {tmp_path / 'items.csv'}: 30 rows, 12 already done, 18 to send, 0 not sent"
    assert any(line.startswith("recovered 12 results from the journal of an interrupted run") for line in logged)
    assert scans == {pid("23", n): 1 for n in range(30)}
    assert all(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows)
    assert not (tmp_path / "data" / "discharge.lock").exists() and not (tmp_path / "items.csv.lock").exists()


@pytest.mark.parametrize(
    ("signum", "status", "what"),
    [(signal.SIGINT, 1, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_ends_with_one_line_saying_what_was_done_and_that_a_rerun_resumes(
    tmp_path: Path, start: Callable[..., subprocess.Popen[str]], signum: int, status: int, what: str
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (systemd stop, `timeout`) mid-run: no traceback, one error logged
    with what this run did, exit 1 (Ctrl-C) or 143 (SIGTERM), the journal flushed with every finished
    item, both lock files removed; the next run resumes where it stopped."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    write_inputs(tmp_path, state, 20)
    with SimulatorThread(state) as sim:
        gate = Gate(sim)
        config = write_config(tmp_path, sim.base_url, "rate_limit: 1000\nconcurrency: 4\n")
        first = start(config)
        gate.let_through(5)
        journal = tmp_path / "data" / "journal.jsonl"
        wait_until(lambda: len(read_journal(journal)) == 5 and requests_seen(sim) == 9, "5 items are journalled")
        first.send_signal(signum)
        out, err = first.communicate(timeout=20)
        assert first.returncode == status, out + err
        assert "Traceback" not in err
        assert [line for line in messages(err) if line.startswith(("error:", "warning:"))] == [
            f"error: {what}: 5 items done and 0 failed in this run are saved in {tmp_path / 'items.csv'}; "
            "15 not finished: run again to resume"
        ]
        assert sum(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows) == 5
        assert sum(entry["done"] for entry in read_journal(journal)) == 5
        assert not (tmp_path / "data" / "discharge.lock").exists()
        assert not (tmp_path / "items.csv.lock").exists()

        sim.call(setattr, state, "sleep", asyncio.sleep)
        again = run_to_end(config, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == f"items file {tmp_path / 'items.csv'}: 20 rows, 5 already done, 15 to send, 0 not sent"


def test_sigterm_before_any_item_was_sent_says_so_and_releases_the_locks(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real SIGTERM while the run reads its items file under the locks: one line, exit 143, both
    lock files removed, nothing sent; the handler the caller had is back afterwards."""
    import loan_discharge.resume as resume

    write_inputs(tmp_path, state, 3)
    config = write_config(tmp_path, sim.base_url)
    reads: list[Path] = []

    def read_then_sigterm(path: Path, location_type: str) -> Any:
        reads.append(path)
        if len(reads) == 2:  # the second read is the one under the locks
            assert (tmp_path / "items.csv.lock").exists()
            os.kill(os.getpid(), signal.SIGTERM)
        return read_items(path, location_type)

    def not_handled(signum: int, frame: object) -> None:  # instead of killing pytest
        pytest.fail("discharge_loans left SIGTERM to its caller's handler")

    monkeypatch.setattr(resume, "read_items", read_then_sigterm)
    before = signal.signal(signal.SIGTERM, not_handled)
    try:
        assert main(["--config", str(config)]) == 143
        assert signal.getsignal(signal.SIGTERM) is not_handled
    finally:
        signal.signal(signal.SIGTERM, before)
    assert messages(capsys.readouterr().err) == ["error: terminated (SIGTERM) before any item was sent: run again to start"]
    assert not (tmp_path / "items.csv.lock").exists() and not (tmp_path / "data" / "discharge.lock").exists()
    assert sim.call(lambda: list(state.requests)) == []


@pytest.mark.parametrize("stdout", ["a full disk", "a reader that left"])
def test_a_stdout_that_cannot_take_the_summary_ends_the_run_normally(tmp_path: Path, stdout: str) -> None:
    """`discharge_loans >/dev/full`, or `| head -1`: the run goes on, every result is saved, and the
    summary is in the log with a warning, not a traceback and exit 120."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    write_inputs(tmp_path, state, 5)
    with SimulatorThread(state) as sim:
        config = write_config(tmp_path, sim.base_url)
        command = [sys.executable, "-m", "loan_discharge", "--config", str(config)]
        env = {**os.environ, "ALMA_API_KEY": KEY}
        if stdout == "a full disk":
            with open("/dev/full", "w") as full:
                process = subprocess.run(command, env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        else:
            reader, writer = os.pipe()
            os.close(reader)  # nobody will read what the run prints
            try:
                process = subprocess.run(command, env=env, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
            finally:
                os.close(writer)
        scans = sim.call(lambda: len(state.scans))
    assert process.returncode == 0, process.stderr
    logged = messages(process.stderr)
    assert any(m.startswith("warning: could not print on standard output (") for m in logged), logged
    assert any(m.startswith("done: 5 (5 returned and in place)") for m in logged), logged
    assert "Traceback" not in process.stderr and scans == 5
    assert all(row[-4] == "True" for row in read_items(tmp_path / "items.csv").rows)
