"""The loader under stalls, lost replies and interrupts, against a real Redis (and real processes).

- A loader that stalls past its lease and loses it to another publishes and deletes nothing of the
  other's: it stops, deletes the generation it was writing, and says so.
- A switch whose reply is lost is checked again before anything is said about it.
- Ctrl-C and SIGTERM end with one line saying what the store holds, and a --replace cleans up.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from logtext import messages

from bench.gen_las_export import write_export
from m2_code_store import bulk
from m2_code_store import loader as loader_module
from m2_code_store.config import StoreTarget, connect
from m2_code_store.las_csv import read_export
from m2_code_store.loader import LoadStopped, Lock, LockLost, load
from m2_code_store.store import CodeStore, Layout, read_generation

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"


def export(tmp_path, name: str, barcodes: range, code: str):
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{i},,{code},\n" for i in barcodes))
    return read_export(path)


def codes_of(client, barcodes) -> set:
    return set(CodeStore(client, meta_ttl=0).lookup([str(b) for b in barcodes]))


def only_live_keys(client) -> bool:
    """True when Redis holds the live generation, m2:meta and the sequence, and nothing else of the
    store but a previous generation's keys that expire within the grace period."""
    live = read_generation(client)
    keys = {k.decode() if isinstance(k, bytes) else k for k in client.keys("*")}
    expected = {f"m2:{live.gen}:{b}" for b in range(live.buckets)} | {"m2:meta", "m2:gen-seq"}
    expected.add(Layout().fingerprints(live.gen))
    # pttl -2: expired since KEYS listed it; up to 3000: expires within the grace period; -1 would mean never
    expiring = {key for key in keys - expected if (ttl := client.pttl(key)) == -2 or 0 <= ttl <= 3000}
    return keys - expected - expiring <= {Layout().generations} and not client.hlen(Layout().generations)


@pytest.fixture
def small_slices(monkeypatch):
    """Writes in slices of 500 rows, so a load calls its progress (and renews its lease) many times."""
    monkeypatch.setattr(loader_module, "write_generation", functools.partial(bulk.write_generation, slice_rows=500))


@pytest.mark.parametrize("stall_at", ["first slice", "last slice"])
def test_a_replace_that_lost_its_lease_mid_load_publishes_nothing_and_deletes_only_its_own(
        stall_at, tmp_path, redis_url, small_slices):
    """A stalls, its lease expires, B replaces the store; A resumes: B's data set stays whole.

    At the first slice, A's next lease renewal finds the lease gone; at the last, the fenced
    switch does. Either way B's clean-up left A's generation alone, and A deletes it.
    """
    client_a, client_b = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    load(client_a, export(tmp_path, "old.csv", range(3000), "OLD"))
    a_file = export(tmp_path, "a.csv", range(3000), "AAA")
    b_file = export(tmp_path, "b.csv", range(3000), "BBB")
    results = {}

    def stall(rows: int) -> None:
        if "b" not in results and (stall_at == "first slice" or rows == len(a_file)):
            client_b.delete(Layout().lock)  # A's lease runs out while A is stopped
            results["b"] = load(client_b, b_file, replace=True, grace=0)

    with pytest.raises(LoadStopped) as info:
        load(client_a, a_file, replace=True, grace=0, progress=stall)
    assert isinstance(info.value.cause, LockLost)
    assert info.value.state == (
        "the replacement was not switched in, and this loader changed nothing else; the partial new data set was "
        f"deleted; the store now holds generation {results['b'].generation} (3,000 records), published by another "
        "loader. Re-run the same command only if this file should replace that")
    assert codes_of(client_b, range(3000)) == {"BBB"}
    assert only_live_keys(client_b)
    a_gen = results["b"].generation - 1
    assert results["b"].notes[0].startswith(f"left generation {a_gen} alone: loader ")


def test_an_incremental_load_that_lost_its_lease_stops_and_leaves_the_count_to_be_recounted(
        tmp_path, redis_url, small_slices):
    client_a, client_b = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    load(client_a, export(tmp_path, "old.csv", range(3000), "OLD"))
    taken = []

    def stall(rows: int) -> None:
        if not taken:
            taken.append(client_b.delete(Layout().lock))

    with pytest.raises(LoadStopped) as info:
        load(client_a, export(tmp_path, "a.csv", range(3000, 6000), "AAA"), progress=stall)
    assert isinstance(info.value.cause, LockLost)
    assert read_generation(client_b).dirty  # what A wrote is not counted: the next load recounts
    result = load(client_b, export(tmp_path, "b.csv", range(6000, 6001), "BBB"))
    # The lease was taken after slice 1 was queued: the sender checks it before every chunk, so
    # slice 2 (queued behind it) is never sent; slice 1 may have gone out before the check.
    assert info.value.rows_sent < 3000
    assert result.records == int(CodeStore(client_b).stats()["records"])
    assert result.records - 3001 in (0, 500)


def _wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _loader(csv: Path, redis_url: str, *extra: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.Popen([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv), *extra, "--quiet"],
                            cwd=cwd or ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _writing(client) -> bool:
    return any(b" writing " in entry for entry in client.hvals(Layout().generations))


def test_a_loader_stopped_with_sigstop_past_its_lease_cannot_publish_a_half_deleted_generation(tmp_path, redis_url):
    """The reported case, with real processes and signals: `--replace A` is SIGSTOPped while it
    writes, its lease expires, `--replace B` runs to the end, A gets SIGCONT. Every barcode
    answers B's code, A says it lost its lock and exits 1, and no generation is left behind."""
    client = redis.Redis.from_url(redis_url)
    rows = 400_000
    first = write_export(tmp_path / "first.csv", rows, delete_share=0, seed=1)
    assert _loader(first, redis_url).wait(timeout=120) == 0
    a_csv = write_export(tmp_path / "a.csv", rows, delete_share=0, seed=1, code="AA")
    b_csv = write_export(tmp_path / "b.csv", rows, delete_share=0, seed=1, code="BB")
    a = _loader(a_csv, redis_url, "--replace")
    try:
        _wait_for(lambda: _writing(client), what="loader A to start writing")
        a.send_signal(signal.SIGSTOP)
        client.delete(Layout().lock)  # stands for the 60 s the lease would take to expire
        b = _loader(b_csv, redis_url, "--replace")
        b_out, b_err = b.communicate(timeout=120)
        assert b.returncode == 0, b_err
        assert any(line.startswith("warning: left generation") for line in messages(b_err))  # B left A's alone
    finally:
        a.send_signal(signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=120)
    assert a.returncode == 1, a_err
    assert messages(a_err)[-1].startswith("error: this loader lost its lock on the store: its 60-second lifetime ran out while "
                            "this loader or Redis was stalled, and no loader holds it now: the replacement was not "
                            "switched in, and this loader changed nothing else; the partial new data set was deleted; "
                            "the store now holds generation ")
    assert "Traceback" not in a_err
    barcodes = read_export(b_csv).barcodes.to_pylist()
    assert set(CodeStore(client, meta_ttl=0).lookup(barcodes[::7])) == {"BB"}
    assert read_generation(client).count == rows
    assert only_live_keys(client)


class FaultyProxy:
    """A TCP proxy to Redis that loses a connection around the first command containing *marker*.

    ``reply_lost``: the command reaches Redis and runs; its reply is dropped with the connection.
    ``never_sent``: the connection drops before the command reaches Redis. With ``then_down``,
    the proxy accepts no connection after the fault, as if the store had gone away.
    ``held`` / ``reply_held``: the command is held back (or reaches Redis and runs) and that
    connection then hangs, answering nothing, until the proxy is closed: a Redis that stalls.
    """

    def __init__(self, upstream_port: int, marker: bytes, mode: str, *, every_time: bool = False,
                 then_down: bool = False) -> None:
        self.upstream_port, self.marker, self.mode = upstream_port, marker, mode
        self.every_time, self.then_down = every_time, then_down
        self.faults = 0
        self.released = threading.Event()
        self.open: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(downstream,), daemon=True).start()

    def _fault(self, *sockets: socket.socket) -> None:
        self.faults += 1
        if self.then_down:
            self.close()
            sockets += tuple(self.open)
        for sock in sockets:
            sock.shutdown(socket.SHUT_RDWR) if sock.fileno() != -1 else None
            sock.close()

    def _pump(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.open |= {downstream, upstream}
        awaiting_lost_reply = False
        with downstream, upstream:
            while True:
                try:
                    ready, _, _ = select.select([downstream, upstream], [], [])
                except (OSError, ValueError):  # closed by a fault on another connection
                    return
                if downstream in ready:
                    data = _recv(downstream)
                    if not data:
                        return
                    if self.marker in data and (self.every_time or not self.faults):
                        if self.mode == "never_sent":
                            return self._fault(downstream, upstream)
                        if self.mode in ("held", "reply_held"):
                            if self.mode == "reply_held":
                                upstream.sendall(data)
                            self.faults += 1
                            self.released.wait()
                            return
                        awaiting_lost_reply = True
                    upstream.sendall(data)
                if upstream in ready:
                    data = _recv(upstream)
                    if not data:
                        return
                    if awaiting_lost_reply:
                        return self._fault(downstream, upstream)
                    downstream.sendall(data)

    def close(self) -> None:
        self.released.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(); close() alone does not
        except OSError:
            pass
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


SWITCH_MARKER = b"'loaded_at', ARGV[6]"  # only the switch script sends this


@pytest.fixture
def redis_port(redis_url) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])


def _production_client(port: int) -> redis.Redis:
    """A client configured as the loader's own (timeouts, one immediate retry)."""
    return connect(StoreTarget(f"redis://127.0.0.1:{port}/0", "REDIS_URL"), timeout=5)


def test_a_switch_whose_reply_is_lost_and_retried_is_applied_once(tmp_path, redis_url, redis_port):
    """redis-py re-sends the switch after the dropped reply; the switch is idempotent, so the
    replacement is live, the old generation deleted, and nothing is reported as failed."""
    direct = redis.Redis.from_url(redis_url)
    load(direct, export(tmp_path, "old.csv", range(2000), "OLD"))
    proxy = FaultyProxy(redis_port, SWITCH_MARKER, "reply_lost")
    try:
        result = load(_production_client(proxy.port), export(tmp_path, "new.csv", range(2000), "NEW"),
                      replace=True, grace=0)
    finally:
        proxy.close()
    assert proxy.faults == 1
    assert read_generation(direct).gen == result.generation
    assert codes_of(direct, range(2000)) == {"NEW"}
    assert only_live_keys(direct)


def test_a_switch_that_happened_but_whose_replies_were_all_lost_is_verified_and_reported_live(
        tmp_path, redis_url, redis_port):
    direct = redis.Redis.from_url(redis_url)
    load(direct, export(tmp_path, "old.csv", range(2000), "OLD"))
    proxy = FaultyProxy(redis_port, SWITCH_MARKER, "reply_lost", every_time=True)
    try:
        result = load(_production_client(proxy.port), export(tmp_path, "new.csv", range(2000), "NEW"),
                      replace=True, grace=0)
    finally:
        proxy.close()
    assert read_generation(direct).gen == result.generation
    assert codes_of(direct, range(2000)) == {"NEW"}
    assert result.notes == [f"the connection failed as the switch was sent (ConnectionError); m2:meta, read again, "
                            f"shows generation {result.generation} live"]
    assert only_live_keys(direct)


def test_a_switch_that_never_reached_redis_is_reported_not_switched_after_checking(tmp_path, redis_url, redis_port):
    direct = redis.Redis.from_url(redis_url)
    load(direct, export(tmp_path, "old.csv", range(2000), "OLD"))
    proxy = FaultyProxy(redis_port, SWITCH_MARKER, "never_sent", every_time=True)
    try:
        with pytest.raises(LoadStopped) as info:
            load(_production_client(proxy.port), export(tmp_path, "new.csv", range(2000), "NEW"), replace=True, grace=0)
    finally:
        proxy.close()
    assert info.value.state == ("the replacement was not switched in: the store still holds the previous data set "
                                "(2,000 records); the partial new data set was deleted. Re-running the same command "
                                "is safe")
    assert codes_of(direct, range(2000)) == {"OLD"}
    assert only_live_keys(direct)


def test_when_the_store_goes_away_during_the_switch_the_outcome_is_said_to_be_unknown(tmp_path, redis_url, redis_port):
    """The switch ran, then the store stopped answering: the loader says it cannot tell, and how
    to check, instead of claiming the store still holds the previous data set."""
    direct = redis.Redis.from_url(redis_url)
    load(direct, export(tmp_path, "old.csv", range(2000), "OLD"))
    old_gen = read_generation(direct).gen
    proxy = FaultyProxy(redis_port, SWITCH_MARKER, "reply_lost", then_down=True)
    with pytest.raises(LoadStopped) as info:
        load(_production_client(proxy.port), export(tmp_path, "new.csv", range(2000), "NEW"), replace=True, grace=0,
             sleep=lambda seconds: None)
    new_gen = read_generation(direct).gen
    assert new_gen != old_gen and codes_of(direct, range(2000)) == {"NEW"}  # it did happen
    assert info.value.switched is None
    assert info.value.state == (
        "the connection failed while switching to the new data set, and the store has not answered since: it is "
        "unknown whether the replacement is live. Check with 'm2-code-store stats': generation "
        f"{new_gen} means it is live and nothing more is needed; generation {old_gen} means the previous one is "
        "still live, and re-running the same command is safe")


def _one_line(err: str) -> str:
    lines = messages(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("sig", "status", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_an_interrupted_replace_deletes_what_it_wrote_and_says_so_in_one_line(sig, status, word, tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    small = write_export(tmp_path / "small.csv", 1000, delete_share=0, seed=3)
    assert _loader(small, redis_url).wait(timeout=60) == 0
    keys_before = set(client.keys("*")) - {b"m2:gen-seq"}
    big = write_export(tmp_path / "big.csv", 400_000, delete_share=0, seed=3)
    process = _loader(big, redis_url, "--replace")
    _wait_for(lambda: _writing(client), what="the loader to start writing")
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status
    assert _one_line(err) == (f"error: {word}: the replacement was not switched in: the store still holds the previous "
                              "data set (1,000 records); the partial new data set was deleted. Re-running the same "
                              "command is safe.")
    assert set(client.keys("*")) - {b"m2:gen-seq"} == keys_before  # nothing of the partial generation is left
    assert not client.exists(Layout().lock)


def test_an_interrupted_incremental_load_says_what_stays_in_one_line(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    load(client, read_export(write_export(tmp_path / "before.csv", 400_000, delete_share=0, seed=4, code="ZZ")))
    big = write_export(tmp_path / "big.csv", 400_000, delete_share=0, seed=4)
    process = _loader(big, redis_url)
    _wait_for(lambda: client.hget("m2:meta", "dirty") not in (None, b"0"), what="the loader to start writing")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    line = _one_line(err)
    assert line.startswith("error: interrupted: ") and line.endswith(
        "before it stopped; what Redis applied stays, and the next load recounts the records. "
        "Re-running the same file is safe.")
    assert not client.exists(Layout().lock)


def test_an_interrupted_first_load_leaves_the_store_empty(tmp_path, redis_url):
    """A first load is written unpublished and switched in: stopped part-way, nothing of it is live."""
    client = redis.Redis.from_url(redis_url)
    big = write_export(tmp_path / "big.csv", 400_000, delete_share=0, seed=4)
    process = _loader(big, redis_url)
    _wait_for(lambda: _writing(client), what="the loader to start writing")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert _one_line(err) == ("error: interrupted: the new data set was not switched in: the store is still empty; "
                              "the partial new data set was deleted. Re-running the same command is safe.")
    assert read_generation(client) is None and client.keys("m2:*:*") == []
    assert not client.exists(Layout().lock)


def _bytes_read(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line for line in io.splitlines() if line.startswith("rchar:")).split()[1])


def test_an_interrupt_before_the_load_starts_leaves_the_store_unchanged(tmp_path, redis_url):
    big = write_export(tmp_path / "big.csv", 1_000_000, delete_share=0, seed=5)
    process = _loader(big, redis_url)
    # Once the file is read, parsing it takes about a second: the interrupt lands before anything is written.
    _wait_for(lambda: _bytes_read(process.pid) >= big.stat().st_size, what="the loader to read the file")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert _one_line(err) == "error: interrupted before anything was written: the store is unchanged"
    assert redis.Redis.from_url(redis_url).keys("*") == []


def _loader_via(port: int, csv: Path, *extra: str) -> subprocess.Popen:
    return _loader(csv, f"redis://127.0.0.1:{port}/0", *extra)


@pytest.mark.parametrize(("mode", "expected"), [
    ("held", "error: interrupted: the replacement was not switched in: the store still holds the previous data set "
             "(1,000 records); the partial new data set was deleted. Re-running the same command is safe."),
    ("reply_held", "error: interrupted after the switch: the new data set is live (generation {gen}); the previous one is "
                   "deleted by the next load"),
])
def test_ctrl_c_while_redis_stalls_on_the_switch_is_answered_at_once_with_what_happened(
        mode, expected, tmp_path, redis_url, redis_port):
    """Redis stops answering as the switch is sent; Ctrl-C is not ignored for the minutes of the
    timeouts: the loader checks m2:meta (seconds) and says whether the switch happened."""
    client = redis.Redis.from_url(redis_url)
    assert _loader(write_export(tmp_path / "old.csv", 1000, delete_share=0, seed=8), redis_url).wait(timeout=60) == 0
    proxy = FaultyProxy(redis_port, SWITCH_MARKER, mode)
    try:
        process = _loader_via(proxy.port, write_export(tmp_path / "new.csv", 2000, delete_share=0, seed=8), "--replace")
        _wait_for(lambda: proxy.faults, what="the switch to be sent")
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert time.monotonic() - started < 15
    finally:
        proxy.close()
    assert process.returncode == 130, err
    assert messages(err)[-1] == expected.format(gen=read_generation(client).gen)
    if mode == "held":
        assert read_generation(client).count == 1000 and only_live_keys(client)


def test_a_retried_count_update_or_lock_request_is_not_mistaken_for_another_loader(tmp_path, redis_url, redis_port):
    """redis-py re-sends a command whose reply was lost: the lock request must find its own token,
    and the count update must not report 'another loader wrote into the store'."""
    direct = redis.Redis.from_url(redis_url)
    load(direct, export(tmp_path, "old.csv", range(100), "OLD"))
    for marker in (b"\r\nNX\r\n", b"counted_by"):
        proxy = FaultyProxy(redis_port, marker, "reply_lost")
        try:
            result = load(_production_client(proxy.port), export(tmp_path, "more.csv", range(100, 200), "NEW"))
        finally:
            proxy.close()
        assert proxy.faults == 1
        assert result.notes == [] and result.records == 200 == read_generation(direct).count
        assert not read_generation(direct).dirty


def test_an_incremental_loader_stopped_past_its_lease_sends_at_most_one_more_chunk(tmp_path, redis_url):
    """The reviewer's case: an incremental load is SIGSTOPped, its lease expires, another load of
    the same barcodes runs to the end, the first gets SIGCONT. It once sent every queued slice
    (a million stale rows over the newer data); now it checks its lease before every chunk of
    about a megabyte, so at most the chunk it was sending goes out."""
    client = redis.Redis.from_url(redis_url)
    rows = 400_000
    load(client, read_export(write_export(tmp_path / "before.csv", rows, delete_share=0, seed=9, code="ZZ")))
    a_csv = write_export(tmp_path / "a.csv", rows, delete_share=0, seed=9, code="AA")
    b_csv = write_export(tmp_path / "b.csv", rows, delete_share=0, seed=9, code="BB")
    a = _loader(a_csv, redis_url)
    try:
        _wait_for(lambda: client.hget("m2:meta", "dirty") not in (None, b"0"), what="loader A to start writing")
        a.send_signal(signal.SIGSTOP)
        client.delete(Layout().lock)  # stands for the 60 s the lease would take to expire
        b = _loader(b_csv, redis_url)
        assert b.wait(timeout=120) == 0, b.stderr.read()
    finally:
        a.send_signal(signal.SIGCONT)
    _, a_err = a.communicate(timeout=120)
    assert a.returncode == 1, a_err
    assert messages(a_err)[-1].startswith("error: this loader lost its lock on the store")
    barcodes = read_export(b_csv).barcodes.to_pylist()
    codes = CodeStore(client, meta_ttl=0).lookup(barcodes)
    stale = codes.count("AA")
    assert codes.count("BB") + stale == rows
    assert stale <= 40_000, f"{stale:,} rows of the stopped loader overwrote the newer load"


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.TimeoutError:
        return False


def test_a_second_ctrl_c_stops_the_clean_up_of_an_interrupted_replace(tmp_path, redis_url):
    """Ctrl-C stops a --replace, which then deletes what it wrote; while Redis is slow to answer
    that, the second Ctrl-C stops the deletion at once (the next load finishes it), as the README
    says. It once took a third: the clean-up held off the first signal it saw itself."""
    client = redis.Redis.from_url(redis_url)
    small = write_export(tmp_path / "small.csv", 1_000, delete_share=0)
    load(client, read_export(small))
    process = _loader(write_export(tmp_path / "big.csv", 400_000, delete_share=0, seed=4), redis_url, "--replace")
    _wait_for(lambda: _writing(client), what="the loader to start writing")
    sleeper = threading.Thread(target=redis.Redis.from_url(redis_url, socket_timeout=30).execute_command,
                               args=("DEBUG", "SLEEP", 6))
    sleeper.start()
    started = time.monotonic()
    try:
        probe = redis.Redis.from_url(redis_url, socket_timeout=0.1)
        _wait_for(lambda: not _answers(probe), what="Redis to be asleep")
        process.send_signal(signal.SIGINT)  # the load stops, and its clean-up waits on Redis
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        stopped_after = time.monotonic() - started
    finally:
        sleeper.join()
    assert process.returncode == 130
    line = _one_line(err)
    assert line.startswith("error: interrupted: the replacement was not switched in: the store still holds the "
                           "previous data set (1,000 records); deleting the partial new data set (generation "), line
    assert line.endswith("was interrupted, and Redis did not answer in time: another load is refused until this "
                         "loader's lock expires (within 60 seconds), then the next load deletes the rest. Re-running "
                         "the same command is safe."), line
    assert stopped_after < 5, f"the second Ctrl-C was answered after {stopped_after:.1f} s, when Redis woke"
    result = load(client, read_export(small), replace=True, grace=0)
    assert result.records == 1_000 and set(client.keys("m2:*:*")) <= {f"m2:{result.generation}:{b}".encode()
                                                                      for b in range(result.buckets)}


def test_after_a_second_ctrl_c_the_lease_is_released_and_the_partial_generation_left_to_any_next_load(
        tmp_path, redis_url):
    """When Redis answers, the loader stopped in its clean-up lets go at once: its lease is
    released and the generation it was writing is listed as retired, so a load from another host
    is not refused and deletes it (not left for ABANDONED_AFTER_MS as a stalled writer's)."""
    client = redis.Redis.from_url(redis_url)
    lock = Lock(client, Layout())
    lock.acquire()
    run = loader_module._Run(client, Layout(), lock, source="x", grace=0, progress=None, sleep=time.sleep)
    lock.begin(7, 4)
    client.hset("m2:7:1", "33433000000000", "NA")
    assert run._let_go_quickly(7, 4)
    assert not client.exists(Layout().lock)
    assert client.hget(Layout().generations, "7").split(b" ")[1] == b"retired"
    other = Lock(client, Layout())
    other.host = "another-host"
    other.acquire()
    assert loader_module.clean_generations(client, Layout(), other, None, grace=0, sleep=time.sleep) == []
    assert not client.exists("m2:7:1") and not client.hexists(Layout().generations, "7")
