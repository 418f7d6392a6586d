"""End-to-end sync passes against the LibCal, Alma and PassagePoint simulators."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from lcpp_sims import DAY, ECKLES, GELMAN, Sims

from alma import AlmaUnauthorized, SlidingWindowLimiter
from libcal_passagepoint.cli import main
from libcal_passagepoint.passagepoint import (
    PassagePointAuthError,
    PassagePointClient,
    PassagePointUnavailable,
)
from libcal_passagepoint.runner import open_clients
from libcal_passagepoint.sync import Failure, run_pass


async def test_first_pass_registers_each_booking_once_with_exact_payloads(sims: Sims) -> None:
    """Visitor fields come from LibCal + Alma; the prereg carries epoch-second strings and the mapped destination."""
    pid1, barcode1 = sims.add_patron(1)
    pid2, barcode2 = sims.add_patron(2, zone="zone-two-key", group="FAC", desc="Faculty")
    sims.add_booking("cs_a", pid1, first_name="Ada", last_name="Lovelace", email="ada@example.edu", seats=3)
    sims.add_booking("cs_b", pid2, lid=ECKLES, first_name="Grace", last_name="Hopper", email="grace@example.edu")
    result = await sims.run()
    assert sorted(result.registered) == ["cs_a", "cs_b"]
    assert result.failed == [] and result.exit_status == 0
    visitors = {v["uniqueId"]: v for v in sims.pp.visitors.values()}
    assert visitors[barcode1]["category"] == "Student"  # user_mapping by group description
    assert visitors[barcode2]["category"] == "Faculty"
    assert visitors[barcode1]["mobilePhoneNo"] == pid1
    assert (visitors[barcode1]["firstName"], visitors[barcode1]["lastName"], visitors[barcode1]["email"]) == (
        "Ada", "Lovelace", "ada@example.edu")
    start = str(int(datetime.fromisoformat(f"{DAY}T13:15:00-05:00").timestamp()))
    end = str(int(datetime.fromisoformat(f"{DAY}T15:15:00-05:00").timestamp()))
    preregs = {p["destination"]: p for p in sims.pp.preregs}
    assert len(sims.pp.preregs) == 2  # three seat rows of cs_a are one booking
    assert preregs["LibCal Gelman"]["startTime"] == start and preregs["LibCal Gelman"]["endTime"] == end
    assert preregs["LibCal Gelman"]["visitorId"] == str(visitors[barcode1]["id"])
    assert preregs["LibCal Eckles"]["visitorId"] == str(visitors[barcode2]["id"])
    with sims.cache() as cache:
        assert cache.counts()["registered"] == 2
        assert {cache.booking(b)["prereg_id"] for b in ("cs_a", "cs_b")} == {p["id"] for p in sims.pp.preregs}


async def test_second_pass_with_nothing_new_sends_only_libcal_requests(sims: Sims) -> None:
    """Idempotent: the steady-state pass talks to LibCal only; zero requests to Alma and PassagePoint."""
    for n in range(1, 6):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, lid=GELMAN if n % 2 else ECKLES)
    first = await sims.run()
    assert len(first.registered) == 5
    libcal_before, alma_before, pp_before = sims.counts()
    second = await sims.run()
    libcal_after, alma_after, pp_after = sims.counts()
    assert second.registered == [] and second.exit_status == 0
    assert second.skipped == {"registered": 5}
    assert (alma_after - alma_before, pp_after - pp_before) == (0, 0)
    assert libcal_after - libcal_before == 3  # one token + one page per location
    assert len(sims.pp.preregs) == 5


async def test_a_returning_patron_needs_no_alma_or_visitor_call(sims: Sims) -> None:
    """A patron already known from an earlier booking only needs createPreReg."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    await sims.run()
    sims.add_booking("cs_2", pid, hour=16)
    alma_before = sims.alma.count("/almaws")
    await sims.run()
    assert sims.alma.count("/almaws") == alma_before
    assert sims.pp.count("/pp/api/v2/person") == 1
    assert len(sims.pp.preregs) == 2


async def test_booking_without_primary_id_fails_alone_is_reported_once_and_retried_on_backoff(sims: Sims) -> None:
    """A booking with no id among valid ones: the others register, it is stored failed with a reason and retry time."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_ok", pid)
    sims.add_booking("cs_noid", None, first_name="No", last_name="Id")
    sims.add_booking("cs_bad", "G1 2; DROP", first_name="Bad", last_name="Id", hour=16)
    now = time.time()
    first = await sims.run(now=now)
    assert first.registered == ["cs_ok"]
    assert first.exit_status == 1
    assert sorted(first.failed, key=lambda f: f.book_id) == [
        Failure("cs_bad", "Bad Id", "the answer to q12505 is not a well-formed university id (LCPP.primary_id_pattern): "
                "correct it in the LibCal booking", "bad_primary_id"),
        Failure("cs_noid", "No Id", "no primary id: the LibCal booking has no answer to q12505 (if every booking says so, check LibCal.primary_id_field and LibCal.form_answers_param)", "bad_primary_id"),
    ]
    with sims.cache() as cache:
        row = cache.booking("cs_noid")
        assert row["state"] == "failed" and row["attempts"] == 1 and row["reported"] == 1
        assert abs(row["next_retry_at"] - (now + 300)) < 5
    # Before next_retry_at: not retried, nothing reported, exit 0.
    second = await sims.run(now=now + 60)
    assert second.failed == [] and second.skipped["waiting_retry"] == 2 and second.exit_status == 0
    # After it: retried, still failing with the same reason -> counted, not reported again; backoff doubles.
    third = await sims.run(now=now + 400)
    assert {f.kind for f in third.failed} == {"repeat"} and third.exit_status == 1
    with sims.cache() as cache:
        row = cache.booking("cs_noid")
        assert row["attempts"] == 2 and row["reported"] == 1
        assert row["next_retry_at"] == pytest.approx(now + 400 + 600)


async def test_user_not_found_in_any_zone_and_alma_second_zone(sims: Sims) -> None:
    """Each key is tried in turn (401861 moves on); a user no zone knows fails only that booking."""
    pid, _ = sims.add_patron(2, zone="zone-two-key")
    sims.add_booking("cs_zone2", pid)
    sims.add_booking("cs_ghost", "G99999999", hour=16)
    result = await sims.run()
    assert result.registered == ["cs_zone2"]
    assert result.failed == [Failure("cs_ghost", "Ada Lovelace", "no Alma user has this university id (tried 2 institution zones)", "AlmaNotFound")]
    keys = [r["api_key"] for r in sims.alma.requests if r["path"].endswith("G99999999")]
    assert keys == ["zone-one-key", "zone-two-key"]


async def test_token_expiry_mid_pass_on_passagepoint_and_libcal(sims: Sims) -> None:
    """PassagePoint 401 mid-pass: log in again and retry once; LibCal 401: one fresh token, one retry."""
    for n in range(1, 4):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=10 + n)
    expired: list[str] = []

    def expire_after_first(book_id: str, prereg_id: int) -> None:
        if not expired:
            sims.pp.expire_tokens()
            expired.append(book_id)

    result = await sims.run(concurrency=1, on_prereg_created=expire_after_first)
    assert sorted(result.registered) == ["cs_1", "cs_2", "cs_3"]
    logins = [r for r in sims.pp.requests if r["path"].endswith("/auth/login")]
    assert len(logins) == 2
    assert [r["status"] for r in sims.pp.requests].count(401) == 1
    # LibCal: every token expires when the second location's bookings are asked for, mid-pass.
    sims.add_booking("cs_4", "G00000001", lid=ECKLES, hour=17)
    sims.libcal.requests = _ExpireOnNthBookings(sims, 2)
    second = await sims.run(concurrency=1)
    assert second.registered == ["cs_4"] and second.location_errors == []
    paths = [(r["path"].rsplit("/", 1)[-1], r["status"]) for r in sims.libcal.requests]
    assert paths == [("token", 200), ("bookings", 200), ("bookings", 401), ("token", 200), ("bookings", 200)]


class _ExpireOnNthBookings(list):
    """A request log that revokes every LibCal token when the n-th bookings request arrives."""

    def __init__(self, sims: Sims, n: int) -> None:
        super().__init__()
        self.sims, self.n, self.seen = sims, n, 0

    def append(self, entry: dict) -> None:
        super().append(entry)
        if entry["path"].endswith("/space/bookings"):
            self.seen += 1
            if self.seen == self.n:
                self.sims.libcal.expire_tokens()


async def test_visitor_already_in_passagepoint_is_looked_up_by_unique_id(sims: Sims) -> None:
    """createVisitor's ALREADY_EXIST_UNIQUE_ID leads to byUniqueId, and that visitor gets the prereg."""
    pid, barcode = sims.add_patron(1)
    existing = sims.pp.add_visitor(unique_id=barcode)
    sims.add_booking("cs_1", pid)
    result = await sims.run()
    assert result.registered == ["cs_1"]
    assert sims.pp.preregs[0]["visitorId"] == str(existing)
    assert len(sims.pp.visitors) == 1


async def test_passagepoint_error_fails_the_booking_and_the_next_due_pass_registers_it(sims: Sims) -> None:
    """createVisitor answering 500 fails that booking only; after the backoff it is retried and registered."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.pp.inject_failure("createVisitor", "500")
    now = time.time()
    first = await sims.run(now=now)
    assert first.registered == [] and first.failed[0].kind == "passagepoint"
    assert first.failed[0].reason.startswith("finding or creating the PassagePoint visitor failed: PassagePoint createVisitor answered HTTP 500")
    assert "22222000000001" not in first.failed[0].reason  # never a barcode in a message
    second = await sims.run(now=now + 301)
    assert second.registered == ["cs_1"] and second.exit_status == 0
    with sims.cache() as cache:
        assert cache.booking("cs_1")["state"] == "registered"
        assert cache.booking("cs_1")["reason"] is None


async def test_cached_visitor_gone_from_passagepoint_is_looked_up_again_on_the_next_try(sims: Sims) -> None:
    """A returning patron whose visitor was removed in PassagePoint: the booking fails once, the
    cached visitor id is dropped, and the next due pass finds or creates the visitor again."""
    pid, barcode = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    now = time.time()
    await sims.run(now=now)
    sims.pp.visitors.clear()  # removed in PassagePoint by someone
    sims.add_booking("cs_2", pid, hour=16)
    first = await sims.run(now=now)
    assert first.registered == [] and len(first.failed) == 1
    assert "the cached visitor id" in first.failed[0].reason and "was dropped" in first.failed[0].reason
    second = await sims.run(now=now + 301)
    assert second.registered == ["cs_2"]
    visitor_ids = {prereg["visitorId"] for prereg in sims.pp.preregs}
    assert len(visitor_ids) == 2  # the new pre-registration uses the visitor PassagePoint knows now
    assert {v["uniqueId"] for v in sims.pp.visitors.values()} == {barcode}


async def test_lost_prereg_answer_is_uncertain_and_never_recreated(sims: Sims) -> None:
    """createPreReg applied but its answer lost: the booking is 'uncertain', reported, and not re-created."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.pp.hang_seconds = 3.0
    sims.pp.inject_failure("createPreReg", "hang", applied=True)
    config = sims.with_config(timeout=0.5)
    first = await sims.run(config=config)
    assert first.registered == [] and [f.book_id for f in first.uncertain] == ["cs_1"]
    assert first.exit_status == 1
    assert len(sims.pp.preregs) == 1
    second = await sims.run()
    assert second.skipped == {"uncertain": 1} and second.uncertain == []
    assert len(sims.pp.preregs) == 1


async def test_cancelled_after_registration_is_reported_once(sims: Sims) -> None:
    """A booking cancelled in LibCal after its prereg exists is reported (once) and kept for `status`."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.add_booking("cs_2", None, status="Cancelled by User", cancelled=f"{DAY}T08:00:00-05:00")
    first = await sims.run()
    assert first.registered == ["cs_1"] and first.failed == []  # a cancelled unknown booking is skipped
    sims.libcal.cancel("cs_1")
    second = await sims.run()
    assert second.cancelled_after_registration == ["cs_1"]
    third = await sims.run()
    assert third.cancelled_after_registration == []
    with sims.cache() as cache:
        assert cache.counts()["cancelled_after_registration"] == 1


async def test_uncertain_booking_cancelled_in_libcal_is_reported_not_left_for_creation(
    sims: Sims, capsys: pytest.CaptureFixture[str]
) -> None:
    """createPreReg's answer was lost (the prereg exists), then the patron cancels: reported once, and
    `status` says to remove it if it exists, no longer to create it by hand."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.pp.hang_seconds = 2.0
    sims.pp.inject_failure("createPreReg", "hang", applied=True)
    first = await sims.run(config=sims.with_config(timeout=0.5))
    assert [f.book_id for f in first.uncertain] == ["cs_1"] and len(sims.pp.preregs) == 1
    sims.libcal.cancel("cs_1")
    second = await sims.run()
    assert second.cancelled_after_registration == ["cs_1"]
    third = await sims.run()
    assert third.cancelled_after_registration == []
    with sims.cache() as cache:
        assert cache.counts()["cancelled_after_registration"] == 1
    capsys.readouterr()
    assert main(["status", "--cache", sims.config.cache_path]) == 0
    out = capsys.readouterr().out
    visitor = sims.pp.preregs[0]["visitorId"]
    assert "cancelled after registration: 1;" in out
    assert (
        "uncertain cs_1 (Ada Lovelace) was cancelled in LibCal while its pre-registration is uncertain: if "
        f"PassagePoint has a pre-registration of visitor "
        f"{visitor} at LibCal Gelman from 2030-01-15 18:15 UTC, remove it by hand (do not create one)"
    ) in out
    assert "create it by hand" not in out and "it may have been created" not in out


async def test_statuses_not_configured_are_not_registered(sims: Sims) -> None:
    """Only Confirmed and Mediated Approved (the default) are registered; tentative ones wait."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_ok", pid, status="Mediated Approved")
    sims.add_booking("cs_wait", pid, status="Mediated Tentative", hour=16)
    result = await sims.run()
    assert result.registered == ["cs_ok"] and result.skipped == {"status": 1}


async def test_unknown_destination_fails_bookings_of_that_location(sims: Sims) -> None:
    """A mapped destination missing in PassagePoint fails its bookings with a message saying what to fix."""
    sims.pp.destinations.remove("LibCal Eckles")
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_g", pid)
    sims.add_booking("cs_e", pid, lid=ECKLES, hour=16)
    result = await sims.run()
    assert result.registered == ["cs_g"]
    assert result.failed[0].reason == (
        "destination 'LibCal Eckles' (PassagePoint.location_mapping for LibCal location 9911) does not "
        "exist in PassagePoint: create it there or fix the mapping"
    )


async def test_dry_run_writes_nothing(sims: Sims) -> None:
    """--dry-run fetches and plans; no request to Alma or PassagePoint and no cache rows."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    result = await sims.run(dry_run=True)
    assert [(p.book_id, p.action, p.destination) for p in result.planned] == [("cs_1", "register", "LibCal Gelman")]
    assert sims.counts()[1:] == (0, 0)
    with sims.cache() as cache:
        assert cache.counts()["registered"] == 0 and cache.last_pass() is None


async def test_libcal_location_failure_does_not_stop_the_other_location(sims: Sims) -> None:
    """One location's fetch failing (HTTP 500) is reported; the other location is still synced."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_e", pid, lid=ECKLES)
    sims.libcal.inject_failure("bookings", "500")
    result = await sims.run(concurrency=1)
    assert result.registered == ["cs_e"]
    assert len(result.location_errors) == 1 and result.exit_status == 1
    assert "LibCal answered HTTP 500" in result.location_errors[0]


async def test_refused_passagepoint_login_stops_the_pass_with_the_keys_to_check(sims: Sims) -> None:
    """Wrong PassagePoint credentials: no booking can succeed, so the pass raises (the CLI exits 2)."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.pp.password = "rotated"
    with pytest.raises(PassagePointAuthError) as excinfo:
        await sims.run()
    assert str(excinfo.value).endswith("check PassagePoint.username and PassagePoint.password")
    with sims.cache() as cache:
        assert cache.counts()["failed"] == 0 and cache.counts()["registered"] == 0


async def test_credentials_refused_at_createprereg_leave_no_open_intent_and_the_next_pass_registers(sims: Sims) -> None:
    """The pass has logged in; after its first createPreReg the password is rotated and the token
    expires, so the next createPreReg gets a 401 and the login after it is refused. Nothing of that
    booking reached PassagePoint: it is put back as it was (not left as an open intent, which the
    next pass would report as uncertain and never register). The pass is on record with exit
    status 2 and the reason; the next pass, with the password right again, registers it."""
    for n in (1, 2):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=8 + n)
    await sims.run()
    sims.add_booking("cs_1b", "G00000001", hour=16)  # returning patrons: createPreReg only
    sims.add_booking("cs_2b", "G00000002", hour=17)

    def rotate(book_id: str, prereg_id: int) -> None:
        sims.pp.password = "rotated"
        sims.pp.expire_tokens()

    with pytest.raises(PassagePointAuthError, match="^PassagePoint refused the login"):
        await sims.run(concurrency=1, on_prereg_created=rotate)
    assert len(sims.pp.preregs) == 3
    with sims.cache() as cache:
        assert cache.counts()["intent"] == 0 and cache.counts()["registered"] == 3
        (not_sent,) = [b for b in ("cs_1b", "cs_2b") if cache.booking(b) is None]
        last = cache.last_pass()
        assert last is not None and last["exit_status"] == 2 and last["summary"]["registered"] == 1
        assert last["summary"]["error"].startswith("PassagePoint refused the login")
    sims.pp.password = "pw"
    result = await sims.run()
    assert result.registered == [not_sent] and result.uncertain == [] and result.exit_status == 0
    assert len(sims.pp.preregs) == 4


async def test_a_pass_stopped_by_refused_credentials_still_reports_what_is_uncertain(sims: Sims) -> None:
    """An intent left open by a crash is uncertain at the start of the next pass; that pass then
    meets refused credentials: the uncertain booking is still reported (logged, marked reported)."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    with sims.cache() as cache:
        cache.record_intent({"book_id": "cs_crash", "lid": GELMAN, "primary_id": pid, "patron": "Ada Lovelace",
                             "start_time": 1_894_716_000, "end_time": 1_894_723_200, "destination": "LibCal Gelman"},
                            visitor_id=5, user=(pid, "22222000000001", "UGRD"))
    sims.pp.password = "rotated"
    with pytest.raises(PassagePointAuthError):
        await sims.run()
    with sims.cache() as cache:
        row = cache.booking("cs_crash")
        assert (row["state"], row["reported"]) == ("uncertain", 1)


@pytest.mark.parametrize("how", ["login answers 503", "nothing listens"])
async def test_passagepoint_out_of_reach_stops_the_pass_before_any_alma_lookup(sims: Sims, how: str) -> None:
    """PassagePoint's login answers 503 (or nothing listens): no booking can be registered, so the
    pass stops before it looks anybody up. No booking is failed or put on backoff; the next pass,
    once PassagePoint is back, registers them all. The caller's stop event (a signal) stays unset,
    so `run --every` goes on with its next pass."""
    for n in range(1, 4):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=10 + n)
    sims.add_booking("cs_noid", None, first_name="No", last_name="Id")  # fails on its own, no call needed
    config = sims.config
    # A port bound but not listening refuses connections, and no other process can take it meanwhile.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        if how == "login answers 503":
            sims.pp.inject_failure("login", "503_html")
        else:
            root = f"http://127.0.0.1:{dead.getsockname()[1]}"
            config = replace(config, passagepoint=replace(config.passagepoint, pp_api_root=root))
        signal_stop = asyncio.Event()
        result = await sims.run(config=config, stop=signal_stop)
    assert result.stopped is not None
    assert result.stopped.startswith("PassagePoint login answered HTTP 503" if how == "login answers 503" else
                                     "PassagePoint login at http://127.0.0.1:")
    assert result.stopped.endswith("the bookings not sent to PassagePoint wait for the next pass")
    assert (result.left, result.registered, result.exit_status, result.interrupted) == (3, [], 1, False)
    assert [f.book_id for f in result.failed] == ["cs_noid"]
    assert not signal_stop.is_set()
    assert sims.alma.count("/almaws") == 0
    with sims.cache() as cache:
        assert [cache.booking(f"cs_{n}") for n in range(1, 4)] == [None, None, None]
        assert cache.last_pass()["summary"]["stopped"] == result.stopped
    again = await sims.run()
    assert sorted(again.registered) == ["cs_1", "cs_2", "cs_3"] and again.stopped is None
    assert len(sims.pp.preregs) == 3


async def test_passagepoint_going_away_mid_pass_leaves_the_unsent_bookings_untouched(sims: Sims) -> None:
    """PassagePoint stops listening after the pass's first createPreReg (the client raises what it
    raises on a refused connection: nothing was sent). The pass stops: the booking it hit is back
    as it was (no open intent, no backoff), and so is every booking not yet sent."""
    for n in range(1, 5):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=8 + n)
    await sims.run()
    for n in range(1, 5):
        sims.add_booking(f"cs_{n}b", f"G{n:08d}", hour=16)  # returning patrons: createPreReg only

    class GoesAway:
        def __init__(self, real: PassagePointClient) -> None:
            self.real, self.preregs = real, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        async def create_prereg(self, **fields: Any) -> int:
            self.preregs += 1
            if self.preregs > 1:
                raise PassagePointUnavailable("PassagePoint createPreReg: cannot connect: Connect call failed",
                                              maybe_applied=False)
            return await self.real.create_prereg(**fields)

    with sims.cache() as cache:
        async with open_clients(sims.config, limiter=SlidingWindowLimiter(1000)) as clients:
            result = await run_pass(sims.config, libcal=clients.libcal, alma=clients.alma, cache=cache, date=DAY,
                                    passagepoint=GoesAway(clients.passagepoint), concurrency=1)  # type: ignore[arg-type]
        assert result.stopped is not None and result.stopped.startswith("PassagePoint createPreReg: cannot connect")
        assert (len(result.registered), result.left, result.failed, result.uncertain) == (1, 3, [], [])
        assert cache.counts()["intent"] == 0 and cache.counts()["failed"] == 0
        assert sum(cache.booking(f"cs_{n}b") is None for n in range(1, 5)) == 3
    again = await sims.run()
    assert len(again.registered) == 3 and again.uncertain == []
    assert len(sims.pp.preregs) == 8


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_alma_daily_quota_stops_the_lookups_but_not_the_patrons_already_known(sims: Sims, concurrency: int) -> None:
    """DAILY_THRESHOLD: every further lookup would be refused too, so the pass stops looking patrons
    up; the new patrons' bookings wait, untouched, for the next pass. Patrons already in the cache
    need no Alma: their bookings register in this pass."""
    for n in range(1, 13):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=8)
    await sims.run()
    for n in range(1, 13):
        sims.add_booking(f"cs_{n}b", f"G{n:08d}", hour=14)  # returning patrons
    for n in range(13, 18):
        pid, _ = sims.add_patron(n)
        sims.add_booking(f"cs_{n}", pid, hour=9)  # new patrons: they need Alma
    sims.alma.remaining = 0
    result = await sims.run(concurrency=concurrency)
    assert result.stopped is not None and result.stopped.endswith("the bookings not looked up wait for the next pass")
    assert sorted(result.registered) == sorted(f"cs_{n}b" for n in range(1, 13))
    assert (result.left, result.failed, result.exit_status) == (5, [], 1)
    with sims.cache() as cache:
        assert all(cache.booking(f"cs_{n}") is None for n in range(13, 18))
    sims.alma.reset_daily_quota()
    assert sorted((await sims.run()).registered) == sorted(f"cs_{n}" for n in range(13, 18))


async def test_a_refused_alma_key_stops_the_pass_like_any_refused_credential(sims: Sims) -> None:
    """A wrong Alma.apikeys entry fails every lookup: the pass raises (the CLI exits 2), nothing is on backoff."""
    pid, _ = sims.add_patron(1)
    sims.add_booking("cs_1", pid)
    sims.alma.api_keys = {"zone-two-key"}  # zone one's key is no longer accepted
    with pytest.raises(AlmaUnauthorized, match="Alma refused API key #1 of Alma.apikeys"):
        await sims.run()
    with sims.cache() as cache:
        assert cache.booking("cs_1") is None and cache.last_pass()["exit_status"] == 2


async def test_a_run_purges_patron_data_past_the_retention_once_a_day(sims: Sims) -> None:
    """The original's plan ("delete rows with past appointments"): bookings that ended more than
    LCPP.retention ago and patrons with no booking left go, at most once a day, without a purge command."""
    import time as _time

    from libcal_passagepoint.runner import run_passes

    old_end = _time.time() - 40 * 86400
    with sims.cache() as cache:
        old = {"book_id": "cs_old", "lid": GELMAN, "primary_id": "G7", "patron": "Old Booking",
               "start_time": int(old_end - 3600), "end_time": int(old_end), "destination": "LibCal Gelman"}
        cache.record_intent(old, visitor_id=7, user=("G7", "2227", "UGRD"))
        cache.record_registered(old, visitor_id=7, prereg_id=7)
        config = sims.with_config(retention=30 * 86400)
        await run_passes(config, cache, date=DAY, install_signal_handlers=False)
        assert cache.booking("cs_old") is None and cache.user("G7") is None
        cache.record_intent(old, visitor_id=7, user=("G7", "2227", "UGRD"))
        await run_passes(config, cache, date=DAY, install_signal_handlers=False)
        assert cache.booking("cs_old") is not None  # purged already today


async def test_fixture_points_the_original_config_at_the_simulators(sims: Sims) -> None:
    """The fixture's config is the original app's file and reaches all three simulators."""
    sims.add_patron(1)
    sims.add_booking("cs_one", "G00000001")
    result = await sims.run()
    assert result.registered == ["cs_one"]
    assert all(count > 0 for count in sims.counts())
