"""Load and validate the sync tool's configuration: the original app's ``config.yml``, unchanged.

Resolution order, one per setting: command line (``--config``, ``--cache``), then environment
variables (secrets only, listed in ``ENV_VARS``), then the YAML file. A relative path in the file
(``LCPP.cache_path``) is relative to the file's directory, never to the working directory. Every
problem is reported as a :class:`toolconfig.ConfigError` whose message names the key to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolconfig import ConfigError, format_duration, load_yaml, parse_duration, refuse_unknown

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
    "beside_config",
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
    config = parse_config(load_yaml(path), environ=environ, source=str(path))
    return replace(config, cache_path=beside_config(path, config.cache_path))


def beside_config(config_path: str | os.PathLike[str], path: str) -> str:
    """*path* (``~`` expanded) made absolute against the directory of the configuration file.

    The file's real directory (symlinks followed): a config.yml reached under two names, or
    through a deploy symlink, still has one cache.
    """
    return os.path.normpath(os.path.join(Path(config_path).resolve().parent, os.path.expanduser(path)))


def parse_config(
    raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, source: str = "config.yml"
) -> Config:
    """Validate an already-loaded configuration mapping; raise ConfigError naming the bad key."""
    environ = os.environ if environ is None else environ
    reader = _Reader(raw, environ, source)
    refuse_unknown(raw, KNOWN_KEYS, where="", source=source)
    home = {key: name for name, keys in KNOWN_KEYS.items() for key in keys}
    for name, keys in KNOWN_KEYS.items():
        if isinstance(raw.get(name), Mapping):
            refuse_unknown(raw[name], keys, where=name, source=source, elsewhere=home)
    assumed: list[str] = []

    lcpp = reader.section("LCPP", required=False)
    if lcpp.get("interval") is None:
        assumed.append(f"LCPP.interval is not set: a pass every {ORIGINAL_INTERVAL} seconds with run --every, "
                       "as the original app did")
    interval = reader.integer(lcpp, "LCPP", "interval", default=ORIGINAL_INTERVAL, minimum=1)

    libcal = reader.section("LibCal")
    alma = reader.section("Alma")
    pp = raw.get("PassagePoint")
    if not isinstance(pp, Mapping) or pp.get("pp_api_root") is None:
        raise reader.error("PassagePoint", "has no pp_api_root and login, uniqueId, create_visitor, create_prereg and "
                                           "get_destinations paths: this file predates the original app's PassagePoint "
                                           "settings (August 2020); add them as in config.example.yml")

    location_mapping = reader.mapping(pp, "PassagePoint", "location_mapping", required=False)
    if not location_mapping:
        assumed.append(f"PassagePoint.location_mapping is not set: every location's bookings go to the destination "
                       f"{ORIGINAL_DESTINATION!r}, as the original app did before it had location_mapping")
    destinations = {str(key).strip(): value for key, value in location_mapping.items()}
    locations = []
    raw_locations = reader.get(libcal, "LibCal", "locations")
    if not isinstance(raw_locations, list) or not raw_locations:
        raise reader.error("LibCal.locations", "must be a list of {name, id} entries, e.g. [{name: Gelman, id: 8827}]")
    for index, entry in enumerate(raw_locations):
        key = f"LibCal.locations[{index}]"
        if not isinstance(entry, Mapping) or "id" not in entry:
            raise reader.error(key, "must be a mapping with keys 'name' and 'id'")
        refuse_unknown(entry, ("name", "id"), where=key, source=source)
        try:
            lid = int(str(entry["id"]).strip())
        except ValueError:
            raise reader.error(f"{key}.id", f"must be a LibCal location id (a number), not {entry['id']!r}") from None
        name = str(entry.get("name") or lid)
        destination = destinations.get(str(lid)) if location_mapping else ORIGINAL_DESTINATION
        if not isinstance(destination, str) or not destination.strip():
            raise reader.error(
                "PassagePoint.location_mapping",
                f"has no destination for LibCal location {lid} ({name}): add '{lid}: <PassagePoint destination name>'",
            )
        locations.append(Location(id=lid, name=name, destination=destination.strip()))

    if libcal.get("statuses") is None:
        assumed.append("LibCal.statuses is not set: only 'Mediated Approved' bookings are registered, as the "
                       "original app did; set LibCal.statuses: [Confirmed, Mediated Approved] to register bookings "
                       "that need no approval too")
    statuses = reader.get(libcal, "LibCal", "statuses", default=list(DEFAULT_STATUSES))
    if isinstance(statuses, str):
        statuses = [part.strip() for part in statuses.split(",") if part.strip()]
    if not isinstance(statuses, list) or not statuses or not all(isinstance(s, str) for s in statuses):
        raise reader.error("LibCal.statuses", "must be a list of LibCal booking statuses, e.g. [Confirmed, Mediated Approved]")

    libcal_config = LibCalConfig(
        client_id=reader.secret(libcal, "LibCal", "client_id"),
        client_secret=reader.secret(libcal, "LibCal", "client_secret"),
        credentials_endpt=reader.url(libcal, "LibCal", "credentials_endpt"),
        bookings_endpt=reader.url(libcal, "LibCal", "bookings_endpt"),
        primary_id_field=reader.string(libcal, "LibCal", "primary_id_field"),
        locations=tuple(locations),
        statuses=tuple(statuses),
        form_answers_param=reader.string(libcal, "LibCal", "form_answers_param", default="formAnswers"),
    )

    env_keys = environ.get(ENV_VARS["Alma.apikeys"], "")
    if env_keys.strip():
        apikeys = [key.strip() for key in env_keys.split(",") if key.strip()]
    else:
        apikeys = reader.get(alma, "Alma", "apikeys", default=None)
        if apikeys is None and "apikey" in alma:  # the app's first version had one key
            apikeys = [alma["apikey"]]
        if isinstance(apikeys, str):
            apikeys = [apikeys]
    if not isinstance(apikeys, list) or not apikeys or not all(isinstance(k, str) and k.strip() for k in apikeys):
        raise reader.error("Alma.apikeys", f"must be a list of Alma API keys, one per institution zone (or set {ENV_VARS['Alma.apikeys']})")
    alma_config = AlmaConfig(
        apikeys=tuple(k.strip() for k in apikeys),
        users_endpt=_users_endpt(reader, alma),
        rate_per_second=reader.number(alma, "Alma", "rate_per_second", default=25.0, minimum=0.1),
    )

    user_mapping = reader.mapping(pp, "PassagePoint", "user_mapping", required=False)
    default_category = reader.string(pp, "PassagePoint", "default_category", default="Visitor")
    if not user_mapping:
        assumed.append(f"PassagePoint.user_mapping is not set: every visitor's category is {default_category!r}, "
                       "as the original app did before it had user_mapping")
    pp_config = PassagePointConfig(
        username=reader.secret(pp, "PassagePoint", "username"),
        password=reader.secret(pp, "PassagePoint", "password"),
        pp_api_root=reader.url(pp, "PassagePoint", "pp_api_root").rstrip("/"),
        login_endpt=reader.path(pp, "PassagePoint", "login_endpt"),
        uniqueId_endpt=reader.path(pp, "PassagePoint", "uniqueId_endpt"),
        create_visitor_endpt=reader.path(pp, "PassagePoint", "create_visitor_endpt"),
        create_prereg_endpt=reader.path(pp, "PassagePoint", "create_prereg_endpt"),
        get_destinations_endpt=reader.path(pp, "PassagePoint", "get_destinations_endpt"),
        user_mapping={str(k): str(v).strip() for k, v in user_mapping.items() if v is not None and str(v).strip()},
        default_category=default_category,
    )

    email = _email(reader, assumed)

    reconcile = reader.string(lcpp, "LCPP", "reconcile", default="report")
    if reconcile not in RECONCILE_POLICIES:
        raise reader.error("LCPP.reconcile", f"must be one of {', '.join(RECONCILE_POLICIES)}, not {reconcile!r}")
    pattern = reader.string(lcpp, "LCPP", "primary_id_pattern", default=DEFAULT_PRIMARY_ID_PATTERN)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise reader.error("LCPP.primary_id_pattern", f"is not a valid regular expression: {exc}") from exc
    check = reader.get(lcpp, "LCPP", "check_destinations", default=True)
    if not isinstance(check, bool):
        raise reader.error("LCPP.check_destinations", "must be true or false")

    return Config(
        interval=interval,
        libcal=libcal_config,
        alma=alma_config,
        passagepoint=pp_config,
        email=email,
        cache_path=reader.string(lcpp, "LCPP", "cache_path", default="lcpp_cache.sqlite3"),
        timeout=reader.number(lcpp, "LCPP", "timeout", default=30.0, minimum=0.1),
        primary_id_pattern=pattern,
        reconcile=reconcile,
        retry_base=reader.integer(lcpp, "LCPP", "retry_base", default=300, minimum=1),
        retry_max=reader.integer(lcpp, "LCPP", "retry_max", default=6 * 3600, minimum=1),
        check_destinations=check,
        concurrency=reader.integer(lcpp, "LCPP", "concurrency", default=8, minimum=1),
        retention=reader.duration(lcpp, "LCPP", "retention", default=DEFAULT_RETENTION, minimum=86400),
        assumptions=tuple(assumed),
    )


def _users_endpt(reader: _Reader, alma: Mapping[str, Any]) -> str:
    """Alma.users_endpt: the Users API of Alma's API gateway (the shared Alma client is given its root)."""
    value = reader.url(alma, "Alma", "users_endpt").rstrip("/")
    if not value.endswith("/almaws/v1/users"):
        raise reader.error("Alma.users_endpt", "must be the Users API of Alma's API gateway, ending in /almaws/v1/users "
                           f"(e.g. https://api-na.hosted.exlibrisgroup.com/almaws/v1/users), not {value!r}")
    return value


def _email(reader: _Reader, assumed: list[str]) -> EmailConfig | None:
    section = reader.section("Emails", required=False)
    if not section:
        return None
    missing = [key for key in ("from_email", "smtp_host", "to_email") if section.get(key) in (None, "", [])]
    if missing:  # the template's blanks, or a half-filled section: the original ran, and could not mail
        assumed.append(f"Emails.{', Emails.'.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
                       "alerts are logged, not e-mailed")
        return None
    to_email = reader.get(section, "Emails", "to_email")
    if isinstance(to_email, str):
        to_email = [part.strip() for part in to_email.split(",") if part.strip()]
    if not isinstance(to_email, list) or not to_email:
        raise reader.error("Emails.to_email", "must be an e-mail address or a list of them")
    username = reader.get(section, "Emails", "from_username", default=None)
    if section.get("smtp_starttls") is None:  # the original used STARTTLS only to log in
        starttls = bool(username)
        assumed.append(f"Emails.smtp_starttls is not set: STARTTLS {'on' if starttls else 'off'} because "
                       f"from_username is {'set' if starttls else 'not set'}, as the original app did")
    else:
        starttls = section["smtp_starttls"]
    if not isinstance(starttls, bool):
        raise reader.error("Emails.smtp_starttls", "must be true or false")
    password = reader.environ.get(ENV_VARS["Emails.from_password"]) or reader.get(
        section, "Emails", "from_password", default=None
    )
    return EmailConfig(
        from_email=reader.string(section, "Emails", "from_email"),
        to_email=tuple(str(address) for address in to_email),
        smtp_host=reader.string(section, "Emails", "smtp_host"),
        smtp_port=reader.integer(section, "Emails", "smtp_port", default=587, minimum=1),
        starttls=starttls,
        from_username=str(username) if username else None,
        from_password=str(password) if password else None,
    )


class _Reader:
    """Typed access to the raw mapping with messages that name the key."""

    def __init__(self, raw: Mapping[str, Any], environ: Mapping[str, str], source: str) -> None:
        self.raw = raw
        self.environ = environ
        self.source = source

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} {problem}")

    def section(self, name: str, *, required: bool = True) -> Mapping[str, Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise self.error(name, "section is missing")
            return {}
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a section of keys (a mapping)")
        return value

    def get(self, section: Mapping[str, Any], name: str, key: str, **kw: Any) -> Any:
        if key in section and section[key] is not None:
            return section[key]
        if "default" in kw:
            return kw["default"]
        raise self.error(f"{name}.{key}", "is missing")

    def string(self, section: Mapping[str, Any], name: str, key: str, **kw: Any) -> str:
        value = self.get(section, name, key, **kw)
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
            raise self.error(f"{name}.{key}", "must be a non-empty text value")
        return str(value).strip()

    def secret(self, section: Mapping[str, Any], name: str, key: str) -> str:
        var = ENV_VARS[f"{name}.{key}"]
        value = self.environ.get(var)
        if value:
            return value
        value = section.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.error(f"{name}.{key}", f"is missing (set it in the file or in the environment variable {var})")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(f"{name}.{key}", "must be a text value")
        return str(value)  # as written: YAML already trims an unquoted value, and a quoted one means it

    def url(self, section: Mapping[str, Any], name: str, key: str) -> str:
        value = self.string(section, name, key)
        if not re.match(r"^https?://[^/\s]+", value):
            raise self.error(f"{name}.{key}", f"must be an http(s) URL, not {value!r}")
        return value

    def path(self, section: Mapping[str, Any], name: str, key: str) -> str:
        """A path on the server, joined to its root as the original did (it concatenated the
        strings): the original template's ``pp/api/v2/visit/getDestinations`` has no leading slash."""
        value = self.string(section, name, key)
        if "://" in value or " " in value:
            raise self.error(f"{name}.{key}", f"must be a path on the server such as /pp/api/v2/auth/login, not {value!r}")
        return "/" + value.lstrip("/")

    def duration(self, section: Mapping[str, Any], name: str, key: str, *, default: str, minimum: float) -> float:
        value = section.get(key)
        try:
            seconds = parse_duration(default if value is None else str(value), name=f"{name}.{key}")
        except ConfigError as exc:
            raise self.error(f"{name}.{key}", str(exc).removeprefix(f"{name}.{key} ")) from None
        if seconds < minimum:
            raise self.error(f"{name}.{key}", f"must be at least {format_duration(minimum)}, not {value}")
        return seconds

    def mapping(self, section: Mapping[str, Any], name: str, key: str, *, required: bool = True) -> Mapping[str, Any]:
        value = section.get(key)
        if value is None:
            if required:
                raise self.error(f"{name}.{key}", "is missing")
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"{name}.{key}", "must be a mapping")
        return value

    def integer(self, section: Mapping[str, Any], name: str, key: str, *, default: int, minimum: int) -> int:
        value = section.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(f"{name}.{key}", f"must be a whole number, not {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise self.error(f"{name}.{key}", f"must be a whole number, not {value!r}") from None
        if number < minimum:
            raise self.error(f"{name}.{key}", f"must be at least {minimum}, not {number}")
        return number

    def number(self, section: Mapping[str, Any], name: str, key: str, *, default: float, minimum: float) -> float:
        value = section.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool):
            raise self.error(f"{name}.{key}", f"must be a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(f"{name}.{key}", f"must be a number, not {value!r}") from None
        if number < minimum:
            raise self.error(f"{name}.{key}", f"must be at least {minimum}, not {number}")
        return number
