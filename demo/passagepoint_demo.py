"""Demo: the LibCal -> PassagePoint sync end to end against the local simulators.

Starts the LibCal, Alma and PassagePoint simulators on loopback, writes a config.yml in the
original app's format, and runs the real command line: a first pass (one booking has no patron
id, so exit status 1), a steady-state pass, a pass after a cancellation, and `status`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.alma import AlmaState, AlmaUser  # noqa: E402
from simulators.libcal import LibCalState  # noqa: E402
from simulators.passagepoint import PassagePointState  # noqa: E402
from simulators.thread import SimulatorThread  # noqa: E402

DAY = "2030-01-15"


class Simulators:
    """The three simulators, each served from a background thread."""

    def __init__(self) -> None:
        self.libcal = LibCalState(client_id="demo-client", client_secret="demo-secret", latency=(0.02, 0.05))
        self.alma = AlmaState(api_keys={"zone-main", "zone-law"}, latency=(0.02, 0.05))
        self.pp = PassagePointState(username="svc-libcal", password="demo-pw", latency=(0.02, 0.05),
                                    destinations=["LibCal Gelman", "LibCal Eckles"])
        self.urls: dict[str, str] = {}
        self._threads = ExitStack()

    def __enter__(self) -> Simulators:
        for name, state in (("libcal", self.libcal), ("alma", self.alma), ("pp", self.pp)):
            self.urls[name] = self._threads.enter_context(SimulatorThread(state)).base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self._threads.close()


def seed(sims: Simulators) -> None:
    """Patrons in two Alma zones, bookings in two locations, one already a PassagePoint visitor."""
    patrons = [
        ("G10000001", "22222000010001", "UGRD", "Undergraduate", "Ada", "Lovelace", "zone-main"),
        ("G10000002", "22222000010002", "FAC", "Faculty", "Grace", "Hopper", "zone-main"),
        ("L20000003", "22222000020003", "LAW", "Law Student", "Ruth", "Ginsburg", "zone-law"),
        ("G10000004", "22222000010004", "GRAD", "Graduate", "Alan", "Turing", "zone-main"),
    ]
    for pid, barcode, group, desc, first, last, zone in patrons:
        sims.alma.add_user(AlmaUser(primary_id=pid, barcode=barcode, user_group=group, user_group_desc=desc,
                                    first_name=first, last_name=last, email=f"{first.lower()}@example.edu", api_key=zone))
    sims.pp.add_visitor(unique_id="22222000010004", first_name="Alan", last_name="Turing", category="Student")

    def book(book_id: str, lid: int, hour: int, pid: str | None, first: str, last: str, **kw: object) -> None:
        sims.libcal.add_booking(book_id=book_id, lid=lid, from_date=f"{DAY}T{hour:02d}:00:00-05:00",
                                to_date=f"{DAY}T{hour + 2:02d}:00:00-05:00", primary_id=pid, first_name=first,
                                last_name=last, email=f"{first.lower()}@example.edu", **kw)

    book("cs_Ada0900", 8827, 9, "G10000001", "Ada", "Lovelace", seats=2)
    book("cs_Gra1000", 8827, 10, "G10000002", "Grace", "Hopper")
    book("cs_Rut1100", 9911, 11, "L20000003", "Ruth", "Ginsburg")
    book("cs_Ala1300", 9911, 13, "G10000004", "Alan", "Turing")
    book("cs_Ada1500", 9911, 15, "G10000001", "Ada", "Lovelace", status="Mediated Approved")
    book("cs_NoId1200", 8827, 12, None, "Nemo", "Nobody")
    book("cs_Ten1600", 8827, 16, "G10000002", "Grace", "Hopper", status="Mediated Tentative")


def write_config(sims: Simulators, directory: Path) -> Path:
    """The original app's config.yml, pointed at the simulators."""
    path = directory / "config.yml"
    path.write_text(textwrap.dedent(f"""\
        LCPP:
          interval: 300
          cache_path: {directory / "lcpp_cache.sqlite3"}
        LibCal:
          client_id: demo-client
          client_secret: demo-secret
          locations:
            - name: Gelman Library Study Spaces
              id: 8827
            - name: Eckles Library Study Spaces
              id: 9911
          credentials_endpt: {sims.urls["libcal"]}/1.1/oauth/token
          bookings_endpt: {sims.urls["libcal"]}/1.1/space/bookings
          primary_id_field: q12505
          statuses: [Confirmed, Mediated Approved]  # this library's spaces need no approval
        Alma:
          apikeys: [zone-main, zone-law]
          users_endpt: {sims.urls["alma"]}/almaws/v1/users
        PassagePoint:
          username: svc-libcal
          password: demo-pw
          pp_api_root: {sims.urls["pp"]}
          login_endpt: /pp/api/v2/auth/login
          uniqueId_endpt: /pp/api/v2/person/byUniqueId
          create_visitor_endpt: /pp/api/v2/person/createVisitor
          create_prereg_endpt: /pp/api/v2/visit/createPreReg
          get_destinations_endpt: /pp/api/v2/visit/getDestinations
          location_mapping:
            8827: LibCal Gelman
            9911: LibCal Eckles
          user_mapping:
            Undergraduate: Student
            Graduate: Student
            Law Student: Student
            Faculty: Faculty
        """), encoding="utf-8")
    return path


def cli(directory: Path, *args: str, expect: int) -> None:
    """Run `python -m libcal_passagepoint ARGS` in *directory* and show what it printed."""
    print(f"\n$ python -m libcal_passagepoint {' '.join(args)}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "libcal_passagepoint", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120)
    for line in done.stderr.splitlines():
        print(f"  [log] {line}")
    print(textwrap.indent(done.stdout.rstrip(), "  "))
    print(f"  (exit status {done.returncode})")
    if done.returncode != expect:
        raise SystemExit(f"demo: expected exit status {expect}, got {done.returncode}")


def main() -> None:
    """Run the demo."""
    with tempfile.TemporaryDirectory() as tmp, Simulators() as sims:
        directory = Path(tmp)
        seed(sims)
        write_config(sims, directory)
        print(f"simulators: LibCal {sims.urls['libcal']}, Alma {sims.urls['alma']}, PassagePoint {sims.urls['pp']}")
        cli(directory, "run", "--dry-run", "--date", DAY, expect=0)
        cli(directory, "run", "--date", DAY, expect=1)
        counts = (sims.libcal.count(""), sims.alma.count("/almaws"), sims.pp.count(""))
        cli(directory, "run", "--date", DAY, expect=0)
        after = (sims.libcal.count(""), sims.alma.count("/almaws"), sims.pp.count(""))
        print(f"  requests in the steady-state pass: LibCal {after[0] - counts[0]}, Alma {after[1] - counts[1]}, "
              f"PassagePoint {after[2] - counts[2]}")
        sims.libcal.cancel("cs_Gra1000")
        print("\n(LibCal: cs_Gra1000 is cancelled by the patron after its pre-registration was created)")
        cli(directory, "run", "--date", DAY, expect=0)
        cli(directory, "status", expect=0)
        print("\nPassagePoint now holds:")
        for prereg in sims.pp.preregs:
            visitor = sims.pp.visitors[int(prereg["visitorId"])]
            print(f"  prereg {prereg['id']}: {visitor['firstName']} {visitor['lastName']} "
                  f"({visitor['category']}, uniqueId {visitor['uniqueId']}) at {prereg['destination']} "
                  f"{prereg['startTime']}-{prereg['endTime']}")


if __name__ == "__main__":
    main()
