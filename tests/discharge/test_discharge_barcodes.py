"""discharge_loans --barcodes: a barcode list looked up in Alma (302 + item GET) and returned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from logtext import messages

from alma import SlidingWindowLimiter
from loan_discharge.barcodes import read_barcodes, results_file
from loan_discharge.discharge_loans import main
from loan_discharge.items import InputError, read_items
from loan_discharge.run import read_journal
from simulators.alma import AlmaItem, AlmaState
from simulators.thread import SimulatorThread

KEY = "barcode-secret-key-4321"
pytestmark = pytest.mark.usefixtures("api_key")  # ALMA_API_KEY=KEY in every test (conftest.py)
REPO = Path(__file__).resolve().parents[2]


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


def add_items(state: AlmaState, count: int, *, status: str = "loan", first: int = 0, location: str = "stacks") -> list[str]:
    barcodes = []
    for n in range(first, first + count):
        barcode = f"3943{n:06d}"
        state.add_item(AlmaItem(pid("99", n), pid("22", n), pid("23", n), barcode, "MAIN", location, status=status))
        barcodes.append(barcode)
    return barcodes


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n", encoding="utf-8")
    path = tmp_path / "loan_discharge_config.yml"
    path.write_text(f"circ_desks_file: desks.csv\ndata_dir: data\nbase_url: {base_url}\n{extra}", encoding="utf-8")
    return path


def test_a_scanners_list_header_blank_lines_crlf_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "scanned.txt"
    path.write_bytes(b"Barcode\r\n39430001\r\n\r\n  39430002 \r\n39430001\r\n+F20313804\r\n")
    listing = read_barcodes(path)
    assert listing.barcodes == [(2, "39430001"), (4, "39430002"), (6, "+F20313804")]
    assert listing.duplicates == [(5, "39430001", 2)]
    assert listing.blank_lines == 1
    assert results_file(path) == tmp_path / "scanned.txt.results.csv"


def test_a_one_column_export_with_trailing_commas(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("39430001,\n39430002,\n", encoding="utf-8")
    assert read_barcodes(path).barcodes == [(1, "39430001"), (2, "39430002")]
    path.write_text("Barcode,\n39430001,\n", encoding="utf-8")
    assert read_barcodes(path).barcodes == [(2, "39430001")]


def test_a_spreadsheets_csv_with_a_barcode_column(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("\ufeffTitle,Barcode,Note\n\"A, b\",39430001,x\nC,,\nD,39430002,\n", encoding="utf-8")
    listing = read_barcodes(path)
    assert listing.barcodes == [(2, "39430001"), (4, "39430002")] and listing.blank_lines == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\n\n", "is empty"),
        ("Barcode\n\n", "lists no barcode"),
        ("Title,Author\nA,B\n", "line 1 has 2 columns and none is 'Barcode'"),
    ],
)
def test_a_barcode_file_that_cannot_be_used(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_barcodes(path)


def test_a_barcode_run_returns_the_loans_and_reports_the_rest(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found and on loan: scanned in. Unknown, not on loan, unmapped, listed twice: reported, never
    scanned. The barcode file is untouched; the results file says what happened to each."""
    on_loan = add_items(state, 3)
    in_place = add_items(state, 1, status="in_place", first=10)
    attic = add_items(state, 1, first=20, location="attic")
    plus = "+F20313804"
    state.add_item(AlmaItem(pid("99", 30), pid("22", 30), pid("23", 30), plus, "MAIN", "stacks"))
    listing = tmp_path / "scanned.txt"
    text = "\n".join(["Barcode", *on_loan, "", on_loan[0], "39999999", *in_place, *attic, plus]) + "\n"
    listing.write_text(text, encoding="utf-8")
    config = write_config(tmp_path, sim.base_url)

    assert main(["--config", str(config), "--barcodes", str(listing)]) == 1  # an unknown barcode: a person looks
    out, err = capsys.readouterr()
    results = tmp_path / "scanned.txt.results.csv"
    assert out.splitlines()[:2] == [
        f"barcode file {listing}: 7 barcodes, 1 blank line; 7 to look up in Alma; results in {results}",
        f"  listed twice, sent once (1): line 6 ({on_loan[0]}, as on line 2)",
    ]
    assert listing.read_text(encoding="utf-8") == text
    assert sorted(s[0] for s in state.scans) == sorted([pid("23", n) for n in range(3)] + [pid("23", 30)])
    table = read_items(results)
    by_barcode = {table.get(r, "barcode"): r for r in range(len(table.rows))}
    assert list(by_barcode) == [*on_loan, "39999999", *in_place, *attic, plus]
    assert table.get(by_barcode[plus], "item_pid") == pid("23", 30)
    assert table.get(by_barcode[on_loan[1]], "outcome") == "returned and in place"
    assert table.get(by_barcode[in_place[0]], "outcome") == "not on loan (in place; not scanned)"
    assert table.is_done(by_barcode[in_place[0]])
    assert table.get(by_barcode["39999999"], "error").startswith("not sent: no item in Alma has this barcode")
    assert table.get(by_barcode[attic[0]], "error") == "not sent: no circulation desk mapped for location 'attic' in library 'MAIN'"
    assert "failed: 2 (401689: 1, NOT_SENT: 1)" in out
    assert out.splitlines()[-1] == (f"barcodes: 1 unknown to Alma (see the error column of {results}), 1 listed "
                                    "twice (sent once), 1 blank line")

    requests = len(state.requests)
    assert main(["--config", str(config), "--barcodes", str(listing)]) == 0  # nothing new needs a person
    out, _ = capsys.readouterr()
    assert "0 to look up in Alma" in out and out.rstrip().endswith("nothing to send")
    assert len(state.requests) == requests  # neither looked up nor scanned again


def test_kill_9_mid_barcode_run_neither_looks_up_nor_scans_again_what_is_done(tmp_path: Path) -> None:
    state = AlmaState(per_second_limit=40, latency=(0.05, 0.2), api_keys={KEY})
    barcodes = add_items(state, 60)
    listing = tmp_path / "scanned.txt"
    listing.write_text("\n".join(barcodes) + "\n", encoding="utf-8")
    with SimulatorThread(state) as sim:
        config = write_config(tmp_path, sim.base_url, "rate_limit: 40\nbatch_size: 1000\n")
        command = [sys.executable, "-m", "loan_discharge", "--config", str(config), "--barcodes", str(listing)]
        env = {**os.environ, "ALMA_API_KEY": KEY}
        process = subprocess.Popen(command, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        journal = tmp_path / "data" / "journal.jsonl"
        deadline = time.monotonic() + 30
        while sum(1 for e in read_journal(journal) if e.get("kind") != "lookup") < 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        entries = read_journal(journal)
        looked_up = {e["barcode"] for e in entries if e.get("kind") == "lookup"}
        done = {e["barcode"] for e in entries if e.get("kind") != "lookup" and e["done"]}
        assert 15 <= len(done) < 60 and done <= looked_up
        # The list grows before the run is resumed: the journal still belongs to it.
        sim.call(lambda: add_items(state, 1, first=60))
        with listing.open("a", encoding="utf-8") as handle:
            handle.write("3943000060\n")
        time.sleep(0.5)
        second = subprocess.run(command, cwd="/", env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stdout + second.stderr
        assert any(m.startswith("recovered ") for m in messages(second.stderr))
        lookups = Counter(sim.call(lambda: [r["query"].get("item_barcode") for r in state.requests
                                            if r["path"].endswith("/items")]))
        scans = Counter(sim.call(lambda: [s[0] for s in state.scans]))
    assert all(lookups[b] == 1 for b in looked_up)  # journalled lookups are not made again
    assert set(scans) == {pid("23", n) for n in range(61)}
    assert all(scans[pid("23", int(b[4:]))] == 1 for b in done)
    table = read_items(results_file(listing))
    assert all(table.is_done(r) for r in range(len(table.rows)))


def test_lookups_and_scan_ins_together_stay_under_the_limit_in_every_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls a lookup and one a scan-in, all through one limiter: never more than the limit
    started in any one-second window. The simulator's own window counts arrivals, which a loaded
    machine can bunch by tens of milliseconds (as the internet can): at most one 429, retried."""
    starts: list[float] = []
    acquire = SlidingWindowLimiter.acquire

    async def recorded(self: SlidingWindowLimiter) -> None:
        await acquire(self)
        starts.append(time.monotonic())

    monkeypatch.setattr(SlidingWindowLimiter, "acquire", recorded)
    state = AlmaState(per_second_limit=10, latency=(0.02, 0.08), api_keys={KEY})
    barcodes = add_items(state, 12)
    listing = tmp_path / "scanned.txt"
    listing.write_text("\n".join(barcodes) + "\n", encoding="utf-8")
    with SimulatorThread(state) as sim:
        config = write_config(tmp_path, sim.base_url, "rate_limit: 10\n")
        assert main(["--config", str(config), "--barcodes", str(listing)]) == 0
        statuses = Counter(sim.call(lambda: [r["status"] for r in state.requests]))
    assert statuses[302] == 12 and statuses[200] == 24 and statuses[429] <= 1
    assert len(starts) == sum(statuses.values())
    assert max(sum(1 for t in starts if start <= t < start + 1.0) for start in starts) <= 10


def test_items_found_before_a_run_stopped_keep_their_ids_and_are_not_looked_up_again(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daily quota runs out after the lookups and before any scan-in: what was found is in the
    results file (the journal of a run that ended is removed), and the next run only scans."""
    barcodes = add_items(state, 10)
    listing = tmp_path / "scanned.txt"
    listing.write_text("\n".join(barcodes) + "\n", encoding="utf-8")
    config = write_config(tmp_path, sim.base_url, "concurrency: 10\n")
    sim.call(setattr, state, "remaining", 20)  # ten lookups of two calls each
    assert main(["--config", str(config), "--barcodes", str(listing)]) == 1
    assert "daily API quota is used up" in capsys.readouterr().out
    table = read_items(results_file(listing))
    found = {table.get(r, "barcode") for r in range(len(table.rows)) if table.get(r, "item_pid")}
    assert found == set(barcodes) and state.scans == []
    sim.call(setattr, state, "remaining", 100)
    assert main(["--config", str(config), "--barcodes", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "10 to send" in out and "0 to look up in Alma" in out
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(10)]
    lookups = [r for r in state.requests if r["path"].endswith("/items")]
    assert len(lookups) == 10


def test_a_barcode_a_spreadsheet_turned_into_a_number_is_refused_not_looked_up(
    tmp_path: Path, state: AlmaState, sim: SimulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    barcodes = add_items(state, 1)
    listing = tmp_path / "list.csv"
    listing.write_text("Barcode\n3.94300000E+13\n" + barcodes[0] + ",\n", encoding="utf-8")
    config = write_config(tmp_path, sim.base_url)
    assert main(["--config", str(config), "--barcodes", str(listing)]) == 1
    out = capsys.readouterr().out
    assert ("barcode 3.94300000E+13 is a number a spreadsheet reformatted: save the list with the barcode column "
            "formatted as text (1 item)") in out
    assert [r["query"]["item_barcode"] for r in state.requests if r["path"].endswith("/items")] == [barcodes[0]]
    assert main(["--config", str(config), "--barcodes", str(listing)]) == 0  # reported: nothing new
