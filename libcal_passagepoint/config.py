"""Load and validate the sync tool's configuration: the original app's ``config.yml``, unchanged.

Resolution order, one per setting: command line (``--config``, ``--cache``), then environment
variables (secrets only, listed in ``ENV_VARS``), then the YAML file. A relative path in the file
(``LCPP.cache_path``) is relative to the file's directory, never to the working directory. Every
problem is reported as a :class:`toolconfig.ConfigError` whose message names the key to fix.

The settings are declared once, as the frozen dataclasses below; one function per section fills
its dataclass through :class:`toolconfig.settings.Section`, the typed reader every tool shares.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from toolconfig import ConfigError, load_yaml, refuse_unknown
from toolconfig.settings import Section

__all__ = [
    "ENV_VARS",
    "DEFAULT_STATUSES",
    "AlmaConfig",
    "Config",
    "ConfigError",
    "EmailConfig",
    "LibCalConfig",
    "Location",
    "PassagePointConfig",
    "load_config",
    "parse_config",
]

#: Environment variables that override a secret in the file (an empty variable counts as unset).
ENV_VARS: dict[str, str] = {
    "LibCal.client_id": "LIBCAL_CLIENT_ID",
    "LibCal.client_secret": "LIBCAL_CLIENT_SECRET",
    "Alma.apikeys": "ALMA_API_KEYS",  # comma-separated, tried in this order
    "PassagePoint.username": "PASSAGEPOINT_USERNAME",
    "PassagePoint.password": "PASSAGEPOINT_PASSWORD",
    "Emails.from_password": "SMTP_PASSWORD",
}

#: Every key any version of the original app's config.yml had, and this tool's own additions.
#: Anything else is refused with a suggestion: a misspelt key must never be silently ignored.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "LCPP": ("interval", "cache_path", "timeout", "primary_id_pattern", "reconcile", "retry_base", "retry_max",
             "check_destinations", "concurrency", "retention"),
    "LibCal": ("client_id", "client_secret", "credentials_endpt", "bookings_endpt", "primary_id_field", "locations",
               "statuses", "form_answers_param"),
    "Alma": ("apikey", "apikeys", "users_endpt", "rate_per_second"),
    "PassagePoint": ("username", "password", "pp_endpt", "pp_api_root", "login_endpt", "uniqueId_endpt",
                     "create_visitor_endpt", "create_prereg_endpt", "get_destinations_endpt", "location_mapping",
                     "user_mapping", "default_category"),
    "Emails": ("from_email", "from_username", "from_password", "smtp_host", "to_email", "smtp_port", "smtp_starttls"),
}
ORIGINAL_INTERVAL = 300  # the original hard-coded it before LCPP.interval existed
ORIGINAL_DESTINATION = "LibCal"  # the original's one destination before PassagePoint.location_mapping existed
DEFAULT_RETENTION = "30d"
DEFAULT_STATUSES = ("Mediated Approved",)  # the original registered only these (from 2020-09-01)
DEFAULT_PRIMARY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}"
RECONCILE_POLICIES = ("report", "recreate")


@dataclass(frozen=True)
class Location:
    """A LibCal location whose bookings are synced, and the PassagePoint destination it maps to."""

    id: int
    name: str
    destination: str


@dataclass(frozen=True)
class LibCalConfig:
    """Settings of the ``LibCal`` section."""

    client_id: str
    client_secret: str
    credentials_endpt: str
    bookings_endpt: str
    primary_id_field: str
    locations: tuple[Location, ...]
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    form_answers_param: str = "formAnswers"  # the spelling every public production client sends


@dataclass(frozen=True)
class AlmaConfig:
    """Settings of the ``Alma`` section."""

    apikeys: tuple[str, ...]
    users_endpt: str  # …/almaws/v1/users, as the original app named it
    rate_per_second: float = 25.0

    @property
    def api_root(self) -> str:
        """The Alma API root the shared client is given: users_endpt without its ``/users``."""
        return self.users_endpt.removesuffix("/users")


@dataclass(frozen=True)
class PassagePointConfig:
    """Settings of the ``PassagePoint`` section."""

    username: str
    password: str
    pp_api_root: str
    login_endpt: str
    uniqueId_endpt: str  # noqa: N815 - the original app's key name
    create_visitor_endpt: str
    create_prereg_endpt: str
    get_destinations_endpt: str
    user_mapping: dict[str, str] = field(default_factory=dict)
    default_category: str = "Visitor"


@dataclass(frozen=True)
class EmailConfig:
    """Optional alert e-mail settings (the original app's ``Emails`` section)."""

    from_email: str
    to_email: tuple[str, ...]
    smtp_host: str
    smtp_port: int = 587
    starttls: bool = True
    from_username: str | None = None
    from_password: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    interval: int
    libcal: LibCalConfig
    alma: AlmaConfig
    passagepoint: PassagePointConfig
    email: EmailConfig | None
    cache_path: str = "lcpp_cache.sqlite3"
    timeout: float = 30.0
    primary_id_pattern: str = DEFAULT_PRIMARY_ID_PATTERN
    reconcile: str = "report"
    retry_base: int = 300
    retry_max: int = 6 * 3600
    check_destinations: bool = True
    concurrency: int = 8
    retention: float = 30 * 86400  # seconds a booking is kept after it ended (LCPP.retention)
    assumptions: tuple[str, ...] = ()  # what was assumed for values an older config.yml lacks

    def location(self, lid: int) -> Location | None:
        """The configured location with LibCal id *lid*, if any."""
        for location in self.libcal.locations:
            if location.id == lid:
                return location
        return None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read *path* (YAML), apply the secret environment variables, and validate the result.

    ``cache_path`` comes back absolute: a relative one (and the default) is taken from the directory
    of the configuration file, so that every run of one configuration uses one cache, whatever its
    working directory (cron starts in ``$HOME``).
    """
    return parse_config(load_yaml(path), environ=environ, source=str(path))


def parse_config(
    raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, source: str = "config.yml"
) -> Config:
    """Validate an already-loaded configuration mapping; raise ConfigError naming the bad key.

    *source* is the file the mapping came from: messages name it, and a relative ``LCPP.cache_path``
    is taken from its directory (its real one: a symlink to the file is followed).
    """
    sections = _sections(raw, source=source, environ=os.environ if environ is None else environ)
    lcpp = sections["LCPP"]
    assumed: list[str] = []  # what the original app did where an older file lacks a setting
    interval = _interval(lcpp, assumed)
    libcal = _libcal(sections["LibCal"], _locations(sections["LibCal"], sections["PassagePoint"], assumed), assumed)
    alma = _alma(sections["Alma"])
    passagepoint = _passagepoint(sections["PassagePoint"], assumed)
    email = _email(sections["Emails"], assumed)
    return Config(
        interval=interval,
        libcal=libcal,
        alma=alma,
        passagepoint=passagepoint,
        email=email,
        reconcile=lcpp.choice("reconcile", RECONCILE_POLICIES, default="report"),
        primary_id_pattern=_primary_id_pattern(lcpp),
        check_destinations=lcpp.boolean("check_destinations", default=True),
        cache_path=os.path.normpath(lcpp.file_path("cache_path", default="lcpp_cache.sqlite3")),
        timeout=lcpp.number("timeout", default=30.0, minimum=0.1),
        retry_base=lcpp.integer("retry_base", default=300, minimum=1),
        retry_max=lcpp.integer("retry_max", default=6 * 3600, minimum=1),
        concurrency=lcpp.integer("concurrency", default=8, minimum=1),
        retention=lcpp.duration("retention", default=DEFAULT_RETENTION, minimum=86400),
        assumptions=tuple(assumed),
    )


def _sections(raw: Mapping[str, Any], *, source: str, environ: Mapping[str, str]) -> dict[str, Section]:
    """The five sections, every one checked for unknown keys before any value is read (a misspelt
    key must never be silently ignored: ``Email:`` for ``Emails:`` would turn alerts off)."""
    refuse_unknown(raw, KNOWN_KEYS, where="", source=source)
    home = {key: name for name, keys in KNOWN_KEYS.items() for key in keys}  # for "belongs in the … section"
    root = Section(raw, source=source, environ=environ)
    return {
        name: root.section(name, required=name in ("LibCal", "Alma"), known=keys, elsewhere=home)
        for name, keys in KNOWN_KEYS.items()
    }


def _secret(section: Section, key: str) -> str:
    """A secret of ENV_VARS: its environment variable when set, else the file's value as written."""
    return section.secret(key, ENV_VARS[section.key(key)])


def _interval(lcpp: Section, assumed: list[str]) -> int:
    """LCPP.interval; the original hard-coded 300 s before the key existed."""
    if not lcpp.given("interval"):
        assumed.append(f"LCPP.interval is not set: a pass every {ORIGINAL_INTERVAL} seconds with run --every, "
                       "as the original app did")
    return lcpp.integer("interval", default=ORIGINAL_INTERVAL, minimum=1)


def _locations(libcal: Section, pp: Section, assumed: list[str]) -> tuple[Location, ...]:
    """LibCal.locations, each with its destination from PassagePoint.location_mapping (or the original's one)."""
    if pp.values.get("pp_api_root") is None:
        raise ConfigError(f"{pp.source}: PassagePoint has no pp_api_root and login, uniqueId, create_visitor, "
                          "create_prereg and get_destinations paths: this file predates the original app's "
                          "PassagePoint settings (August 2020); add them as in config.example.yml")
    location_mapping = pp.mapping("location_mapping", required=False)
    if not location_mapping:
        assumed.append(f"PassagePoint.location_mapping is not set: every location's bookings go to the destination "
                       f"{ORIGINAL_DESTINATION!r}, as the original app did before it had location_mapping")
    destinations = {str(key).strip(): value for key, value in location_mapping.items()}
    entries = libcal.raw("locations")
    if not isinstance(entries, list) or not entries:
        raise libcal.error("locations", "must be a list of {name, id} entries, e.g. [{name: Gelman, id: 8827}]")
    locations = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "id" not in entry:
            raise libcal.error(f"locations[{index}]", "must be a mapping with keys 'name' and 'id'")
        where = Section(entry, name=libcal.key(f"locations[{index}]"), source=libcal.source, environ=libcal.environ,
                        base_dir=libcal.base_dir, known=("name", "id"))
        try:
            lid = int(str(entry["id"]).strip())
        except ValueError:
            raise where.error("id", f"must be a LibCal location id (a number), not {entry['id']!r}") from None
        name = str(entry.get("name") or lid)
        destination = destinations.get(str(lid)) if location_mapping else ORIGINAL_DESTINATION
        if not isinstance(destination, str) or not destination.strip():
            raise pp.error("location_mapping", f"has no destination for LibCal location {lid} ({name}): "
                                               f"add '{lid}: <PassagePoint destination name>'")
        locations.append(Location(id=lid, name=name, destination=destination.strip()))
    return tuple(locations)


def _libcal(libcal: Section, locations: tuple[Location, ...], assumed: list[str]) -> LibCalConfig:
    """The LibCal section; without ``statuses`` only the original's 'Mediated Approved' bookings."""
    if not libcal.given("statuses"):
        assumed.append("LibCal.statuses is not set: only 'Mediated Approved' bookings are registered, as the "
                       "original app did; set LibCal.statuses: [Confirmed, Mediated Approved] to register bookings "
                       "that need no approval too")
    statuses = libcal.raw("statuses", default=list(DEFAULT_STATUSES))
    if isinstance(statuses, str):
        statuses = [part.strip() for part in statuses.split(",") if part.strip()]
    if not isinstance(statuses, list) or not statuses or not all(isinstance(s, str) for s in statuses):
        raise libcal.error("statuses", "must be a list of LibCal booking statuses, e.g. [Confirmed, Mediated Approved]")
    return LibCalConfig(
        client_id=_secret(libcal, "client_id"),
        client_secret=_secret(libcal, "client_secret"),
        credentials_endpt=libcal.url("credentials_endpt"),
        bookings_endpt=libcal.url("bookings_endpt"),
        primary_id_field=libcal.text("primary_id_field"),
        locations=locations,
        statuses=tuple(statuses),
        form_answers_param=libcal.text("form_answers_param", default="formAnswers"),
    )


def _alma(alma: Section) -> AlmaConfig:
    """The Alma section: ``apikeys`` (ALMA_API_KEYS, comma-separated, wins; the first version's single
    ``apikey``), and ``users_endpt``, the Users API of Alma's API gateway."""
    variable = ENV_VARS["Alma.apikeys"]
    from_environment = alma.environ.get(variable, "")
    if from_environment.strip():
        apikeys: Any = [key.strip() for key in from_environment.split(",") if key.strip()]
    else:
        apikeys = alma.values.get("apikeys")
        if apikeys is None and "apikey" in alma.values:  # the app's first version had one key
            apikeys = [alma.values["apikey"]]
        if isinstance(apikeys, str):
            apikeys = [apikeys]
    if not isinstance(apikeys, list) or not apikeys or not all(isinstance(k, str) and k.strip() for k in apikeys):
        raise alma.error("apikeys", f"must be a list of Alma API keys, one per institution zone (or set {variable})")
    users_endpt = alma.url("users_endpt").rstrip("/")
    if not users_endpt.endswith("/almaws/v1/users"):
        raise alma.error("users_endpt", "must be the Users API of Alma's API gateway, ending in /almaws/v1/users "
                         f"(e.g. https://api-na.hosted.exlibrisgroup.com/almaws/v1/users), not {users_endpt!r}")
    return AlmaConfig(
        apikeys=tuple(key.strip() for key in apikeys),
        users_endpt=users_endpt,
        rate_per_second=alma.number("rate_per_second", default=25.0, minimum=0.1),
    )


def _passagepoint(pp: Section, assumed: list[str]) -> PassagePointConfig:
    """The PassagePoint section; paths are joined to ``pp_api_root`` as the original joined them."""
    user_mapping = pp.mapping("user_mapping", required=False)
    default_category = pp.text("default_category", default="Visitor")
    if not user_mapping:
        assumed.append(f"PassagePoint.user_mapping is not set: every visitor's category is {default_category!r}, "
                       "as the original app did before it had user_mapping")

    def path(key: str) -> str:  # the template's pp/api/v2/visit/getDestinations has no leading slash
        return pp.server_path(key, example="/pp/api/v2/auth/login")

    return PassagePointConfig(
        username=_secret(pp, "username"),
        password=_secret(pp, "password"),
        pp_api_root=pp.url("pp_api_root").rstrip("/"),
        login_endpt=path("login_endpt"),
        uniqueId_endpt=path("uniqueId_endpt"),
        create_visitor_endpt=path("create_visitor_endpt"),
        create_prereg_endpt=path("create_prereg_endpt"),
        get_destinations_endpt=path("get_destinations_endpt"),
        # an entry left blank counts as unmapped
        user_mapping={str(k): str(v).strip() for k, v in user_mapping.items() if v is not None and str(v).strip()},
        default_category=default_category,
    )


def _email(emails: Section, assumed: list[str]) -> EmailConfig | None:
    """The optional Emails section; one left as the template has it (blanks) means no e-mail, as in the original."""
    if not emails.values:
        return None
    missing = [key for key in ("from_email", "smtp_host", "to_email") if emails.values.get(key) in (None, "", [])]
    if missing:  # the template's blanks, or a half-filled section: the original ran, and could not mail
        assumed.append(f"Emails.{', Emails.'.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
                       "alerts are logged, not e-mailed")
        return None
    to_email = emails.raw("to_email")
    if isinstance(to_email, str):
        to_email = [part.strip() for part in to_email.split(",") if part.strip()]
    if not isinstance(to_email, list) or not to_email:
        raise emails.error("to_email", "must be an e-mail address or a list of them")
    username = emails.values.get("from_username")
    if not emails.given("smtp_starttls"):  # the original used STARTTLS only to log in
        assumed.append(f"Emails.smtp_starttls is not set: STARTTLS {'on' if username else 'off'} because "
                       f"from_username is {'set' if username else 'not set'}, as the original app did")
    password_env = ENV_VARS["Emails.from_password"]
    password = (emails.secret("from_password", password_env)  # line ends trimmed, control characters refused
                if emails.environ.get(password_env, "").strip("\r\n") or emails.given("from_password") else None)
    return EmailConfig(
        from_email=emails.text("from_email"),
        to_email=tuple(str(address) for address in to_email),
        smtp_host=emails.text("smtp_host"),
        smtp_port=emails.integer("smtp_port", default=587, minimum=1),
        starttls=emails.boolean("smtp_starttls", default=bool(username)),
        from_username=str(username) if username else None,
        from_password=password,
    )


def _primary_id_pattern(lcpp: Section) -> str:
    """LCPP.primary_id_pattern: a regular expression a university id must match in full."""
    pattern = lcpp.text("primary_id_pattern", default=DEFAULT_PRIMARY_ID_PATTERN)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise lcpp.error("primary_id_pattern", f"is not a valid regular expression: {exc}") from exc
    return pattern
