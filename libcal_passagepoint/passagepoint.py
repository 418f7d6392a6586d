"""STOPware PassagePoint REST API v2 client: login, visitors, pre-registrations, destinations.

Exceptions (every one inherits from :class:`PassagePointError`)::

    PassagePointError               anything that went wrong talking to PassagePoint
    ├── PassagePointAuthError       login refused: fix PassagePoint.username / password
    ├── PassagePointVisitorExists   createVisitor: ALREADY_EXIST_UNIQUE_ID (look it up instead)
    ├── PassagePointRequestError    an error answer (``status``, ``body``)
    └── PassagePointUnavailable     timeout, dropped connection, 5xx, unreadable answer;
                                    ``maybe_applied`` tells whether the server may have acted

The login token is reused until shortly before the ``exp`` (epoch milliseconds) inside it; a 401
logs in again and retries the call once, and that retry's result is the call's result. Every call
has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from alma.privacy import excerpt

__all__ = [
    "PassagePointAuthError",
    "PassagePointClient",
    "PassagePointError",
    "PassagePointRequestError",
    "PassagePointUnavailable",
    "PassagePointVisitorExists",
    "token_expiry",
]

TOKEN_MARGIN = 30.0  # seconds before the token's exp at which a new login is made


class PassagePointError(Exception):
    """Base of every PassagePoint client error."""


class PassagePointAuthError(PassagePointError):
    """The login was refused."""


class PassagePointVisitorExists(PassagePointError):
    """createVisitor refused a uniqueId that already exists."""


class PassagePointRequestError(PassagePointError):
    """PassagePoint answered with an error."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class PassagePointUnavailable(PassagePointError):
    """PassagePoint could not be reached, or its answer was lost or unreadable."""

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


def token_expiry(token: str) -> float | None:
    """The token's expiry in epoch seconds (its payload is base64 JSON with ``exp`` in ms), if readable."""
    raw = token.strip()
    padded = (raw + "=" * (-len(raw) % 4)).replace("+", "-").replace("/", "_")
    try:
        payload = json.loads(base64.urlsafe_b64decode(padded))
        return float(payload["exp"]) / 1000.0
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None


def _first_id(body: Any) -> int | None:
    if isinstance(body, dict):
        body = body.get("data")
    if isinstance(body, list) and body and isinstance(body[0], dict) and body[0].get("id") is not None:
        return int(body[0]["id"])
    return None


class PassagePointClient:
    """One PassagePoint server; endpoint paths come from the configuration."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_root: str,
        username: str,
        password: str,
        login_endpt: str = "/auth/login",
        uniqueId_endpt: str = "/person/byUniqueId",  # noqa: N803 - the configuration's key name
        create_visitor_endpt: str = "/person/createVisitor",
        create_prereg_endpt: str = "/visit/createPreReg",
        get_destinations_endpt: str = "/visit/getDestinations",
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._root = api_root.rstrip("/")
        self._username = username
        self._password = password
        self._paths = {
            "login": login_endpt,
            "byUniqueId": uniqueId_endpt,
            "createVisitor": create_visitor_endpt,
            "createPreReg": create_prereg_endpt,
            "getDestinations": get_destinations_endpt,
        }
        # A connect phase that runs out (unreachable host, no free connection) must end before the
        # total does, so that it is told apart from a request sent whose answer never came.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout / 2)
        self._clock = clock
        self._token: str | None = None
        self._token_expires: float | None = None
        self._lock = asyncio.Lock()

    def _url(self, name: str) -> str:
        return self._root + self._paths[name]

    async def _login(self) -> str:
        body = {"username": self._username, "password": self._password}
        try:
            async with self._session.post(self._url("login"), json=body, timeout=self._timeout) as resp:
                status = resp.status
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PassagePointUnavailable(f"PassagePoint login at {self._url('login')} failed: {str(exc) or type(exc).__name__}", maybe_applied=False) from exc
        if status >= 500:
            raise PassagePointUnavailable(f"PassagePoint login answered HTTP {status}: {excerpt(text)}", maybe_applied=False)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if status != 200 or not isinstance(data, dict) or "error" in data or not data.get("token"):
            raise PassagePointAuthError(
                f"PassagePoint refused the login (HTTP {status}: {excerpt(text)}): "
                "check PassagePoint.username and PassagePoint.password"
            )
        self._token = str(data["token"])
        self._token_expires = token_expiry(self._token)
        return self._token

    async def _current_token(self, stale: str | None = None) -> str:
        async with self._lock:
            if stale is not None and self._token == stale:
                self._token = None
            expired = self._token_expires is not None and self._clock() >= self._token_expires - TOKEN_MARGIN
            if self._token is None or expired:
                return await self._login()
            return self._token

    async def ready(self) -> None:
        """Log in now unless a valid token is held: PassagePointUnavailable if PassagePoint cannot
        be reached, PassagePointAuthError if it refuses the credentials."""
        await self._current_token()

    async def _request(
        self,
        name: str,
        method: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> tuple[int, str]:
        token = await self._current_token()
        for attempt in (1, 2):
            headers = {"token": token, "Content-Type": "application/json", "Accept": "application/json"}
            try:
                async with self._session.request(
                    method, self._url(name), params=params, json=json_body, headers=headers, timeout=self._timeout
                ) as resp:
                    status = resp.status
                    text = await resp.text()
            except aiohttp.ClientConnectorError as exc:
                raise PassagePointUnavailable(f"PassagePoint {name}: cannot connect: {exc}", maybe_applied=False) from exc
            except aiohttp.ConnectionTimeoutError as exc:  # nothing was sent
                raise PassagePointUnavailable(
                    f"PassagePoint {name}: cannot connect: no connection to {self._root} within {self._timeout.connect:g} s",
                    maybe_applied=False,
                ) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise PassagePointUnavailable(f"PassagePoint {name}: no answer ({type(exc).__name__})", maybe_applied=True) from exc
            if status == 401 and attempt == 1:
                token = await self._current_token(stale=token)
                continue
            if status == 401:
                raise PassagePointAuthError(f"PassagePoint {name} rejected a fresh login token (HTTP 401 twice)")
            return status, text
        raise AssertionError("unreachable")

    @staticmethod
    def _json(name: str, status: int, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise PassagePointUnavailable(f"PassagePoint {name} answered HTTP {status} with non-JSON: {excerpt(text)}", maybe_applied=True) from exc

    def _check(self, name: str, status: int, text: str) -> Any:
        if status >= 500 and "ALREADY_EXIST_UNIQUE_ID" not in text:
            raise PassagePointUnavailable(f"PassagePoint {name} answered HTTP {status}: {excerpt(text)}", maybe_applied=True)
        if status >= 400:
            raise PassagePointRequestError(f"PassagePoint {name} answered HTTP {status}: {excerpt(text)}", status, text)
        body = self._json(name, status, text)
        if isinstance(body, dict) and body.get("error"):
            raise PassagePointRequestError(f"PassagePoint {name} failed: {excerpt(str(body['error']))}", status, text)
        return body

    async def create_visitor(
        self, *, unique_id: str, first_name: str, last_name: str, email: str, category: str, mobile_phone: str = ""
    ) -> int:
        """Create a visitor and return its id; PassagePointVisitorExists if the uniqueId is taken."""
        params = {
            "category": category,
            "firstName": first_name,
            "lastName": last_name,
            "email": email,
            "mobilePhoneNo": mobile_phone,
            "uniqueId": unique_id,
        }
        status, text = await self._request("createVisitor", "POST", params=params)
        if status >= 400 and "ALREADY_EXIST_UNIQUE_ID" in text:
            raise PassagePointVisitorExists("PassagePoint already has a visitor with this patron's barcode as uniqueId")
        visitor_id = _first_id(self._check("createVisitor", status, text))
        if visitor_id is None:
            raise PassagePointRequestError(f"PassagePoint createVisitor answered without an id: {excerpt(text)}", status, text)
        return visitor_id

    async def find_visitor(self, unique_id: str) -> int | None:
        """The id of the (first) visitor with this uniqueId, or None."""
        status, text = await self._request("byUniqueId", "GET", params={"uniqueId": unique_id})
        if status == 404:
            return None
        return _first_id(self._check("byUniqueId", status, text))

    async def find_or_create_visitor(
        self, *, unique_id: str, first_name: str, last_name: str, email: str, category: str, mobile_phone: str = ""
    ) -> int:
        """createVisitor; on ALREADY_EXIST_UNIQUE_ID look the existing visitor up by uniqueId."""
        try:
            return await self.create_visitor(
                unique_id=unique_id, first_name=first_name, last_name=last_name,
                email=email, category=category, mobile_phone=mobile_phone,
            )
        except PassagePointVisitorExists:
            visitor_id = await self.find_visitor(unique_id)
            if visitor_id is None:
                raise PassagePointRequestError(
                    "PassagePoint says a visitor with this patron's barcode exists (ALREADY_EXIST_UNIQUE_ID), "
                    "but byUniqueId finds none"
                ) from None
            return visitor_id

    async def create_prereg(self, *, start: int, end: int, visitor_id: int, destination: str) -> int:
        """Create a pre-registration (times in epoch seconds) and return its id."""
        body = {
            "startTime": str(int(start)),
            "endTime": str(int(end)),
            "visitorId": str(visitor_id),
            "destination": destination,
        }
        status, text = await self._request("createPreReg", "POST", json_body=body)
        prereg_id = _first_id(self._check("createPreReg", status, text))
        if prereg_id is None:
            raise PassagePointUnavailable(f"PassagePoint createPreReg answered without an id: {excerpt(text)}", maybe_applied=True)
        return prereg_id

    async def get_destinations(self) -> list[str] | None:
        """Destination names known to PassagePoint, or None when the answer's shape is not understood."""
        status, text = await self._request("getDestinations", "GET")
        body = self._check("getDestinations", status, text)
        if isinstance(body, dict):
            body = body.get("data", body.get("destinations"))
        if not isinstance(body, list):
            return None
        names = []
        for entry in body:
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, dict):
                for key in ("name", "destination", "description", "value"):
                    if isinstance(entry.get(key), str):
                        names.append(entry[key])
                        break
        return names
