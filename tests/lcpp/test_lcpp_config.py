"""Configuration: the original app's config.yml loads unchanged; secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from lcpp_sims import write_config

from libcal_passagepoint.config import ConfigError, Location, load_config

BASES = {"libcal": "https://booking.library.example.edu", "alma": "https://api-na.hosted.exlibrisgroup.com", "pp": "https://pp.example.edu:2444"}


def test_original_config_loads_unchanged(tmp_path: Path) -> None:
    """Every section and key of the original app's file is read with its meaning."""
    config = load_config(write_config(tmp_path / "config.yml", **BASES), environ={})
    assert config.interval == 300
    assert config.libcal.client_id == "1234"
    assert config.libcal.client_secret == "1234567c7be467e51fc47157abcdefg"
    assert config.libcal.credentials_endpt == "https://booking.library.example.edu/1.1/oauth/token"
    assert config.libcal.bookings_endpt == "https://booking.library.example.edu/1.1/space/bookings"
    assert config.libcal.primary_id_field == "q12505"
    assert config.libcal.locations == (
        Location(8827, "Gelman Library Study Spaces", "LibCal Gelman"),
        Location(9911, "Virginia Science & Technology Campus Library", "LibCal Eckles"),
    )
    assert config.libcal.statuses == ("Confirmed", "Mediated Approved")
    assert config.alma.apikeys == ("zone-one-key", "zone-two-key")
    assert config.alma.users_endpt == "https://api-na.hosted.exlibrisgroup.com/almaws/v1/users"
    pp = config.passagepoint
    assert (pp.username, pp.password, pp.pp_api_root) == ("svc", "pw", "https://pp.example.edu:2444")
    assert (pp.login_endpt, pp.uniqueId_endpt, pp.create_visitor_endpt, pp.create_prereg_endpt, pp.get_destinations_endpt) == (
        "/pp/api/v2/auth/login", "/pp/api/v2/person/byUniqueId", "/pp/api/v2/person/createVisitor",
        "/pp/api/v2/visit/createPreReg", "/pp/api/v2/visit/getDestinations",
    )
    assert pp.user_mapping == {"Undergraduate": "Student", "Faculty": "Faculty"}
    assert config.email is None
    assert config.reconcile == "report"


def test_original_emails_section_and_single_apikey(tmp_path: Path) -> None:
    """The app's Emails section (SMTP alerts) and its first version's single Alma `apikey` are understood."""
    path = write_config(tmp_path / "config.yml", **BASES, extra=(
        "Emails:\n  from_email: lcpp@example.edu\n  from_username: lcpp\n  from_password: mailpw\n"
        "  smtp_host: smtp.example.edu\n  to_email: desk@example.edu\n"
    ))
    path.write_text(path.read_text().replace("  apikeys:\n    - zone-one-key\n    - zone-two-key\n", "  apikey: only-key\n"))
    config = load_config(path, environ={})
    assert config.alma.apikeys == ("only-key",)
    assert config.email is not None
    assert (config.email.from_email, config.email.to_email, config.email.smtp_host, config.email.smtp_port) == (
        "lcpp@example.edu", ("desk@example.edu",), "smtp.example.edu", 587)
    assert (config.email.from_username, config.email.from_password, config.email.starttls) == ("lcpp", "mailpw", True)


def test_secrets_from_environment_override_the_file(tmp_path: Path) -> None:
    """LIBCAL_CLIENT_SECRET, PASSAGEPOINT_PASSWORD, ALMA_API_KEYS (comma-separated), SMTP_PASSWORD."""
    path = write_config(tmp_path / "config.yml", **BASES, extra=(
        "Emails:\n  from_email: a@example.edu\n  smtp_host: smtp.example.edu\n  to_email: [b@example.edu]\n"
    ))
    environ = {  # (a Windows line end, as `$(cat file)` keeps it, is not part of a secret)
        "LIBCAL_CLIENT_SECRET": "env-secret\r", "PASSAGEPOINT_PASSWORD": "env-pw\r",
        "ALMA_API_KEYS": "k1, k2,k3\r", "SMTP_PASSWORD": "env-mail\r", "LIBCAL_CLIENT_ID": "",
    }
    config = load_config(path, environ=environ)
    assert config.libcal.client_secret == "env-secret"
    assert config.libcal.client_id == "1234"  # an empty variable counts as unset
    assert config.passagepoint.password == "env-pw"
    assert config.alma.apikeys == ("k1", "k2", "k3")
    assert config.email is not None and config.email.from_password == "env-mail"


def test_secret_only_in_environment(tmp_path: Path) -> None:
    """A secret may be left out of the file entirely when its variable is set."""
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("  client_secret: 1234567c7be467e51fc47157abcdefg\n", ""))
    assert load_config(path, environ={"LIBCAL_CLIENT_SECRET": "s"}).libcal.client_secret == "s"
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value) == (
        f"{path}: LibCal.client_secret is missing (set it in the file or in the environment variable LIBCAL_CLIENT_SECRET)"
    )


@pytest.mark.parametrize(
    ("lcpp", "message"),
    [
        ("  reconcile: sometimes\n", "LCPP.reconcile must be one of report, recreate, not 'sometimes'"),
        ("  primary_id_pattern: '[a-'\n", "LCPP.primary_id_pattern is not a valid regular expression: unterminated character set at position 0"),
        ("  retention: 12h\n", "LCPP.retention must be at least 1d, not 12h"),
        ("  check_destinations: maybe\n", "LCPP.check_destinations must be true or false"),
    ],
)
def test_optional_settings_are_validated(tmp_path: Path, lcpp: str, message: str) -> None:
    """The tool's own optional LCPP keys are checked like the rest."""
    path = write_config(tmp_path / "config.yml", **BASES, lcpp=lcpp)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value) == f"{path}: {message}"


def test_an_interval_below_one_second_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("  interval: 300", "  interval: 0"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value) == f"{path}: LCPP.interval must be at least 1, not 0"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "LCPP:\n  interval: 60\n",
         "is not valid YAML at line 35, column 1: the key 'LCPP' appears twice: keep one (the second would replace the first)"),
        (lambda t: t.replace("  primary_id_field: q12505\n", "  primary_id_field: q12505\n  location_mapping: {}\n"),
         "LibCal.location_mapping belongs in the PassagePoint section, not in LibCal"),
        (lambda t: t.replace("      id: 8827\n", "      id: 8827\n      destination: LibCal Gelman\n"),
         "LibCal.locations[0].destination is not a known setting: the known settings of LibCal.locations[0] are id, name"),
    ],
    ids=["section-twice", "key-in-another-section", "unknown-location-key"],
)
def test_mistakes_the_yaml_itself_hides_are_refused(tmp_path: Path, edit, message: str) -> None:
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value).endswith(message)


@pytest.mark.parametrize("users_endpt", ["https://api-na.hosted.exlibrisgroup.com/almaws/v1", "https://proxy.example.edu/alma/users"])
def test_users_endpt_must_be_the_gateways_users_api(tmp_path: Path, users_endpt: str) -> None:
    """The shared Alma client is given users_endpt without /users: anything but …/almaws/v1/users is refused."""
    path = write_config(tmp_path / "config.yml", **BASES)
    text = path.read_text()
    start = text.index("  users_endpt: ")
    path.write_text(text[:start] + f"  users_endpt: {users_endpt}\n" + text[text.index("\n", start) + 1:])
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value) == (
        f"{path}: Alma.users_endpt must be the Users API of Alma's API gateway, ending in /almaws/v1/users "
        f"(e.g. https://api-na.hosted.exlibrisgroup.com/almaws/v1/users), not {users_endpt!r}")


def test_the_alma_api_root_is_users_endpt_without_users(tmp_path: Path) -> None:
    """…/almaws/v1/users/ (a trailing slash too) -> …/almaws/v1, the root the shared client is given."""
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("/almaws/v1/users\n", "/almaws/v1/users/\n"))
    assert load_config(path, environ={}).alma.api_root == BASES["alma"] + "/almaws/v1"


def test_location_mapping_keys_may_be_strings(tmp_path: Path) -> None:
    """YAML may quote the location ids in location_mapping; they still match the numeric ids."""
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("    8827: LibCal Gelman", "    '8827': LibCal Gelman"))
    assert load_config(path, environ={}).location(8827).destination == "LibCal Gelman"


def test_example_config_in_the_package_is_valid() -> None:
    """libcal_passagepoint/config.example.yml loads (it is what the README tells people to copy)."""
    path = Path(__file__).resolve().parents[2] / "libcal_passagepoint" / "config.example.yml"
    config = load_config(path, environ={})
    assert [location.id for location in config.libcal.locations] == [8827, 9911]


@pytest.mark.parametrize(
    ("emails", "expected", "assumed"),
    [
        ("Emails:\n  to_email: desk@example.edu\n", None,
         "Emails.from_email, Emails.smtp_host are not set: alerts are logged, not e-mailed"),
        ("Emails:\n  from_email: a@example.edu\n  smtp_host: smtp.example.edu\n  to_email: b@example.edu\n", False,
         "Emails.smtp_starttls is not set: STARTTLS off because from_username is not set, as the original app did"),
        ("Emails:\n  from_email: a@example.edu\n  from_username: a\n  smtp_host: smtp.example.edu\n  to_email: b@example.edu\n",
         True, "Emails.smtp_starttls is not set: STARTTLS on because from_username is set, as the original app did"),
    ],
    ids=["half-filled", "no-login-no-starttls", "login-starttls"],
)
def test_emails_as_the_original_read_them(tmp_path: Path, emails: str, expected: bool | None, assumed: str) -> None:
    """A half-filled Emails section runs (the original ran, and could not mail); STARTTLS as it used it."""
    config = load_config(write_config(tmp_path / "config.yml", **BASES, extra=emails), environ={"SMTP_PASSWORD": "pw"})
    assert (config.email.starttls if config.email else None) == expected
    assert assumed in config.assumptions


def test_a_secret_in_the_file_is_taken_as_written(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("  password: pw\n", "  password: 'pw with a trailing space '\n"))
    assert load_config(path, environ={}).passagepoint.password == "pw with a trailing space "


def test_a_user_mapping_entry_left_blank_counts_as_unmapped(tmp_path: Path) -> None:
    from libcal_passagepoint.alma_users import AlmaUser
    from libcal_passagepoint.sync import category_for

    path = write_config(tmp_path / "config.yml", **BASES)
    path.write_text(path.read_text().replace("    Faculty: Faculty\n", "    Faculty: Faculty\n    gw ocg:\n"))
    config = load_config(path, environ={})
    user = AlmaUser("G1", "2221", "OCG", "gw ocg")
    assert category_for(user, config.passagepoint.user_mapping, config.passagepoint.default_category) == "Visitor"
