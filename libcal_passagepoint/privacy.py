"""Patron data stays out of messages: what a log line, an alert or a summary may quote of a body.

The cache holds university ids, library barcodes and names; the services' answers can echo them
(an error naming the uniqueId it refused, a row of bookings). A message names the booking id and
the patron's name, which are enough to act on, and quotes a body only through :func:`excerpt`.
"""

from __future__ import annotations

import re

__all__ = ["excerpt"]

_ID_LIKE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{0,2}\d{5,}[A-Za-z0-9]*")  # G12345678, 22222000000001, …
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def excerpt(text: str, limit: int = 200) -> str:
    """*text* cut to *limit* characters, with anything shaped like an id, a barcode or an e-mail
    address replaced by ``[id]`` / ``[email]``."""
    return _ID_LIKE.sub("[id]", _EMAIL.sub("[email]", text or "")[: limit * 2])[:limit]
