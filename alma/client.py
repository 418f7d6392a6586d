"""The Alma REST API client every tool uses: one class, one ``_request()``, one exception tree.

Wire format: /work/shared/reference/alma.md (and alma-items-and-analytics.md for the endpoints to
come). One client is one institution zone's view of Alma: a base URL and an API key, over an
aiohttp session it never closes. A consortium with one key per zone has one client per zone.

``_request()`` is the one place a request is sent. It adds the key (in the ``Authorization``
header only, never in a URL, so every URL reported can be logged and saved) and ``Accept:
application/json``, applies the timeout, never follows a redirect, reads ``X-Exl-Api-Remaining``,
and maps every answer shape (a JSON ``errorList`` holding a list or a single ``error``,
``errorsExist`` true or "true", the ``web_service_result`` wrapper, the XML form, a gateway's
text/plain or HTML page) to one exception of :mod:`alma.errors`. The public methods build a path
and check the shape of a success; a new endpoint is one more such method.

The client neither waits nor retries: a caller enters its limiter (:mod:`alma.limiter`) before each
call and decides what to send again (a scan-in POST that got no answer may have been applied; a
user GET may be repeated). aiohttp itself sends an idempotent request (GET, never the scan-in
POST) once more when the server closes the connection without a byte of answer; that re-send
passes the caller's limiter, and for an Analytics report it would skip a page (the server keeps
the cursor). :func:`session` makes a session that never does it, so every request a tool makes
passes its limiter and every drop reaches the caller.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from alma.analytics import ReportPage, parse_report
from alma.errors import (
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNoMoreRows,
    AlmaNotFound,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaRedirected,
    AlmaReportNotFound,
    AlmaRequestError,
    AlmaServerError,
    AlmaUnauthorized,
    AlmaUnexpectedResponse,
)
from alma.privacy import excerpt

__all__ = ["AlmaClient", "AlmaResponse", "ItemIds", "ParsedBody", "parse_body", "session", "API_PATH",
           "NOT_FOUND_CODES"]

API_PATH = "/almaws/v1"
GATEWAY_EXAMPLE = "https://api-na.hosted.exlibrisgroup.com"

DAILY_THRESHOLD = "DAILY_THRESHOLD"
PER_SECOND_THRESHOLD = "PER_SECOND_THRESHOLD"
UNAUTHORIZED = "UNAUTHORIZED"
NO_MORE_ROWS = "420033"  # an Analytics call after the last page
PATH_NOT_FOUND = "Path not found"  # how an unknown Analytics report path's 500 begins
#: No such record: a user by id (401861, or 401890 with a user_id_type), an item by barcode (401689).
NOT_FOUND_CODES = frozenset({"401861", "401890", "401689"})


def session(**options: Any) -> aiohttp.ClientSession:
    """An aiohttp session for the Alma client that never re-sends a request by itself (see the
    module's docstring); *options* go to ClientSession (a connector, …)."""
    made = aiohttp.ClientSession(**options)
    made._retry_connection = False  # aiohttp 3.14 has no public switch for its one re-send
    return made


@dataclass(frozen=True)
class AlmaResponse:
    """A successful (2xx) answer: the decoded body (JSON, else the text as received)."""

    url: str
    status: int
    body: Any
    remaining: int | None  # X-Exl-Api-Remaining: calls left today for the institution


@dataclass(frozen=True)
class ItemIds:
    """The three ids that make an item's URL (``bibs/{mms_id}/holdings/{holding_id}/items/{item_pid}``)."""

    mms_id: str
    holding_id: str
    item_pid: str


_ITEM_URL = re.compile(r"/bibs/(\d+)/holdings/(\d+)/items/(\d+)/?$")


def item_ids(url: str | None) -> ItemIds | None:
    """The ids in an item's API URL (the Location of Retrieve Item by Barcode's 302), or None."""
    match = _ITEM_URL.search(URL(url).path) if url else None
    return ItemIds(*match.groups()) if match else None


@dataclass(frozen=True)
class ParsedBody:
    """What an Alma answer says, whatever its shape."""

    data: Any  # the decoded JSON, else the text as received
    errors: tuple[tuple[str, str], ...]  # (errorCode, errorMessage), in order; "" where one is missing
    errors_exist: bool  # errorsExist is true or "true"
    plain: str  # a body that is neither JSON nor an Alma error, as one line of text (tags dropped)


_ERROR_BLOCK = re.compile(r"<(?:[\w.-]+:)?error(?:\s[^>]*)?>(.*?)</(?:[\w.-]+:)?error>", re.S)
_XML_CODE = re.compile(r"<(?:[\w.-]+:)?errorCode>\s*(.*?)\s*</(?:[\w.-]+:)?errorCode>", re.S)
_XML_MESSAGE = re.compile(r"<(?:[\w.-]+:)?errorMessage>\s*(.*?)\s*</(?:[\w.-]+:)?errorMessage>", re.S)
_XML_EXIST = re.compile(r"<(?:[\w.-]+:)?errorsExist>\s*true\s*</", re.I)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<[^>]*>")


def parse_body(text: str) -> ParsedBody:
    """Read an Alma answer: JSON (``errorList.error`` a list or one object, under a
    ``web_service_result`` wrapper or not), the XML form, or a gateway's text or HTML page."""
    try:
        data = json.loads(text)
    except ValueError:
        return _parse_markup(text)
    root = data.get("web_service_result", data) if isinstance(data, dict) else None
    if not isinstance(root, dict):
        return ParsedBody(data, (), False, "")
    error_list = root.get("errorList")
    errors = error_list.get("error") if isinstance(error_list, dict) else error_list
    if isinstance(errors, dict):  # seen in the wild: one object instead of a list
        errors = [errors]
    pairs = tuple(
        (_text(error.get("errorCode")), _text(error.get("errorMessage")))
        for error in (errors if isinstance(errors, list) else [])
        if isinstance(error, dict)
    )
    return ParsedBody(data, pairs, _true(root.get("errorsExist")), "")


def _parse_markup(text: str) -> ParsedBody:
    blocks = _ERROR_BLOCK.findall(text) or [text]
    pairs = tuple(
        (html.unescape(code), html.unescape(message))
        for block in blocks
        for code, message in zip_longest(_XML_CODE.findall(block), _XML_MESSAGE.findall(block), fillvalue="")
    )
    plain = "" if pairs else " ".join(html.unescape(_TAG.sub(" ", _SCRIPT.sub(" ", text))).split())
    return ParsedBody(text, pairs, bool(_XML_EXIST.search(text)), plain)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _true(flag: Any) -> bool:
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")


def _remaining(headers: Any) -> int | None:
    value = headers.get("X-Exl-Api-Remaining")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Quoting:
    """How a message quotes Alma: as received, or, for a request that names a patron, with the
    patron's id shown as [id] and the text passed through excerpt() (no id, barcode or e-mail)."""

    def __init__(self, patron: str | None) -> None:
        self.patron = patron
        self._pattern = re.compile(rf"(?<!\w){re.escape(patron)}(?!\w)") if patron else None

    def text(self, text: str, limit: int | None = None) -> str:
        if self._pattern is None:
            return text if limit is None else text[:limit]
        return excerpt(self._pattern.sub("[id]", text), min(limit or 200, 200))

    def url(self, url: str) -> str:
        if self.patron is None:
            return url
        parsed = URL(url)
        origin = str(parsed.origin()) if parsed.is_absolute() else ""
        rest = url[len(origin):]
        for form in (quote(self.patron, safe=""), self.patron):
            rest = re.sub(rf"(?<=[/=]){re.escape(form)}(?=[/?&#]|$)", "[id]", rest)
        return origin + rest


class AlmaClient:
    """One institution zone's Alma: its base URL and API key, over a session this client never closes."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 30.0,
        url_setting: str = "base_url",
        configured_url: str | None = None,
    ) -> None:
        """*base_url*: the region's API host (``/almaws/v1`` is added unless it already ends so).
        *url_setting* and *configured_url*: the configuration setting the URL came from and its
        value as written, which a message names when that URL turns out not to be Alma's API."""
        root = base_url.rstrip("/")
        self.api_root = root if root.endswith(API_PATH) else root + API_PATH
        self._origin = str(URL(self.api_root).origin())
        self._api_key = api_key
        self._session = session
        # A connect phase that runs out (unreachable host, no free connection) ends before the total
        # does, so that "never sent" (safe to send again) is told apart from "sent, no answer".
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout / 2)
        self._url_setting = url_setting
        self._configured_url = configured_url or base_url

    def __repr__(self) -> str:
        """Show the API root, never the key."""
        return f"AlmaClient({self.api_root!r})"

    # -- endpoints ---------------------------------------------------------------------------

    async def scan_in(
        self,
        mms_id: str,
        holding_id: str,
        item_pid: str,
        *,
        library: str,
        circ_desk: str,
        register_in_house_use: bool = False,
    ) -> AlmaResponse:
        """Scan the item in at *circ_desk* of *library*; ``body`` is Alma's item object (alma.md).

        ``register_in_house_use`` defaults to false here (Alma's default is true): returning a loan
        must not count a non-loaned item as used in house.
        """
        params = {
            "op": "scan",
            "library": library,
            "circ_desk": circ_desk,
            "register_in_house_use": "true" if register_in_house_use else "false",
        }
        path = f"bibs/{_segment(mms_id)}/holdings/{_segment(holding_id)}/items/{_segment(item_pid)}"
        response = await self._request("POST", path, params=params)
        body = response.body
        if not isinstance(body, dict) or not isinstance(body.get("item_data"), dict):
            shape = "item_data" if isinstance(body, dict) else "an item object"
            raise AlmaUnexpectedResponse(
                f"{response.status} without {shape}",
                status=response.status, url=response.url, response=body, remaining=response.remaining,
            )
        return response

    async def get_user(self, primary_id: str, *, user_id_type: str = "all_unique", view: str = "full") -> AlmaResponse:
        """A user's record (``body``) by primary id or any unique identifier; AlmaNotFound when this
        institution zone has no such user. Messages never show the id (nor anything id-shaped)."""
        params = {"user_id_type": user_id_type, "view": view}
        response = await self._request("GET", "users/{patron}", params=params, patron=primary_id)
        if not isinstance(response.body, dict):
            quoted = _Quoting(primary_id).text(str(response.body), limit=200) or "an empty body"
            raise AlmaUnexpectedResponse(
                f"HTTP {response.status} with a body that is not a JSON object: {quoted}",
                status=response.status, url=response.url, response=response.body, remaining=response.remaining,
            )
        return response

    async def item_by_barcode(self, barcode: str) -> ItemIds | AlmaResponse:
        """The first call of Retrieve Item by Barcode (``GET items?item_barcode=``, the barcode sent
        percent-encoded: a ``+`` as ``%2B``).

        Alma answers 302 to the item's own URL; that is not followed here (aiohttp would send the
        second request past the caller's rate limiter): the ids are read from ``Location`` and
        returned, for the caller to fetch with :meth:`get_item` once its limiter lets it. Should
        the answer be the item itself (200), it is returned as it is. AlmaNotFound (401689) when
        no item has the barcode.
        """
        try:
            response = await self._request("GET", "items", query={"item_barcode": barcode})
        except AlmaRedirected as exc:
            ids = item_ids(exc.location)
            if ids is None:
                raise exc.reworded(
                    f"Retrieve Item by Barcode answered HTTP {exc.status} to {exc.location or '(no Location header)'}, "
                    "which is not an item's URL"
                ) from None
            return ids
        return self._item(response)

    async def get_item(self, ids: ItemIds) -> AlmaResponse:
        """Retrieve Item: ``body`` has ``bib_data``, ``holding_data`` and ``item_data`` (no ``additional_info``)."""
        path = f"bibs/{_segment(ids.mms_id)}/holdings/{_segment(ids.holding_id)}/items/{_segment(ids.item_pid)}"
        return self._item(await self._request("GET", path))

    async def analytics_report(
        self, *, path: str | None = None, token: str | None = None, limit: int = 1000, col_names: bool = True,
    ) -> ReportPage:
        """One answer of an Analytics report (``GET analytics/reports``): the first with *path*, the
        next ones with the *token* the first answer carried (the report's path may be sent along).

        AlmaReportNotFound when no report has that path (Alma answers 500), AlmaNoMoreRows after the
        last page, AlmaUnauthorized for a key without Analytics permission.
        """
        query: dict[str, str] = {}
        if path is not None:
            query["path"] = path
        query["limit"] = str(limit)
        query["col_names"] = "true" if col_names else "false"
        if token:
            query["token"] = token
        response = await self._request("GET", "analytics/reports", query=query)
        try:
            return parse_report(response.body)
        except ValueError as exc:
            raise AlmaUnexpectedResponse(
                f"{response.status} with {exc}", status=response.status, url=response.url, response=response.body,
                remaining=response.remaining,
            ) from exc

    @staticmethod
    def _item(response: AlmaResponse) -> AlmaResponse:
        body = response.body
        if not isinstance(body, dict) or not isinstance(body.get("item_data"), dict):
            raise AlmaUnexpectedResponse(
                f"{response.status} without item_data", status=response.status, url=response.url,
                response=body, remaining=response.remaining,
            )
        return response

    # -- the one request -----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        json: Any = None,
        patron: str | None = None,
    ) -> AlmaResponse:
        """Send one request to ``api_root/path``; the decoded answer of a 2xx, else raise the AlmaError
        it maps to.

        A ``{patron}`` in *path* stands for *patron*, a patron's identifier: it is sent quoted, shown
        as ``[id]`` in every URL reported, and Alma's text is quoted only through excerpt().
        """
        quoting = _Quoting(patron)
        url = self._url(path.replace("{patron}", quote(patron, safe="")) if patron is not None else path)
        shown = self._url(path.replace("{patron}", "[id]")) + (f"?{urlencode(params)}" if params else "")
        target: str | URL = url
        if query:  # every character but the unreserved ones percent-encoded: a '+' as %2B, a space as %20
            encoded = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in query.items())
            target = URL(f"{url}?{encoded}", encoded=True)
            shown = f"{url}?{encoded}"
        headers = {"Authorization": f"apikey {self._api_key}", "Accept": "application/json"}
        try:
            async with self._session.request(
                method, target, params=params, json=json, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
                remaining = _remaining(response.headers)
                location = response.headers.get("Location")
        except aiohttp.ClientConnectorError as exc:
            raise AlmaNotSent(
                f"cannot connect to {self._origin}: {exc.os_error or exc}", code="CANNOT_CONNECT", url=shown
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:  # the connect phase ran out: nothing was sent
            raise AlmaNotSent(
                f"cannot connect to {self._origin}: no connection within {self._timeout.connect:g} s",
                code="CONNECT_TIMEOUT", url=shown,
            ) from exc
        except TimeoutError as exc:
            raise AlmaNoAnswer(f"no answer within {self._timeout.total:g} s", code="TIMEOUT", url=shown) from exc
        except aiohttp.ClientError as exc:
            raise AlmaNoAnswer(
                f"connection lost before an answer: {exc.__class__.__name__}", code="CONNECTION_LOST", url=shown
            ) from exc
        if 300 <= status < 400:
            pointed = quoting.url(str(URL(url).join(URL(location)))) if location else None
            raise AlmaRedirected(
                f"HTTP {status} redirect to {pointed or '(no Location header)'}, not followed",
                location=pointed, status=status, url=shown, response=text, remaining=remaining,
            )
        return self._decode(status, text, shown, remaining, quoting)

    def _url(self, path: str) -> str:
        return f"{self.api_root}/{path.lstrip('/')}"

    def _decode(self, status: int, text: str, url: str, remaining: int | None, quoting: _Quoting) -> AlmaResponse:
        parsed = parse_body(text)
        if 200 <= status < 300 and not parsed.errors_exist:
            return AlmaResponse(url=url, status=status, body=parsed.data, remaining=remaining)
        errors = tuple((code, quoting.text(message)) for code, message in parsed.errors)
        codes = [code for code, _ in errors if code]
        found = [code for code in codes if code in NOT_FOUND_CODES]
        fields: dict[str, Any] = {"status": status, "url": url, "response": parsed.data, "remaining": remaining,
                                  "errors": errors}

        def message_of(code: str | None) -> str:
            for error_code, message in errors:
                if message and (code is None or error_code == code):
                    return message
            return quoting.text(parsed.plain, limit=300) or f"HTTP {status} without an error message"

        first = codes[0] if codes else None
        error: AlmaError
        if DAILY_THRESHOLD in codes:
            error = AlmaDailyQuotaExceeded(message_of(DAILY_THRESHOLD), code=DAILY_THRESHOLD, **fields)
        elif status == 429 or PER_SECOND_THRESHOLD in codes:
            code = PER_SECOND_THRESHOLD if PER_SECOND_THRESHOLD in codes else first
            error = AlmaRateLimited(message_of(code), code=code, **fields)
        elif status in (401, 403) and not errors and text.lstrip().startswith("<"):
            error = AlmaUnauthorized(self._not_the_gateway(status), key_refused=False, **fields)
        elif status == 404 and not errors:  # Alma's API answers a bad item or user with its error list
            error = AlmaUnauthorized(self._no_such_api(), key_refused=False, **fields)
        elif status in (401, 403) or UNAUTHORIZED in codes:
            code = UNAUTHORIZED if UNAUTHORIZED in codes else first
            error = AlmaUnauthorized(message_of(code), code=code, **fields)
        elif found and status < 500:
            error = AlmaNotFound(message_of(found[0]), code=found[0], **fields)
        elif NO_MORE_ROWS in codes:
            error = AlmaNoMoreRows(message_of(NO_MORE_ROWS), code=NO_MORE_ROWS, **fields)
        elif status >= 500 and any(message.startswith(PATH_NOT_FOUND) for _, message in errors):
            error = AlmaReportNotFound(message_of(first), code=first, **fields)
        elif status >= 500:
            error = AlmaServerError(message_of(first), code=first, **fields)
        elif 200 <= status < 300:
            error = AlmaUnexpectedResponse(message_of(first), code=first, **fields)
        else:
            error = AlmaRequestError(message_of(first), code=first, **fields)
        raise error

    def _no_such_api(self) -> str:
        path = URL(self._configured_url).path.rstrip("/")  # the example keeps only a path that is the API's
        example = GATEWAY_EXAMPLE + (path[path.index(API_PATH):] if API_PATH in path else "")
        return (
            f"{self._url_setting} {self._configured_url} answered HTTP 404 without an Alma error: no Alma API "
            f"is at that path; check {self._url_setting} (e.g. {example})"
        )

    def _not_the_gateway(self, status: int) -> str:
        example = GATEWAY_EXAMPLE + URL(self._configured_url).path.rstrip("/")
        return (
            f"{self._url_setting} {self._configured_url} answered HTTP {status} with an HTML page, not an API "
            f"error: it is probably the institution's Alma host; use the API gateway, e.g. {example}"
        )


def _segment(value: str) -> str:
    """An id as one path segment: a '/' or '?' in a spreadsheet cell cannot reach another URL."""
    return quote(str(value), safe="")
