"""API benchmark: 10 barcodes per request, 32 connections on loopback, this project's API vs a
minimal reference Flask app (jsonify + redis-py MGET under ``gunicorn -w 2``), in the same run.

Both read the same 200,000 records from one local redis-server; the same load generator drives
both. Prints throughput, p50 and p99 latency, and the throughput ratio.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gen_las_export import write_export  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from simulators.redis_server import RedisServer, free_port  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", 10))
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


def measure(name: str, argv: list[str], env: dict, port: int, paths: list[str]) -> float:
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(f"http://127.0.0.1:{port}{paths[0]}", process)
        run_load("127.0.0.1", port, paths, connections=32, seconds=2)  # warm-up
        result = run_load("127.0.0.1", port, paths, connections=32, seconds=SECONDS)
        print(result.line(name))
        return result.throughput
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    server = RedisServer(port=free_port(), data_dir=OUT / "redis-api").start()
    try:
        csv_path = write_export(OUT / "api_200k.csv", 200_000, delete_share=0)
        env = {**os.environ, "REDIS_URL": server.url}
        subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_path), "--quiet"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        client = redis.Redis(port=server.port)
        lines = csv_path.read_text().splitlines()[1:]
        records = [line.split(",") for line in lines]
        pipe = client.pipeline(transaction=False)
        for row in records:
            pipe.set(f"ref:{row[0]}", row[2])
        pipe.execute()
        rng = random.Random(1)
        barcodes = [row[0] for row in records]
        paths = ["/api/v0.1/m2-customer-codes?barcodes=" + ",".join(rng.sample(barcodes, 10)) for _ in range(2000)]
        print(f"API benchmark: 10 barcodes a request, 32 connections, {SECONDS:g} s each, {os.cpu_count()} cores")
        ref_port, our_port = free_port(), free_port()
        reference = measure(
            "reference (Flask jsonify + MGET, gunicorn -w 2)",
            [sys.executable, "-m", "gunicorn", "-w", "2", "--chdir", str(ROOT / "bench"), "-b", f"127.0.0.1:{ref_port}", "reference_api:app"],
            env, ref_port, paths)
        ours = measure(
            "m2-code-store serve (granian, 2 workers)",
            [sys.executable, "-m", "m2_code_store", "serve", "--port", str(our_port), "--workers", "2"],
            env, our_port, paths)
        gunicorn_port = free_port()
        ours_gunicorn = measure(
            "m2-code-store serve --server gunicorn",
            [sys.executable, "-m", "m2_code_store", "serve", "--port", str(gunicorn_port), "--workers", "2", "--server", "gunicorn"],
            env, gunicorn_port, paths)
        print(f"ratio ours (granian) / reference:  {ours / reference:4.2f}x  (target >= 2x)")
        print(f"ratio ours (gunicorn) / reference: {ours_gunicorn / reference:4.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
