"""Alma Analytics reports for the Alma simulator: the reports, their server-side cursors, the XML.

The wire format is shared/reference/alma-items-and-analytics.md §2; the HTTP side (parameters,
errors, the gateway) is in ``simulators.alma``. This module knows nothing of HTTP:

- ``AnalyticsReport``: one report at a catalog path, its column headings and rows.
- ``ReportRun``: the cursor the server keeps for one resumption token (one run of a report).
  ``next_query_result(limit)`` renders the next answer's ``<QueryResult>`` and moves on.
- ``report_document`` / ``anies_body``: that ``<QueryResult>`` as the XML answer (wrapped in
  ``<report>``) or as the JSON answer (``{"anies": ["<?xml … UTF-16?>\\n<QueryResult>…"]}``).

The XML is laid out like the answers recorded from a live Alma: the declaration and
``<report><QueryResult>`` on one line, then one element per line indented by two spaces per
level, ``</QueryResult></report>`` at the end. ``report``, ``QueryResult``, ``ResumptionToken``,
``IsFinished`` and ``ResultXml`` have no namespace; ``rowset`` declares the default namespace
``urn:schemas-microsoft-com:xml-analysis:rowset`` (so ``Row`` and ``ColumnN`` are in it); the
schema is in the XML Schema namespace, its heading attributes in ``urn:saw-sql``. ``Column0``
is always ``0`` (heading "0", type integer); the report's columns are ``Column1..N``; an empty
cell has no element at all.
"""

from __future__ import annotations

import random
from collections.abc import Container
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

ROWSET_NS = "urn:schemas-microsoft-com:xml-analysis:rowset"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
SAW_SQL_NS = "urn:saw-sql"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
JSON_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-16"?>\n'

BLOCK_ROWS = 25  # Analytics serves blocks of 25 rows: a limit is rounded up to a multiple
MIN_LIMIT = 25
MAX_LIMIT = 1000
DEFAULT_LIMIT = 25
TOKEN_LENGTH = 128
TOKEN_DIGITS = "0123456789ABCDEF"

# The subject-area folder (saw-sql:tableHeading) of the columns an items report usually has,
# for reports loaded from a CSV export (whose headers carry only the column heading).
DEFAULT_TABLE_HEADING = "Physical Item Details"
TABLE_HEADINGS = {
    "mms id": "Bibliographic Details",
    "holding id": "Holding Details",
    "library code": "Location",
    "library code (active)": "Location",
    "location code": "Location",
    "temporary library code": "Temporary Location",
    "temporary library code (active)": "Temporary Location",
    "temporary location code": "Temporary Location",
}


def round_limit(limit: int) -> int:
    """The rows an answer may hold for a ``limit``: rounded up to a multiple of 25 (30 -> 50)."""
    return -(-limit // BLOCK_ROWS) * BLOCK_ROWS


def new_token(rng: random.Random, taken: Container[str] = ()) -> str:
    """A fresh resumption token: 128 upper-case hex digits, not one of ``taken``."""
    while True:
        token = "".join(rng.choices(TOKEN_DIGITS, k=TOKEN_LENGTH))
        if token not in taken:
            return token


def headings_from_header(header: list[str]) -> list[tuple[str, str]]:
    """(tableHeading, columnHeading) pairs for the headers of a CSV export.

    A header ``Table::Column`` names both; a plain header (what an Analytics export has) is the
    column heading, with the usual subject-area folder of that column, else
    ``DEFAULT_TABLE_HEADING``.
    """
    headings = []
    for raw in header:
        name = raw.replace("\ufeff", "").strip()
        table, separator, column = name.partition("::")
        if separator:
            headings.append((table.strip(), column.strip()))
            continue
        key = " ".join(name.replace("_", " ").split()).lower()
        headings.append((TABLE_HEADINGS.get(key, DEFAULT_TABLE_HEADING), name))
    return headings


@dataclass
class AnalyticsReport:
    """One Analytics report: its catalog path, column headings and rows of text.

    ``headings`` are (tableHeading, columnHeading) of Column1..N in order; each row has at most
    that many cells ("" is an empty cell; a short row is padded with empty cells).
    ``still_loading`` is how many "still loading" answers every run of the report gives before
    its first page.
    """

    path: str
    headings: list[tuple[str, str]]
    rows: list[list[str]]
    still_loading: int = 0

    def __post_init__(self) -> None:
        self.headings = [(str(table), str(column)) for table, column in self.headings]
        width = len(self.headings)
        rows = []
        for number, row in enumerate(self.rows, start=1):
            if len(row) > width:
                raise ValueError(
                    f"report {self.path!r}: row {number} has {len(row)} cells, "
                    f"but there are only {width} column headings"
                )
            rows.append([str(cell) for cell in row] + [""] * (width - len(row)))
        self.rows = rows
        if self.still_loading < 0:
            raise ValueError(f"still_loading must be 0 or more, got {self.still_loading}")


@dataclass
class ReportRun:
    """The cursor the server keeps behind one resumption token.

    It holds the report's rows as they were when the run started, the ``col_names`` of the first
    call, how many "still loading" answers are left, and how far the pages have got.
    """

    token: str
    report: AnalyticsReport
    col_names: bool
    rows: list[list[str]] = field(init=False)
    loading_left: int = field(init=False)
    position: int = 0
    answers: int = 0
    schema_sent: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        self.rows = list(self.report.rows)
        self.loading_left = self.report.still_loading

    def next_query_result(self, limit: int) -> str:
        """The ``<QueryResult>`` of the next answer, at most ``limit`` rows; the cursor moves on.

        Only the first answer of the run carries the token; only the first answer that is not
        "still loading" carries the schema; ``IsFinished`` is true on the page with the last row.
        """
        token = self.token if self.answers == 0 else None
        self.answers += 1
        if self.loading_left > 0:
            self.loading_left -= 1
            return query_result_xml(token, False, None)
        page = self.rows[self.position : self.position + limit]
        self.position += len(page)
        self.finished = self.position >= len(self.rows)
        schema = None
        if not self.schema_sent:
            self.schema_sent = True
            schema = schema_xml(self.report.headings, self.col_names)
        return query_result_xml(token, self.finished, result_xml(schema, page))


def _element(name: str, heading: tuple[str, str] | None, sql_type: str, xsd_type: str) -> str:
    number = name.removeprefix("Column")
    attributes = [("maxOccurs", "1"), ("minOccurs", "0"), ("name", name)]
    if heading is not None:
        attributes.append(("saw-sql:columnHeading", heading[1]))
    attributes.append(("saw-sql:displayFormula", f"s_{number}"))
    if heading is not None:
        attributes.append(("saw-sql:tableHeading", heading[0]))
    attributes += [("saw-sql:type", sql_type), ("type", xsd_type)]
    text = " ".join(f"{key}={quoteattr(value)}" for key, value in attributes)
    return f"            <xsd:element {text}/>"


def schema_xml(headings: list[tuple[str, str]], col_names: bool) -> str:
    """The ``xsd:schema`` of the rows; with ``col_names`` false it has no heading attributes."""
    lines = [
        f'      <xsd:schema xmlns:xsd="{XSD_NS}" xmlns:saw-sql="{SAW_SQL_NS}" '
        f'targetNamespace="{ROWSET_NS}">',
        '        <xsd:complexType name="Row">',
        "          <xsd:sequence>",
        _element("Column0", ("", "0") if col_names else None, "integer", "xsd:int"),
    ]
    for number, heading in enumerate(headings, start=1):
        lines.append(
            _element(f"Column{number}", heading if col_names else None, "varchar", "xsd:string")
        )
    lines += ["          </xsd:sequence>", "        </xsd:complexType>", "      </xsd:schema>"]
    return "\n".join(lines)


def row_xml(row: list[str]) -> str:
    """One ``<Row>``: ``Column0`` = 0, then a ``ColumnN`` for each cell that is not empty."""
    lines = ["      <Row>", "        <Column0>0</Column0>"]
    for number, value in enumerate(row, start=1):
        if value != "":
            lines.append(f"        <Column{number}>{escape(value)}</Column{number}>")
    lines.append("      </Row>")
    return "\n".join(lines)


def result_xml(schema: str | None, rows: list[list[str]]) -> str:
    """The ``<ResultXml>`` holding a rowset: the schema if given, then the rows."""
    lines = ["  <ResultXml>", f'    <rowset xmlns="{ROWSET_NS}">']
    if schema is not None:
        lines.append(schema)
    lines += [row_xml(row) for row in rows]
    lines += ["    </rowset>", "  </ResultXml>"]
    return "\n".join(lines)


def query_result_xml(token: str | None, finished: bool, result: str | None) -> str:
    """``<QueryResult>``: the token if given, ``IsFinished``, and the result (None: still loading,
    an empty ``<ResultXml/>``)."""
    lines = ["<QueryResult>"]
    if token is not None:
        lines.append(f"  <ResumptionToken>{escape(token)}</ResumptionToken>")
    lines.append(f"  <IsFinished>{'true' if finished else 'false'}</IsFinished>")
    lines.append("  <ResultXml/>" if result is None else result)
    lines.append("</QueryResult>")
    return "\n".join(lines)


def report_document(query_result: str) -> str:
    """The XML answer (the default): the declaration, then ``<report>`` around the result."""
    return f"{XML_DECLARATION}<report>{query_result}</report>"


def anies_body(query_result: str) -> dict[str, list[str]]:
    """The JSON answer: the ``QueryResult`` XML (no ``report`` wrapper) in a one-item ``anies``."""
    return {"anies": [JSON_XML_DECLARATION + query_result]}
