"""make demo-m2: load the sample LAS export into the embedded Redis, serve the API, look codes up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m2_code_store.embedded import stop_local_server  # noqa: E402
from simulators.redis_server import free_port  # noqa: E402

SAMPLE = ROOT / "m2_code_store" / "sample" / "las_sample.csv"


def show(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED")}
    env["M2_STORE"] = "embedded"  # chosen on purpose: make demo runs without a terminal too
    data_dir = Path(env.setdefault("M2_DATA_DIR", str(ROOT / ".m2-data")))
    show(f"write_csv_to_redis {SAMPLE.relative_to(ROOT)} (embedded Redis in {data_dir}); 4 rows in it are bad on purpose")
    subprocess.run([sys.executable, "-m", "m2_code_store.write_csv_to_redis", str(SAMPLE), "100"], cwd=ROOT, env=env)
    port = free_port()
    show(f"m2-code-store serve --port {port}")
    server = subprocess.Popen([sys.executable, "-m", "m2_code_store", "serve", "--port", str(port), "--workers", "2"],
                              cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                get(f"{base}/health")
                break
            except OSError:
                time.sleep(0.2)
        for path in [
            "/health",
            "/api/v0.1/m2-customer-codes?barcodes=33433000000013,33433000000026,33433000001261,12345",
            "/api/v0.1/m2-customer-code?barcodes=[33433000000039,%2233433000000052%22]",
            "/api/v0.1/m2-customer-codes?barcodes=33433000000013&barcodes=33433000000065",
            "/api/v0.1/m2-customer-codes?barcodes=12%2034",
            "/api/v0.1/m2-customer-codes",
        ]:
            status, body = get(base + path)
            show(f"GET {path}  -> HTTP {status}")
            print(json.dumps(body))
    finally:
        server.terminate()
        server.wait(timeout=20)
        stop_local_server(data_dir)
    print(f"\n(the embedded Redis was stopped; its data stays in {data_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
