"""The exceptions of the Alma client: one tree, whichever tool calls Alma.

Every exception inherits from :class:`AlmaError` and carries:

- ``message`` (also ``str(exc)``): what went wrong, safe to log. Never an API key; for a request
  that names a patron (a user lookup) nothing of Alma's answer is quoted except through
  :func:`alma.privacy.excerpt`, and the patron's id is shown as ``[id]``.
- ``status``: the HTTP status; None when no answer came.
- ``code``: Alma's ``errorCode`` (``401861``, ``PER_SECOND_THRESHOLD``, …); else ``HTTP <status>``;
  else the client's own (``CANNOT_CONNECT``, ``CONNECT_TIMEOUT``, ``TIMEOUT``, ``CONNECTION_LOST``,
  ``REDIRECTED``).
- ``errors``: every (errorCode, errorMessage) pair of the answer, in order, quoted as ``message`` is.
- ``url``: the request's URL and query (the key is never in it; a patron's id is ``[id]``).
- ``remaining``: ``X-Exl-Api-Remaining``, the institution's calls left today, when the answer had it.
- ``response``: the decoded body (JSON, else the text) as received: for a results file, not a log line.

The tree::

    AlmaError
    ├── AlmaUnavailable             Alma, or the way to it, failed: nothing in the request was wrong
    │   ├── AlmaNotSent             no connection was made: the request never left, safe to retry
    │   ├── AlmaNoAnswer            sent (or maybe sent), then no answer: timeout, connection dropped
    │   └── AlmaServerError         a 5xx, with an Alma body or a gateway's text/HTML page: a POST
    │                               may have been applied
    ├── AlmaRateLimited             one 429 / PER_SECOND_THRESHOLD answer: the gateway rejected the
    │                               request, so it is safe to retry (with backoff), even a POST
    ├── AlmaDailyQuotaExceeded      DAILY_THRESHOLD (whatever the status): nothing succeeds until
    │                               midnight GMT
    ├── AlmaUnauthorized            UNAUTHORIZED, 401, 403: the key is refused (``key_refused``), or
    │                               the configured URL answered with an HTML page: not the gateway
    ├── AlmaRedirected              a 3xx: never followed (``location`` says where it pointed)
    ├── AlmaRequestError            a 4xx with an Alma error: bad ids, unknown desk, …
    │   ├── AlmaNotFound            no such record: 401861 / 401890 (user), 401689 (item barcode)
    │   ├── AlmaReportNotFound      an Analytics report path that does not exist (Alma answers 500
    │   │                           "Path not found": not a transient error)
    │   └── AlmaNoMoreRows          420033: an Analytics call after the last page (a 500 too)
    └── AlmaUnexpectedResponse      a 2xx that is not what the endpoint answers, or says errorsExist

Which of these to retry, and how often, is the caller's decision: a scan-in POST that got no
answer may have been applied, a user GET may be sent again.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlmaError",
    "AlmaUnavailable",
    "AlmaNotSent",
    "AlmaNoAnswer",
    "AlmaServerError",
    "AlmaRateLimited",
    "AlmaDailyQuotaExceeded",
    "AlmaUnauthorized",
    "AlmaRedirected",
    "AlmaRequestError",
    "AlmaNotFound",
    "AlmaReportNotFound",
    "AlmaNoMoreRows",
    "AlmaUnexpectedResponse",
]


class AlmaError(Exception):
    """Base of every error the Alma client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str = "",
        response: Any = None,
        remaining: int | None = None,
        errors: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or (f"HTTP {status}" if status else type(self).__name__)
        self.url = url
        self.response = response
        self.remaining = remaining
        self.errors = errors

    def reworded(self, message: str) -> AlmaError:
        """The same error (class and every field) with a caller's own sentence as its message."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = (message,)
        clone.message = message
        return clone


class AlmaUnavailable(AlmaError):
    """Alma or the network failed (not sent, no answer, 5xx): try again later."""


class AlmaNotSent(AlmaUnavailable):
    """The connection could not be made: the request never reached Alma."""


class AlmaNoAnswer(AlmaUnavailable):
    """The request was (or may have been) sent, and no answer came: timeout or dropped connection."""


class AlmaServerError(AlmaUnavailable):
    """A 5xx answer (Alma or its gateway)."""


class AlmaRateLimited(AlmaError):
    """One HTTP 429 / PER_SECOND_THRESHOLD answer: over the per-second limit, nothing was done."""


class AlmaDailyQuotaExceeded(AlmaError):
    """DAILY_THRESHOLD: the institution's daily quota is used up until midnight GMT."""


class AlmaUnauthorized(AlmaError):
    """The API key is not accepted for this API (``key_refused``), or the configured URL is not
    Alma's API gateway: it answered 401/403 with an HTML page (``key_refused`` False)."""

    def __init__(self, message: str, *, key_refused: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.key_refused = key_refused


class AlmaRedirected(AlmaError):
    """A 3xx answer. It is not followed: aiohttp would re-send a POST as a GET (301-303), or re-send
    the request, key included, to wherever the Location points (307, 308)."""

    def __init__(self, message: str, *, location: str | None, **fields: Any) -> None:
        super().__init__(message, code="REDIRECTED", **fields)
        self.location = location


class AlmaRequestError(AlmaError):
    """A 4xx answer with an Alma error body (or none)."""


class AlmaNotFound(AlmaRequestError):
    """Alma has no such record (a user with this id in this institution zone, an item with this barcode)."""


class AlmaReportNotFound(AlmaRequestError):
    """Analytics has no report at this path (HTTP 500, ``Path not found (…)``): fix the path."""


class AlmaNoMoreRows(AlmaRequestError):
    """420033: an Analytics report was asked for rows after its last page (HTTP 500)."""


class AlmaUnexpectedResponse(AlmaError):
    """A 2xx whose body is not what the endpoint answers, or which says errorsExist."""
