"""Lambda fit: the deployment package's size, and a cold start's time and peak memory.

Builds the package as ``make lambda-package`` does (for CPython 3.12 when an interpreter of that
version is found here, else for this interpreter's version, which the output then says), starts a
redis-server holding 1,000 records, and runs fresh processes ``python -I -S -B`` with the unpacked
package alone on ``sys.path`` (no site-packages; no bytecode written, as in Lambda's read-only code
directory), each importing the handler and serving one API Gateway REST (v1) event of 200
barcodes, as NYPL's indexer sends them:

- the store from ``REDIS_URL``;
- the store as the deployed original finds it: ``ENVIRONMENT=production`` and
  ``config/production.yaml`` with the endpoint KMS-encrypted, decrypted by a local moto server,
  with boto3 from a directory standing for the runtime's own (pip-installed for the same platform,
  the version installed here, compiled);
- ``REDIS_URL`` again with the package's bytecode left out: what a zip of sources would cost.

Prints the package's zip and unpacked sizes against Lambda's 250 MB, and for each case the median
cold start (process start to the handler's answer), import and first-event times and the highest
peak RSS (VmHWM) against the 100 MB target, and whether pyarrow, numpy, pandas or tqdm were loaded.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m2_code_store import lambda_package as lp  # noqa: E402
from m2_code_store.las_csv import read_export  # noqa: E402
from m2_code_store.loader import load  # noqa: E402
from simulators.redis_server import RedisServer, free_port  # noqa: E402

RUNS = int(os.environ.get("BENCH_LAMBDA_RUNS", 5))
RECORDS = 1_000
BARCODES = 200
TARGET_RSS_MB = 100.0
PATH = "/api/v0.1/m2-customer-codes"


def load_records(url: str, directory: Path) -> str:
    """Load RECORDS records; the barcodes of a request: 150 of them and 50 unknown."""
    export = directory / "items.csv"
    rows = [f"33433{n:09d},,N{chr(65 + n % 26)},\n" for n in range(RECORDS)]
    export.write_text("Item barcode,Accession date,Customer code,Delete date\n" + "".join(rows))
    client = redis.Redis.from_url(url)
    load(client, read_export(export))
    client.close()
    known = [f"33433{n:09d}" for n in range(0, RECORDS, RECORDS // 150)][:150]
    unknown = [f"99999{n:09d}" for n in range(BARCODES - len(known))]
    return ",".join(known + unknown)


def runtime_boto3(out: Path, python_version: str, python: str | None) -> Path:
    """boto3 and botocore as the Lambda runtime provides them (its /var/runtime): the version
    installed here, for the Lambda's platform, compiled; built once per version."""
    from importlib.metadata import version

    target = out / f"runtime-boto3-{version('boto3')}-py{python_version}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".runtime-", dir=out))
        try:
            requirement = f"boto3=={version('boto3')}"
            lp.install_dependencies(lp.Dependencies([requirement], {}), staging, python_version=python_version)
            if python:
                lp.compile_bytecode(staging, python)
            staging.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def kms_config(redis_url: str, directory: Path) -> tuple[dict[str, str], Callable[[], None]]:
    """config/production.yaml as the original has it, its endpoint encrypted by a local moto
    server; the environment a function would run with, and how to stop the server."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per KMS call
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    environ = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{port}"}
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=environ["AWS_ENDPOINT_URL_KMS"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    endpoint = redis_url.removeprefix("redis://").removesuffix("/0")  # host:port, as ElastiCache shows it
    ciphertext = base64.b64encode(kms.encrypt(KeyId=key, Plaintext=endpoint.encode())["CiphertextBlob"]).decode()
    (directory / "config").mkdir()
    (directory / "config" / "production.yaml").write_text(
        "---\nPLAINTEXT_VARIABLES:\n    AWS_REGION: us-east-1\n"
        f"ENCRYPTED_VARIABLES:\n    REDIS_ENDPOINT: {ciphertext}\n")
    return {**environ, "ENVIRONMENT": "production"}, server.stop


def measure(name: str, paths: list[Path], event: dict, environ: Mapping[str, str], python: str, cwd: Path,
            expected: int, *, target: bool = True) -> tuple[bool, list[str]]:
    """RUNS fresh processes; one line of medians (peak RSS: the highest). Whether the peak is on
    target and the answers right, and the modules loaded that must not be."""
    runs = [lp.serve_one_event(paths, event, python=python, environ=environ, cwd=cwd) for _ in range(RUNS)]
    for run in runs:
        if run.answer["statusCode"] != 200 or run.answer["body"].count('"barcode"') != BARCODES:
            raise SystemExit(f"{name}: the handler answered {run.answer['statusCode']}: {run.answer['body'][:300]}")
    found = sum(run.answer["body"].count('"m2CustomerCode":"') for run in runs) // RUNS
    peak = max(run.peak_rss_mb for run in runs)
    absent = sorted({name for run in runs for name in run.loaded_absent})
    ok = peak <= TARGET_RSS_MB and found == expected
    print(f"  {name:<50} {statistics.median(r.seconds for r in runs):6.2f} s {statistics.median(r.import_seconds for r in runs):8.3f} s"
          f" {statistics.median(r.event_seconds for r in runs):9.3f} s {peak:9.1f} MB  "
          f"{'(for comparison)' if not target else 'ok' if ok else 'MISSED'}")
    return ok, absent


def main() -> int:
    runtime = lp.RUNTIME_VERSION
    python = lp.find_interpreter(runtime)
    out = lp.DEFAULT_OUT
    if python is None:
        runtime = f"{sys.version_info.major}.{sys.version_info.minor}"
        python, out = sys.executable, lp.DEFAULT_OUT.with_name(f"lambda-py{runtime}")
        print(f"no CPython {lp.RUNTIME_VERSION} interpreter here (name one with M2_LAMBDA_PYTHON): the package is "
              f"built for this interpreter's {runtime} instead, in {out.relative_to(ROOT)}")
    package = lp.build(out, python_version=runtime, python=python)
    print(lp.report(package))
    size_ok = package.unpacked_bytes <= lp.UNPACKED_LIMIT
    print(f"package unpacked: {package.unpacked_bytes / 2**20:.1f} MB of Lambda's {lp.UNPACKED_LIMIT / 2**20:.0f} MB "
          f"limit: {'ok' if size_ok else 'MISSED'}")

    results = [size_ok]
    absent: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bench-lambda-") as scratch:
        directory = Path(scratch)
        server = RedisServer(port=free_port(), data_dir=directory / "redis").start()
        stop_moto: Callable[[], None] | None = None
        try:
            barcodes = load_records(server.url, directory)
            event = lp.rest_v1_event(PATH, barcodes)
            print(f"\ncold start: {python} -I -S -B, the package alone on sys.path, one REST v1 event of {BARCODES} "
                  f"barcodes ({BARCODES - 50} in the store) against a local redis-server of {RECORDS:,} records; "
                  f"median of {RUNS} fresh processes, peak RSS the highest (target <= {TARGET_RSS_MB:.0f} MB)")
            print(f"  {'store from':<50} {'cold start':>8} {'import':>10} {'1st event':>11} {'peak RSS':>12}")
            ok, loaded = measure("REDIS_URL", [package.tree], event, {"REDIS_URL": server.url}, python,
                                 package.tree, BARCODES - 50)
            results.append(ok)
            absent.update(loaded)
            kms_environ, stop_moto = kms_config(server.url, directory)
            boto3_dir = runtime_boto3(out, runtime, python)
            ok, loaded = measure("ENVIRONMENT=production, KMS (the runtime's boto3)", [package.tree, boto3_dir], event,
                                 kms_environ, python, directory, BARCODES - 50)
            results.append(ok)
            absent.update(loaded)
            sources_only = directory / "sources-only"
            shutil.copytree(package.tree, sources_only, ignore=shutil.ignore_patterns("__pycache__"))
            _, loaded = measure("REDIS_URL, the package without its bytecode", [sources_only], event,
                                {"REDIS_URL": server.url}, python, sources_only, BARCODES - 50, target=False)
            absent.update(loaded)
        finally:
            if stop_moto is not None:
                stop_moto()
            server.stop()
    print(f"modules that must be absent after the event: {', '.join(lp.MUST_BE_ABSENT)}: "
          f"{'none loaded: ok' if not absent else 'MISSED: loaded ' + ', '.join(sorted(absent))}")
    return 0 if all(results) and not absent else 1


if __name__ == "__main__":
    sys.exit(main())
