"""API benchmark: 200 barcodes a request (what NYPL's indexer sends) and 10, 32 connections on
loopback, this project's API vs a minimal reference Flask app (jsonify + redis-py MGET under
``gunicorn -w 2``), in the same run, in alternating rounds (the ratio is the median round's);
and a worker's start-up (import + create_app) against importing flask and redis alone.

Each reads the same 2,000,000 records from its own local redis-server holding only its own data
set, as each is deployed; for comparison, 200-barcode lookups are measured again with ours loaded
into the reference's Redis (one keyspace: its 2M plain keys make every lookup of ours cost ~1.5x
the Redis CPU here). The same load generator drives both.
Prints throughput, p50 and p99 latency, and the ratios.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gen_las_export import write_export  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from simulators.redis_server import RedisServer, free_port  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))  # reference, ours; reference, ours; …
RECORDS = int(os.environ.get("BENCH_API_RECORDS", 2_000_000))
OUT = ROOT / "bench" / "out"


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up")


@contextlib.contextmanager
def running(argv: list[str], env: dict, port: int, paths: list[str]) -> Iterator[None]:
    """A server started, up and warmed (2 s of load), stopped afterwards."""
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(f"http://127.0.0.1:{port}{paths[0]}", process)
        run_load("127.0.0.1", port, paths, connections=32, seconds=2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=20)


def measure(name: str, port: int, paths: list[str]) -> float:
    result = run_load("127.0.0.1", port, paths, connections=32, seconds=SECONDS)
    print(result.line(name))
    return result.throughput


def side_by_side(servers: dict[str, tuple[list[str], int, dict]], paths: list[str], rounds: int = ROUNDS) -> list[float]:
    """Each round loads every server in turn (all started, only one loaded at a time), so a slow
    moment of the machine falls on both sides; the ratio of ours to the reference, per round."""
    (ref_name, (ref_argv, ref_port, ref_env)), (our_name, (our_argv, our_port, our_env)) = servers.items()
    ratios = []
    with running(ref_argv, ref_env, ref_port, paths), running(our_argv, our_env, our_port, paths):
        for _ in range(rounds):
            reference = measure(ref_name, ref_port, paths)
            ratios.append(measure(our_name, our_port, paths) / reference)
    return ratios


STARTUP = {
    "flask + redis alone": "import flask, redis",
    "m2_code_store.api + create_app()": "from m2_code_store.api import create_app; create_app()",
}


def startup(code: str, env: dict) -> tuple[float, float]:
    """Median seconds and peak RSS (MB) of a fresh interpreter running *code*, over 5 runs."""
    # VmHWM, not ru_maxrss: Linux carries the parent's maximum RSS across fork and exec into the latter.
    probe = (f"import time; started = time.perf_counter(); {code}; seconds = time.perf_counter() - started; "
             "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM')); "
             "print(seconds, int(hwm.split()[1]) / 1024)")
    runs = []
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        runs.append(tuple(map(float, done.stdout.split())))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    server = RedisServer(port=free_port(), data_dir=OUT / "redis-api").start()
    ref_server = RedisServer(port=free_port(), data_dir=OUT / "redis-api-reference").start()
    try:
        csv_path = write_export(OUT / f"api_{RECORDS}.csv", RECORDS, delete_share=0)
        env = {**os.environ, "REDIS_URL": server.url}
        ref_env = {**os.environ, "REDIS_URL": ref_server.url}
        subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_path), "--quiet"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        client = redis.Redis(port=ref_server.port)
        records = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
        for start in range(0, len(records), 100_000):
            pipe = client.pipeline(transaction=False)
            for row in records[start:start + 100_000]:
                pipe.set(f"ref:{row[0]}", row[2])
            pipe.execute()
        rng = random.Random(1)
        barcodes = [row[0] for row in records]
        del records
        print(f"API benchmark: {RECORDS:,} records, 32 connections, {SECONDS:g} s each, {os.cpu_count()} cores")
        ratios: dict[int | str, list[float]] = {}

        def servers(our_env: dict) -> dict[str, tuple[list[str], int, dict]]:
            ref_port, our_port = free_port(), free_port()
            return {
                "  reference (Flask jsonify + MGET, gunicorn -w 2)": (
                    [sys.executable, "-m", "gunicorn", "-w", "2", "--chdir", str(ROOT / "bench"), "-b", f"127.0.0.1:{ref_port}",
                     "--limit-request-line", "0", "reference_api:app"], ref_port, ref_env),
                "  m2-code-store serve (granian, 2 workers)": (
                    [sys.executable, "-m", "m2_code_store", "serve", "--port", str(our_port), "--workers", "2"], our_port, our_env),
            }

        requests = {size: ["/api/v0.1/m2-customer-codes?barcodes=" + ",".join(rng.sample(barcodes, size)) for _ in range(2000)]
                    for size in (200, 10)}
        for size, paths in requests.items():
            print(f"{size} barcodes a request:")
            ratios[size] = side_by_side(servers(env), paths)
        # For comparison: the store loaded into the reference's Redis, beside its 2M plain keys (a
        # store that shares its Redis with other data pays for the bigger keyspace on every lookup).
        subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_path), "--quiet"],
                       cwd=ROOT, env=ref_env, check=True, capture_output=True)
        print("200 barcodes a request, ours in the reference's Redis (one keyspace: its 2M plain keys and our buckets):")
        ratios["shared"] = side_by_side(servers(ref_env), requests[200], rounds=3)
        gunicorn_port = free_port()
        print("10 barcodes a request, the other server:")
        with running([sys.executable, "-m", "m2_code_store", "serve", "--port", str(gunicorn_port), "--workers", "2",
                      "--server", "gunicorn"], env, gunicorn_port, requests[10]):
            measure("  m2-code-store serve --server gunicorn", gunicorn_port, requests[10])
        print("a worker's start-up (median of 5 fresh interpreters):")
        started = {name: startup(code, env) for name, code in STARTUP.items()}
        for name, (seconds, rss) in started.items():
            print(f"  {name:<44} {seconds:6.3f} s  {rss:5.0f} MB")
        (base_s, _), (ours_s, ours_rss) = started.values()
        for size, target in ((200, "target >= 2x, aim 3x"), (10, "target >= 2x")):
            rounds = ", ".join(f"{ratio:4.2f}" for ratio in ratios[size])
            print(f"ratio ours / reference, {size:>3} barcodes: {statistics.median(ratios[size]):4.2f}x median of rounds "
                  f"({rounds})  ({target})")
        print(f"  the same, 200 barcodes, one Redis for both: {statistics.median(ratios['shared']):4.2f}x median of rounds "
              f"({', '.join(f'{ratio:4.2f}' for ratio in ratios['shared'])})  (for comparison: give the store a Redis "
              "or database of its own)")
        print(f"start-up ours / flask + redis:        {ours_s / base_s:4.2f}x  (target <= 1.6x), {ours_rss:.0f} MB (target <= 60 MB)")
    finally:
        ref_server.stop()
        server.stop()


if __name__ == "__main__":
    main()
