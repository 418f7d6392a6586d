"""Alma, as every tool here talks to it: one client, one exception tree, one rate limiter.

- :mod:`alma.client`: :class:`AlmaClient` (scan-in, user lookup; one per institution zone's key)
- :mod:`alma.errors`: the exception tree, documented at its top
- :mod:`alma.limiter`: :class:`SlidingWindowLimiter`, entered by callers before every request
- :mod:`alma.privacy`: :func:`excerpt`, the only way a message quotes a body that may name a patron

The policies stay with the tools: which errors to retry, how often, and when to stop.
"""

from alma.client import API_PATH, NOT_FOUND_CODES, AlmaClient, AlmaResponse, ParsedBody, parse_body
from alma.errors import (
    AlmaDailyQuotaExceeded,
    AlmaError,
    AlmaNoAnswer,
    AlmaNotFound,
    AlmaNotSent,
    AlmaRateLimited,
    AlmaRedirected,
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
    "ParsedBody",
    "parse_body",
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
    "AlmaUnexpectedResponse",
    "SlidingWindowLimiter",
    "excerpt",
]
