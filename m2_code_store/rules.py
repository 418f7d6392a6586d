"""What a barcode and a customer code may be, and how a value is quoted in a message.

Shared by the loader (las_csv) and the API (barcodes), with no dependency: the API's workers
must not import pyarrow or numpy for a regular expression.
"""

from __future__ import annotations

import re

__all__ = ["BARCODE_LIST_RE", "BARCODE_PATTERN", "BARCODE_RE", "CUSTOMER_CODE_PATTERN", "MAX_BARCODE_LENGTH",
           "SHOWN_CHARACTERS", "shown"]

MAX_BARCODE_LENGTH = 48  # 1000 of them fit the API's 65,000-byte query string
_BARCODE = rf"[A-Za-z0-9._-]{{1,{MAX_BARCODE_LENGTH}}}"
BARCODE_PATTERN = rf"^{_BARCODE}$"
BARCODE_RE = re.compile(BARCODE_PATTERN)
BARCODE_LIST_RE = re.compile(rf"{_BARCODE}(?:,{_BARCODE})*")  # valid barcodes, comma-separated, nothing else
CUSTOMER_CODE_PATTERN = r"^[A-Za-z0-9._-]{1,32}$"
SHOWN_CHARACTERS = 40


def shown(value: str) -> str:
    """*value* quoted for a message, shortened past SHOWN_CHARACTERS (with its full length)."""
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}… ({len(value):,} characters)"
