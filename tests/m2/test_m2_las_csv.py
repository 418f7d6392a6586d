"""Reading LAS exports: columns by name, trimming, bad rows with line numbers, dates, duplicates."""

from __future__ import annotations

import codecs
import zlib
from datetime import date

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2_code_store.bulk import crc32_array
from m2_code_store.las_csv import OPEN_QUOTE_ROW, ExportError, duplicate_count, read_export
from m2_code_store.loader import load
from m2_code_store.store import CodeStore

HEADER = "Item barcode,Accession date,Customer code,Delete date\n"


def write(tmp_path, text: str, name: str = "items.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def rows(parsed) -> list[tuple[str, str, bool]]:
    return list(zip(parsed.barcodes.to_pylist(), parsed.customer_codes.to_pylist(), parsed.is_delete.tolist(), strict=True))


def test_columns_are_found_by_name_in_any_order_case_and_spacing(tmp_path):
    path = write(tmp_path, "\ufeff  customer CODE ,DELETE_DATE, item  Barcode ,accession date\nNX,,111,2024-01-01\n")
    assert rows(read_export(path)) == [("111", "NX", False)]


def test_values_are_trimmed(tmp_path):
    path = write(tmp_path, HEADER + "  111 , 2024-01-01 ,  NX  ,   \n")
    assert rows(read_export(path)) == [("111", "NX", False)]


def test_missing_column_is_refused_naming_it(tmp_path):
    path = write(tmp_path, "Item barcode,Accession date,Delete date\n111,2024-01-01,\n")
    with pytest.raises(ExportError) as info:
        read_export(path)
    assert str(info.value) == (
        "column 'Customer code' not found in items.csv (found: 'Item barcode', 'Accession date', "
        "'Delete date'): is this the LAS 'Barcodes by CUS/DATE' export?"
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Item barcode,Accession date,Customer code,Delete date,ITEM  BARCODE",
         "columns 'Item barcode' and 'ITEM  BARCODE' in items.csv both mean 'Item barcode': remove one"),
        ("Item barcode,Customer code,Accession date,Customer code,Delete date",
         "column 'Customer code' appears twice in items.csv (columns 2 and 4): remove one"),
        ("delete_date,Item barcode,Customer code,Delete date,DELETE DATE",
         "columns 'delete_date', 'Delete date' and 'DELETE DATE' in items.csv all mean 'Delete date': "
         "remove all but one"),
        ("Item barcode,Accession date,Customer code,Delete date,accession date,Accession date",
         "columns 'Accession date', 'accession date' and 'Accession date' in items.csv all mean 'Accession date': "
         "remove all but one"),
    ],
)
def test_two_columns_with_the_same_meaning_are_refused_naming_both(tmp_path, header, message):
    path = write(tmp_path, header + "\n" + ",".join(["1"] * header.count(",")) + ",\n")
    with pytest.raises(ExportError) as info:
        read_export(path)
    assert str(info.value) == message


def test_repeated_unknown_columns_are_ignored(tmp_path):
    path = write(tmp_path, "Item barcode,Notes,Customer code,Notes,Delete date\n111,a,NX,b,\n")
    assert rows(read_export(path)) == [("111", "NX", False)]


def test_accession_date_column_is_optional(tmp_path):
    path = write(tmp_path, "Item barcode,Customer code,Delete date\n111,NX,\n")
    assert rows(read_export(path)) == [("111", "NX", False)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (",2024-01-01,NX,", "blank barcode"),
        ("111,2024-01-01,,", "missing customer code"),
        ("111,2024-01-01,NX", "wrong number of fields (3, expected 4)"),
        ("111,2024-01-01,NX,,extra", "wrong number of fields (5, expected 4)"),
        ("111,2024-13-01,NX,", "unparseable Accession date '2024-13-01' (expected YYYY-MM-DD or MM/DD/YYYY)"),
        ("111,2024-01-01,NX,2024-02-30", "unparseable Delete date '2024-02-30' (expected YYYY-MM-DD or MM/DD/YYYY)"),
        ("111,2024-01-01,NX,yesterday", "unparseable Delete date 'yesterday' (expected YYYY-MM-DD or MM/DD/YYYY)"),
        ("11 1,2024-01-01,NX,", "barcode '11 1' has characters outside A-Z, a-z, 0-9, '.', '_' and '-'"),
        ("1" * 49 + ",2024-01-01,NX,", "barcode '" + "1" * 40 + "'… (49 characters) is longer than 48 characters"),
        ("111,2024-01-01,N X,", "customer code 'N X' is not 1-32 letters, digits, '.', '_' or '-'"),
    ],
)
def test_bad_row_is_skipped_with_line_number_and_reason(tmp_path, line, reason):
    path = write(tmp_path, HEADER + "100,2024-01-01,NA,\n" + line + "\n200,2024-01-01,NB,\n")
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {reason}"]
    assert rows(parsed) == [("100", "NA", False), ("200", "NB", False)]
    assert parsed.rows_read == 3


def test_line_numbers_stay_right_after_short_rows_and_blank_lines(tmp_path):
    text = HEADER + "1,2024-01-01,NA,\n\n2,2024-01-01\n3,2024-01-01,,\n\n4,2024-01-01,NB,\n5,x,NB,\n"
    parsed = read_export(write(tmp_path, text))
    assert [str(b) for b in parsed.bad_rows] == [
        "line 4: wrong number of fields (2, expected 4)",
        "line 5: missing customer code",
        "line 8: unparseable Accession date 'x' (expected YYYY-MM-DD or MM/DD/YYYY)",
    ]
    assert parsed.barcodes.to_pylist() == ["1", "4"]
    assert parsed.blank_lines == 2


@pytest.mark.parametrize("blank", ["", ",,,", "   ", " \t ", ", ,", "\x1a", " ,\x1a"])
def test_lines_with_nothing_in_them_are_blank_lines_not_bad_rows(tmp_path, blank):
    parsed = read_export(write(tmp_path, HEADER + "1,2024-01-01,NA,\n" + blank + "\n2,x,NB,\n"))
    assert [str(bad) for bad in parsed.bad_rows] == [
        "line 4: unparseable Accession date 'x' (expected YYYY-MM-DD or MM/DD/YYYY)"
    ]
    assert (parsed.barcodes.to_pylist(), parsed.rows_read, parsed.blank_lines) == (["1"], 2, 1)


@pytest.mark.parametrize("end", ["\x1a", "\r\n\x1a", "\n\x1a\n"])
def test_trailing_ctrl_z_is_ignored(tmp_path, end):
    parsed = read_export(write(tmp_path, HEADER + "1,2024-01-01,NA,\n2,2024-01-01,NB," + end))
    assert (rows(parsed), parsed.bad_rows, parsed.rows_read) == ([("1", "NA", False), ("2", "NB", False)], [], 2)


@pytest.mark.parametrize("date", ["2024-05-01", "05/01/2024", "5/1/2024", "12/31/1999"])
def test_iso_and_us_dates_are_accepted(tmp_path, date):
    parsed = read_export(write(tmp_path, HEADER + f"111,{date},,{date}\n"))
    assert parsed.bad_rows == []
    assert rows(parsed) == [("111", "", True)]


def test_delete_row_needs_no_customer_code(tmp_path):
    parsed = read_export(write(tmp_path, HEADER + "111,2024-01-01,,2025-01-01\n222,2024-01-01,NX,2025-01-01\n"))
    assert rows(parsed) == [("111", "", True), ("222", "", True)]
    assert (parsed.upserts, parsed.deletes) == (0, 2)


def test_duplicates_are_counted_and_kept_in_file_order(tmp_path):
    parsed = read_export(write(tmp_path, HEADER + "1,,NA,\n1,,NB,\n2,,NA,\n1,,,2024-01-01\n"))
    assert rows(parsed) == [("1", "NA", False), ("1", "NB", False), ("2", "NA", False), ("1", "", True)]
    assert duplicate_count(parsed) == 2


REVIEWER_CASE = HEADER + "33433000000111,2025-03-01,AA,\n33433000000111,2019-01-01,NX,2024-06-01\n"


def test_a_re_accession_sorted_before_an_older_delete_wins(tmp_path):
    """The export is sorted by customer code, then date: the 2025 re-accession under AA comes
    before the 2024 delete under NX in the file, yet it is the later event and must win."""
    parsed = read_export(write(tmp_path, REVIEWER_CASE))
    assert rows(parsed) == [("33433000000111", "", True), ("33433000000111", "AA", False)]
    assert duplicate_count(parsed) == 1


def test_a_re_accession_sorted_before_an_older_delete_is_loaded(tmp_path, redis_client):
    """Through the loader: the item re-accessioned in 2025 resolves to AA, it is not deleted."""
    load(redis_client, read_export(write(tmp_path, REVIEWER_CASE)))
    assert CodeStore(redis_client, meta_ttl=0).lookup(["33433000000111"]) == ["AA"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # US dates mixed with ISO are compared as dates, not as text
        ("1,03/01/2025,AA,\n1,2019-01-01,NX,06/01/2024\n", [("1", "", True), ("1", "AA", False)]),
        ("1,2019-01-01,NX,12/31/2024\n1,2025-01-01,AA,\n1,12/31/2018,NB,\n",
         [("1", "NB", False), ("1", "", True), ("1", "AA", False)]),
        ("1,2/1/2024,NB,\n1,2024-01-15,NA,\n", [("1", "NA", False), ("1", "NB", False)]),
        # a Delete date is the row's event date even when the row also has an Accession date
        ("1,2024-05-01,,2024-03-01\n1,2024-04-01,NA,\n", [("1", "", True), ("1", "NA", False)]),
    ],
)
def test_rows_are_returned_in_event_date_order(tmp_path, body, expected):
    assert rows(read_export(write(tmp_path, HEADER + body))) == expected


def test_event_order_holds_with_more_distinct_dates_than_fit_16_bits(tmp_path):
    """65,537 distinct dates (about 180 years of days) rank past 65,535: the ranks widen to 32 bits."""
    first = date(1800, 1, 1).toordinal()
    days = [date.fromordinal(first + n) for n in range(65_537)]
    body = "".join(f"{n},{day.isoformat()},NA,\n" for n, day in reversed(list(enumerate(days))))
    parsed = read_export(write(tmp_path, HEADER + body))
    assert parsed.barcodes.to_pylist() == [str(n) for n in range(65_537)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # equal event dates, written the same way or not: the later row in the file wins
        (HEADER + "1,2024-01-01,NA,\n1,01/01/2024,NB,\n1,1/1/2024,NC,\n",
         [("1", "NA", False), ("1", "NB", False), ("1", "NC", False)]),
        (HEADER + "1,2020-01-01,,2024-01-01\n1,2024-01-01,NB,\n", [("1", "", True), ("1", "NB", False)]),
        (HEADER + "1,2024-01-01,NB,\n1,2020-01-01,,2024-01-01\n", [("1", "NB", False), ("1", "", True)]),
        # no dates at all
        (HEADER + "1,,NA,\n2,,NB,\n1,,NC,\n", [("1", "NA", False), ("2", "NB", False), ("1", "NC", False)]),
        # no Accession date column
        ("Item barcode,Customer code,Delete date\n1,NA,\n2,NB,\n1,NC,\n",
         [("1", "NA", False), ("2", "NB", False), ("1", "NC", False)]),
    ],
)
def test_rows_with_equal_or_no_event_dates_keep_file_order(tmp_path, text, expected):
    assert rows(read_export(write(tmp_path, text))) == expected


def test_a_row_without_dates_is_older_than_any_dated_row(tmp_path):
    parsed = read_export(write(tmp_path, "Item barcode,Customer code,Delete date\n1,,2024-01-01\n1,NA,\n"))
    assert rows(parsed) == [("1", "NA", False), ("1", "", True)]


def test_bad_and_blank_rows_do_not_disturb_event_order(tmp_path):
    body = "1,2025-01-01,AA,\n\n2,x,NB,\n1,2019-01-01,,2024-01-01\n3,2020-01-01,NC,\n"
    parsed = read_export(write(tmp_path, HEADER + body))
    assert rows(parsed) == [("3", "NC", False), ("1", "", True), ("1", "AA", False)]
    assert [str(bad) for bad in parsed.bad_rows] == [
        "line 4: unparseable Accession date 'x' (expected YYYY-MM-DD or MM/DD/YYYY)"
    ]


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"])
def test_any_line_ending_is_read_with_right_line_numbers(tmp_path, newline):
    text = newline.join([HEADER.rstrip("\n"), "1,2024-01-01,NA,", "2,2024-01-01,,", "", "3,2024-01-01,NB,", ""])
    parsed = read_export(write(tmp_path, text))
    assert rows(parsed) == [("1", "NA", False), ("3", "NB", False)]
    assert [str(bad) for bad in parsed.bad_rows] == ["line 3: missing customer code"]
    assert (parsed.rows_read, parsed.blank_lines) == (3, 1)


@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\r"])
def test_header_only_file_reads_as_no_rows(tmp_path, ending):
    parsed = read_export(write(tmp_path, HEADER.rstrip("\n") + ending))
    assert (len(parsed.barcodes), parsed.rows_read, parsed.bad_rows, parsed.blank_lines) == (0, 0, [], 0)


def test_utf16_tab_separated_export_is_read(tmp_path):
    text = "Item barcode\tAccession date\tCustomer code\tDelete date\r\n111\t2024-01-01\tNX\t\r\n"
    path = tmp_path / "items.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    assert rows(read_export(path)) == [("111", "NX", False)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty or has no header line"),
        (codecs.BOM_UTF16_LE + "Item barcode,Customer code,Delete date\n1,NA,\n".encode("utf-16-le") + b"\x00",
         "starts as UTF-16 text but is not UTF-16 throughout \\(truncated data\\): export it again as CSV \\(UTF-8\\)"),
        (b"\xfa\xfb garbage\n", "is not UTF-8 text: export it again as CSV \\(UTF-8\\)"),
        (b"Item barcode,Customer code,Delete date,Not\xe9s\n1,NA,,\n", "is not UTF-8 text: export it again as CSV \\(UTF-8\\)"),
    ],
)
def test_unusable_file_is_refused(tmp_path, content, message):
    path = tmp_path / "items.csv"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message):
        read_export(path)


NOT_UTF8 = "not UTF-8 text: export the file again as CSV (UTF-8)"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize(
    "bad_line",
    [b"2,2024-01-01,N\xe9,", b"\xe9\xe8,2024-01-01,NB,", b"2,2024-01-01,,2024-01-01\x81", b"2,\xe9", b"2,\xe9,NB,,extra"],
)
def test_a_row_that_is_not_utf8_is_skipped_and_the_rest_loaded(tmp_path, newline, bad_line):
    """One Windows-1252 byte no longer refuses the whole file: that row is reported with its line."""
    lines = [HEADER.rstrip("\n").encode(), b"1,2024-01-01,NA,", bad_line, b"", b'3,"2024-01-01",NC,', b"\xff", b"4,2024-01-01,ND,"]
    path = tmp_path / "items.csv"
    path.write_bytes(newline.join(lines) + newline)
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {NOT_UTF8}", f"line 6: {NOT_UTF8}"]
    assert rows(parsed) == [("1", "NA", False), ("3", "NC", False), ("4", "ND", False)]
    assert (parsed.rows_read, parsed.blank_lines) == (5, 1)


def test_not_utf8_rows_keep_physical_line_numbers_after_a_quoted_value_spanning_lines(tmp_path):
    """No value of the export holds a line break: a quote that does not close on its line is a bad row."""
    text = HEADER.encode() + b'1,2024-01-01,"N\nA",\n2,2024-01-01,N\xe9,\n3,x,NC,\n4,2024-01-01,ND,\n'
    path = tmp_path / "items.csv"
    path.write_bytes(text)
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [
        f"line 2: {OPEN_QUOTE_ROW}",
        "line 3: wrong number of fields (2, expected 4)",
        f"line 4: {NOT_UTF8}",
        "line 5: unparseable Accession date 'x' (expected YYYY-MM-DD or MM/DD/YYYY)",
    ]
    assert parsed.barcodes.to_pylist() == ["4"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_stray_quote_is_one_bad_row_and_the_rest_of_the_file_is_read(tmp_path, newline):
    """A stray quote at line 3 once swallowed the 10,000 lines after it into one value
    ("read 2 rows … 1 skipped"); now that line is reported and every other row is read."""
    body = ["1,2024-01-01,NA,", '2,"2024-01-01,NB,'] + [f"{i},2024-01-01,NC," for i in range(3, 10_003)]
    body[5000] = "5001,2024-01-01,N X,"  # a bad row after it keeps its physical line number
    path = write(tmp_path, HEADER.replace("\n", newline) + newline.join(body) + newline)
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [
        f"line 3: {OPEN_QUOTE_ROW}",
        "line 5002: customer code 'N X' is not 1-32 letters, digits, '.', '_' or '-'",
    ]
    assert (parsed.rows_read, len(parsed)) == (10_002, 10_000)
    assert parsed.barcodes.to_pylist()[-1] == "10002"


@pytest.mark.parametrize(
    ("line", "reasons"),
    [
        ('7,"2024-01-01","NA",', []),  # quoted values
        ('7,"2024-01-01","N""A",', ["customer code 'N\"A' is not 1-32 letters, digits, '.', '_' or '-'"]),  # "" is a quote
        # an odd number of quotes, all literal: a quote opens a value only at its start
        ('7,x"y"""",NA,', ["unparseable Accession date 'x\"y\"\"\"\"' (expected YYYY-MM-DD or MM/DD/YYYY)"]),
        ('7,a"b,"c""d,NA', [OPEN_QUOTE_ROW]),  # an even number, one literal, and a value that never closes
    ],
)
def test_only_a_quote_that_opens_a_value_and_never_closes_is_an_open_quote(tmp_path, line, reasons):
    path = write(tmp_path, HEADER + "1,2024-01-01,NA,\n" + line + "\n9,2024-01-01,NB,\n")
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {reason}" for reason in reasons]
    assert parsed.barcodes.to_pylist() == ["1", "7", "9"] if not reasons else ["1", "9"]


def test_no_message_quotes_a_huge_value_in_full(tmp_path):
    """A 5 MB barcode, a 100 KB customer code, date and header name: each message stays short."""
    huge = "9" * 5_000_000
    path = write(tmp_path, HEADER + f"{huge},2024-01-01,NA,\n2,2024-01-01,{'C' * 100_000},\n"
                                    f"3,{'1' * 100_000},NB,\n4,2024-01-01,NA,\n")
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [
        "line 2: barcode '" + "9" * 40 + "'… (5,000,000 characters) is longer than 48 characters",
        "line 3: customer code '" + "C" * 40 + "'… (100,000 characters) is not 1-32 letters, digits, '.', '_' or '-'",
        "line 4: unparseable Accession date '" + "1" * 40 + "'… (100,000 characters) (expected YYYY-MM-DD or MM/DD/YYYY)",
    ]
    with pytest.raises(ExportError) as info:
        read_export(write(tmp_path, "X" * 100_000 + ",Customer code\n1,NA\n", "odd.csv"))
    assert len(str(info.value)) < 400 and "(100,000 characters)" in str(info.value)
    with pytest.raises(ExportError) as info:
        read_export(write(tmp_path, "X" * 300_000 + ",Customer code\n1,NA\n", "odder.csv"))
    assert str(info.value) == ("the header line of odder.csv cannot be read as CSV (field larger than field limit "
                               "(131072)): is this the LAS 'Barcodes by CUS/DATE' export?")


@pytest.mark.timeout(60)
def test_one_huge_skipped_barcode_does_not_slow_the_load(tmp_path, redis_client, monkeypatch):
    """A 5 MB barcode field once made the CRC loop run once per character of it (did not finish):
    rows that are skipped are never hashed, so the longest string hashed is a valid barcode."""
    from m2_code_store import bulk

    hashed_lengths = []
    real = bulk.crc32_array

    def spy(array, rows=None):
        values = array if rows is None else array.take(pa.array(rows))
        hashed_lengths.append(max((len(v) for v in values.to_pylist()), default=0))
        return real(array, rows)

    monkeypatch.setattr(bulk, "crc32_array", spy)
    path = write(tmp_path, HEADER + "1,2024-01-01,NA,\n" + "9" * 5_000_000 + ",2024-01-01,NB,\n2,2024-01-01,NC,\n")
    result = load(redis_client, read_export(path))
    assert result.records == 2 and max(hashed_lengths) == 1
    assert CodeStore(redis_client).lookup(["1", "2"]) == ["NA", "NC"]


def test_the_barcodes_hashed_while_the_rows_are_checked_are_the_ones_loaded(tmp_path, redis_client):
    """write_csv_to_redis hashes every barcode (bad rows too) while the rows are checked, when all
    have one length; the store is the same as when the valid rows are hashed later, alone."""
    from m2_code_store.bulk import barcode_crcs

    text = HEADER + "".join(f"{33433000000000 + i},2024-01-0{1 + i % 3},N{'ABC'[i % 3]},\n" for i in range(40))
    text += "3343300000004!,2024-01-01,NA,\n33433000000007,2024-01-04,,2024-02-01\n33433000000008,,N?,\n"
    path = write(tmp_path, text)
    seen = []

    def hashing(barcodes):
        seen.append(barcodes)
        return barcode_crcs(barcodes)

    parsed = read_export(path, hash_barcodes=hashing)
    assert len(seen[0]) == 43 and seen[0][40].as_py() == "3343300000004!"  # every row, the bad ones too
    assert parsed.row_crc.tolist() == [zlib.crc32(b.encode()) for b in seen[0].to_pylist()]
    assert len(parsed.bad_rows) == 2
    load(redis_client, parsed)
    hashed_later = read_export(path)
    assert hashed_later.row_crc is None
    codes = CodeStore(redis_client).lookup([str(33433000000000 + i) for i in range(40)])
    redis_client.flushdb()
    load(redis_client, hashed_later)
    assert CodeStore(redis_client).lookup([str(33433000000000 + i) for i in range(40)]) == codes
    assert codes[:4] == ["NA", "NB", "NC", "NA"] and codes[7] is None and codes[8] == "NC"
    assert barcode_crcs(pa.array(["1", "22"])) is None  # of two lengths: the valid rows are hashed later


@pytest.mark.timeout(60)
def test_a_file_of_huge_barcodes_all_of_one_length_is_not_hashed(tmp_path, redis_client):
    """Every barcode of one length is hashed in place, while the rows are checked, only when
    that length is a valid barcode's: the CRC tables of a 20,000-byte width took minutes."""
    from m2_code_store.bulk import barcode_crcs

    path = write(tmp_path, HEADER + "".join(f"{c * 20_000},2024-01-01,NA,\n" for c in "XY"))
    parsed = read_export(path, hash_barcodes=barcode_crcs)
    assert parsed.row_crc is None and len(parsed.bad_rows) == 2
    assert load(redis_client, parsed).records == 0


def test_not_utf8_rows_keep_line_numbers_after_a_quote_inside_a_value(tmp_path):
    """A quote inside a value is a literal character (for Arrow as for the search for bad rows)."""
    text = b'Item barcode,Notes,Customer code,Delete date\n1,12" ruler,NA,\n2,x,N\xe9,\n3,"y",NC,\n4,\xe9,ND,\n5,z,N\xe9,\n'
    path = tmp_path / "items.csv"
    path.write_bytes(text)
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {NOT_UTF8}", f"line 6: {NOT_UTF8}"]
    assert rows(parsed) == [("1", "NA", False), ("3", "NC", False), ("4", "ND", False)]


def test_bytes_that_are_not_utf8_in_a_column_not_read_do_not_matter(tmp_path):
    text = b"Item barcode,Notes,Customer code,Delete date\n1,caf\xe9,NA,\n2,ok,N\xe9,\n3,\xff,NC,\n"
    path = tmp_path / "items.csv"
    path.write_bytes(text)
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {NOT_UTF8}"]
    assert rows(parsed) == [("1", "NA", False), ("3", "NC", False)]


def test_a_short_row_that_is_not_utf8_prints_no_traceback(tmp_path, capfd):
    path = tmp_path / "items.csv"
    path.write_bytes(HEADER.encode() + b"1,2024-01-01,NA,\n2,\xe9\n")
    parsed = read_export(path)
    assert [str(bad) for bad in parsed.bad_rows] == [f"line 3: {NOT_UTF8}"]
    assert capfd.readouterr().err == ""


def test_several_missing_columns_are_all_named(tmp_path):
    with pytest.raises(ExportError, match=r"^columns 'Item barcode', 'Customer code' and 'Delete date' not found in items.csv"):
        read_export(write(tmp_path, "a,b\n1,2\n"))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"items.csv not found"):
        read_export(tmp_path / "items.csv")


barcode_text = st.text(alphabet="ABCXYZabcxyz0123456789._-", min_size=1, max_size=48)


ISO_AND_US = {"2019-01-01": date(2019, 1, 1), "06/01/2024": date(2024, 6, 1), "2024-06-01": date(2024, 6, 1),
              "3/1/2025": date(2025, 3, 1), "": None}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(barcode_text, st.sampled_from(["NA", "NX", "QQ1"]), st.sampled_from(sorted(ISO_AND_US)),
                          st.sampled_from(sorted(ISO_AND_US))), min_size=1, max_size=40))
def test_any_valid_export_round_trips_in_event_date_order(tmp_path_factory, records):
    """Property: every valid row comes back with its code and kind, in stable event-date order.

    The event date is the Delete date, else the Accession date; no date sorts first.
    """
    path = tmp_path_factory.mktemp("prop") / "items.csv"
    lines = [f"{b},{accession},{'' if deleted else c},{deleted}" for b, c, accession, deleted in records]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    parsed = read_export(path)
    assert parsed.bad_rows == []

    def event(record):
        return ISO_AND_US[record[3]] or ISO_AND_US[record[2]] or date.min

    expected = sorted(records, key=event)
    assert rows(parsed) == [(b, "" if deleted else c, bool(deleted)) for b, c, _, deleted in expected]


LINE_KINDS = {  # kind -> (line bytes for barcode n, blank?, reason if skipped)
    "valid": (lambda n: f"{n},2024-01-01,NA,".encode(), False, None),
    "quoted": (lambda n: f'{n},"2024-01-01","NA",'.encode(), False, None),
    "empty": (lambda n: b"", True, None),
    "commas": (lambda n: b",,,", True, None),
    "spaces": (lambda n: b" \t ", True, None),
    "ctrl-z": (lambda n: b"\x1a", True, None),
    "short": (lambda n: f"{n},2024-01-01".encode(), False, "wrong number of fields (2, expected 4)"),
    "no code": (lambda n: f"{n},2024-01-01,,".encode(), False, "missing customer code"),
    "not utf8": (lambda n: f"{n},2024-01-01,N".encode() + b"\xe9,", False, NOT_UTF8),
}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(sorted(LINE_KINDS)), max_size=30), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_line_numbers_and_counts_are_right_for_any_mix_of_lines(tmp_path_factory, kinds, newline):
    """Property: whatever the line endings and the mix of blank, bad and valid lines, each bad row
    is reported at its physical line (header = 1) and the counts add up."""
    path = tmp_path_factory.mktemp("lines") / "items.csv"
    body = [LINE_KINDS[kind][0](n) for n, kind in enumerate(kinds)]
    path.write_bytes(newline.join([HEADER.rstrip("\n").encode(), *body]) + newline)
    parsed = read_export(path)
    expected_bad = [f"line {n + 2}: {LINE_KINDS[k][2]}" for n, k in enumerate(kinds) if LINE_KINDS[k][2]]
    assert [str(bad) for bad in parsed.bad_rows] == expected_bad
    assert parsed.barcodes.to_pylist() == [str(n) for n, k in enumerate(kinds) if k in ("valid", "quoted")]
    blanks = sum(LINE_KINDS[k][1] for k in kinds)
    assert (parsed.blank_lines, parsed.rows_read) == (blanks, len(kinds) - blanks)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=30))
def test_vectorised_crc32_equals_zlib(values):
    """The loader's bucket function is the reader's (zlib.crc32) for any UTF-8 string."""
    expected = np.array([zlib.crc32(v.encode()) for v in values], dtype=np.uint32)
    assert crc32_array(pa.array(values, type=pa.string())).tolist() == expected.tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20), st.lists(st.integers(0, 2**62), min_size=1, max_size=40), st.data())
def test_vectorised_crc32_of_equal_length_strings_equals_zlib(width, numbers, data):
    """Strings all of one length (the two-bytes-at-a-time path), all of them or picked rows, and
    a slice of a larger array (offsets not starting at 0)."""
    values = [str(n).zfill(width)[-width:] if width else "" for n in numbers]
    array = pa.array(["x" * width, *values], type=pa.string()).slice(1)
    rows = np.array(data.draw(st.lists(st.integers(0, len(values) - 1), max_size=60)), dtype=np.int64)
    assert crc32_array(array).tolist() == [zlib.crc32(v.encode()) for v in values]
    assert crc32_array(array, rows).tolist() == [zlib.crc32(values[i].encode()) for i in rows]
