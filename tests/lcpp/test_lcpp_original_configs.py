"""Every shape the original app's config.yml took (gwu-libraries/libcal_pp_integration, 2020-2021)
loads unchanged and runs a pass against the simulators.

The shapes are written out here as data, one per template version of the original: the same
sections, keys, quoting, blank values, comments and quirks (``get_destinations_endpt`` without a
leading slash, integer keys in ``location_mapping``, a single ``Alma: apikey``), with example
hosts, names and placeholders instead of the original's. Secrets are blank in the templates and
come from the environment, as an operator would supply them. Only the hosts are pointed at the
simulators.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from alma import SlidingWindowLimiter
from libcal_passagepoint.cache import Cache
from libcal_passagepoint.config import ConfigError, load_config
from libcal_passagepoint.runner import open_clients
from libcal_passagepoint.sync import run_pass
from simulators.alma import AlmaState, AlmaUser
from simulators.alma import create_app as create_alma_app
from simulators.libcal import LibCalState
from simulators.libcal import create_app as create_libcal_app
from simulators.passagepoint import PassagePointState
from simulators.passagepoint import create_app as create_pp_app

DAY = "2030-01-15"
LIBCAL, ALMA, PP = "https://booking.library.example.edu", "https://api-na.hosted.exlibrisgroup.com", "https://pp.example.edu:2444"

_LIBCAL_V6 = """\
LibCal:
  client_id: 
  client_secret: 
  locations:
    - name: 'Main Library Study Spaces'
      id: 8827
    - name: 'Digital Studio'
      id: 8874
  credentials_endpt: 'https://booking.library.example.edu/1.1/oauth/token'
  bookings_endpt: 'https://booking.library.example.edu/1.1/space/bookings'
  primary_id_field: q12505
"""
_LIBCAL_V7 = _LIBCAL_V6.replace("    - name: 'Digital Studio'\n      id: 8874", "    - name: 'Science & Technology Campus Library'\n      id: 10332")
_ALMA_ONE_KEY = """\
Alma:
  apikey: 
  users_endpt: 'https://api-na.hosted.exlibrisgroup.com/almaws/v1/users'
"""
_ALMA_KEYS = """\
Alma:
  apikeys:
    - XXXXXXXXXXXXXXXXXXXXXXXXXXXX 
  users_endpt: 'https://api-na.hosted.exlibrisgroup.com/almaws/v1/users'
"""
_PP_PATHS = """\
PassagePoint:
  username: 
  password: 
  pp_api_root: 'https://pp.example.edu:2444'
  login_endpt: '/pp/api/v2/auth/login'
  uniqueId_endpt: '/pp/api/v2/person/byUniqueId'
  create_visitor_endpt: '/pp/api/v2/person/createVisitor'
  create_prereg_endpt: '/pp/api/v2/visit/createPreReg'
  get_destinations_endpt: 'pp/api/v2/visit/getDestinations'"""
_PP_MAPPINGS = _PP_PATHS + """
  location_mapping:
      8827: 'LibCal Main'
      10332: 'LibCal Science'
  user_mapping:
    gw und: Student
    gw grad: Student
    gw fac: Faculty
    gw stf1: Staff
    gw stf2: Staff
    gw ocg: Student
"""
_EMAILS_BLANK = """\
Emails:
  from_email: 
  from_username: 
  from_password: 
  smtp_host: 
  # list of email address strings
  to_email: 
"""

#: version -> (the original's template date, the file's text). V6 is the first with PassagePoint's paths.
SHAPES: dict[str, tuple[str, str]] = {
    "V6": ("2020-08-18", _LIBCAL_V6 + _ALMA_ONE_KEY + _PP_PATHS),  # no newline at the end, as the original
    "V7": ("2020-08-24", _LIBCAL_V7 + _ALMA_ONE_KEY + _PP_PATHS),
    "V8": ("2020-08-26", _LIBCAL_V7 + _ALMA_ONE_KEY + _PP_MAPPINGS),
    "V9": ("2020-08-27", _LIBCAL_V7 + _ALMA_ONE_KEY + _PP_MAPPINGS + _EMAILS_BLANK),
    "V10": ("2020-09-01", "LCPP:\n  interval: 300 # In seconds\n" + _LIBCAL_V7 + _ALMA_ONE_KEY + _PP_MAPPINGS + _EMAILS_BLANK),
    "V11": ("2020-09-09", "LCPP:\n  interval: 300 # In seconds\n" + _LIBCAL_V7 + _ALMA_KEYS + _PP_MAPPINGS + _EMAILS_BLANK),
}
#: Templates from before the original had PassagePoint's paths: nothing to register with.
EARLIER = {
    "V4": _LIBCAL_V6 + _ALMA_ONE_KEY,
    "V5": _LIBCAL_V6 + _ALMA_ONE_KEY + "PassagePoint:\n  username: \n  password: \n"
                                      "  pp_endpt: 'https://pp.example.edu:2444/pp/api/v2'\n",
}
SECRETS = {"LIBCAL_CLIENT_ID": "cid", "LIBCAL_CLIENT_SECRET": "secret", "ALMA_API_KEYS": "zone-key",
           "PASSAGEPOINT_USERNAME": "svc", "PASSAGEPOINT_PASSWORD": "pw"}


def _pointed_at(text: str, libcal: str, alma: str, pp: str) -> str:
    return text.replace(LIBCAL, libcal).replace(ALMA, alma).replace(PP, pp)


@pytest.mark.parametrize("version", SHAPES)
def test_each_original_shape_loads_unchanged_and_says_what_it_assumed(version: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(SHAPES[version][1], encoding="utf-8")
    config = load_config(path, environ=SECRETS)
    pp = config.passagepoint
    assert pp.get_destinations_endpt == "/pp/api/v2/visit/getDestinations"  # joined as the original joined it
    assert config.alma.apikeys == ("zone-key",) and config.interval == 300 and config.email is None
    assumed = " | ".join(config.assumptions)
    if version in ("V6", "V7"):  # before location_mapping and user_mapping: the original's hard-coded values
        assert {location.destination for location in config.libcal.locations} == {"LibCal"}
        assert "every location's bookings go to the destination 'LibCal'" in assumed
        assert "every visitor's category is 'Visitor'" in assumed
    else:
        assert [location.destination for location in config.libcal.locations] == ["LibCal Main", "LibCal Science"]
        assert pp.user_mapping["gw fac"] == "Faculty"
    assert ("LCPP.interval is not set" in assumed) == (version not in ("V10", "V11"))
    assert config.libcal.statuses == ("Mediated Approved",)  # the original's filter
    assert "LibCal.statuses is not set: only 'Mediated Approved' bookings are registered" in assumed
    blank_emails = "Emails.from_email, Emails.smtp_host, Emails.to_email are not set: alerts are logged, not e-mailed"
    assert (blank_emails in assumed) == (version in ("V9", "V10", "V11"))


@pytest.mark.parametrize("version", EARLIER)
def test_templates_from_before_passagepoint_are_refused_saying_what_to_add(version: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(EARLIER[version], encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=SECRETS)
    assert str(info.value).startswith(f"{path}: PassagePoint")
    assert "pp_api_root" in str(info.value)


@pytest.mark.parametrize("version", SHAPES)
async def test_each_original_shape_runs_a_pass_against_the_simulators(version: str, aiohttp_server: Any, tmp_path: Path) -> None:
    """The file as the original app had it registers a booking of each location with PassagePoint."""
    libcal = LibCalState(client_id="cid", client_secret="secret")
    alma = AlmaState(api_keys={"zone-key"}, per_second_limit=1000)
    mapped = version not in ("V6", "V7")
    pp = PassagePointState(username="svc", password="pw",
                           destinations=["LibCal Main", "LibCal Science"] if mapped else ["LibCal"])
    urls = []
    for app in (create_libcal_app(libcal), create_alma_app(alma), create_pp_app(pp)):
        urls.append(str((await aiohttp_server(app)).make_url("")).rstrip("/"))
    path = tmp_path / "config.yml"
    path.write_text(_pointed_at(SHAPES[version][1], *urls), encoding="utf-8")
    config = load_config(path, environ=SECRETS)
    locations = [location.id for location in config.libcal.locations]
    for n, lid in enumerate(locations, start=1):
        alma.add_user(AlmaUser(primary_id=f"G{n:08d}", barcode=f"22222{n:09d}", user_group="UGRD",
                               user_group_desc="gw und", first_name=f"F{n}", last_name=f"L{n}",
                               email=f"p{n}@example.edu", api_key="zone-key"))
        libcal.add_booking(book_id=f"cs_{n}", lid=lid, from_date=f"{DAY}T1{n}:00:00-05:00",
                           to_date=f"{DAY}T1{n + 1}:00:00-05:00", primary_id=f"G{n:08d}", status="Mediated Approved")
    with Cache(config.cache_path) as cache:
        async with open_clients(config, limiter=SlidingWindowLimiter(1000)) as clients:
            result = await run_pass(config, libcal=clients.libcal, alma=clients.alma,
                                    passagepoint=clients.passagepoint, cache=cache, date=DAY)
    assert (result.registered, result.failed, result.exit_status) == (["cs_1", "cs_2"], [], 0)
    destinations = sorted(prereg["destination"] for prereg in pp.preregs)
    assert destinations == (["LibCal Main", "LibCal Science"] if mapped else ["LibCal", "LibCal"])
    categories = {visitor["category"] for visitor in pp.visitors.values()}
    assert categories == ({"Student"} if mapped else {"Visitor"})


def test_the_shapes_are_the_originals_quirks() -> None:
    """Guard the data: the quirks these tests exist for are in the shapes."""
    assert "get_destinations_endpt: 'pp/api/v2/visit/getDestinations'" in SHAPES["V6"][1]
    assert not SHAPES["V6"][1].endswith("\n")
    assert "  apikey: \n" in SHAPES["V10"][1] and "  apikeys:\n" in SHAPES["V11"][1]
    assert "LCPP" not in SHAPES["V9"][1] and "location_mapping" not in SHAPES["V7"][1]
    assert textwrap.dedent(SHAPES["V8"][1]) == SHAPES["V8"][1]
