"""Alma, as every tool here talks to it: one client, one exception tree, one rate limiter.

- :mod:`alma.client`: :class:`AlmaClient` (scan-in, user lookup, item by barcode, Analytics
  reports; one per institution zone's key)
- :mod:`alma.analytics`: :func:`parse_report`, an Analytics answer as a :class:`ReportPage`
- :mod:`alma.errors`: the exception tree, documented at its top
- :mod:`alma.limiter`: :class:`SlidingWindowLimiter`, entered by callers before every request
- :mod:`alma.privacy`: :func:`excerpt`, the only way a message quotes a body that may name a patron

The policies stay with the tools: which errors to retry, how often, and when to stop.
"""

from alma.analytics import ReportPage, parse_report
from alma.client import (
    API_PATH,
    NOT_FOUND_CODES,
    AlmaClient,
    AlmaResponse,
    ItemIds,
    ParsedBody,
    item_ids,
    parse_body,
    session,
)
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
    AlmaUnavailable,
    AlmaUnexpectedResponse,
)
from alma.limiter import SlidingWindowLimiter
from alma.privacy import excerpt

__all__ = [
    "API_PATH",
    "NOT_FOUND_CODES",
    "AlmaClient",
    "AlmaResponse",
    "ItemIds",
    "item_ids",
    "ReportPage",
    "parse_report",
    "ParsedBody",
    "parse_body",
    "session",
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
    "SlidingWindowLimiter",
    "excerpt",
]
