"""loan_discharge.run against the Alma simulator: outcomes, retries, 429 storm, quota stops, files, secrets."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alma import AlmaClient, SlidingWindowLimiter
from loan_discharge.items import ItemsTable, build_plan, read_desks, read_items
from loan_discharge.run import (
    Journal,
    RetryPolicy,
    RunSummary,
    discharge,
    new_run_id,
    read_journal,
    results_path,
)
from simulators.alma import AlmaItem, AlmaState, create_app

KEY = "sim-secret-key-1234"
FAST = RetryPolicy(backoff_base=0.01, backoff_cap=0.05)
HEADER = "MMS Id,Holding Id,Physical Item Id,Library Code,Location Code,Barcode,Process Type"


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


def seed(tmp_path: Path, state: AlmaState, specs: list[tuple[str, str, str]]) -> ItemsTable:
    """Items (status, owning library, Analytics process type) in the simulator and in items.csv."""
    rows = [HEADER]
    for n, (status, library, process_type) in enumerate(specs):
        state.add_item(AlmaItem(
            mms_id=pid("99", n), holding_id=pid("22", n), item_pid=pid("23", n), barcode=f"3900{n}",
            library=library, location="stacks", status=status,
        ))
        rows.append(f"{pid('99', n)},{pid('22', n)},{pid('23', n)},MAIN,stacks,3900{n},{process_type}")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n", encoding="utf-8")
    state.add_desk("MAIN", "DEFAULT_CIRC_DESK")
    return read_items(tmp_path / "items.csv")


async def run(
    aiohttp_server: Any, state: AlmaState, table: ItemsTable, tmp_path: Path, *,
    rate: int = 1000, batch_size: int = 10, floor: int = 0, timeout: float = 5.0, retry: RetryPolicy = FAST,
    key: str = KEY, lines: list[str] | None = None,
) -> RunSummary:
    server = await aiohttp_server(create_app(state))
    plan = build_plan(table, read_desks(tmp_path / "desks.csv"), "perm")
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(str(server.make_url("")).rstrip("/"), key, session, timeout=timeout)
        return await discharge(
            plan.requests, table, client=client, limiter=SlidingWindowLimiter(rate), data_dir=tmp_path / "data",
            concurrency=20, batch_size=batch_size, daily_quota_floor=floor, retry=retry,
            echo=(lines.append if lines is not None else lambda _: None),
        )


def status_columns(path: Path) -> list[list[str]]:
    table = read_items(path)
    return [row[-4:] for row in table.rows]


def all_text_under(path: Path) -> str:
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in path.rglob("*") if p.is_file())


async def test_outcomes_files_and_no_key_anywhere(aiohttp_server: Any, tmp_path: Path) -> None:
    """Each item state gives its outcome; the CSV, journal and raw batches record it; the key is in no file."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [
        ("loan", "MAIN", "Loan"),        # returned and in place
        ("requested", "MAIN", "Loan"),   # hold shelf
        ("loan", "LAW", "Loan"),         # owned elsewhere: in transit
        ("in_place", "MAIN", "None"),    # Analytics says not on loan
    ])
    lines: list[str] = []
    summary = await run(aiohttp_server, state, table, tmp_path, batch_size=3, lines=lines)
    assert summary.done == 4 and summary.failed_total == 0
    assert status_columns(tmp_path / "items.csv") == [
        ["True", "returned and in place", "", "1"],
        ["True", "on hold shelf", "", "1"],
        ["True", "in transit", "", "1"],
        ["True", "not on loan", "", "1"],
    ]
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(4)]
    assert all(register is False for *_, register in state.scans)
    assert state.items[pid("23", 3)].in_house_uses == 0  # register_in_house_use=false was honoured
    journal = read_journal(tmp_path / "data" / "journal.jsonl")
    assert sorted(e["item_pid"] for e in journal) == [pid("23", n) for n in range(4)]
    batch_1, batch_2 = sorted((tmp_path / "data").glob("results-*-batch-*.json"))
    # (a suffix when another test of this process began a run in the same second: its run ids are unique)
    assert re.fullmatch(rf"results-\d{{8}}T\d{{6}}Z-{os.getpid()}(\.\d+)?-batch-1\.json", batch_1.name)
    assert batch_2.name == batch_1.name.replace("batch-1", "batch-2")
    raw = json.loads(batch_1.read_text())
    assert len(raw) == 3 and {"url", "status", "response"} <= set(raw[0])
    assert raw[0]["url"].endswith("?op=scan&library=MAIN&circ_desk=DEFAULT_CIRC_DESK&register_in_house_use=false")
    assert len(json.loads(batch_2.read_text())) == 1
    assert sorted(lines) == [  # batches are reported as they complete: batch 2 may finish first
        "batch 1: 3 items: 1 in transit; 1 on hold shelf; 1 returned and in place",
        "batch 2: 1 items: 1 not on loan",
    ]
    assert KEY not in all_text_under(tmp_path)


async def test_429_storm_is_ridden_out(aiohttp_server: Any, tmp_path: Path) -> None:
    """40 injected 429s: every item is still returned, each scanned exactly once, attempts recorded."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 12)
    state.inject_failure("429", count=40)
    summary = await run(aiohttp_server, state, table, tmp_path)
    assert summary.done == 12 and summary.failed_total == 0
    assert summary.rate_limited == 40 and summary.requests == 52
    assert sorted(s[0] for s in state.scans) == [pid("23", n) for n in range(12)]
    attempts = [int(row[3]) for row in status_columns(tmp_path / "items.csv")]
    assert sum(attempts) == 52


async def test_endless_429_fails_the_item_after_the_bound(aiohttp_server: Any, tmp_path: Path) -> None:
    """An item refused more often than max_rate_limited is recorded as failed; the run goes on."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 2)
    state.inject_failure("429", count=100, item_pid=pid("23", 0))
    summary = await run(aiohttp_server, state, table, tmp_path, retry=RetryPolicy(max_rate_limited=3, backoff_base=0.001))
    assert summary.failed == {"PER_SECOND_THRESHOLD": 1} and summary.done == 1
    assert status_columns(tmp_path / "items.csv")[0] == [
        "False", "error", "PER_SECOND_THRESHOLD: HTTP requests are more than allowed per second (4 times)", "4",
    ]


async def test_per_second_threshold_is_never_crossed(aiohttp_server: Any, tmp_path: Path) -> None:
    """Every request goes through the limiter: 120 fast scan-ins at 50/s see no 429 from a 60/s threshold.

    (Unthrottled, 20 workers at <= 20 ms per call would send ~1000/s. The exact threshold is the
    limiter's own fake-clock tests; the headroom here keeps this test free of timing luck.)
    """
    state = AlmaState(per_second_limit=60, latency=(0.0, 0.02), api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 120)
    summary = await run(aiohttp_server, state, table, tmp_path, rate=50, batch_size=50)
    assert summary.done == 120
    assert [r["status"] for r in state.requests].count(429) == 0


@pytest.mark.parametrize(
    ("kind", "applied", "scans_of_item"),
    [("500", False, 1), ("500", True, 2), ("502_text", False, 1), ("503_html", True, 2),
     ("disconnect", False, 1), ("timeout", True, 2)],
)
async def test_5xx_timeouts_and_drops_are_retried_and_counted(
    aiohttp_server: Any, tmp_path: Path, kind: str, applied: bool, scans_of_item: int
) -> None:
    """One failure after sending: retried once (a second scan-in is harmless), attempts 2, the item done."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY}, timeout_sleep=1.0)
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 3)
    state.inject_failure(kind, item_pid=pid("23", 1), applied=applied)
    summary = await run(aiohttp_server, state, table, tmp_path, timeout=0.3)
    assert summary.done == 3
    assert status_columns(tmp_path / "items.csv")[1] == ["True", "returned and in place", "", "2"]
    assert [s[0] for s in state.scans].count(pid("23", 1)) == scans_of_item


async def test_retries_are_bounded(aiohttp_server: Any, tmp_path: Path) -> None:
    """Three 5xx in a row: the item fails with the last error and 3 attempts; the others are done."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 3)
    state.inject_failure("502_text", count=3, item_pid=pid("23", 2))
    summary = await run(aiohttp_server, state, table, tmp_path)
    assert summary.done == 2 and summary.failed == {"HTTP 502": 1}
    done, outcome, error, attempts = status_columns(tmp_path / "items.csv")[2]
    assert (done, outcome, attempts) == ("False", "error", "3")
    assert error.startswith("HTTP 502: ") and error.endswith("(after 3 attempts)")


async def test_alma_errors_are_recorded_per_row_and_the_run_goes_on(aiohttp_server: Any, tmp_path: Path) -> None:
    """A wrong desk, an unknown item and a single-object error body each land in their row's error column."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 4)
    del state.items[pid("23", 1)]
    state.inject_failure("single_error_object", item_pid=pid("23", 2))
    table.rows[3][3] = "LAW"  # the desk is then sent for library LAW, which has no such desk
    (tmp_path / "desks.csv").write_text(
        "location_code,circ_desk,library_code\nstacks,DEFAULT_CIRC_DESK,MAIN\nstacks,DEFAULT_CIRC_DESK,LAW\n"
    )
    summary = await run(aiohttp_server, state, table, tmp_path)
    assert summary.done == 1
    assert summary.failed == {"40166411": 1, "401872": 1, "INTERNAL_SERVER_ERROR": 1}
    rows = status_columns(tmp_path / "items.csv")
    assert rows[1] == ["False", "error", f"40166411: The parameter item_pid is invalid. Received: {pid('23', 1)}.", "1"]
    assert rows[2] == ["False", "error", "INTERNAL_SERVER_ERROR: INTERNAL_SERVER_ERROR", "1"]
    assert rows[3] == ["False", "error", "401872: Circulation desk DEFAULT_CIRC_DESK is not valid for library LAW.", "1"]


async def test_daily_threshold_stops_cleanly(aiohttp_server: Any, tmp_path: Path) -> None:
    """When the daily quota runs out, the run stops, what was done is saved, the rest is left for later."""
    state = AlmaState(per_second_limit=1000, daily_quota=15, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 40)
    summary = await run(aiohttp_server, state, table, tmp_path, rate=5000)
    assert summary.stop_reason == "Alma's daily API quota is used up (DAILY_THRESHOLD); run again after midnight GMT"
    assert summary.done == 15 and summary.failed_total == 0
    assert summary.not_processed == 25
    rows = status_columns(tmp_path / "items.csv")
    assert sum(r[0] == "True" for r in rows) == 15 == len(state.scans)
    assert all(r[1] == "" for r in rows if r[0] != "True")


async def test_quota_floor_stops_before_the_quota_is_gone(aiohttp_server: Any, tmp_path: Path) -> None:
    """X-Exl-Api-Remaining below daily_quota_floor stops the run; in-flight items still finish and are saved."""
    state = AlmaState(per_second_limit=1000, daily_quota=100, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 60)
    summary = await run(aiohttp_server, state, table, tmp_path, floor=90)
    assert summary.stop_reason is not None and summary.stop_reason.startswith("X-Exl-Api-Remaining is ")
    assert summary.stop_reason.endswith("below daily_quota_floor 90")
    assert 11 <= summary.done < 60
    assert sum(r[0] == "True" for r in status_columns(tmp_path / "items.csv")) == summary.done == len(state.scans)


async def test_refused_key_stops_the_run(aiohttp_server: Any, tmp_path: Path) -> None:
    """An API key Alma does not accept stops the run after the requests already in flight."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 50)
    summary = await run(aiohttp_server, state, table, tmp_path, key="wrong-key")
    assert summary.stop_reason is not None and "Alma refused the API key (UNAUTHORIZED" in summary.stop_reason
    assert summary.done == 0 and summary.failed["UNAUTHORIZED"] <= 20
    assert summary.failed["UNAUTHORIZED"] + summary.not_processed == 50
    assert "wrong-key" not in all_text_under(tmp_path)


async def test_no_request_leaves_after_the_stop(aiohttp_server: Any, tmp_path: Path) -> None:
    """Items still waiting for the limiter when the run stops are not sent: one refused key, one request."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 4)
    summary = await run(aiohttp_server, state, table, tmp_path, rate=2, key="wrong-key")  # the next start 0.5 s on
    assert summary.stop_reason is not None and "Alma refused the API key" in summary.stop_reason
    assert len(state.requests) == 1 == summary.requests
    assert summary.failed == {"UNAUTHORIZED": 1} and summary.not_processed == 3
    assert [row[:3] for row in status_columns(tmp_path / "items.csv")[1:]] == [["", "", ""]] * 3


def test_journal_after_a_torn_last_line_keeps_the_next_entry(tmp_path: Path) -> None:
    """A journal ending in half a line (a write cut short) does not swallow the first entry appended after it."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"item_pid":"23000000000016421","done":true}\n{"item_pid":"230000')
    journal = Journal(path)
    journal.append({"item_pid": "23000000000026421", "done": True})
    journal.close()
    assert [e["item_pid"] for e in read_journal(path)] == ["23000000000016421", "23000000000026421"]


async def test_quota_floor_also_counts_error_answers(aiohttp_server: Any, tmp_path: Path) -> None:
    """Failing items use quota too: X-Exl-Api-Remaining on a 400 below the floor stops the run."""
    state = AlmaState(per_second_limit=1000, daily_quota=100, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 60)
    state.items.clear()  # every scan-in answers 400 40166411
    summary = await run(aiohttp_server, state, table, tmp_path, floor=90)
    assert summary.stop_reason is not None and summary.stop_reason.startswith("X-Exl-Api-Remaining is ")
    assert 11 <= summary.failed["40166411"] == len(state.requests) < 60


async def test_unreachable_alma_stops_the_run_and_leaves_every_item_pending(tmp_path: Path, unused_tcp_port: int) -> None:
    """Nothing listening at base_url: one round of connection retries, then a clean stop, nothing lost."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 40)
    plan = build_plan(table, read_desks(tmp_path / "desks.csv"), "perm")
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(f"http://127.0.0.1:{unused_tcp_port}", KEY, session, timeout=5)
        summary = await discharge(
            plan.requests, table, client=client, limiter=SlidingWindowLimiter(1000), data_dir=tmp_path / "data",
            concurrency=4, batch_size=10, retry=FAST, echo=lambda _: None,
        )
    assert summary.stop_reason is not None
    assert summary.stop_reason.startswith("cannot reach Alma (CANNOT_CONNECT: cannot connect to http://127.0.0.1:")
    assert summary.stop_reason.endswith("check base_url and the network, then run again: the items not done stay pending")
    assert summary.done == 0 and not summary.failed and summary.not_processed == 40
    assert summary.requests <= 4 * (FAST.max_not_sent + 1)  # not 40 items x every retry
    rows = [row[:3] for row in status_columns(tmp_path / "items.csv")]
    assert len(rows) == 40 and all(done != "True" for done, _, _ in rows)  # all pending for the next run
    noted = [error for _, _, error in rows if error]
    assert 1 <= len(noted) <= 4
    assert all(error.startswith(("not sent: CANNOT_CONNECT: ", "not finished: cannot reach Alma")) for error in noted)


async def test_a_redirect_fails_the_item_naming_its_location_and_stops_the_run(aiohttp_server: Any, tmp_path: Path) -> None:
    """A 3xx (base_url on http:// behind an https redirect) is never followed: one POST, no GET,
    the item fails with an error naming the Location, and the run stops, since every item would
    get the same answer, without calling it a connection failure."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 4)
    state.inject_failure("redirect", count=100)
    summary = await run(aiohttp_server, state, table, tmp_path, rate=2)  # the next start 0.5 s on
    assert [(r["method"], r["status"]) for r in state.requests] == [("POST", 301)]
    assert summary.failed == {"REDIRECTED": 1} and summary.not_processed == 3 and state.scans == []
    done, outcome, error, attempts = status_columns(tmp_path / "items.csv")[0]
    location = (
        rf"https://127\.0\.0\.1:\d+/almaws/v1/bibs/{pid('99', 0)}/holdings/{pid('22', 0)}/items/{pid('23', 0)}"
        r"\?op=scan&library=MAIN&circ_desk=DEFAULT_CIRC_DESK&register_in_house_use=false"
    )
    assert (done, outcome, attempts) == ("False", "error", "1")
    assert re.fullmatch(rf"REDIRECTED: HTTP 301 redirect to {location}, not followed", error)
    assert summary.stop_reason is not None and re.fullmatch(
        rf"base_url answered a scan-in with a redirect \(HTTP 301 redirect to {location}, not followed\): "
        r"set base_url to the address Alma's API answers at",
        summary.stop_reason,
    )


async def test_raw_answers_of_two_runs_in_one_data_dir_never_overwrite_each_other(aiohttp_server: Any, tmp_path: Path) -> None:
    """Raw answer files are named after their run: two runs writing into one data_dir at the same
    moment, in one process, each keep their own results-<run>-batch-1.json."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tables = [seed(tmp_path / "a", state, [("loan", "MAIN", "Loan")] * 3), seed(tmp_path / "b", state, [("loan", "MAIN", "Loan")] * 2)]
    server = await aiohttp_server(create_app(state))
    async with aiohttp.ClientSession() as session:
        client = AlmaClient(str(server.make_url("")).rstrip("/"), KEY, session)

        async def one_run(table: ItemsTable) -> RunSummary:
            plan = build_plan(table, read_desks(tmp_path / "a" / "desks.csv"), "perm")
            return await discharge(
                plan.requests, table, client=client, limiter=SlidingWindowLimiter(1000), data_dir=tmp_path / "data",
                concurrency=4, batch_size=10, retry=FAST, echo=lambda _: None,
            )

        summaries = await asyncio.gather(*(one_run(table) for table in tables))
    assert [s.done for s in summaries] == [3, 2]
    files = sorted((tmp_path / "data").glob("results-*.json"))
    assert sorted(len(json.loads(f.read_text())) for f in files) == [2, 3]


def test_run_ids_are_never_reused(tmp_path: Path) -> None:
    """A run id is the UTC start time and the pid; one already used in data_dir or by this process gets a suffix."""
    now = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    first = new_run_id(tmp_path, now)
    assert first == f"20270115T080000Z-{os.getpid()}"
    assert new_run_id(tmp_path, now) == f"{first}.2"  # same second, same process
    results_path(tmp_path, f"{first}.3", 1).write_text("[]")  # an earlier process that had this pid
    assert new_run_id(tmp_path, now) == f"{first}.4"
    assert results_path(tmp_path, first, 7).name == f"results-{first}-batch-7.json"


async def test_an_html_401_stops_the_run_naming_base_url_not_the_key(aiohttp_server: Any, tmp_path: Path) -> None:
    """base_url on the institution's Alma host (a sign-in page, HTTP 401): the run stops as for a
    refused key, but the message says base_url is not Alma's API gateway, not that the key is wrong."""
    from aiohttp import web

    async def sign_in(request: web.Request) -> web.Response:
        return web.Response(status=401, text="<!DOCTYPE html><html><body>Please sign in</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sign_in)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 3)
    plan = build_plan(table, read_desks(tmp_path / "desks.csv"), "perm")
    async with aiohttp.ClientSession() as session:
        summary = await discharge(
            plan.requests, table, client=AlmaClient(base, KEY, session), limiter=SlidingWindowLimiter(2),
            data_dir=tmp_path / "data", concurrency=3, batch_size=10, retry=FAST, echo=lambda _: None,
        )
    assert summary.stop_reason == (
        f"base_url {base} answered HTTP 401 with an HTML page, not an API error: it is probably the institution's "
        "Alma host; use the API gateway, e.g. https://api-na.hosted.exlibrisgroup.com")
    assert summary.failed == {"HTTP 401": 1} and summary.not_processed == 2


async def test_a_base_url_with_a_wrong_path_stops_the_run_at_the_first_answer(aiohttp_server: Any, tmp_path: Path) -> None:
    """base_url ending in /almaws (the client adds /almaws/v1): every scan-in would get a plain 404,
    spending the daily quota on nothing. The first answer stops the run, naming base_url."""
    state = AlmaState(per_second_limit=1000, api_keys={KEY})
    table = seed(tmp_path, state, [("loan", "MAIN", "Loan")] * 4)
    server = await aiohttp_server(create_app(state))
    base = str(server.make_url("/almaws")).rstrip("/")
    plan = build_plan(table, read_desks(tmp_path / "desks.csv"), "perm")
    async with aiohttp.ClientSession() as session:
        summary = await discharge(
            plan.requests, table, client=AlmaClient(base, KEY, session), limiter=SlidingWindowLimiter(2),
            data_dir=tmp_path / "data", concurrency=3, batch_size=10, retry=FAST, echo=lambda _: None,
        )
    assert summary.stop_reason is not None and summary.stop_reason.startswith(
        f"base_url {base} answered HTTP 404 without an Alma error: no Alma API is at that path; check base_url")
    assert summary.failed == {"HTTP 404": 1} and summary.not_processed == 3 and state.scans == []
