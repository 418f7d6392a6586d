"""Alma Users API client: a patron's primary id -> library barcode and user group.

Exceptions (every one inherits from :class:`AlmaError`)::

    AlmaError                   anything that went wrong talking to Alma
    ├── AlmaUserNotFound        no zone's key found the user (401861 / 401890 with every key)
    ├── AlmaUserHasNoBarcode    the user exists but has no active BARCODE identifier
    ├── AlmaAuthError           a key was refused (UNAUTHORIZED): fix Alma.apikeys
    ├── AlmaRateLimited         still HTTP 429 PER_SECOND_THRESHOLD after every backoff
    ├── AlmaQuotaExceeded       DAILY_THRESHOLD: nothing succeeds until midnight GMT
    ├── AlmaRequestError        any other Alma error answer (``status``, ``code``)
    └── AlmaUnavailable         timeout, connection failure, gateway 5xx, unreadable body

Lookups are GETs, so a timeout or 5xx is retried once; 429s are retried with exponential backoff
and jitter. The rate limiter (an ``aiolimiter.AsyncLimiter`` or anything usable as
``async with limiter``) is passed in, shared by every concurrent lookup.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .privacy import excerpt

__all__ = [
    "AlmaAuthError",
    "AlmaClient",
    "AlmaError",
    "AlmaQuotaExceeded",
    "AlmaRateLimited",
    "AlmaRequestError",
    "AlmaUnavailable",
    "AlmaUser",
    "AlmaUserHasNoBarcode",
    "AlmaUserNotFound",
    "parse_alma_errors",
    "user_from_record",
]

NOT_FOUND_CODES = {"401861", "401890"}


class AlmaError(Exception):
    """Base of every Alma client error."""


class AlmaUserNotFound(AlmaError):
    """No configured zone knows the user."""


class AlmaUserHasNoBarcode(AlmaError):
    """The user record has no active barcode."""


class AlmaAuthError(AlmaError):
    """Alma refused an API key."""


class AlmaRateLimited(AlmaError):
    """The per-second threshold kept answering 429."""


class AlmaQuotaExceeded(AlmaError):
    """The institution's daily API quota is used up."""


class AlmaRequestError(AlmaError):
    """Alma answered with an error."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AlmaUnavailable(AlmaError):
    """Alma could not be reached or answered something unreadable."""


@dataclass(frozen=True)
class AlmaUser:
    """What the sync needs from an Alma user record."""

    primary_id: str
    barcode: str
    user_group: str
    user_group_desc: str


def parse_alma_errors(text: str) -> list[tuple[str, str]]:
    """(code, message) pairs from an Alma error body: JSON (list or single object) or XML."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    pairs: list[tuple[str, str]] = []
    if isinstance(body, dict):
        error_list = body.get("errorList") or {}
        errors = error_list.get("error") if isinstance(error_list, dict) else error_list
        if isinstance(errors, dict):  # seen in the wild: one object instead of a list
            errors = [errors]
        for error in errors or []:
            if isinstance(error, dict):
                pairs.append((str(error.get("errorCode", "")), str(error.get("errorMessage", ""))))
        return pairs
    for code, message in re.findall(
        r"<errorCode>(.*?)</errorCode>\s*<errorMessage>(.*?)</errorMessage>", text or "", re.S
    ):
        pairs.append((code.strip(), message.strip()))
    return pairs


def user_from_record(record: dict[str, Any], primary_id: str) -> AlmaUser:
    """Pick the active barcode and the user group out of a full user record."""
    barcode = None
    for identifier in record.get("user_identifier") or []:
        id_type = identifier.get("id_type") or {}
        if id_type.get("value") == "BARCODE" and str(identifier.get("status") or "ACTIVE").upper() == "ACTIVE":
            value = str(identifier.get("value") or "").strip()
            if value:
                barcode = value
                break
    if barcode is None:
        raise AlmaUserHasNoBarcode("the Alma user has no active barcode")
    group = record.get("user_group") or {}
    if not isinstance(group, dict):
        group = {"value": str(group), "desc": str(group)}
    return AlmaUser(
        primary_id=str(record.get("primary_id") or primary_id),
        barcode=barcode,
        user_group=str(group.get("value") or ""),
        user_group_desc=str(group.get("desc") or ""),
    )


class AlmaClient:
    """Looks users up by primary id with each configured API key (one per zone) in turn."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        users_url: str,
        api_keys: Sequence[str],
        limiter: AbstractAsyncContextManager[Any],
        timeout: float = 30.0,
        max_429_retries: int = 6,
        backoff_base: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not api_keys:
            raise ValueError("at least one Alma API key is needed")
        self._session = session
        self._users_url = users_url.rstrip("/")
        self._api_keys = list(api_keys)
        self._limiter = limiter
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_429_retries = max_429_retries
        self._backoff_base = backoff_base
        self._sleep = sleep

    async def lookup_user(self, primary_id: str) -> AlmaUser:
        """The user's barcode and group, trying each zone's key; AlmaUserNotFound if none has it."""
        for index, key in enumerate(self._api_keys, start=1):
            record = await self._fetch(primary_id, key, index)
            if record is not None:
                return user_from_record(record, primary_id)
        zones = len(self._api_keys)
        raise AlmaUserNotFound(
            f"no Alma user has this university id (tried {zones} institution zone{'s' if zones != 1 else ''})"
        )

    async def _fetch(self, primary_id: str, key: str, key_index: int) -> dict[str, Any] | None:
        url = f"{self._users_url}/{quote(primary_id, safe='')}"
        params = {"user_id_type": "all_unique", "view": "full"}
        headers = {"Authorization": f"apikey {key}", "Accept": "application/json"}
        rate_limited = 0
        transient = 0
        while True:
            try:
                async with self._limiter:
                    async with self._session.get(url, params=params, headers=headers, timeout=self._timeout) as resp:
                        status = resp.status
                        text = await resp.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                transient += 1
                if transient > 1:
                    raise AlmaUnavailable(f"Alma users API unreachable: {str(exc) or type(exc).__name__}") from exc
                continue
            errors = parse_alma_errors(text) if status != 200 else []
            codes = {code for code, _ in errors}
            if status == 200:
                try:
                    record = json.loads(text)
                except ValueError as exc:
                    raise AlmaUnavailable(f"Alma answered a user lookup with non-JSON: {_shape(text)}") from exc
                if not isinstance(record, dict):
                    raise AlmaUnavailable(f"Alma answered a user lookup with an unexpected body: {_shape(text)}")
                if str(record.get("errorsExist", "")).lower() == "true":
                    errors = parse_alma_errors(text)
                    codes = {code for code, _ in errors}
                else:
                    return record
            if codes & NOT_FOUND_CODES:
                return None
            if "DAILY_THRESHOLD" in codes:
                raise AlmaQuotaExceeded("Alma's daily API quota is used up: nothing succeeds until midnight GMT")
            if status == 429 or "PER_SECOND_THRESHOLD" in codes:
                rate_limited += 1
                if rate_limited > self._max_429_retries:
                    raise AlmaRateLimited(f"Alma kept answering 429 to a user lookup after {self._max_429_retries} retries")
                delay = self._backoff_base * 2 ** (rate_limited - 1)
                await self._sleep(delay + random.uniform(0, delay))
                continue
            if status in (401, 403) and not errors and text.lstrip().startswith("<"):  # HTML (or XML) but no Alma error
                raise AlmaAuthError(
                    f"Alma.users_endpt {self._users_url} answered HTTP {status} with an HTML page, not an API error: "
                    "it is probably the institution's Alma host; use the API gateway, e.g. "
                    "https://api-na.hosted.exlibrisgroup.com/almaws/v1/users"
                )
            if "UNAUTHORIZED" in codes or status in (401, 403):
                raise AlmaAuthError(f"Alma refused API key #{key_index} of Alma.apikeys (HTTP {status}): check the key and its Users API permission")
            if status >= 500:
                transient += 1
                if transient > 1:
                    raise AlmaUnavailable(f"Alma answered HTTP {status} to a user lookup: {_shape(text)}")
                continue
            detail = "; ".join(f"{code} {excerpt(message)}" for code, message in errors) or _shape(text)
            raise AlmaRequestError(f"Alma users API answered HTTP {status}: {detail}", status, next(iter(codes), None))


def _is_html(text: str) -> bool:
    return text.lstrip()[:15].lower().startswith(("<!doctype html", "<html"))


def _shape(text: str) -> str:
    """What a body looks like, for a message: never its content (it may echo a patron's id)."""
    if _is_html(text):
        return "an HTML page"
    return f"{len(text):,} characters" if text else "an empty body"
