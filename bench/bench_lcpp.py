"""Benchmark of one libcal_passagepoint pass against the simulators at realistic latency.

500 bookings in 2 LibCal locations by 300 patrons new to PassagePoint, every simulator answering
after 200 ms, Alma's gateway enforcing 25 calls/s: the wall time and the requests per service of
the first pass, then of the steady-state pass (nothing new). Run: ``python bench/bench_lcpp.py``
(``--bookings``, ``--patrons``, ``--latency``, ``--concurrency 8,16`` to vary it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libcal_passagepoint.cache import Cache  # noqa: E402
from libcal_passagepoint.config import parse_config  # noqa: E402
from libcal_passagepoint.runner import open_clients  # noqa: E402
from libcal_passagepoint.sync import run_pass  # noqa: E402
from simulators.alma import AlmaState, AlmaUser  # noqa: E402
from simulators.alma import create_app as create_alma_app  # noqa: E402
from simulators.libcal import LibCalState  # noqa: E402
from simulators.libcal import create_app as create_libcal_app  # noqa: E402
from simulators.passagepoint import PassagePointState  # noqa: E402
from simulators.passagepoint import create_app as create_pp_app  # noqa: E402

DAY = "2030-01-15"
LOCATIONS = {8827: "LibCal Gelman", 9911: "LibCal Eckles"}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def bench(bookings: int, patrons: int, latency: float, concurrency: int) -> None:
    """Seed the simulators, run two passes and print what each cost."""
    lag = (latency, latency)
    libcal = LibCalState(latency=lag)
    alma = AlmaState(latency=lag, per_second_limit=25, api_keys={"bench-key"})
    pp = PassagePointState(latency=lag, destinations=list(LOCATIONS.values()))
    for n in range(patrons):
        alma.add_user(AlmaUser(primary_id=f"G{n:08d}", barcode=f"2222{n:010d}", user_group="UGRD",
                               user_group_desc="Undergraduate", first_name=f"F{n}", last_name=f"L{n}",
                               email=f"p{n}@example.edu", api_key="bench-key"))
    lids = list(LOCATIONS)
    for n in range(bookings):
        hour = 8 + n % 12
        libcal.add_booking(f"cs_{n:05d}", lids[n % 2], f"{DAY}T{hour:02d}:00:00-05:00", f"{DAY}T{hour + 1:02d}:00:00-05:00",
                           first_name=f"F{n % patrons}", last_name=f"L{n % patrons}", email=f"p{n % patrons}@example.edu",
                           primary_id=f"G{n % patrons:08d}")
    runners = []
    urls = {}
    for name, app in (("libcal", create_libcal_app(libcal)), ("alma", create_alma_app(alma)), ("pp", create_pp_app(pp))):
        runner, urls[name] = await _serve(app)
        runners.append(runner)
    raw = {
        "LCPP": {"interval": 300, "timeout": 30, "concurrency": concurrency},
        "LibCal": {"client_id": "cid", "client_secret": "secret", "primary_id_field": "q12505",
                   "locations": [{"name": v, "id": k} for k, v in LOCATIONS.items()],
                   "credentials_endpt": f"{urls['libcal']}/1.1/oauth/token",
                   "bookings_endpt": f"{urls['libcal']}/1.1/space/bookings",
                   "statuses": ["Confirmed", "Mediated Approved"]},  # the simulator books Confirmed spaces
        "Alma": {"apikeys": ["bench-key"], "users_endpt": f"{urls['alma']}/almaws/v1/users"},
        "PassagePoint": {"username": "svc", "password": "pw", "pp_api_root": urls["pp"],
                         "login_endpt": "/pp/api/v2/auth/login", "uniqueId_endpt": "/pp/api/v2/person/byUniqueId",
                         "create_visitor_endpt": "/pp/api/v2/person/createVisitor",
                         "create_prereg_endpt": "/pp/api/v2/visit/createPreReg",
                         "get_destinations_endpt": "/pp/api/v2/visit/getDestinations",
                         "location_mapping": LOCATIONS, "user_mapping": {"Undergraduate": "Student"}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = replace(parse_config(raw, environ={}), cache_path=str(Path(tmp) / "bench.sqlite3"))
        print(f"libcal_passagepoint pass: {bookings} bookings in {len(LOCATIONS)} locations, {patrons} new patrons, "
              f"{latency * 1000:.0f} ms simulator latency, Alma limit 25/s, PassagePoint concurrency {concurrency}")
        print(f"{'pass':<14}{'wall s':>8}{'registered':>12}{'failed':>8}{'LibCal':>8}{'Alma':>6}{'Alma 429':>10}{'PassagePoint':>14}")
        with Cache(config.cache_path) as cache:
            for label in ("first", "steady-state"):
                before = (libcal.count(""), alma.count("/almaws"), pp.count(""), sum(r["status"] == 429 for r in alma.requests))
                started = time.perf_counter()
                async with open_clients(config) as clients:
                    result = await run_pass(config, libcal=clients.libcal, alma=clients.alma, passagepoint=clients.passagepoint,
                                            cache=cache, date=DAY, concurrency=config.concurrency)
                wall = time.perf_counter() - started
                after = (libcal.count(""), alma.count("/almaws"), pp.count(""), sum(r["status"] == 429 for r in alma.requests))
                d = [a - b for a, b in zip(after, before, strict=True)]
                print(f"{label:<14}{wall:>8.2f}{len(result.registered):>12}{len(result.failed):>8}{d[0]:>8}{d[1]:>6}{d[3]:>10}{d[2]:>14}")
        print(f"pre-registrations in PassagePoint: {len(pp.preregs)}, visitors: {len(pp.visitors)}")
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=500)
    parser.add_argument("--patrons", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", default="8,16", help="comma-separated; one run per value (8 is the default)")
    args = parser.parse_args()
    for concurrency in (int(value) for value in args.concurrency.split(",")):
        asyncio.run(bench(args.bookings, args.patrons, args.latency, concurrency))
        print()


if __name__ == "__main__":
    main()
