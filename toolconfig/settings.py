"""Typed, checked reading of a configuration file, the same way for every tool.

A tool declares its settings once, as a frozen dataclass, and fills it from :class:`Section`
getters. Each getter checks one key and, when it is wrong, raises a :class:`~toolconfig.ConfigError`
that names the file and the key and says what to write instead::

    config.yml: LCPP.interval must be at least 1, not 0
    loan_discharge_config.yml: rate_limit must be a whole number, not 'fast'

Unknown keys are refused with the closest known one (:func:`toolconfig.refuse_unknown`), secrets
may come from an environment variable (which wins over the file), and file paths are taken from
the configuration file's directory, never from the working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from toolconfig import ConfigError, format_duration, parse_duration, refuse_unknown

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never in an API key or a password sent in a header or JSON

__all__ = ["MISSING", "Section"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # "no default": the key is required


class Section:
    """One mapping of a configuration file: a named section (``LCPP``), or a flat file's top level (``""``)."""

    def __init__(
        self,
        values: Mapping[str, Any] | None,
        *,
        name: str = "",
        source: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        known: Collection[str] | None = None,
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        self.values: Mapping[str, Any] = values or {}
        self.name = name
        self.source = str(source)
        self.environ = os.environ if environ is None else environ
        self.base_dir = base_dir if base_dir is not None else Path(self.source).resolve().parent
        if known is not None:
            refuse_unknown(self.values, known, where=name, source=self.source, what=None if name else "setting",
                           elsewhere=elsewhere)

    def section(self, name: str, *, required: bool = True, known: Collection[str] | None = None,
                elsewhere: Mapping[str, str] | None = None) -> Section:
        """The nested section *name* (a mapping); an absent optional one reads as empty."""
        value = self.values.get(name)
        if value is None and required:
            raise ConfigError(f"{self.source}: {self.key(name)} section is missing")
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{self.source}: {self.key(name)} must be a section of keys (a mapping)")
        return Section(value, name=self.key(name), source=self.source, environ=self.environ,
                       base_dir=self.base_dir, known=known, elsewhere=elsewhere)

    # -- helpers ----------------------------------------------------------------------------

    def key(self, key: str) -> str:
        """The key's full name, as messages show it."""
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(key)} {problem}")

    def given(self, key: str) -> bool:
        """Whether the file sets *key* (to anything but an empty value)."""
        return self.values.get(key) not in (None, "")

    def raw(self, key: str, default: Any = MISSING) -> Any:
        """The value as YAML read it; *default* when absent or empty."""
        value = self.values.get(key)
        if value is not None and value != "":
            return value
        if default is MISSING:
            raise self.error(key, "is missing")
        return default

    # -- typed getters ------------------------------------------------------------------------

    def text(self, key: str, default: Any = MISSING) -> str:
        """A non-empty text value, trimmed."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
            raise self.error(key, "must be a non-empty text value")
        return str(value).strip()

    def secret(self, key: str, env_var: str) -> str:
        """A secret: the environment variable *env_var* when set (it wins), else the file's value as written."""
        value = self.environ.get(env_var, "").strip("\r\n")  # `$(cat key.txt)` keeps a Windows \r
        if value:
            if _CONTROL.search(value):
                raise ConfigError(f"the environment variable {env_var} holds a control character (a line break or "
                                  "tab inside the value?): set it to the secret alone")
            return value
        written = self.values.get(key)
        if written is None or (isinstance(written, str) and not written.strip()):
            raise self.error(key, f"is missing (set it in the file or in the environment variable {env_var})")
        if isinstance(written, bool) or not isinstance(written, str | int | float):
            raise self.error(key, "must be a text value")
        if _CONTROL.search(str(written)):
            raise self.error(key, "holds a control character (a line break or tab inside the value?)")
        return str(written)  # YAML already trims an unquoted value, and a quoted one means its spaces

    def integer(self, key: str, *, default: Any = MISSING, minimum: int | None = None) -> int:
        """A whole number (``12`` or ``"12"``), at least *minimum*."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | str) or not re.fullmatch(r"\s*-?\d+\s*", str(value)):
            raise self.error(key, f"must be a whole number, not {value!r}")
        number = int(value)
        if minimum is not None and number < minimum:
            raise self.error(key, f"must be at least {minimum}, not {number}")
        return number

    def number(self, key: str, *, default: Any = MISSING, minimum: float | None = None,
               above: float | None = None) -> float:
        """A number, at least *minimum* (or more than *above*)."""
        value = self.raw(key, default)
        if isinstance(value, bool):
            raise self.error(key, f"must be a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(key, f"must be a number, not {value!r}") from None
        if minimum is not None and number < minimum:
            raise self.error(key, f"must be at least {minimum:g}, not {number:g}")
        if above is not None and not number > above:
            raise self.error(key, f"must be more than {above:g}, not {number:g}")
        return number

    def boolean(self, key: str, *, default: Any = MISSING) -> bool:
        """true or false."""
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def choice(self, key: str, choices: Collection[str], *, default: Any = MISSING) -> str:
        """One of *choices* (case-insensitive)."""
        value = self.text(key, default).lower()
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {self.raw(key, default)!r}")
        return value

    def url(self, key: str, *, default: Any = MISSING) -> str:
        """An http(s) URL."""
        value = self.text(key, default)
        if not re.match(r"^https?://[^/\s]+", value):
            raise self.error(key, f"must be an http(s) URL, not {value!r}")
        return value

    def server_path(self, key: str, *, example: str = "/api/v1/login") -> str:
        """A path on a server, with one leading slash (a path written without one is accepted)."""
        value = self.text(key)
        if "://" in value or " " in value:
            raise self.error(key, f"must be a path on the server such as {example}, not {value!r}")
        return "/" + value.lstrip("/")

    def file_path(self, key: str, *, default: Any = MISSING) -> Path:
        """A local path, ``~`` expanded, relative to the configuration file's directory."""
        value = Path(self.text(key, default)).expanduser()
        return value if value.is_absolute() else self.base_dir / value

    def duration(self, key: str, *, default: str, minimum: float = 0) -> float:
        """Seconds, written with a unit (``30d``, ``12h``, ``2w``); a bare number is refused."""
        value = self.values.get(key)
        try:
            seconds = parse_duration(default if value is None else str(value), name=self.key(key))
        except ConfigError as exc:
            raise self.error(key, str(exc).removeprefix(f"{self.key(key)} ")) from None
        if seconds < minimum:
            raise self.error(key, f"must be at least {format_duration(minimum)}, not {value}")
        return seconds

    def mapping(self, key: str, *, required: bool = True) -> Mapping[str, Any]:
        """A mapping value (e.g. ``location_mapping``); an absent optional one reads as empty."""
        value = self.values.get(key)
        if value is None:
            if required:
                raise self.error(key, "is missing")
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a mapping")
        return value

    def text_list(self, key: str, *, default: Any = MISSING, separator: str = ",") -> list[str]:
        """A list of text values; one text with *separator* between values is split."""
        value = self.raw(key, default)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(separator) if part.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str | int) and str(v).strip() for v in value):
            raise self.error(key, "must be a list of text values")
        return [str(v).strip() for v in value]
