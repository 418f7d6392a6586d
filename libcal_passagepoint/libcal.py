"""LibCal API 1.1 client: OAuth client-credentials token and paged space bookings.

Exceptions (every one inherits from :class:`LibCalError`)::

    LibCalError                 anything that went wrong talking to LibCal
    ├── LibCalAuthError         the token endpoint refused the client id/secret (fix the config)
    ├── LibCalRequestError      LibCal answered with an error status or body (``status``, ``body``)
    └── LibCalUnavailable       timeout, connection failure, 5xx or an unreadable answer
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from alma.privacy import excerpt

__all__ = [
    "PAGE_LIMIT",
    "Booking",
    "LibCalAuthError",
    "LibCalClient",
    "LibCalError",
    "LibCalRequestError",
    "LibCalUnavailable",
    "parse_bookings",
]

PAGE_LIMIT = 500  # the API's maximum page size
TOKEN_MARGIN = 60.0  # seconds before expires_in at which a token is replaced
MAX_PAGES = 200  # a guard against a server that always answers a full page


class LibCalError(Exception):
    """Base of every LibCal client error."""


class LibCalAuthError(LibCalError):
    """The token endpoint refused the credentials."""


class LibCalRequestError(LibCalError):
    """LibCal answered a request with an error."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class LibCalUnavailable(LibCalError):
    """LibCal could not be reached or gave an unreadable answer."""


@dataclass(frozen=True)
class Booking:
    """One space booking (one per ``bookId``), as the sync needs it."""

    book_id: str
    lid: int
    start: datetime
    end: datetime
    status: str
    first_name: str
    last_name: str
    email: str
    primary_id: str | None
    cancelled: bool

    @property
    def patron(self) -> str:
        """The patron's name for messages."""
        return f"{self.first_name} {self.last_name}".strip() or "no name given"  # never the e-mail address


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _parse_time(value: Any, book_id: str, key: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"booking {book_id}: {key} {value!r} is not an ISO date-time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"booking {book_id}: {key} {value!r} has no UTC offset")
    return moment


def normalise_primary_id(answer: Any) -> str | None:
    """The university id a patron typed: trimmed; a one-letter prefix in lower case (``g12345678``)
    upper-cased, as the original app did from 2020 on; None when blank."""
    text = str(answer).strip() if answer is not None else ""
    if re.fullmatch(r"[a-z]\d{5,}", text):
        return text.upper()
    return text or None


def parse_bookings(
    rows: Iterable[dict[str, Any]], primary_id_field: str
) -> tuple[list[Booking], list[str]]:
    """Turn raw booking rows into de-duplicated Bookings; also return a message per unusable row."""
    bookings: dict[str, Booking] = {}
    problems: list[str] = []
    for row in rows:
        if not isinstance(row, dict) or not row.get("bookId"):
            keys = ", ".join(sorted(map(str, row)))[:200] if isinstance(row, dict) else type(row).__name__
            problems.append(f"LibCal returned a booking row without a bookId (its keys: {keys})")
            continue
        book_id = str(row["bookId"])
        if book_id in bookings:  # one booking for several seats comes as several rows
            continue
        status = str(row.get("status") or "")
        try:
            start = _parse_time(row.get("fromDate"), book_id, "fromDate")
            end = _parse_time(row.get("toDate"), book_id, "toDate")
        except ValueError as exc:
            problems.append(str(exc))
            continue
        lid_value: Any = row.get("lid")
        try:
            lid = int(lid_value)
        except (TypeError, ValueError):
            problems.append(f"booking {book_id}: lid {row.get('lid')!r} is not a location id")
            continue
        primary_id = normalise_primary_id(row.get(primary_id_field))
        bookings[book_id] = Booking(
            book_id=book_id,
            lid=lid,
            start=start,
            end=end,
            status=status,
            first_name=str(row.get("firstName") or "").strip(),
            last_name=str(row.get("lastName") or "").strip(),
            email=str(row.get("email") or "").strip(),
            primary_id=primary_id,
            cancelled=bool(row.get("cancelled")) or status.lower().startswith("cancel"),
        )
    return list(bookings.values()), problems


class LibCalClient:
    """Fetches space bookings; reuses its token until shortly before it expires."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token_url: str,
        bookings_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = 30.0,
        form_answers_param: str = "formAnswers",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._form_answers_param = form_answers_param
        self._token_url = token_url
        self._bookings_url = bookings_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    async def _fetch_token(self) -> str:
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "grant_type": "client_credentials",
        }
        try:
            async with self._session.post(self._token_url, data=form, timeout=self._timeout) as resp:
                text = await resp.text()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LibCalUnavailable(f"LibCal token endpoint {self._token_url} unreachable: {_describe(exc)}") from exc
        if status >= 500:
            raise LibCalUnavailable(f"LibCal token endpoint answered HTTP {status}: {excerpt(text)}")
        try:
            body = json.loads(text) if text else {}
        except ValueError as exc:
            raise LibCalUnavailable(f"LibCal token endpoint answered HTTP {status} with non-JSON: {excerpt(text)}") from exc
        # Some deployments answer errors with status 200, so look for the key, not only the status.
        if not isinstance(body, dict) or "error" in body or status != 200 or not body.get("access_token"):
            detail = body.get("error_description") or body.get("error") if isinstance(body, dict) else text
            raise LibCalAuthError(
                f"LibCal refused the client credentials (HTTP {status}: {detail or excerpt(text)}): "
                "check LibCal.client_id and LibCal.client_secret"
            )
        expires_in = body.get("expires_in", 3600)
        try:
            lifetime = float(expires_in)
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = str(body["access_token"])
        self._token_expires = self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2)
        return self._token

    async def _token_value(self, *, force: bool = False, stale: str | None = None) -> str:
        async with self._token_lock:
            if force and self._token == stale:
                self._token = None
            if self._token is None or self._clock() >= self._token_expires:
                return await self._fetch_token()
            return self._token

    async def _get(self, params: dict[str, str]) -> Any:
        token = await self._token_value()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            try:
                async with self._session.get(
                    self._bookings_url, params=params, headers=headers, timeout=self._timeout
                ) as resp:
                    text = await resp.text()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise LibCalUnavailable(f"LibCal bookings request failed: {_describe(exc)}") from exc
            if status == 401 and attempt == 1:
                token = await self._token_value(force=True, stale=token)
                continue
            if status >= 500:
                raise LibCalUnavailable(f"LibCal answered HTTP {status}: {excerpt(text)}")
            if status != 200:
                raise LibCalRequestError(f"LibCal bookings request answered HTTP {status}: {excerpt(text)}", status, text)
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise LibCalUnavailable(f"LibCal answered non-JSON: {excerpt(text)}") from exc
            if isinstance(body, dict) and "error" in body:
                raise LibCalRequestError(f"LibCal bookings request failed: {body['error']}", status, text)
            if not isinstance(body, list):
                raise LibCalUnavailable(f"LibCal bookings answer is not a list: {excerpt(text)}")
            return body
        raise LibCalAuthError("LibCal rejected a fresh token (HTTP 401 twice): check the application's scopes")

    async def fetch_bookings(self, lid: int, *, date: str | None = None, days: int = 0) -> list[dict[str, Any]]:
        """All booking rows of location *lid* (raw dicts), following pages until a short one."""
        rows: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            # formAnswers (the spelling every public production client sends) for the q<id> answers;
            # include_cancel explicitly: the spec's default of 1 is unverified, and cancellations depend on it.
            params = {"lid": str(lid), "limit": str(PAGE_LIMIT), "page": str(page),
                      self._form_answers_param: "1", "include_cancel": "1"}
            if date:
                params["date"] = date
            if days:
                params["days"] = str(days)
            batch = await self._get(params)
            rows.extend(batch)
            if len(batch) < PAGE_LIMIT:
                break
        return rows
