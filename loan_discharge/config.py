"""Settings of the loan discharge tool: one YAML file, the API key optionally from the environment.

Resolution order: command line (``--config``), then the environment (``ALMA_API_KEY`` wins over
``apikey``), then the YAML file. The settings are declared once, in :class:`DischargeConfig`, and
read with :class:`toolconfig.settings.Section`, as every tool reads its file: unknown keys are
refused with the closest known one, relative paths are taken from the configuration file's
directory (the original tool read ``./loan_discharge_config.yml``, so for it that is the working
directory, as before), and a wrong value is named as ``file: key must …``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from toolconfig import ConfigError, load_yaml
from toolconfig.settings import Section

__all__ = [
    "API_KEY_ENV",
    "ConfigError",
    "DEFAULT_CONFIG_FILE",
    "DischargeConfig",
    "KNOWN_KEYS",
    "default_concurrency",
    "load_config",
]

DEFAULT_CONFIG_FILE = "loan_discharge_config.yml"
TEMPLATE = "loan_discharge_config.template.yml"
API_KEY_ENV = "ALMA_API_KEY"
ANALYTICS_KEY_ENV = "ALMA_ANALYTICS_API_KEY"
DEFAULT_BASE_URL = "https://api-na.hosted.exlibrisgroup.com"
LOCATION_TYPES = ("auto", "temp", "perm")

KNOWN_KEYS = (
    "apikey",
    "analytics_apikey",
    "loans_data_file",
    "analytics_report",
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


def default_concurrency(rate_limit: int) -> int:
    """Concurrency that keeps ``rate_limit`` requests a second going at up to ~1 s per call."""
    return max(1, math.ceil(rate_limit * 1.2))


@dataclass(frozen=True)
class DischargeConfig:
    """Everything one discharge run needs, validated."""

    apikey: str | None
    loans_data_file: Path | None  # None: the items come from a barcode list or the Analytics report
    circ_desks_file: Path
    data_dir: Path
    analytics_report: str | None = None  # the report's catalog path, read through the Analytics API
    analytics_apikey: str | None = None  # a separate key for the Analytics API; None: apikey
    location_type: str = "auto"
    base_url: str = DEFAULT_BASE_URL
    rate_limit: int = 25
    concurrency: int = 30
    batch_size: int = 1000
    daily_quota_floor: int = 0
    request_timeout: float = 30.0
    max_attempts: int = 3

    @property
    def items_file(self) -> Path:
        """The items CSV of a CSV run (ConfigError when the file does not name one)."""
        if self.loans_data_file is None:
            raise ConfigError(
                f"loans_data_file is missing: add it (see {TEMPLATE}), or name the items another way: "
                "--barcodes FILE, or --analytics-report PATH (or analytics_report in the file)"
            )
        return self.loans_data_file

    def __repr__(self) -> str:
        """Represent the configuration without the API key."""
        shown = {k: v for k, v in self.__dict__.items() if k not in ("apikey", "analytics_apikey")}
        shown["apikey"] = "***" if self.apikey else None
        shown["analytics_apikey"] = "***" if self.analytics_apikey else None
        return f"DischargeConfig({shown})"

    @classmethod
    def from_section(cls, section: Section, *, need_key: bool = True) -> DischargeConfig:
        """The settings of a flat configuration file's top level.

        The API key is ``ALMA_API_KEY`` when set, else ``apikey``; without *need_key* (a dry run,
        which sends nothing) it may be missing, and is then None.
        """
        rate_limit = section.integer("rate_limit", default=25, minimum=1)
        has_key = bool(section.environ.get(API_KEY_ENV)) or section.given("apikey")
        return cls(
            apikey=section.secret("apikey", API_KEY_ENV) if need_key or has_key else None,
            loans_data_file=section.file_path("loans_data_file") if section.given("loans_data_file") else None,
            analytics_report=_report_path(section),
            analytics_apikey=(section.secret("analytics_apikey", ANALYTICS_KEY_ENV)
                              if section.environ.get(ANALYTICS_KEY_ENV) or section.given("analytics_apikey") else None),
            circ_desks_file=_required_path(section, "circ_desks_file"),
            data_dir=_required_path(section, "data_dir"),
            location_type=section.choice("location_type", LOCATION_TYPES, default="auto"),
            base_url=_base_url(section),
            rate_limit=rate_limit,
            concurrency=section.integer("concurrency", default=default_concurrency(rate_limit), minimum=1),
            batch_size=section.integer("batch_size", default=1000, minimum=1),
            daily_quota_floor=section.integer("daily_quota_floor", default=0, minimum=0),
            request_timeout=section.number("request_timeout", default=30.0, above=0),
            max_attempts=section.integer("max_attempts", default=3, minimum=1),
        )


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, need_key: bool = True
) -> DischargeConfig:
    """Read and validate the configuration file at *path*; raise ConfigError saying what to fix."""
    section = Section(load_yaml(path), source=path, environ=environ, known=KNOWN_KEYS)
    return DischargeConfig.from_section(section, need_key=need_key)


def _report_path(section: Section) -> str | None:
    if not section.given("analytics_report"):
        return None
    path = section.text("analytics_report").strip()
    if not path.startswith("/"):
        raise section.error("analytics_report", f"must be the report's catalog path, starting with /shared/ or "
                            f"/users/, not {section.raw('analytics_report')!r}")
    if section.given("loans_data_file"):
        raise section.error("analytics_report", "and loans_data_file are both set: keep the one that names "
                            "where the items come from")
    return path


def _required_path(section: Section, key: str) -> Path:
    if not section.given(key):
        raise section.error(key, f"is missing: add it (see {TEMPLATE})")
    return section.file_path(key)


def _base_url(section: Section) -> str:
    """The region's API host; a trailing ``/almaws/v1`` (the client adds it) and ``/`` are dropped."""
    url = section.text("base_url", default=DEFAULT_BASE_URL).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise section.error(
            "base_url",
            f"must be the region's API host, e.g. {DEFAULT_BASE_URL} or "
            f"https://api-eu.hosted.exlibrisgroup.com, not {section.raw('base_url')!r}",
        )
    return re.sub(r"/almaws/v1$", "", url)
