"""Demo: discharge_loans end to end against the local Alma simulator.

Builds an Analytics-style export of on-loan items (some requested, some owned by another
library, some in a temporary location, one in an unmapped location, one with an Excel-mangled
id), starts the simulator with the real 25/s threshold, injects a 429 storm and a 502, then runs
the command as a user would: --dry-run, a run, and a second run that finds nothing left to do.
Then a barcode list, as a scanner writes it (a header, a blank line, a barcode twice, one Alma does
not know, one not on loan): each barcode looked up in Alma, then returned; results beside the list.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simulators.alma import AlmaItem, AlmaState  # noqa: E402
from simulators.thread import SimulatorThread  # noqa: E402

KEY = "demo-key-not-a-secret"


def pid(kind: str, n: int) -> str:
    return f"{kind}{n:011d}6421"


def build(work: Path, state: AlmaState) -> None:
    """Write items.csv / circ_desks.csv and seed the simulator with the same items."""
    header = ["MMS Id", "Holding Id", "Physical Item Id", "Barcode", "Library Code", "Location Code",
              "Temporary Physical Location In Use", "Temporary Library Code (Active)", "Temporary Location Code"]
    rows = []
    for n in range(60):
        library = "LAW" if n % 10 == 3 else "MAIN"
        in_temp = n % 10 == 5
        status = "requested" if n % 10 == 7 else "loan"
        location = "attic" if n == 58 else "stacks"
        state.add_item(AlmaItem(
            pid("99", n), pid("22", n), pid("23", n), f"3900{n:04d}", library, location,
            temp_library="MAIN" if in_temp else None, temp_location="reserve" if in_temp else None, status=status,
        ))
        # Items of LAW are listed under MAIN's desk map, so they come back in transit to LAW.
        rows.append([pid("99", n), pid("22", n), pid("23", n), f"3900{n:04d}", "MAIN", location,
                     "Yes" if in_temp else "No", "MAIN" if in_temp else "", "reserve" if in_temp else ""])
    rows.append(["9.96864394350642E+15", pid("22", 99), pid("23", 99), "", "MAIN", "stacks", "No", "", ""])
    with open(work / "items.csv", "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    (work / "circ_desks.csv").write_text(
        "location_code,circ_desk,library_code\nstacks,DEFAULT_CIRC_DESK,MAIN\nreserve,RESERVES_DESK,MAIN\n"
    )
    state.add_desk("MAIN", "DEFAULT_CIRC_DESK")
    state.add_desk("MAIN", "RESERVES_DESK")


def run(work: Path, *args: str) -> int:
    """Run the command as a user would, showing its output."""
    command = [sys.executable, "-m", "loan_discharge", "--config", str(work / "loan_discharge_config.yml"), *args]
    print(f"\n$ discharge_loans {' '.join(args)}".rstrip(), flush=True)
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "ALMA_API_KEY": KEY})
    print(f"(exit status {result.returncode})", flush=True)
    return result.returncode


def main() -> int:
    """Run the demo; exit non-zero if the tool did not behave as shown."""
    state = AlmaState(per_second_limit=25, latency=(0.05, 0.3), api_keys={KEY})
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(state) as sim:
        work = Path(tmp)
        build(work, state)
        (work / "loan_discharge_config.yml").write_text(
            "loans_data_file: items.csv\ncirc_desks_file: circ_desks.csv\ndata_dir: discharge_data\n"
            f"location_type: auto\nbase_url: {sim.base_url}\nrate_limit: 25\nbatch_size: 25\n"
        )
        print(f"Alma simulator on {sim.base_url} (25 requests/s, 50-300 ms latency); work directory {work}")
        dry = run(work, "--dry-run")
        sim.call(state.inject_failure, "429", 15)
        sim.call(state.inject_failure, "502_text", 1, pid("23", 20), True)
        first = run(work)
        second = run(work)
        print("\nitems.csv afterwards (first rows):")
        with open(work / "items.csv", encoding="utf-8-sig") as handle:
            for line in list(handle)[:6]:
                print("  " + line.rstrip())
        print(f"files in data_dir: {sorted(p.name for p in (work / 'discharge_data').iterdir())}")
        leaked = any(KEY in p.read_text(errors="replace") for p in work.rglob("*") if p.is_file())
        print(f"API key found in any file: {leaked}")
        scans = len(state.scans)
        print(f"simulator applied {scans} scan-ins for 59 sendable rows (one 502 came after the scan was applied, "
              "so it was sent twice)")
        barcodes_ok = barcode_run(work, state)
    # Unmapped and malformed rows make the first run exit 1; the second finds nothing new for a person.
    ok = dry == 0 and first == 1 and second == 0 and not leaked and 59 <= scans <= 60 and barcodes_ok
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


def barcode_run(work: Path, state: AlmaState) -> bool:
    """A scanner's barcode list: looked up in Alma (two calls each), returned, results beside it."""
    for n in range(100, 112):
        state.add_item(AlmaItem(pid("99", n), pid("22", n), pid("23", n), f"3900{n:04d}", "MAIN", "stacks",
                                status="in_place" if n == 111 else "loan"))
    lines = ["Barcode", *(f"3900{n:04d}" for n in range(100, 112)), "", "39000100", "39009999"]
    (work / "scanned.txt").write_text("\r\n".join(lines) + "\r\n")
    print("\nscanned.txt: " + ", ".join(line or "(blank)" for line in lines))
    first = run(work, "--barcodes", str(work / "scanned.txt"))
    again = run(work, "--barcodes", str(work / "scanned.txt"))
    print("\nscanned.txt.results.csv (first rows):")
    with open(work / "scanned.txt.results.csv", encoding="utf-8") as handle:
        for line in list(handle)[:4]:
            print("  " + line.rstrip())
    returned = sum(1 for scan in state.scans if scan[0] in {pid("23", n) for n in range(100, 111)})
    print(f"simulator returned {returned} of the 11 loans in the list (39009999 is unknown to Alma, 39000111 was "
          "not on loan)")
    return first == 1 and again == 0 and returned == 11


if __name__ == "__main__":
    sys.exit(main())
