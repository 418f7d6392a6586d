"""Alma Analytics answers, read: plain functions over the XML (alma-items-and-analytics.md §2).

An answer is ``<report><QueryResult>`` (XML), or the same ``QueryResult`` wrapped as a string in
``{"anies": [...]}`` when JSON was asked for. Elements are matched by local name: the rowset's
namespace changed once, and its prefix differs between answers. ``Column0`` (always 0) is not a
report column; an empty cell has no element at all; the column headings (the names the CSV export
uses) come only in the first answer with rows, and the resumption token only in the first answer.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

__all__ = ["ReportPage", "parse_report"]


@dataclass(frozen=True)
class ReportPage:
    """One answer of GET /analytics/reports."""

    token: str | None  # the resumption token, when this answer carries one
    finished: bool  # IsFinished
    headings: dict[str, str] | None  # "Column1" -> column heading, in report order; None: no schema here
    rows: list[dict[str, str]]  # "ColumnN" -> text, per row; an empty cell is absent
    tables: dict[str, str] | None = None  # "Column1" -> its table heading (subject-area folder), when given


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attribute(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def parse_report(body: Any) -> ReportPage:
    """Read an Analytics answer (the XML text, or the JSON ``anies`` form); ValueError if it is neither."""
    if isinstance(body, dict):
        anies = body.get("anies")
        if not (isinstance(anies, list) and anies and isinstance(anies[0], str)):
            raise ValueError("a JSON answer without the report's XML in 'anies'")
        text = anies[0]
    elif isinstance(body, str):
        text = body
    else:
        raise ValueError(f"an answer that is neither XML nor JSON ({type(body).__name__})")
    try:
        root = ET.fromstring(text.lstrip())
    except ET.ParseError as exc:
        raise ValueError(f"an answer that is not XML: {exc}") from exc
    token: str | None = None
    finished: bool | None = None
    headings: dict[str, str] = {}
    tables: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    for element in root.iter():
        name = _local(element.tag)
        if name == "ResumptionToken" and (element.text or "").strip():
            token = (element.text or "").strip()
        elif name == "IsFinished":
            finished = (element.text or "").strip().lower() == "true"
        elif name == "element":
            column, heading = _attribute(element, "name"), _attribute(element, "columnHeading")
            if column and column != "Column0" and heading is not None:
                headings[column] = heading
                tables[column] = _attribute(element, "tableHeading") or ""
        elif name == "Row":
            rows.append({
                _local(cell.tag): (cell.text or "").strip()
                for cell in element
                if _local(cell.tag) != "Column0" and (cell.text or "").strip()
            })
    if finished is None:
        raise ValueError("an answer without IsFinished: not an Analytics report")
    return ReportPage(token, finished, headings or None, rows, tables or None)
