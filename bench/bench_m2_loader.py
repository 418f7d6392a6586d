"""Loader benchmark: a 2,000,000-row LAS export loaded end to end into a local redis-server.

Compares, in the same run and on fresh servers:
- write_csv_to_redis (this project), run as users run it (a subprocess, imports included);
- a seed-style reference loader: pandas read, one SET per row in a pipeline, batch 10,000;
- ``redis-cli --pipe`` fed pre-built commands for the same records: one ``HSET bucket barcode
  code`` per record in this project's layout (what a per-record pipeline must send), and, as a
  floor, this project's own grouped commands.
Prints each time, the ratios against the targets, and Redis memory per stored record.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gen_las_export import write_export  # noqa: E402
from m2_code_store.embedded import redis_server_binary  # noqa: E402
from m2_code_store.store import buckets_for  # noqa: E402
from simulators.redis_server import RedisServer, free_port  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", 2_000_000))
OUT = ROOT / "bench" / "out"


def fresh_server() -> RedisServer:
    return RedisServer(port=free_port(), data_dir=OUT / "redis").start()


def used_memory(port: int) -> int:
    return redis.Redis(port=port).info("memory")["used_memory"]


def run_ours(csv_path: Path) -> tuple[float, float, int]:
    server = fresh_server()
    try:
        before = used_memory(server.port)
        env = {**os.environ, "REDIS_URL": server.url}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(csv_path), "10000", "--quiet"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"write_csv_to_redis failed: {done.stderr}")
        records = int(redis.Redis(port=server.port).hget("m2:meta", "count"))
        return seconds, (used_memory(server.port) - before) / records, records
    finally:
        server.stop()


def run_seed(csv_path: Path) -> tuple[float, float]:
    """The original loader's approach: pandas, one SET per row, pipeline of 10,000."""
    server = fresh_server()
    try:
        before = used_memory(server.port)
        started = time.perf_counter()
        frame = pd.read_csv(csv_path, dtype=str)
        client = redis.Redis(port=server.port)
        pipe = client.pipeline(transaction=False)
        for i, row in enumerate(frame.itertuples(index=False), start=1):
            pipe.set(row[0], row[2])
            if i % 10_000 == 0:
                pipe.execute()
        pipe.execute()
        seconds = time.perf_counter() - started
        return seconds, (used_memory(server.port) - before) / len(frame)
    finally:
        server.stop()


def resp(*parts: str) -> str:
    return f"*{len(parts)}\r\n" + "".join(f"${len(p.encode())}\r\n{p}\r\n" for p in parts)


def build_pipe_files(csv_path: Path) -> tuple[Path, Path]:
    """Pre-built commands for the same present records: per-record HSETs, and grouped HSETs."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    frame = frame[frame["Delete date"] == ""]
    buckets = buckets_for(len(frame))
    per_record = OUT / "per_record.resp"
    grouped = OUT / "grouped.resp"
    groups: dict[int, list[str]] = {}
    with per_record.open("w", newline="") as out:
        for barcode, code in zip(frame["Item barcode"], frame["Customer code"], strict=True):
            bucket = zlib.crc32(barcode.encode()) & (buckets - 1)
            out.write(resp("HSET", f"m2:1:{bucket:x}", barcode, code))
            groups.setdefault(bucket, []).extend((barcode, code))
    with grouped.open("w", newline="") as out:
        for bucket, fields in groups.items():
            out.write(resp("HSET", f"m2:1:{bucket:x}", *fields))
    return per_record, grouped


def run_redis_cli(commands: Path) -> float:
    cli = str(Path(redis_server_binary()).with_name("redis-cli"))
    server = fresh_server()
    try:
        with commands.open("rb") as stdin:
            started = time.perf_counter()
            subprocess.run([cli, "-p", str(server.port), "--pipe"], stdin=stdin, check=True, capture_output=True)
            return time.perf_counter() - started
    finally:
        server.stop()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path = OUT / f"las_{ROWS}.csv"
    if not csv_path.exists():
        write_export(csv_path, ROWS)
    print(f"loader benchmark: {ROWS:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB, {os.cpu_count()} cores")
    runs = [run_ours(csv_path) for _ in range(3)]
    ours = statistics.median(r[0] for r in runs)
    ours_bytes, records = runs[0][1], runs[0][2]
    print(f"  write_csv_to_redis (end to end, median of 3): {ours:6.2f} s  {ROWS / ours:,.0f} rows/s  "
          f"{ours_bytes:.1f} bytes/record ({records:,} records)")
    per_record, grouped = build_pipe_files(csv_path)
    pipe_per_record = min(run_redis_cli(per_record) for _ in range(2))
    pipe_grouped = min(run_redis_cli(grouped) for _ in range(2))
    print(f"  redis-cli --pipe, one HSET per record:         {pipe_per_record:6.2f} s")
    print(f"  redis-cli --pipe, grouped HSETs (floor):       {pipe_grouped:6.2f} s")
    seed, seed_bytes = run_seed(csv_path)
    print(f"  seed-style loader (pandas, SET per row):       {seed:6.2f} s  {seed_bytes:.1f} bytes/record")
    print(f"ratio seed / ours:                 {seed / ours:5.1f}x  (target >= 8x)")
    print(f"ratio ours / redis-cli per-record: {ours / pipe_per_record:5.2f}   (target <= 1.5)")
    print(f"ratio ours / redis-cli grouped:    {ours / pipe_grouped:5.2f}   (floor: no parsing, protocol pre-built)")
    print(f"memory: {ours_bytes:.1f} bytes/record (target <= 24; plain keys: {seed_bytes:.1f})")


if __name__ == "__main__":
    main()
