"""Settings of the loan discharge tool: one YAML file, the API key optionally from the environment.

Resolution order: command line (``--config``), then the environment (``ALMA_API_KEY`` overrides
``apikey``), then the YAML file. Relative paths in the file are resolved against the directory of
the configuration file (the original tool read ``./loan_discharge_config.yml``, so for it that is
the working directory, as before).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolconfig import ConfigError, env_override, load_yaml, refuse_unknown

__all__ = ["ConfigError", "DischargeConfig", "load_config", "DEFAULT_CONFIG_FILE", "API_KEY_ENV"]

DEFAULT_CONFIG_FILE = "loan_discharge_config.yml"
API_KEY_ENV = "ALMA_API_KEY"
DEFAULT_BASE_URL = "https://api-na.hosted.exlibrisgroup.com"
LOCATION_TYPES = ("auto", "temp", "perm")

KNOWN_KEYS = (
    "apikey",
    "loans_data_file",
    "circ_desks_file",
    "data_dir",
    "location_type",
    "base_url",
    "rate_limit",
    "concurrency",
    "batch_size",
    "daily_quota_floor",
    "request_timeout",
    "max_attempts",
)


@dataclass(frozen=True)
class DischargeConfig:
    """Everything one discharge run needs, validated."""

    apikey: str | None
    loans_data_file: Path
    circ_desks_file: Path
    data_dir: Path
    location_type: str = "auto"
    base_url: str = DEFAULT_BASE_URL
    rate_limit: int = 25
    concurrency: int = 30
    batch_size: int = 1000
    daily_quota_floor: int = 0
    request_timeout: float = 30.0
    max_attempts: int = 3

    def __repr__(self) -> str:
        """Represent the configuration without the API key."""
        shown = {k: v for k, v in self.__dict__.items() if k != "apikey"}
        shown["apikey"] = "***" if self.apikey else None
        return f"DischargeConfig({shown})"


def default_concurrency(rate_limit: int) -> int:
    """Concurrency that keeps ``rate_limit`` requests a second going at up to ~1 s per call."""
    return max(1, math.ceil(rate_limit * 1.2))


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> DischargeConfig:
    """Read and validate the configuration file at *path*; raise ConfigError saying what to fix."""
    path = Path(path)
    raw = env_override(load_yaml(path), {"apikey": API_KEY_ENV}, environ)
    refuse_unknown(raw, KNOWN_KEYS, where="", source=str(path), what="setting")
    base_dir = path.parent
    for key in ("loans_data_file", "circ_desks_file", "data_dir"):
        if not raw.get(key):
            raise ConfigError(f"{path}: key '{key}' is missing: add it (see loan_discharge_config.template.yml)")

    location_type = str(raw.get("location_type", "auto")).strip().lower()
    if location_type not in LOCATION_TYPES:
        raise ConfigError(
            f"{path}: location_type is {raw.get('location_type')!r}: use one of auto, temp, perm"
        )
    rate_limit = _positive_int(path, raw, "rate_limit", 25)
    apikey = raw.get("apikey")
    return DischargeConfig(
        apikey=str(apikey).strip() if apikey else None,
        loans_data_file=_resolve(base_dir, raw["loans_data_file"]),
        circ_desks_file=_resolve(base_dir, raw["circ_desks_file"]),
        data_dir=_resolve(base_dir, raw["data_dir"]),
        location_type=location_type,
        base_url=_base_url(path, raw.get("base_url", DEFAULT_BASE_URL)),
        rate_limit=rate_limit,
        concurrency=_positive_int(path, raw, "concurrency", default_concurrency(rate_limit)),
        batch_size=_positive_int(path, raw, "batch_size", 1000),
        daily_quota_floor=_positive_int(path, raw, "daily_quota_floor", 0, minimum=0),
        request_timeout=_positive_float(path, raw, "request_timeout", 30.0),
        max_attempts=_positive_int(path, raw, "max_attempts", 3),
    )


def _resolve(base_dir: Path, value: Any) -> Path:
    candidate = Path(str(value)).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _positive_int(path: Path, raw: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise ConfigError(f"{path}: {key} is {value!r}: use a whole number >= {minimum}")
    number = int(value)
    if number < minimum:
        raise ConfigError(f"{path}: {key} is {value!r}: use a whole number >= {minimum}")
    return number


def _positive_float(path: Path, raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number > 0:
        raise ConfigError(f"{path}: {key} is {value!r}: use a number of seconds > 0")
    return number


def _base_url(path: Path, value: Any) -> str:
    url = str(value).strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ConfigError(
            f"{path}: base_url is {value!r}: use the region's API host, "
            f"e.g. {DEFAULT_BASE_URL} or https://api-eu.hosted.exlibrisgroup.com"
        )
    # Accept a base that already ends in /almaws/v1; the client adds it.
    return re.sub(r"/almaws/v1$", "", url)
