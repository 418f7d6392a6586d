"""Alma users for the sync: a patron's primary id -> library barcode and user group, zone by zone.

The requests go through the shared Alma client (:class:`alma.AlmaClient`, one per institution
zone's API key, all on one session) and raise its exceptions (:mod:`alma.errors`). This module is
the tool's policy on top of them:

- each zone's key in turn, in the order of ``Alma.apikeys``: AlmaNotFound (401861 / 401890) moves
  on to the next zone; a user no zone knows is AlmaNotFound
- a 429 is sent again after an exponential backoff with jitter, up to ``max_429_retries`` times;
  then AlmaRateLimited
- a 5xx, a timeout or a lost connection is sent again once (a GET changes nothing); then the error
- any other error (DAILY_THRESHOLD, a refused key, a redirect, a 4xx) fails the lookup at once
- every request first waits for the limiter shared by all lookups (alma.SlidingWindowLimiter)

Every error is re-raised with a sentence for the booking's failure reason (``reworded``); none names
the patron's id, barcode or e-mail address (the client quotes Alma through alma.privacy.excerpt).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import aiohttp

from alma import (
    AlmaClient,
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNotFound,
    AlmaRateLimited,
    AlmaRedirected,
    AlmaServerError,
    AlmaUnauthorized,
    AlmaUnavailable,
    AlmaUnexpectedResponse,
)

from .config import AlmaConfig

__all__ = ["AlmaUser", "AlmaUserHasNoBarcode", "AlmaUsers", "user_from_record"]


class AlmaUserHasNoBarcode(AlmaError):
    """The user record has no active barcode (a fact of the record, found by this tool, not by the client)."""


@dataclass(frozen=True)
class AlmaUser:
    """What the sync needs from an Alma user record."""

    primary_id: str
    barcode: str
    user_group: str
    user_group_desc: str


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


@dataclass
class AlmaUsers:
    """Looks users up by primary id in each institution zone (one client per API key) in turn."""

    zones: Sequence[AlmaClient]
    limiter: AbstractAsyncContextManager[Any]
    max_429_retries: int = 6
    backoff_base: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        if not self.zones:
            raise ValueError("at least one Alma API key is needed")

    @classmethod
    def configured(
        cls, config: AlmaConfig, session: aiohttp.ClientSession, *, limiter: AbstractAsyncContextManager[Any],
        timeout: float, **policy: Any,
    ) -> AlmaUsers:
        """One shared client per key of ``Alma.apikeys``, on *session*; a message about the URL names
        ``Alma.users_endpt``, the setting it came from. *policy*: max_429_retries, backoff_base, sleep."""
        zones = [
            AlmaClient(config.api_root, key, session, timeout=timeout,
                       url_setting="Alma.users_endpt", configured_url=config.users_endpt)
            for key in config.apikeys
        ]
        return cls(zones, limiter, **policy)

    async def lookup_user(self, primary_id: str) -> AlmaUser:
        """The user's barcode and group, trying each zone's key; AlmaNotFound if none has it."""
        not_found: AlmaNotFound | None = None
        for number, zone in enumerate(self.zones, start=1):
            try:
                record = await self._get(zone, number, primary_id)
            except AlmaNotFound as exc:
                not_found = exc
                continue
            return user_from_record(record, primary_id)
        zones = len(self.zones)
        assert not_found is not None
        raise not_found.reworded(
            f"no Alma user has this university id (tried {zones} institution zone{'s' if zones != 1 else ''})"
        ) from not_found

    async def _get(self, zone: AlmaClient, number: int, primary_id: str) -> dict[str, Any]:
        rate_limited = transient = 0
        while True:
            try:
                async with self.limiter:
                    response = await zone.get_user(primary_id)
                return response.body
            except AlmaNotFound:
                raise
            except AlmaRateLimited as exc:
                rate_limited += 1
                if rate_limited > self.max_429_retries:
                    raise exc.reworded(
                        f"Alma kept answering 429 to a user lookup after {self.max_429_retries} retries"
                    ) from exc
                delay = self.backoff_base * 2 ** (rate_limited - 1)
                await self.sleep(delay + random.uniform(0, delay))
            except AlmaUnavailable as exc:
                transient += 1
                if transient > 1:
                    raise exc.reworded(_unavailable(exc)) from exc
            except AlmaError as exc:
                raise exc.reworded(_reason(exc, number)) from exc


def _unavailable(exc: AlmaUnavailable) -> str:
    if isinstance(exc, AlmaServerError):
        return f"Alma answered HTTP {exc.status} to a user lookup: {exc.message}"
    return f"Alma users API unreachable: {exc.message}"


def _reason(exc: AlmaError, number: int) -> str:
    """A booking's failure reason for an Alma error that no retry helps."""
    if isinstance(exc, AlmaDailyQuotaExceeded):
        return "Alma's daily API quota is used up: nothing succeeds until midnight GMT"
    if isinstance(exc, AlmaUnauthorized):
        if not exc.key_refused:  # an HTML page: the message names Alma.users_endpt
            return exc.message
        return (f"Alma refused API key #{number} of Alma.apikeys (HTTP {exc.status}): "
                "check the key and its Users API permission")
    if isinstance(exc, AlmaRedirected):
        return (f"Alma answered a user lookup with a redirect ({exc.message}): set Alma.users_endpt to the "
                "address Alma's API answers at")
    if isinstance(exc, AlmaUnexpectedResponse) and not exc.errors:
        return f"Alma answered a user lookup with an unexpected body: {exc.message}"
    detail = "; ".join(f"{code} {message}" for code, message in exc.errors) or exc.message
    return f"Alma users API answered HTTP {exc.status}: {detail}"
