"""Per-bucket fingerprints: --replace looks up only the buckets that changed, and counts the same."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from m2_code_store.bulk import digest64_array
from m2_code_store.fingerprints import PARTS, UNKNOWN, Fingerprints, part_of
from m2_code_store.las_csv import read_export
from m2_code_store.loader import fingerprints_vouched, load, read_fingerprints
from m2_code_store.store import Layout, read_generation

HEADER = "Item barcode,Accession date,Customer code,Delete date\n"


def export(tmp_path, barcodes, name: str, code: str = "NA", deleted=()):
    path = tmp_path / name
    rows = [f"{b},,{code}," for b in barcodes] + [f"{b},,,2024-01-01" for b in deleted]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return read_export(path)


def hmget_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_digest_is_the_same_whatever_else_is_in_the_array():
    """Arrays with and without non-ASCII values take different paths: the same hash either way."""
    ascii_only = digest64_array(pa.array(["33433012345678", "a", ""]))
    mixed = digest64_array(pa.array(["é", "33433012345678", "a", "", "x" * 40]))
    assert list(mixed[1:4]) == list(ascii_only)
    assert len(set(mixed.tolist())) == 5
    # the zero padding does not make a value equal to itself with a NUL appended
    assert digest64_array(pa.array(["ab"]))[0] != digest64_array(pa.array(["ab\0"]))[0]
    fixed = digest64_array(pa.array(["33433012345678", "33433012345679", "33433012345670"]), np.array([1, 0]))
    varied = digest64_array(pa.array(["a", "33433012345679", "33433012345678"]))
    assert list(fixed) == [varied[1], varied[2]] and fixed[1] == ascii_only[0]
    rows = np.array([2, 0])
    assert list(digest64_array(pa.array(["p", "q", "r"]), rows)) == list(digest64_array(pa.array(["r", "p"])))


def test_fingerprints_tell_equal_parts_from_changed_and_unknown_ones():
    digest = digest64_array(pa.array([f"b{i}" for i in range(40)]))
    bucket = np.arange(40, dtype=np.uint32) % 4
    records = digest + np.uint64(1)
    base = Fingerprints.of(part_of(bucket, digest), digest, records, 8)
    assert base.bucket_counts().tolist() == [10, 10, 10, 10, 0, 0, 0, 0]
    assert base.counts.reshape(8, PARTS)[:4].max() < 10  # a bucket's hashes spread over its parts
    # the same barcodes in another order, but b39 (bucket 3) swapped for "new" (bucket 3 too)
    new = digest64_array(pa.array(["new"]))
    other_digest = np.concatenate([digest[:39][::-1], new])
    other_bucket = np.concatenate([bucket[:39][::-1], [3]]).astype(np.uint32)
    other = Fingerprints.of(part_of(other_bucket, other_digest), other_digest, other_digest + np.uint64(1), 8)
    changed = {int(part_of(bucket[39:], digest[39:])[0]), int(part_of(np.array([3], dtype=np.uint32), new)[0])}
    assert set(np.flatnonzero(~other.same_as(base)).tolist()) == changed
    parsed_back = Fingerprints.from_bytes(base.to_bytes(), 8)
    assert parsed_back is not None and parsed_back.same_as(base).all()
    assert Fingerprints.from_bytes(base.to_bytes(), 16) is None  # not for this bucket count
    assert Fingerprints.from_bytes(base.to_bytes()[:12 * 8], 8) is None  # an older loader's, one part a bucket
    assert Fingerprints.from_bytes(None, 8) is None
    parsed_back.forget(np.array([0, 2]))
    assert (parsed_back.counts.reshape(8, PARTS)[[0, 2]] == UNKNOWN).all()
    assert parsed_back.same_as(base).reshape(8, PARTS).all(axis=1).tolist() == [False, True, False, True] + [True] * 4
    assert not Fingerprints.unknown(8).same_as(Fingerprints.unknown(8)).any()


def test_a_nightly_replace_looks_up_only_the_buckets_that_changed(tmp_path, redis_client):
    load(redis_client, export(tmp_path, range(20_000), "first.csv"))
    live = read_generation(redis_client)
    assert read_fingerprints(redis_client, Layout(), live.gen, live.buckets) is not None
    night = [*range(10, 20_000), *range(50_000, 50_007)]  # 10 gone, 7 new
    redis_client.config_resetstat()
    result = load(redis_client, export(tmp_path, night, "night.csv", "NB"), replace=True, grace=0)
    assert (result.added, result.removed, result.records) == (7, 10, 19_997)
    assert 0 < hmget_calls(redis_client) <= 17  # one per changed bucket, of 1,024
    live = read_generation(redis_client)
    assert read_fingerprints(redis_client, Layout(), live.gen, live.buckets) is not None
    assert not redis_client.exists(Layout().fingerprints(live.gen - 1))  # went with its generation


@pytest.mark.parametrize("seed", range(4))
def test_counts_agree_with_the_sets_whatever_happened_to_the_fingerprints(seed, tmp_path, redis_client):
    """Replace after replace, after incremental loads (which mark the buckets they touch), and
    after the fingerprints are lost (a store from the previous release): always the exact counts."""
    rng = random.Random(seed)
    held = set(rng.sample(range(5000), 3000))
    load(redis_client, export(tmp_path, sorted(held), "start.csv"), replace=True, grace=0)
    for night in range(4):
        if night == 2:
            live = read_generation(redis_client)
            redis_client.delete(Layout().fingerprints(live.gen))
        upserts = rng.sample(range(6000), 200)
        deleted = rng.sample(sorted(held), 100)
        load(redis_client, export(tmp_path, upserts, f"delta{night}.csv", deleted=deleted), grace=0)
        held = (held | set(upserts)) - set(deleted)  # a delete row comes after the upserts: it wins
        new = set(rng.sample(sorted(held), len(held) - 150)) | set(rng.sample(range(6000, 9000), 120))
        result = load(redis_client, export(tmp_path, sorted(new), f"night{night}.csv"), replace=True, grace=0,
                      force=True)
        assert (result.added, result.removed, result.records) == (len(new - held), len(held - new), len(new))
        held = new


def test_buckets_an_incremental_load_wrote_to_are_looked_up_again(tmp_path, redis_client):
    """A delta adds barcodes; the next night's export, made before it, lacks them: those buckets
    look unchanged to fingerprints taken before the delta, so the delta must have marked them."""
    nightly = export(tmp_path, range(3000), "nightly.csv")
    load(redis_client, nightly, replace=True, grace=0)
    load(redis_client, export(tmp_path, range(9000, 9040), "delta.csv"))
    live = read_generation(redis_client)
    marked = read_fingerprints(redis_client, Layout(), live.gen, live.buckets)
    assert marked is not None and 0 < int((marked.counts == UNKNOWN).sum()) <= 40 * PARTS  # every part of a bucket written to
    result = load(redis_client, nightly, replace=True, grace=0)
    assert (result.added, result.removed, result.records) == (0, 40, 3000)


def test_a_failure_working_out_a_new_stores_fingerprints_leaves_a_complete_load(tmp_path, redis_client, monkeypatch):
    """They are worked out on a thread while the write streams; should that fail, the data set is
    in and counted, the load says so in a note, and the next --replace compares every bucket (and
    a --replace whose own fingerprints fail compares every barcode)."""
    import m2_code_store.loader as loader

    def fail(*args, **kwargs):
        raise MemoryError("no memory left")

    monkeypatch.setattr(loader, "file_fingerprints", fail)
    result = load(redis_client, export(tmp_path, range(3000), "first.csv", deleted=range(2990, 3000)))
    assert result.records == 2990
    assert any("fingerprints could not be worked out (MemoryError: no memory left)" in note for note in result.notes)
    live = read_generation(redis_client)
    assert live.count == 2990 and not live.dirty
    assert read_fingerprints(redis_client, Layout(), live.gen, live.buckets) is None
    assert not fingerprints_vouched(redis_client, Layout(), live)
    result = load(redis_client, export(tmp_path, range(5, 3000), "night.csv"), replace=True, grace=0)
    assert (result.added, result.removed, result.records) == (10, 5, 2995)
    assert read_fingerprints(redis_client, Layout(), result.generation, live.buckets) is None
    monkeypatch.undo()
    result = load(redis_client, export(tmp_path, range(7, 3000), "next.csv"), replace=True, grace=0)
    assert (result.added, result.removed, result.records) == (0, 2, 2993)
    assert read_fingerprints(redis_client, Layout(), result.generation, live.buckets) is not None


def test_record_sums_tell_a_changed_code_and_survive_storage():
    digest = digest64_array(pa.array([f"b{i}" for i in range(6)]))
    bucket = np.array([0, 0, 1, 1, 2, 2], dtype=np.uint32)
    codes = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint64)
    base = Fingerprints.of(part_of(bucket, digest), digest, codes, 4)
    changed = codes.copy()
    changed[2] = 99  # the same barcodes, one code changed in bucket 1
    other = Fingerprints.of(part_of(bucket, digest), digest, changed, 4)
    assert other.same_as(base).all()
    assert other.buckets_with_the_same_records(base).tolist() == [True, False, True, True]
    parsed_back = Fingerprints.from_bytes(base.to_bytes(), 4)
    assert parsed_back is not None and parsed_back.buckets_with_the_same_records(base).all()
    parsed_back.forget(np.array([2]))
    assert parsed_back.buckets_with_the_same_records(base).tolist() == [True, True, False, True]


def writes(client) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hset", "hdel", "restore"))


BOOKKEEPING = 10  # HSETs of the store's own keys (m2:meta, the generations list) in a load


def test_loading_the_same_file_again_sends_none_of_its_rows(tmp_path, redis_client):
    first = export(tmp_path, range(20_000), "first.csv", deleted=range(20_000, 20_050))
    load(redis_client, first)
    redis_client.config_resetstat()
    result = load(redis_client, first)
    bookkeeping = writes(redis_client)
    assert bookkeeping < BOOKKEEPING
    assert (result.added, result.removed, result.records) == (0, 0, 20_000)
    assert result.unsent == 20_050
    # one code changed: that bucket's rows are sent, no other
    path = tmp_path / "changed.csv"
    path.write_text((tmp_path / "first.csv").read_text().replace("\n7,,NA,\n", "\n7,,NZ,\n"))
    redis_client.config_resetstat()
    result = load(redis_client, read_export(path))
    assert writes(redis_client) - bookkeeping in (1, 2)  # that bucket's HSET, and its HDEL if it has deletes
    assert (result.added, result.removed, result.records) == (0, 0, 20_000)
    assert store_lookup(redis_client, ["7", "8"]) == ["NZ", "NA"]


def store_lookup(client, barcodes):
    from m2_code_store.store import CodeStore

    return CodeStore(client, meta_ttl=0).lookup(barcodes)


def test_a_bucket_that_lost_its_key_is_written_again(tmp_path, redis_client):
    """Evicted under a maxmemory policy, or deleted by hand: the fingerprints still hold it, Redis
    does not, and re-running the load repairs it."""
    first = export(tmp_path, range(20_000), "first.csv")
    load(redis_client, first)
    live = read_generation(redis_client)
    from m2_code_store.store import bucket_of

    redis_client.delete(Layout().bucket_key(live.gen, bucket_of("123", live.buckets)))
    assert store_lookup(redis_client, ["123"]) == [None]
    load(redis_client, first)
    assert store_lookup(redis_client, [str(i) for i in range(20_000)]) == ["NA"] * 20_000


def test_fingerprints_of_an_older_loader_skip_nothing(tmp_path, redis_client):
    """A store whose fingerprints an older loader wrote (12 bytes a bucket, one part)."""
    first = export(tmp_path, range(5_000), "first.csv")
    load(redis_client, first)
    live = read_generation(redis_client)
    stored = read_fingerprints(redis_client, Layout(), live.gen, live.buckets)
    older = stored.bucket_counts().astype("<u4").tobytes() + stored.sums.reshape(-1, PARTS).sum(axis=1).astype("<u8").tobytes()
    redis_client.set(Layout().fingerprints(live.gen), older)
    redis_client.config_resetstat()
    result = load(redis_client, first)
    assert writes(redis_client) >= live.buckets
    assert (result.added, result.removed, result.records) == (0, 0, 5_000)


def test_buckets_a_delta_wrote_to_are_written_when_the_file_is_loaded_again(tmp_path, redis_client):
    """A load cannot know what a bucket it wrote to holds now: from then on, loading a file sends
    that bucket's rows; every other bucket is still skipped."""
    nightly = export(tmp_path, range(3000), "nightly.csv")
    load(redis_client, nightly)
    redis_client.config_resetstat()
    load(redis_client, nightly)
    nothing_sent = writes(redis_client)
    load(redis_client, export(tmp_path, range(10), "delta.csv", code="NX"))
    redis_client.config_resetstat()
    result = load(redis_client, nightly)
    assert 0 < writes(redis_client) - nothing_sent <= 10  # one HSET for each bucket the delta wrote to
    assert (result.added, result.removed, result.records) == (0, 0, 3000)
    assert store_lookup(redis_client, [str(i) for i in range(12)]) == ["NA"] * 12


def test_a_delta_of_new_barcodes_asks_redis_for_no_bucket_lengths(tmp_path, redis_client):
    """The HLEN check runs only when a bucket the file writes to looks unchanged."""
    load(redis_client, export(tmp_path, range(20_000), "first.csv"))
    redis_client.config_resetstat()
    result = load(redis_client, export(tmp_path, range(30_000, 30_010), "delta.csv"))
    assert (result.added, result.records) == (10, 20_010)
    assert "cmdstat_hlen" not in redis_client.info("commandstats")


def test_a_write_by_a_loader_that_does_not_vouch_for_the_fingerprints_is_not_skipped(tmp_path, redis_client):
    """The reviewer's case: the previous release's loader wrote into the live generation (it cannot
    read the fingerprints, so it left them as they were) and, finishing, set counted_by to its own
    token. The next load of the nightly file must not trust them: it sends every row, and --replace
    compares every barcode."""
    nightly = export(tmp_path, range(3000), "nightly.csv")
    load(redis_client, nightly)
    live = read_generation(redis_client)
    from m2_code_store.store import bucket_of

    redis_client.hset(Layout().bucket_key(live.gen, bucket_of("7", live.buckets)), "7", "OLDREL")
    redis_client.hset("m2:meta", mapping={"counted_by": "otherhost:1:0ld0ld00", "dirty": "0"})  # as its _COUNTED leaves it
    assert store_lookup(redis_client, ["7"]) == ["OLDREL"]
    redis_client.config_resetstat()
    load(redis_client, nightly)
    assert store_lookup(redis_client, ["7"]) == ["NA"]
    assert writes(redis_client) >= live.buckets  # nothing was skipped
    redis_client.config_resetstat()
    load(redis_client, nightly)  # that load vouched for nothing: still every row
    assert writes(redis_client) >= live.buckets
    redis_client.config_resetstat()
    load(redis_client, nightly, replace=True, grace=0)  # a --replace compares every barcode, then vouches again
    assert hmget_calls(redis_client) >= live.buckets
    redis_client.config_resetstat()
    load(redis_client, nightly)
    assert writes(redis_client) < BOOKKEEPING


def test_a_load_that_died_leaves_the_fingerprints_unvouched(tmp_path, redis_client):
    nightly = export(tmp_path, range(3000), "nightly.csv")
    load(redis_client, nightly)
    redis_client.hset("m2:meta", "dirty", "otherhost:2:deadbeef")  # a load died part-way
    redis_client.config_resetstat()
    load(redis_client, nightly)  # recounts, and sends every row
    assert writes(redis_client) >= read_generation(redis_client).buckets
    assert not redis_client.hexists("m2:meta", "fingerprinted")
