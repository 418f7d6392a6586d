"""The libcal_passagepoint tests' world: the three simulators on loopback and a config for them.

``tests/lcpp/conftest.py`` makes the ``sims`` fixture available to every test under ``tests/lcpp/``;
others (``tests/deploy/``) import it from here.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from alma import SlidingWindowLimiter
from libcal_passagepoint.cache import Cache
from libcal_passagepoint.config import Config, load_config
from libcal_passagepoint.runner import open_clients
from libcal_passagepoint.sync import PassResult, run_pass
from simulators.alma import AlmaState, AlmaUser
from simulators.alma import create_app as create_alma_app
from simulators.libcal import LibCalState
from simulators.libcal import create_app as create_libcal_app
from simulators.passagepoint import PassagePointState
from simulators.passagepoint import create_app as create_pp_app

DAY = "2030-01-15"
GELMAN, ECKLES = 8827, 9911

#: The original app's config.yml, section and key names exactly as it used them, plus LibCal.statuses
#: (the tests book 'Confirmed' spaces; without it only 'Mediated Approved' ones register, as in the
#: original: see test_lcpp_original_configs.py for the files exactly as the original had them).
ORIGINAL_CONFIG = textwrap.dedent(
    """\
    LCPP:
      interval: 300
    LibCal:
      client_id: 1234
      client_secret: 1234567c7be467e51fc47157abcdefg
      locations:
        - name: Gelman Library Study Spaces
          id: 8827
        - name: Virginia Science & Technology Campus Library
          id: 9911
      credentials_endpt: {libcal}/1.1/oauth/token
      bookings_endpt: {libcal}/1.1/space/bookings
      primary_id_field: q12505
      statuses: [Confirmed, Mediated Approved]
    Alma:
      apikeys:
        - zone-one-key
        - zone-two-key
      users_endpt: {alma}/almaws/v1/users
    PassagePoint:
      username: svc
      password: pw
      pp_api_root: {pp}
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
        Faculty: Faculty
    """
)


def write_config(path: Path, *, libcal: str, alma: str, pp: str, lcpp: str = "", extra: str = "") -> Path:
    """Write the original app's config.yml pointing at the given base URLs.

    *lcpp* adds lines (already indented) to the LCPP section; *extra* appends sections.
    """
    text = ORIGINAL_CONFIG.format(libcal=libcal, alma=alma, pp=pp)
    text = text.replace("  interval: 300\n", "  interval: 300\n" + lcpp, 1) + extra
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Sims:
    """The three simulators, their states and a config file pointing at them."""

    libcal: LibCalState
    alma: AlmaState
    pp: PassagePointState
    config_path: Path
    config: Config
    tmp_path: Path

    def add_patron(self, n: int, *, zone: str = "zone-one-key", group: str = "UGRD", desc: str = "Undergraduate") -> tuple[str, str]:
        """An Alma user G0000000n with barcode 222220000000n; returns (primary id, barcode)."""
        primary_id, barcode = f"G{n:08d}", f"2222200{n:07d}"
        self.alma.add_user(AlmaUser(
            primary_id=primary_id, barcode=barcode, user_group=group, user_group_desc=desc,
            first_name=f"First{n}", last_name=f"Last{n}", email=f"p{n}@example.edu", api_key=zone,
        ))
        return primary_id, barcode

    def add_booking(self, book_id: str, primary_id: str | None, *, lid: int = GELMAN, hour: int = 13, **kw: Any) -> None:
        """A two-hour booking on DAY at *hour* local time."""
        self.libcal.add_booking(
            book_id=book_id, lid=lid, from_date=f"{DAY}T{hour:02d}:15:00-05:00",
            to_date=f"{DAY}T{hour + 2:02d}:15:00-05:00", primary_id=primary_id, **kw,
        )

    def counts(self) -> tuple[int, int, int]:
        """Requests received so far by LibCal, Alma and PassagePoint."""
        return self.libcal.count(""), self.alma.count("/almaws"), self.pp.count("")

    def cache(self) -> Cache:
        """The cache file of this test."""
        return Cache(self.tmp_path / "cache.sqlite3")

    async def run(self, cache: Cache | None = None, *, config: Config | None = None, **kw: Any) -> PassResult:
        """One pass with fresh clients (as a new process would have)."""
        own = cache is None
        cache = cache or self.cache()
        try:
            config = config or self.config
            async with open_clients(config, limiter=SlidingWindowLimiter(1000)) as clients:
                kw.setdefault("date", DAY)
                return await run_pass(
                    config, libcal=clients.libcal, alma=clients.alma, passagepoint=clients.passagepoint,
                    cache=cache, **kw,
                )
        finally:
            if own:
                cache.close()

    def with_config(self, **changes: Any) -> Config:
        """A copy of the config with some top-level fields changed."""
        return replace(self.config, **changes)


@pytest.fixture
async def sims(aiohttp_server: Any, tmp_path: Path) -> Sims:
    """LibCal, Alma (two zones) and PassagePoint simulators on loopback, and a config for them."""
    libcal = LibCalState(client_id="1234", client_secret="1234567c7be467e51fc47157abcdefg")
    alma = AlmaState(api_keys={"zone-one-key", "zone-two-key"}, per_second_limit=1000)
    pp = PassagePointState(username="svc", password="pw", destinations=["LibCal Gelman", "LibCal Eckles"], hang_seconds=5.0)
    libcal_server = await aiohttp_server(create_libcal_app(libcal))
    alma_server = await aiohttp_server(create_alma_app(alma))
    pp_server = await aiohttp_server(create_pp_app(pp))
    path = write_config(
        tmp_path / "config.yml",
        libcal=str(libcal_server.make_url("")).rstrip("/"),
        alma=str(alma_server.make_url("")).rstrip("/"),
        pp=str(pp_server.make_url("")).rstrip("/"),
        lcpp=f"  timeout: 2\n  cache_path: {tmp_path / 'cache.sqlite3'}\n",
    )
    config = load_config(path, environ={})
    return Sims(libcal, alma, pp, path, config, tmp_path)

