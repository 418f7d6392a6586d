"""Generate a synthetic LAS "Barcodes by CUS/DATE" export for benchmarks and tests."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

CUSTOMER_CODES = [f"{a}{b}" for a in "NMXBRS" for b in "AXCDLPQ"]


def write_export(path: Path, rows: int, *, seed: int = 7, delete_share: float = 0.02, us_dates: bool = False,
                 code: str | None = None) -> Path:
    """Write *rows* LAS rows (unique 14-digit barcodes, some deleted) to *path*; *code*: every row's customer code."""
    rng = random.Random(seed)
    codes = [code] if code else CUSTOMER_CODES
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("Item barcode,Accession date,Customer code,Delete date\r\n")
        lines = []
        base = 33433000000000
        for i in range(rows):
            year = 2000 + (i % 24)
            month = 1 + (i % 12)
            day = 1 + (i % 28)
            accession = f"{month:02d}/{day:02d}/{year}" if us_dates else f"{year}-{month:02d}-{day:02d}"
            deleted = f"{year + 1}-{month:02d}-{day:02d}" if rng.random() < delete_share else ""
            lines.append(f"{base + i * 7},{accession},{codes[i % len(codes)]},{deleted}\r\n")
            if len(lines) >= 100_000:
                out.write("".join(lines))
                lines.clear()
        out.write("".join(lines))
    return path


def write_next_export(previous: Path, path: Path, *, seed: int = 11, changed: float = 0.01, gone: float = 0.005,
                      new: float = 0.005) -> Path:
    """The next night's export of *previous*: *changed* of the rows get another customer code,
    *gone* are left out, and *new* more rows with new barcodes are added."""
    rng = random.Random(seed)
    lines = previous.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    out = [header]
    for line in rows:
        draw = rng.random()
        if draw < gone:
            continue
        if draw < gone + changed:
            barcode, accession, code, deleted = line.rstrip("\r\n").split(",")
            other = CUSTOMER_CODES[(CUSTOMER_CODES.index(code) + 1) % len(CUSTOMER_CODES)] if code in CUSTOMER_CODES else "NX"
            line = f"{barcode},{accession},{other},{deleted}\r\n"
        out.append(line)
    base = 93433000000000
    out.extend(f"{base + i * 7},2025-01-01,{CUSTOMER_CODES[i % len(CUSTOMER_CODES)]},\r\n" for i in range(int(len(rows) * new)))
    path.write_text("".join(out), encoding="utf-8", newline="")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("rows", type=int)
    args = parser.parse_args()
    write_export(args.path, args.rows)


if __name__ == "__main__":
    main()
