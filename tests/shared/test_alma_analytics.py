"""alma.analytics.parse_report: Analytics answers shaped like the recorded ones (alma-items-and-analytics.md §2)."""

from __future__ import annotations

import json

import pytest

from alma.analytics import parse_report

TOKEN = "0A1B" + "C" * 124
FIRST = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?><report><QueryResult>
  <ResumptionToken>{TOKEN}</ResumptionToken>
  <IsFinished>false</IsFinished>
  <ResultXml>
    <rowset xmlns="urn:schemas-microsoft-com:xml-analysis:rowset">
      <xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:saw-sql="urn:saw-sql" targetNamespace="urn:schemas-microsoft-com:xml-analysis:rowset">
        <xsd:complexType name="Row">
          <xsd:sequence>
            <xsd:element maxOccurs="1" minOccurs="0" name="Column0" saw-sql:columnHeading="0" saw-sql:type="integer" type="xsd:int"/>
            <xsd:element maxOccurs="1" minOccurs="0" name="Column1" saw-sql:columnHeading="MMS Id" saw-sql:tableHeading="Bibliographic Details" type="xsd:string"/>
            <xsd:element maxOccurs="1" minOccurs="0" name="Column2" saw-sql:columnHeading="Temporary Location Code" saw-sql:tableHeading="Temporary Location" type="xsd:string"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:schema>
      <Row>
        <Column0>0</Column0>
        <Column1>991234567806421</Column1>
      </Row>
      <Row>
        <Column0>0</Column0>
        <Column1>9912345678064210001</Column1>
        <Column2>gres</Column2>
      </Row>
    </rowset>
  </ResultXml>
</QueryResult></report>"""
LATER = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?><report><QueryResult>
  <IsFinished>true</IsFinished>
  <ResultXml><rowset:rowset xmlns:rowset="urn:schemas-microsoft-com:xml-analysis:rowset">
    <rowset:Row><rowset:Column0>0</rowset:Column0><rowset:Column2>x</rowset:Column2></rowset:Row>
  </rowset:rowset></ResultXml>
</QueryResult></report>"""
LOADING = "<report><QueryResult><ResumptionToken>AB12</ResumptionToken><IsFinished>false</IsFinished><ResultXml/></QueryResult></report>"


def test_the_first_answer_has_the_token_the_headings_and_rows_without_empty_cells() -> None:
    page = parse_report(FIRST)
    assert (page.token, page.finished) == (TOKEN, False)
    assert page.headings == {"Column1": "MMS Id", "Column2": "Temporary Location Code"}  # Column0 is not a column
    assert page.rows == [{"Column1": "991234567806421"}, {"Column1": "9912345678064210001", "Column2": "gres"}]


def test_a_later_answer_has_neither_token_nor_headings_and_any_prefix_is_read() -> None:
    page = parse_report(LATER)
    assert (page.token, page.finished, page.headings, page.rows) == (None, True, None, [{"Column2": "x"}])


def test_still_loading_is_not_finished_and_has_no_rows() -> None:
    page = parse_report(LOADING)
    assert (page.token, page.finished, page.headings, page.rows) == ("AB12", False, None, [])


def test_the_json_form_wraps_the_query_result_declared_utf16() -> None:
    inner = FIRST.split("<report>", 1)[1].rsplit("</report>", 1)[0]
    body = json.loads(json.dumps({"anies": ['<?xml version="1.0" encoding="UTF-16"?>\n' + inner]}))
    assert parse_report(body) == parse_report(FIRST)


@pytest.mark.parametrize("body", [{"anies": []}, {"other": 1}, "<html>gateway</html>", "not xml", 12])
def test_anything_else_is_refused(body: object) -> None:
    with pytest.raises(ValueError):
        parse_report(body)
