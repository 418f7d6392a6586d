"""Benchmark: discharge_loans against the Alma simulator with 300-800 ms latency.

2,000 items at a 25/s threshold (the real Alma limit), then at 200/s (the tool's own ceiling);
then a barcode list of 600 items at 25/s: three calls an item (the lookup's 302, the item, the
scan-in), all counted. Prints the achieved request rate, its ratio to the limit, and the number
of 429s. Not a test.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loan_discharge.discharge_loans import main  # noqa: E402
from simulators.alma import AlmaItem, AlmaState  # noqa: E402
from simulators.thread import SimulatorThread  # noqa: E402

KEY = "bench-key"
ITEMS = int(os.environ.get("BENCH_DISCHARGE_ITEMS", "2000"))
BARCODES = int(os.environ.get("BENCH_DISCHARGE_BARCODES", "600"))


def bench(rate: int, items: int = ITEMS, *, barcodes: bool = False) -> None:
    """Run one discharge of *items* items at a *rate* threshold and print the numbers."""
    state = AlmaState(per_second_limit=rate, latency=(0.3, 0.8), api_keys={KEY}, daily_quota=1_000_000)
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(state) as sim:
        work = Path(tmp)
        rows = ["MMS Id,Holding Id,Physical Item Id,Library Code,Location Code"]
        for n in range(items):
            mms, holding, item = (f"{kind}{n:011d}6421" for kind in ("99", "22", "23"))
            state.add_item(AlmaItem(mms, holding, item, f"39{n}", "MAIN", "stacks"))
            rows.append(f"{mms},{holding},{item},MAIN,stacks")
        (work / "items.csv").write_text("\n".join(rows) + "\n")
        (work / "barcodes.txt").write_text("".join(f"39{n}\n" for n in range(items)))
        (work / "desks.csv").write_text("location_code,circ_desk\nstacks,DEFAULT_CIRC_DESK\n")
        config = work / "config.yml"
        config.write_text(
            f"loans_data_file: items.csv\ncirc_desks_file: desks.csv\ndata_dir: data\n"
            f"base_url: {sim.base_url}\nrate_limit: {rate}\nbatch_size: 500\n"
        )
        os.environ["ALMA_API_KEY"] = KEY
        output = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stdout(output):
            status = main(["--config", str(config), "--quiet",
                           *(["--barcodes", str(work / "barcodes.txt")] if barcodes else [])])
        elapsed = time.monotonic() - started
        statuses = sim.call(lambda: [r["status"] for r in state.requests])
        times = sim.call(lambda: sorted(r["time"] for r in state.requests if r["status"] != 429))
    window_max = max_per_second(times)
    achieved = len(statuses) / elapsed
    print(
        f"{'barcode list, ' if barcodes else ''}threshold {rate:>3}/s, {items} items, latency 0.3-0.8 s: exit {status}, "
        f"{len(state.scans)} returned, {len(statuses)} requests in {elapsed:.1f} s = {achieved:.1f}/s "
        f"({achieved / rate:.1%} of the limit), 429s: {statuses.count(429)}, "
        f"most requests in any 1 s window at the simulator: {window_max}"
    )
    for line in output.getvalue().splitlines():
        if line.startswith(("done:", "failed:", "elapsed:")):
            print(f"    {line}")


def max_per_second(times: list[float]) -> int:
    """Largest number of request arrivals in any sliding one-second window."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


if __name__ == "__main__":
    bench(25)
    bench(200)
    bench(25, BARCODES, barcodes=True)
