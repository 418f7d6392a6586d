"""Client for the one Alma call this tool makes: scan-in of an item (POST ...?op=scan).

Wire format: /work/shared/reference/alma.md. The API key travels only in the ``Authorization``
header, never in a URL, so every URL this module reports can be logged and saved.

Exceptions (every one inherits from AlmaError and carries ``status``, ``code``, ``message``,
``url``, ``response`` (the decoded body: JSON or text) and ``remaining`` (X-Exl-Api-Remaining)):

    AlmaError
    ├── AlmaNotSent               the connection failed before the request went out: safe to retry
    ├── AlmaNoAnswer              sent (or maybe sent), then no answer: timeout, connection dropped
    ├── AlmaRateLimited           429 / PER_SECOND_THRESHOLD: rejected by the gateway, safe to retry
    ├── AlmaDailyQuotaExceeded    DAILY_THRESHOLD: nothing will succeed until midnight GMT
    ├── AlmaUnauthorized          UNAUTHORIZED / 401 / 403: the key is wrong for this API
    ├── AlmaRedirected            a 3xx answer: never followed (``location`` says where it pointed)
    ├── AlmaServerError           5xx, JSON or a text/HTML gateway body: may have been applied
    ├── AlmaRequestError          4xx with an Alma error body (bad ids, unknown desk, ...)
    └── AlmaUnexpectedResponse    200 whose body is not an Alma item object
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

__all__ = [
    "AlmaClient",
    "ScanResponse",
    "AlmaError",
    "AlmaNotSent",
    "AlmaNoAnswer",
    "AlmaRateLimited",
    "AlmaDailyQuotaExceeded",
    "AlmaUnauthorized",
    "AlmaRedirected",
    "AlmaServerError",
    "AlmaRequestError",
    "AlmaUnexpectedResponse",
    "parse_error_body",
    "scan_outcome",
    "OUTCOME_RETURNED",
    "OUTCOME_TRANSIT",
    "OUTCOME_HOLD_SHELF",
    "OUTCOME_NOT_ON_LOAN",
    "OUTCOME_WORK_ORDER",
    "OUTCOME_STILL_ON_LOAN",
]

API_PATH = "/almaws/v1"


class AlmaError(Exception):
    """Base of every error this client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str = "",
        response: Any = None,
        remaining: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or (f"HTTP {status}" if status else type(self).__name__)
        self.url = url
        self.response = response
        self.remaining = remaining


class AlmaNotSent(AlmaError):
    """The connection could not be made: the request never reached Alma."""


class AlmaNoAnswer(AlmaError):
    """The request was (or may have been) sent, and no answer came: timeout or dropped connection."""


class AlmaRateLimited(AlmaError):
    """HTTP 429 / PER_SECOND_THRESHOLD: over the per-second limit."""


class AlmaDailyQuotaExceeded(AlmaError):
    """DAILY_THRESHOLD: the institution's daily quota is used up."""


class AlmaUnauthorized(AlmaError):
    """The API key is not accepted for this API."""


class AlmaRedirected(AlmaError):
    """A 3xx answer. It is not followed: aiohttp would re-send a POST as a GET (301-303), or
    re-send the scan-in, key included, to wherever the Location points (307, 308)."""

    def __init__(self, message: str, *, location: str | None, **fields: Any) -> None:
        super().__init__(message, code="REDIRECTED", **fields)
        self.location = location


class AlmaServerError(AlmaError):
    """A 5xx answer (Alma or its gateway)."""


class AlmaRequestError(AlmaError):
    """A 4xx answer with an Alma error body."""


class AlmaUnexpectedResponse(AlmaError):
    """A 200 whose body is not the item object Alma documents."""


@dataclass(frozen=True)
class ScanResponse:
    """A successful scan-in: the item object Alma returned."""

    url: str
    status: int
    item: dict[str, Any]
    remaining: int | None


_XML_CODE = re.compile(r"<errorCode>\s*(.*?)\s*</errorCode>", re.S)
_XML_MESSAGE = re.compile(r"<errorMessage>\s*(.*?)\s*</errorMessage>", re.S)
_TAG = re.compile(r"<[^>]+>")


def parse_error_body(text: str) -> tuple[str | None, str | None, Any]:
    """Alma error body (JSON, XML, or a gateway's text/HTML) -> (errorCode, errorMessage, decoded body)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        body = data.get("web_service_result", data)
        error_list = body.get("errorList") if isinstance(body, dict) else None
        errors = error_list.get("error") if isinstance(error_list, dict) else None
        if isinstance(errors, dict):  # quirk: a single object instead of a list
            errors = [errors]
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("errorCode")
            message = first.get("errorMessage")
            return (str(code) if code is not None else None, str(message) if message else None, data)
        return None, None, data
    code_match = _XML_CODE.search(text)
    if code_match:
        message_match = _XML_MESSAGE.search(text)
        return code_match.group(1), message_match.group(1) if message_match else None, text
    plain = " ".join(_TAG.sub(" ", text).split())
    return None, plain[:300] or None, text


def _errors_exist(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    flag = body.get("errorsExist")
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")


def _absolute(url: str, location: str) -> str:
    """A Location header as an absolute URL (it may be relative to the request's URL)."""
    try:
        return str(URL(url).join(URL(location)))
    except ValueError:
        return location


def _remaining(headers: Any) -> int | None:
    value = headers.get("X-Exl-Api-Remaining")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class AlmaClient:
    """Scan-in client; takes an aiohttp session it never closes."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        request_timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    def __repr__(self) -> str:
        """Show the host, never the key."""
        return f"AlmaClient({self.base_url!r})"

    def scan_url(self, mms_id: str, holding_id: str, item_pid: str) -> str:
        """The scan-in URL of one item (no query string)."""
        return f"{self.base_url}{API_PATH}/bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}"

    async def scan_in(
        self,
        mms_id: str,
        holding_id: str,
        item_pid: str,
        *,
        library: str,
        circ_desk: str,
        register_in_house_use: bool = False,
    ) -> ScanResponse:
        """Scan the item in at *circ_desk* of *library*; return Alma's item object or raise AlmaError."""
        params = {
            "op": "scan",
            "library": library,
            "circ_desk": circ_desk,
            "register_in_house_use": "true" if register_in_house_use else "false",
        }
        return await self._request("POST", self.scan_url(mms_id, holding_id, item_pid), params)

    async def _request(self, method: str, url: str, params: dict[str, str]) -> ScanResponse:
        headers = {"Authorization": f"apikey {self._api_key}", "Accept": "application/json"}
        shown_url = str(URL(url).with_query(params))
        try:
            async with self._session.request(
                method, url, params=params, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
                remaining = _remaining(response.headers)
                location = response.headers.get("Location")
        except aiohttp.ClientConnectorError as exc:
            raise AlmaNotSent(
                f"cannot connect to {self.base_url}: {exc.os_error or exc}", code="CANNOT_CONNECT", url=shown_url
            ) from exc
        except TimeoutError as exc:
            raise AlmaNoAnswer("no answer within the timeout", code="TIMEOUT", url=shown_url) from exc
        except aiohttp.ClientError as exc:
            raise AlmaNoAnswer(
                f"connection lost before an answer: {exc.__class__.__name__}",
                code="CONNECTION_LOST",
                url=shown_url,
            ) from exc
        if 300 <= status < 400:
            target = _absolute(shown_url, location) if location else None
            raise AlmaRedirected(
                f"HTTP {status} redirect to {target or '(no Location header)'}, not followed",
                location=target, status=status, url=shown_url, response=text, remaining=remaining,
            )
        return self._decode(status, text, shown_url, remaining)

    def _decode(self, status: int, text: str, url: str, remaining: int | None) -> ScanResponse:
        code, message, body = parse_error_body(text)
        if status == 200 and isinstance(body, dict) and not _errors_exist(body):
            if not isinstance(body.get("item_data"), dict):
                raise AlmaUnexpectedResponse(
                    "200 without item_data", status=status, url=url, response=body, remaining=remaining
                )
            return ScanResponse(url=url, status=status, item=body, remaining=remaining)
        fields = {"status": status, "code": code, "url": url, "response": body, "remaining": remaining}
        message = message or f"HTTP {status} without an error message"
        if code == "DAILY_THRESHOLD":
            raise AlmaDailyQuotaExceeded(message, **fields)
        if status == 429 or code == "PER_SECOND_THRESHOLD":
            raise AlmaRateLimited(message, **fields)
        if status in (401, 403) or code == "UNAUTHORIZED":
            raise AlmaUnauthorized(message, **fields)
        if status >= 500:
            raise AlmaServerError(message, **fields)
        if status == 200:
            raise AlmaUnexpectedResponse(message if code else "200 without an item object", **fields)
        raise AlmaRequestError(message, **fields)


OUTCOME_RETURNED = "returned and in place"
OUTCOME_TRANSIT = "in transit"
OUTCOME_HOLD_SHELF = "on hold shelf"
OUTCOME_NOT_ON_LOAN = "not on loan"
OUTCOME_WORK_ORDER = "in work order"
OUTCOME_STILL_ON_LOAN = "still on loan"


def _value(field: Any) -> str:
    if isinstance(field, dict):
        return str(field.get("value") or "")
    return str(field or "")


def scan_outcome(item: dict[str, Any]) -> str:
    """Where a scanned-in item ended up, from item_data.base_status/process_type and additional_info."""
    item_data = item.get("item_data") or {}
    process_type = _value(item_data.get("process_type")).upper()
    base_status = _value(item_data.get("base_status"))
    info = str(item.get("additional_info") or "").lower()
    if process_type == "LOAN":
        return OUTCOME_STILL_ON_LOAN
    if process_type == "TRANSIT" or "in transit" in info:
        return OUTCOME_TRANSIT
    if process_type in ("HOLDSHELF", "HOLD_SHELF") or "hold shelf" in info:
        return OUTCOME_HOLD_SHELF
    if process_type.startswith("WORK_ORDER"):
        return OUTCOME_WORK_ORDER
    if base_status == "1":
        return OUTCOME_RETURNED
    return f"not in place ({process_type.lower() or 'no process type'})"
