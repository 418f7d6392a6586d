"""discharge_loans --analytics-report: the items read from the Analytics API, paged, checked, saved, run."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from logtext import messages

from alma import AlmaClient, SlidingWindowLimiter
from loan_discharge.analytics import fetch_report, report_session, saved_reports
from loan_discharge.discharge_loans import main
from loan_discharge.items import read_items
from loan_discharge.run import read_journal
from simulators.alma import AlmaItem, AlmaState
from simulators.thread import SimulatorThread

KEY = "analytics-secret-key-2468"
pytestmark = pytest.mark.usefixtures("api_key")  # ALMA_API_KEY=KEY in every test (conftest.py)
REPORT = "/shared/Some University/Reports/Items to discharge (ä)"
HEADINGS = [("Bibliographic Details", "MMS Id"), ("Holding Details", "Holding Id"),
            ("Physical Item Details", "Physical Item Id"), ("Location", "Library Code"),
            ("Location", "Location Code"), ("Temporary Location", "Temporary Location Code"),
            ("Physical Item Details", "Barcode")]


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


def seed(state: AlmaState, count: int, *, still_loading: int = 0, headings: list[tuple[str, str]] = HEADINGS) -> None:
    rows = []
    for n in range(count):
        state.add_item(AlmaItem(pid("99", n), pid("22", n), pid("23", n), f"39{n}", "MAIN", "stacks"))
        rows.append([pid("99", n), pid("22", n), pid("23", n), "MAIN", "stacks", "", f"39{n}"][:len(headings)])
    state.add_report(REPORT, headings, rows, still_loading=still_loading)


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n", encoding="utf-8")
    path = tmp_path / "loan_discharge_config.yml"
    path.write_text(f"circ_desks_file: desks.csv\ndata_dir: data\nbase_url: {base_url}\n{extra}", encoding="utf-8")
    return path


def report_calls(state: AlmaState) -> list[dict]:
    return [r for r in state.requests if r["path"].endswith("/analytics/reports")]


def test_a_multi_page_report_is_read_with_its_token_after_it_finished_loading(state: AlmaState, sim: SimulatorThread) -> None:
    """Pages of 25 (limit rounded up from 30 to 50 rows), the token of the first answer on every later
    call, two "still loading" answers waited out, ids as text, an empty cell empty."""
    seed(state, 120, still_loading=2)
    waits: list[float] = []

    async def fetch() -> tuple[list[str], list[list[str]]]:
        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        async with aiohttp.ClientSession() as session:
            client = AlmaClient(sim.base_url, KEY, session)
            return await fetch_report(client, SlidingWindowLimiter(100), REPORT, limit=30, sleep=sleep)

    header, rows = asyncio.run(fetch())
    assert header == [h for _, h in HEADINGS]
    assert len(rows) == 120 and rows[0] == [pid("99", 0), pid("22", 0), pid("23", 0), "MAIN", "stacks", "", "390"]
    calls = sim.call(lambda: report_calls(state))
    assert len(calls) == 2 + 3  # two still loading, then 50 + 50 + 20
    token = calls[1]["query"]["token"]
    assert len(token) == 128 and all(c["query"].get("token") == token for c in calls[1:])
    assert "token" not in calls[0]["query"] and calls[0]["query"]["path"] == REPORT
    assert "%2FSome%20University%2F" in calls[0]["raw_query"]  # spaces as %20, slashes as %2F
    assert waits == [2.0, 2.0]


def test_a_report_run_returns_its_loans_saves_what_it_fetched_and_fetches_anew_next_time(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(state, 1100)  # two pages of 1000
    config = write_config(tmp_path, sim.base_url, f"analytics_report: {REPORT}\nrate_limit: 190\n")
    assert main(["--config", str(config)]) == 0
    out, err = capsys.readouterr()
    (saved,) = saved_reports(tmp_path / "data", REPORT)
    assert out.splitlines()[0] == f"items file {saved}: 1100 rows, 0 already done, 1100 to send, 0 not sent"
    assert any(m.startswith(f"Analytics report {REPORT}: 1100 rows fetched, saved as {saved}") for m in messages(err))
    assert len(state.scans) == 1100 and len(report_calls(state)) == 2
    with saved.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:7] == [h for _, h in HEADINGS] and rows[1][:3] == [pid("99", 0), pid("22", 0), pid("23", 0)]
    assert all(row[7] == "True" for row in rows[1:])  # done: the results are in the saved copy

    sim.call(lambda: state.add_report(REPORT, HEADINGS, []))  # returned: the report lists nothing now
    assert main(["--config", str(config)]) == 0
    assert len(saved_reports(tmp_path / "data", REPORT)) == 2  # the first copy, with its results, is kept
    assert len(state.scans) == 1100


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("path", "Analytics has no report at '/shared/Some University/Reports/Other' (Alma: Path not found "
                 "(/shared/Some University/Reports/Other)): check the path"),
        ("permission", "Alma refused the API key for Analytics (UNAUTHORIZED: "),
        ("base_url path", "Analytics report /shared/Some University/Reports/Items to discharge (ä): base_url "),
        ("columns", "Analytics report /shared/Some University/Reports/Items to discharge (ä) has no column "
                    "'Library Code', 'Location Code'"),
    ],
)
def test_an_unusable_report_is_refused_before_any_scan_in(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str], change: str,
    message: str,
) -> None:
    seed(state, 5, headings=HEADINGS[:3] if change == "columns" else HEADINGS)
    report = "/shared/Some University/Reports/Other" if change == "path" else REPORT
    if change == "permission":
        state.analytics_keys = {"another-key"}
    config = write_config(tmp_path, sim.base_url + ("/almaws" if change == "base_url path" else ""))
    assert main(["--config", str(config), "--analytics-report", report]) == 2
    err = capsys.readouterr().err
    assert messages(err)[-1].startswith(f"error: {message}"), err
    if change == "base_url path":
        assert "answered HTTP 404 without an Alma error: no Alma API is at that path; check base_url" in err
    assert state.scans == [] and saved_reports(tmp_path / "data", report) == []


def test_kill_9_mid_report_run_resumes_the_copy_it_fetched(tmp_path: Path) -> None:
    """Killed mid-run, the next run does not fetch again (the report would still list what is not
    done, but the copy has the journal's items): it resumes over the copy, sending nothing twice."""
    state = AlmaState(per_second_limit=40, latency=(0.05, 0.2), api_keys={KEY})
    seed(state, 60)
    with SimulatorThread(state) as sim:
        config = write_config(tmp_path, sim.base_url, f"rate_limit: 40\nbatch_size: 1000\nanalytics_report: {REPORT}\n")
        command = [sys.executable, "-m", "loan_discharge", "--config", str(config)]
        env = {**os.environ, "ALMA_API_KEY": KEY}
        process = subprocess.Popen(command, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        journal = tmp_path / "data" / "journal.jsonl"
        deadline = time.monotonic() + 30
        while len(read_journal(journal)) < 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        done = {e["item_pid"] for e in read_journal(journal) if e["done"]}
        time.sleep(0.5)
        second = subprocess.run(command, cwd="/", env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stdout + second.stderr
        assert any("resuming it over the copy it fetched" in m for m in messages(second.stderr))
        fetched = sim.call(lambda: len(report_calls(state)))
        scans = Counter(sim.call(lambda: [s[0] for s in state.scans]))
    assert fetched == 1
    assert set(scans) == {pid("23", n) for n in range(60)} and all(scans[item] == 1 for item in done)
    (saved,) = saved_reports(tmp_path / "data", REPORT)
    table = read_items(saved)
    assert all(table.is_done(r) for r in range(len(table.rows)))


def test_a_page_lost_with_its_connection_makes_the_report_read_again_not_skipped(
        state: AlmaState, sim: SimulatorThread) -> None:
    """The second page is served and its connection dropped: aiohttp must not re-send the call by
    itself (that would get the third page), so the report is read again from its path, whole."""
    seed(state, 120)
    waits: list[float] = []

    class SecondCallLosesItsAnswer:
        calls = 0

        async def __aenter__(self) -> None:
            self.calls += 1
            if self.calls == 2:
                sim.call(state.inject_failure, "disconnect", 1, None, True)

        async def __aexit__(self, *exc_info: object) -> None:
            return None

    async def fetch() -> tuple[list[str], list[list[str]]]:
        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        async with report_session() as session:
            client = AlmaClient(sim.base_url, KEY, session)
            return await fetch_report(client, SecondCallLosesItsAnswer(), REPORT, limit=50, sleep=sleep)

    _, rows = asyncio.run(fetch())
    assert [row[2] for row in rows] == [pid("23", n) for n in range(120)]
    calls = sim.call(lambda: [("token" in r["query"], r.get("failure")) for r in report_calls(state)])
    assert calls[:3] == [(False, None), (True, "disconnect"), (False, None)]  # lost, then read again from the path
    assert len(calls) == 2 + 3 and waits == [2.0]


def test_a_report_fetched_again_the_same_day_sends_nothing_twice_and_reports_nothing_twice(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Analytics refreshes once a day: run again an hour later and the report still lists the loans
    returned: they are not sent again. Rows refused (an Excel-mangled id) are reported once: the
    first run exits 1, the next 0. A day later, an item listed again is sent again."""
    seed(state, 4)
    report = state.reports[REPORT]
    report.rows.append(["9.91000002E+15", pid("22", 9), pid("23", 9), "MAIN", "stacks", "", "399"])
    config = write_config(tmp_path, sim.base_url, f"analytics_report: {REPORT}\n")
    assert main(["--config", str(config)]) == 1
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "5 rows, 4 already done, 0 to send, 1 not sent" in out
    assert len(state.scans) == 4
    copies = saved_reports(tmp_path / "data", REPORT)
    assert len(copies) == 2
    table = read_items(copies[-1])
    assert table.get(0, "outcome") == "returned and in place (by an earlier run)"

    for copy in copies:  # a day later
        copy.rename(copy.with_name(copy.name.replace("-fetched-2", "-fetched-1")))
    sim.call(lambda: [setattr(item, "status", "loan") for item in state.items.values()])
    assert main(["--config", str(config)]) == 0
    assert len(state.scans) == 8


def test_a_needed_heading_under_two_tables_is_refused(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(state, 3, headings=[*HEADINGS, ("Loan Details", "Library Code")])
    for row in state.reports[REPORT].rows:
        row.append("LAW")
    config = write_config(tmp_path, sim.base_url, f"analytics_report: {REPORT}\n")
    assert main(["--config", str(config)]) == 2
    assert ("has the column 'Library Code' twice (under 'Location' and 'Loan Details')"
            in capsys.readouterr().err)
    assert state.scans == []


def test_a_separate_analytics_key(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """analytics_apikey (or ALMA_ANALYTICS_API_KEY) reads the report; the scan-ins use apikey."""
    seed(state, 2)
    state.api_keys.add("reports-only-key")
    state.analytics_keys = {"reports-only-key"}
    monkeypatch.setenv("ALMA_ANALYTICS_API_KEY", "reports-only-key")
    config = write_config(tmp_path, sim.base_url, f"analytics_report: {REPORT}\n")
    assert main(["--config", str(config)]) == 0
    assert len(state.scans) == 2


def test_still_loading_without_a_token_asks_the_path_again() -> None:
    """Whether a still-loading first answer carries the token is not known: without one, the path
    is asked again (not given up on), and the token of the first answer that has one is kept."""
    from alma import ReportPage

    pages = [ReportPage(None, False, None, []), ReportPage("T1", False, {"Column1": "Barcode"}, [{"Column1": "1"}]),
             ReportPage(None, True, None, [{"Column1": "2"}])]
    calls: list[tuple[str | None, str | None]] = []

    class Client:
        async def analytics_report(self, *, path: str | None = None, token: str | None = None, limit: int = 1000):
            calls.append((path, token))
            return pages[len(calls) - 1]

    class Limiter:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc_info: object) -> None:
            return None

    async def sleep(seconds: float) -> None:
        return None

    header, rows = asyncio.run(fetch_report(Client(), Limiter(), REPORT, sleep=sleep))  # type: ignore[arg-type]
    assert (header, rows) == (["Barcode"], [["1"], ["2"]])
    assert calls == [(REPORT, None), (REPORT, None), (REPORT, "T1")]
