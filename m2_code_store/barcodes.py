"""Parse the ``barcodes`` query parameter of the lookup API."""

from __future__ import annotations

import json
from collections.abc import Iterable

# The loader's own rules.
from m2_code_store.rules import BARCODE_LIST_RE, BARCODE_RE, MAX_BARCODE_LENGTH, shown


class BarcodeError(ValueError):
    """The ``barcodes`` parameter is missing or malformed; the message says how."""


def _split_value(value: str) -> list[str]:
    """One parameter value: ``1234,5678``, ``[1234, "5678"]`` or JSON ``["1234", 5678]``."""
    text = value.strip()
    if text.startswith("[") or text.endswith("]"):
        if not (text.startswith("[") and text.endswith("]")):
            raise BarcodeError(f"barcodes value {shown(text)} has an unbalanced bracket")
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list):
            for item in items:
                if isinstance(item, bool) or not isinstance(item, (str, int)):
                    raise BarcodeError(f"barcodes list holds {json.dumps(item)}: each barcode must be a string or a whole number")
            return [str(item).strip() for item in items]
        text = text[1:-1]  # a bracketed list that is not JSON: [1234, abc]
        return [part.strip().strip("'\"").strip() for part in text.split(",")] if text.strip() else []
    return [part.strip() for part in text.split(",")]


def parse_barcodes(values: Iterable[str], *, limit: int) -> list[str]:
    """Barcodes from every ``barcodes`` parameter value, in order, each once."""
    values = list(values)
    if len(values) == 1 and BARCODE_LIST_RE.fullmatch(values[0]):
        barcodes = values[0].split(",")  # what clients send, checked by one regular expression
    else:
        barcodes = _checked(values)
    unique = list(dict.fromkeys(barcodes))
    if len(unique) > limit:
        raise BarcodeError(f"too many barcodes: {len(unique)} given, at most {limit} per request; split the request")
    return unique


def _checked(values: list[str]) -> list[str]:
    """Every barcode of *values*, each checked, or a BarcodeError saying which is wrong and how."""
    if not values:
        raise BarcodeError("query parameter 'barcodes' is missing: add ?barcodes=1234,5678")
    barcodes: list[str] = []
    for value in values:
        barcodes.extend(_split_value(value))
    if not barcodes or all(not b for b in barcodes):
        raise BarcodeError("query parameter 'barcodes' is empty: give one or more barcodes, e.g. ?barcodes=1234,5678")
    for position, barcode in enumerate(barcodes, start=1):
        if not barcode:
            raise BarcodeError(f"barcode {position} of {len(barcodes)} is empty (two commas in a row, or a trailing comma?)")
        if len(barcode) > MAX_BARCODE_LENGTH:
            raise BarcodeError(f"barcode {shown(barcode)} is longer than {MAX_BARCODE_LENGTH} characters")
        if not BARCODE_RE.fullmatch(barcode):
            raise BarcodeError(f"barcode {shown(barcode)} has characters outside A-Z, a-z, 0-9, '.', '_' and '-'")
    return barcodes
