"""Patron data stays out of messages: what a log line, an alert or a summary may quote of a body.

The services' answers can echo a patron's university id, library barcode or e-mail address (an
Alma error naming the user it did not find, a PassagePoint error naming the uniqueId it refused, a
row of LibCal bookings). Every client that talks about patrons (the Alma client's user lookups,
libcal_passagepoint's LibCal and PassagePoint clients) quotes a body only through
:func:`excerpt`; a message names what is enough to act on (a booking id, a patron's name).
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
