"""Loading into a real Redis: upserts, deletes, last row wins, --replace, the lock."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import zlib

import pytest
import redis

from bench.gen_las_export import write_export
from m2_code_store.bulk import BulkWriteError
from m2_code_store.las_csv import read_export
from m2_code_store.loader import (
    LoadStopped,
    Lock,
    ReplaceRefused,
    StoreBusy,
    clean_generations,
    fingerprints_vouched,
    load,
)
from m2_code_store.store import CodeStore, Layout, read_generation
from simulators.redis_server import RedisServer, free_port

HEADER = "Item barcode,Accession date,Customer code,Delete date\n"


def export(tmp_path, body: str, name: str = "items.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body)
    return read_export(path)


def limit_memory(client, *, headroom: int) -> None:
    """maxmemory *headroom* bytes above what the server uses now (a fresh one already uses ~1 MB)."""
    client.config_set("maxmemory", str(client.info("memory")["used_memory"] + headroom))


def store_of(client) -> CodeStore:
    return CodeStore(client, meta_ttl=0)


def test_incremental_load_upserts_and_deletes(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n2,,NB,\n3,,NC,\n"))
    result = load(redis_client, export(tmp_path, "2,,NX,\n3,,,2024-05-01\n4,,ND,\n", "next.csv"))
    assert store_of(redis_client).lookup(["1", "2", "3", "4"]) == ["NA", "NX", None, "ND"]
    assert (result.added, result.removed, result.records, result.previous_records) == (1, 1, 3, 3)


def test_for_a_repeated_barcode_the_latest_row_wins(tmp_path, redis_client):
    body = ("1,2020-01-01,NA,\n1,2020-01-01,NB,\n2,2020-01-01,NA,\n2,,,2024-01-01\n"
            "3,2019-01-01,,2024-01-01\n3,2025-03-01,NC,\n")
    result = load(redis_client, export(tmp_path, body))
    assert store_of(redis_client).lookup(["1", "2", "3"]) == ["NB", None, "NC"]
    assert result.records == 2


def test_deleting_an_unknown_barcode_changes_nothing(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n"))
    result = load(redis_client, export(tmp_path, "9,,,2024-01-01\n", "d.csv"))
    assert (result.removed, result.records) == (0, 1)


def test_200000_row_load_is_complete_and_compact(tmp_path, redis_client):
    path = write_export(tmp_path / "big.csv", 200_000, delete_share=0.02)
    parsed = read_export(path)
    result = load(redis_client, parsed)
    assert result.records == parsed.upserts
    barcodes = parsed.barcodes.to_pylist()
    codes = parsed.customer_codes.to_pylist()
    sample = list(range(0, 200_000, 997))
    looked_up = store_of(redis_client).lookup([barcodes[i] for i in sample])
    assert looked_up == [codes[i] or None for i in sample]
    generation = read_generation(redis_client)
    assert generation.count == parsed.upserts
    # every bucket key stays in Redis' compact encoding
    key = Layout().bucket_key(generation.gen, 0)
    assert redis_client.object("encoding", key) in ("ziplist", "listpack")


def test_replace_makes_the_file_the_whole_data_set(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(100))))
    before = read_generation(redis_client)
    result = load(redis_client, export(tmp_path, "".join(f"{i},,NB,\n" for i in range(5, 100)), "r.csv"),
                  replace=True, grace=0)
    assert store_of(redis_client).lookup(["1", "5", "99"]) == [None, "NB", "NB"]
    assert (result.records, result.previous_records) == (95, 100)
    assert result.generation != before.gen
    assert redis_client.keys(f"m2:{before.gen}:*") == []  # the old generation is gone


def test_replace_that_shrinks_too_much_is_refused_and_changes_nothing(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(100))))
    keys_before = sorted(redis_client.keys("m2:*"))
    with pytest.raises(ReplaceRefused) as info:
        load(redis_client, export(tmp_path, "1,,NB,\n", "short.csv"), replace=True, grace=0)
    assert str(info.value) == (
        "refusing to replace: 99 of the 100 records in the store (99%) are not in the file, more than the "
        "10% allowed. Is the export truncated, or the wrong one? Nothing was changed. "
        "Re-run with --force to replace anyway."
    )
    assert sorted(redis_client.keys("m2:*")) == keys_before
    assert store_of(redis_client).lookup(["1", "50"]) == ["NA", "NA"]


def test_replace_counts_removed_records_not_net_shrink(tmp_path, redis_client):
    """A file as large as the store but with other barcodes would remove everything: refused."""
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(1000, 2000))))
    disjoint = export(tmp_path, "".join(f"{i},,NA,\n" for i in range(5000, 6000)), "other.csv")
    with pytest.raises(ReplaceRefused, match=r"^refusing to replace: 1,000 of the 1,000 records in the store \(100%\)"):
        load(redis_client, disjoint, replace=True, grace=0)
    result = load(redis_client, disjoint, replace=True, force=True, grace=0)
    assert (result.removed, result.added, result.records) == (1000, 1000, 1000)


def test_replace_with_force_goes_through(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(100))))
    load(redis_client, export(tmp_path, "1,,NB,\n", "short.csv"), replace=True, force=True, grace=0)
    assert store_of(redis_client).lookup(["1", "50"]) == ["NB", None]


def test_readers_see_old_or_new_data_set_never_a_mix_during_replace(tmp_path, redis_url):
    """Concurrent lookups during --replace: each answer is wholly the old or wholly the new data.

    The readers cache m2:meta for META_TTL and the old generation expires GRACE after the switch,
    as in production (1 s and 3 s), with the cache scaled down so that the readers see each switch.
    (A grace of 0.25 s let a reader stalled ~200 ms on a loaded machine read expired keys.)
    """
    meta_ttl, grace = 0.05, 1.0
    loader_client = redis.Redis.from_url(redis_url)
    old = export(tmp_path, "".join(f"{i},,OLD,\n" for i in range(30_000)), "old.csv")
    new = export(tmp_path, "".join(f"{i},,NEW,\n" for i in range(30_000)), "new.csv")
    load(loader_client, old)
    probe = [str(i) for i in range(0, 30_000, 150)]
    seen: list[set] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        client = redis.Redis.from_url(redis_url)
        store = CodeStore(client, meta_ttl=meta_ttl)  # the API's own cache of m2:meta
        try:
            while not stop.is_set():
                seen.append(set(store.lookup(probe)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            load(loader_client, new, replace=True, grace=grace)
            load(loader_client, old, replace=True, grace=grace)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert seen and all(answer in ({"OLD"}, {"NEW"}) for answer in seen), {frozenset(a) for a in seen}
    assert {"NEW"} in seen and {"OLD"} in seen


def test_second_loader_is_refused_while_one_holds_the_lock(tmp_path, redis_client):
    redis_client.set(Layout().lock, "otherhost:123:abcd", px=60_000)
    with pytest.raises(StoreBusy, match=r"another load is running \(lock held by otherhost:123:abcd\)"):
        load(redis_client, export(tmp_path, "1,,NA,\n"))
    assert redis_client.exists("m2:meta") == 0


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _dead_pid.last = int(finished.stdout)
    return _dead_pid.last


def test_clean_up_deletes_retired_and_abandoned_generations_but_never_one_a_live_loader_writes(tmp_path, redis_client):
    """Retired generations and those of a dead (or, on another host, long-silent) loader go; a
    stalled writer's stays, and a loader alive on this host keeps its own however long it is silent."""
    load(redis_client, export(tmp_path, "1,,NA,\n"))
    live = read_generation(redis_client)
    layout = Layout()
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    here = socket.gethostname()
    others = {
        91: f"1024 retired - {now_ms - 60_000}",
        92: f"1024 writing {here}:{_dead_pid()}:dead {now_ms}",  # its process is gone
        93: f"1024 writing otherhost:1:silent {now_ms - 700_000}",  # silent for over 10 minutes
        94: f"1024 writing otherhost:2:stalled {now_ms - 90_000}",  # lost its lease 30 s ago: may resume
        95: f"1024 writing {here}:{os.getpid()}:stopped {now_ms - 3_600_000}",  # SIGSTOPped for an hour, alive
    }
    for gen, entry in others.items():
        redis_client.hset(layout.bucket_key(gen, 3), "x", "NX")
        redis_client.hset(layout.generations, gen, entry)
    lock = Lock(redis_client, layout)
    lock.acquire()
    notes = clean_generations(redis_client, layout, lock, live, grace=0)
    assert sorted(redis_client.keys("m2:9*")) == ["m2:94:3", "m2:95:3"]
    assert sorted(redis_client.hgetall(layout.generations)) == ["94", "95"]
    assert notes[:2] == [
        f"deleted generation 92, which loader {here}:{_dead_pid.last}:dead left part-written (its process is gone)",
        "deleted generation 93, which loader otherhost:1:silent left part-written (silent for 11 minutes)",
    ]
    assert re.fullmatch(r"left generation 94 alone: loader otherhost:2:stalled was writing it 9[01] s ago and may only "
                        r"be stalled; .*", notes[2]), notes
    assert notes[3].startswith(f"left generation 95 alone: loader {here}:{os.getpid()}:stopped was writing it 3,60")
    assert store_of(redis_client).lookup(["1"]) == ["NA"]


def test_an_upgrade_respects_the_previous_releases_lock_and_deletes_what_it_listed(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n"))
    redis_client.set("m2:lock", "oldhost:77:abcd", px=60_000)
    with pytest.raises(StoreBusy, match=r"^a loader of the previous release is running \(it holds m2:lock: oldhost:77:abcd\)"):
        load(redis_client, export(tmp_path, "2,,NB,\n", "b.csv"))
    redis_client.delete("m2:lock")
    redis_client.hset(Layout().bucket_key(88, 5), "x", "NX")
    redis_client.sadd("m2:retired", "88:1024")
    load(redis_client, export(tmp_path, "2,,NB,\n", "b.csv"))
    assert redis_client.keys("m2:88:*") == [] and not redis_client.exists("m2:retired")
    assert store_of(redis_client).lookup(["1", "2"]) == ["NA", "NB"]


def test_redis_refusing_a_command_is_reported(tmp_path, redis_client):
    parsed = export(tmp_path, "1,,NA,\n")
    load(redis_client, parsed)
    live = read_generation(redis_client)
    # make the barcode's bucket key the wrong type
    for bucket in range(live.buckets):
        redis_client.delete(Layout().bucket_key(live.gen, bucket))
    from m2_code_store.store import bucket_of

    redis_client.set(Layout().bucket_key(live.gen, bucket_of("1", live.buckets)), "oops")
    with pytest.raises(LoadStopped) as info:
        load(redis_client, parsed)
    assert isinstance(info.value.cause, BulkWriteError)
    assert str(info.value.cause).startswith("Redis refused 1 command(s): WRONGTYPE")
    assert not redis_client.exists(Layout().lock)  # the lock is released even so


def test_count_left_wrong_by_a_failed_load_is_repaired_by_the_next(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n2,,NB,\n"))
    redis_client.hset("m2:meta", mapping={"count": 999, "dirty": 1})  # as a load that died part-way leaves it
    result = load(redis_client, export(tmp_path, "3,,NC,\n", "more.csv"))
    assert result.records == 3
    generation = read_generation(redis_client)
    assert (generation.gen, generation.count, generation.dirty) == (result.generation, 3, "")


def test_out_of_memory_mid_first_load_leaves_the_store_empty_then_a_rerun_loads_it(tmp_path):
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis").start()
    try:
        client = redis.Redis(port=server.port)
        parsed = read_export(write_export(tmp_path / "big.csv", 60_000, delete_share=0))
        limit_memory(client, headroom=200_000)
        with pytest.raises(LoadStopped) as info:
            load(client, parsed)
        assert "OOM" in str(info.value.cause)
        assert info.value.state.startswith("the new data set was not switched in: the store is still empty; the "
                                           "partial new data set was deleted.")
        assert read_generation(client) is None and client.keys("m2:*:*") == []  # a first load: nothing of it live
        client.config_set("maxmemory", "0")
        result = load(client, parsed)
        assert result.records == parsed.upserts == read_generation(client).count
        assert not read_generation(client).dirty
    finally:
        server.stop()


def test_replace_that_fails_part_way_leaves_no_partial_generation(tmp_path):
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis").start()
    try:
        client = redis.Redis(port=server.port)
        load(client, read_export(write_export(tmp_path / "small.csv", 5_000, delete_share=0)))
        live = read_generation(client)
        keys_before = set(client.keys("m2:*"))
        limit_memory(client, headroom=200_000)
        with pytest.raises(LoadStopped) as info:
            load(client, read_export(write_export(tmp_path / "big.csv", 80_000, delete_share=0)), replace=True, grace=0)
        assert isinstance(info.value.cause, BulkWriteError)
        assert info.value.state.startswith("the replacement was not switched in: the store still holds the previous "
                                           "data set (5,000 records); the partial new data set was deleted.")
        client.config_set("maxmemory", "0")
        assert set(client.keys("m2:*")) - {b"m2:gen-seq"} == keys_before - {b"m2:gen-seq"}
        assert read_generation(client) == live
    finally:
        server.stop()


def test_incremental_loads_that_outgrow_the_buckets_rebuild_and_stay_compact(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n2,,,2024-01-01\n"))
    assert read_generation(redis_client).buckets == 1024
    grown = export(tmp_path, "".join(f"{i},,NB,\n" for i in range(100_000, 200_000)), "grown.csv")
    result = load(redis_client, grown, grace=0)
    assert result.rebuilt and result.buckets == 4096 and result.records == 100_001
    generation = read_generation(redis_client)
    assert (generation.buckets, generation.count) == (4096, 100_001)
    assert store_of(redis_client).lookup(["1", "2", "100000", "199999"]) == ["NA", None, "NB", "NB"]
    encodings = {redis_client.object("encoding", Layout().bucket_key(generation.gen, b)) for b in range(0, 4096, 7)}
    assert encodings <= {"ziplist", "listpack"}


def test_lock_left_by_a_dead_loader_on_this_host_is_taken_over(tmp_path, redis_client):
    dead_pid = _dead_pid()
    redis_client.set(Layout().lock, f"{socket.gethostname()}:{dead_pid}:dead", px=60_000)
    assert load(redis_client, export(tmp_path, "1,,NA,\n")).records == 1


@pytest.mark.parametrize("seed", range(8))
def test_bulk_writer_matches_a_model_of_latest_row_wins_across_slices(seed, tmp_path, redis_client):
    """Random rows with repeats, deletes and dates, written in many small slices, give exactly the
    state a plain Python model of "the row with the latest date wins, file order breaks ties" gives."""
    import functools
    import random

    from m2_code_store import bulk
    from m2_code_store import loader as loader_module

    rng = random.Random(seed)
    barcodes = [str(100000 + rng.randrange(300)) for _ in range(2000)]
    lines, model_rows = [], []
    for position, barcode in enumerate(barcodes):
        day = f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 28):02d}"
        if rng.random() < 0.3:
            lines.append(f"{barcode},,,{day}")
            model_rows.append((day, position, barcode, None))
        else:
            code = rng.choice(["NA", "NB", "NC"])
            lines.append(f"{barcode},{day},{code},")
            model_rows.append((day, position, barcode, code))
    model: dict[str, str | None] = {}
    for _, _, barcode, code in sorted(model_rows):
        model[barcode] = code
    parsed = export(tmp_path, "\n".join(lines) + "\n")
    original = loader_module.write_generation
    loader_module.write_generation = functools.partial(bulk.write_generation, slice_rows=97)
    try:
        result = load(redis_client, parsed)
    finally:
        loader_module.write_generation = original
    expected = {b: c for b, c in model.items() if c is not None}
    assert result.records == len(expected)
    looked_up = store_of(redis_client).lookup(sorted(model))
    assert dict(zip(sorted(model), looked_up, strict=True)) == model


def test_reloading_the_same_file_incrementally_does_not_rebuild(tmp_path, redis_client):
    """The crowding check counts barcodes that are really new: the same 60,000 rows again would
    have looked like 117 a bucket (once a rebuild of the whole store), but none of them is new."""
    assert load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(30_000)), "a.csv")).buckets == 1024
    rows = export(tmp_path, "".join(f"{i},,NA,\n" for i in range(60_000)))
    first = load(redis_client, rows)
    assert not first.rebuilt and first.buckets == 1024  # 59 a bucket: not crowded
    again = load(redis_client, rows)
    assert not again.rebuilt and again.buckets == 1024 and again.records == 60_000
    grown = load(redis_client, export(tmp_path, "".join(f"{i},,NB,\n" for i in range(60_000, 120_000)), "g.csv"))
    assert grown.rebuilt and grown.records == 120_000  # really new barcodes still rebuild


def test_replace_lets_the_previous_generation_expire_instead_of_waiting_for_it(tmp_path, redis_client):
    """Nobody waits the grace period: the old generation's keys expire by themselves after it."""
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(100))))
    old = read_generation(redis_client)
    slept = []
    load(redis_client, export(tmp_path, "".join(f"{i},,NB,\n" for i in range(100)), "r.csv"), replace=True, grace=3.0,
         sleep=slept.append)
    assert slept == []
    ttls = {redis_client.pttl(key) for key in redis_client.keys(f"m2:{old.gen}:*")}
    assert ttls and all(0 < ttl <= 3000 for ttl in ttls)
    assert not redis_client.hlen(Layout().generations)  # nothing left for the next load to clean


@pytest.mark.parametrize("seed", range(5))
def test_count_present_counts_the_files_final_barcodes_the_store_holds(seed, tmp_path, redis_client):
    """Redis counts, bucket by bucket, the barcodes whose last row (in apply order) is an upsert
    and that the store already holds: duplicates once, barcodes deleted at the end not at all;
    or of a subset of those rows (--replace looks up only the buckets whose fingerprints differ)."""
    import random

    from m2_code_store.bulk import count_present, final_rows, write_generation

    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(0, 120, 2)), "store.csv"))
    stored = {str(i) for i in range(0, 120, 2)}
    rng = random.Random(seed)
    lines, model = [], {}
    for _ in range(400):
        barcode, day = str(rng.randrange(120)), f"2024-01-{rng.randrange(1, 28):02d}"
        deleted = rng.random() < 0.4
        lines.append(f"{barcode},,,{day}" if deleted else f"{barcode},{day},NA,")
        model.setdefault(barcode, []).append((day, len(lines), not deleted))
    parsed = export(tmp_path, "\n".join(lines) + "\n")
    present = {b for b, rows in model.items() if max(rows)[2]}
    live = read_generation(redis_client)
    assert count_present(redis_client, Layout(), live.gen, live.buckets, parsed, slice_rows=97) == len(present & stored)
    final = final_rows(parsed)
    some = final[[rng.random() < 0.5 for _ in range(len(final))]]
    chosen = set(parsed.source_barcodes.take(some).to_pylist())
    assert chosen < present or not some.size
    assert count_present(redis_client, Layout(), live.gen, live.buckets, parsed, slice_rows=31,
                         rows=some) == len(chosen & stored)
    written = write_generation(redis_client, Layout(), live.gen + 1, live.buckets, parsed, slice_rows=97)
    assert written.added - written.removed == len(present)


def test_one_reader_follows_a_replace_to_a_generation_of_another_size(tmp_path, redis_client):
    """The reader keeps each bucket's packed command for its generation only: after a replace
    with more buckets, a long-lived reader looks up in the new generation, bucket by bucket."""
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(100))))
    store = CodeStore(redis_client, meta_ttl=0)
    assert store.lookup(["1", "99", "100"]) == ["NA", "NA", None]
    load(redis_client, export(tmp_path, "".join(f"{i},,NB,\n" for i in range(1, 40_001)), "big.csv"),
         replace=True, force=True, grace=0)
    assert read_generation(redis_client, Layout()).buckets > 1024
    barcodes = [str(i) for i in range(0, 40_002, 97)]
    assert store.lookup(barcodes) == [None if b in ("0", "40001") else "NB" for b in barcodes]


def test_a_reader_past_its_cache_of_packed_commands_still_answers(tmp_path, redis_client, monkeypatch):
    monkeypatch.setattr("m2_code_store.store.MAX_CACHED_HEADS", 16)  # buckets 16 and up are packed each time
    load(redis_client, export(tmp_path, "".join(f"{i},,NA,\n" for i in range(500))))
    barcodes = [str(i) for i in range(0, 600, 3)]
    assert CodeStore(redis_client).lookup(barcodes) == ["NA" if int(b) < 500 else None for b in barcodes]


def test_a_refused_lookup_raises_with_redis_message(tmp_path, redis_client):
    load(redis_client, export(tmp_path, "1,,NA,\n"))
    generation = read_generation(redis_client, Layout())
    bucket = zlib.crc32(b"1") & (generation.buckets - 1)
    redis_client.delete(f"m2:{generation.gen}:{bucket}")
    redis_client.set(f"m2:{generation.gen}:{bucket}", "not a hash")
    with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
        CodeStore(redis_client).lookup(["2", "1"])


def test_a_store_left_with_no_records_is_loaded_as_a_first_load(tmp_path, redis_client):
    """A file of deletes (or a header alone) into an empty store publishes a data set of no
    records; the next load is then a first load (a new generation of the buckets it needs,
    switched in), not a rebuild of the empty one, and the empty one expires."""
    (tmp_path / "deletes.csv").write_text(HEADER + "1,,,2024-01-01\n2,,,2024-01-01\n")
    empty = load(redis_client, read_export(tmp_path / "deletes.csv"), grace=0)
    assert empty.records == 0 and read_generation(redis_client).buckets == 1024
    parsed = read_export(write_export(tmp_path / "items.csv", 50_000, delete_share=0))
    result = load(redis_client, parsed, grace=0)
    live = read_generation(redis_client)
    assert not result.rebuilt and result.generation == live.gen != empty.generation
    assert (result.added, result.removed, result.records) == (50_000, 0, 50_000) == (50_000, 0, live.count)
    assert live.buckets == 2048 and fingerprints_vouched(redis_client, Layout(), live)
    assert not redis_client.keys(f"m2:{empty.generation}:*")


def test_a_store_whose_count_says_no_records_but_whose_buckets_hold_some_is_not_replaced(tmp_path, redis_client):
    """The first-load path replaces what the store holds: it is taken only when the buckets are
    really empty (a writer that added records without counting them keeps them)."""
    (tmp_path / "deletes.csv").write_text(HEADER + "1,,,2024-01-01\n")
    empty = load(redis_client, read_export(tmp_path / "deletes.csv"), grace=0)
    bucket = zlib.crc32(b"by-hand") & 1023
    redis_client.hset(f"m2:{empty.generation}:{bucket}", "by-hand", "NZ")
    (tmp_path / "items.csv").write_text(HEADER + "2,,NA,\n")
    result = load(redis_client, read_export(tmp_path / "items.csv"), grace=0)
    assert result.generation == empty.generation
    assert CodeStore(redis_client).lookup(["by-hand", "2"]) == ["NZ", "NA"]
