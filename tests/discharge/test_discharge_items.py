"""loan_discharge.items: reading Analytics exports, desk resolution, the plan, results and rewrites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loan_discharge.items import (
    InputError,
    apply_results,
    build_plan,
    format_plan,
    mark_problems,
    normalise_header,
    read_desks,
    read_items,
    write_items_atomic,
)

HEADER = "MMS Id,Holding Id,Physical Item Id,Library Code,Location Code,Temporary Location Code,Temporary Physical Location In Use,Barcode"
ROWS = [
    # mms, holding, item, library, location, temp location, temp in use, barcode
    "9912345678901234561,2212345678901234561,2312345678901234561,MAIN,stacks,,No,3900001",
    "9912345678901234562,2212345678901234562,2312345678901234562,MAIN,stacks,reserve,Yes,3900002",
    "9912345678901234563,2212345678901234563,2312345678901234563,LAW,stacks,,No,3900003",
    "9912345678901234564,2212345678901234564,2312345678901234564,LAW,basement,,No,3900004",
]
DESKS = "location_code,circ_desk,library_code\nstacks,MAIN_DESK,MAIN\nstacks,LAW_DESK,LAW\nreserve,RES_DESK,\n"


def items_file(tmp_path: Path, rows: list[str] = ROWS, header: str = HEADER, name: str = "items.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def desks_file(tmp_path: Path, text: str = DESKS) -> Path:
    path = tmp_path / "desks.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("\ufeffMMS Id", "mms id"),
        ("  Physical   Item ID ", "physical item id"),
        ("mms_id", "mms id"),
        ("Library Code (Active)", "library code (active)"),
    ],
)
def test_normalise_header(header: str, expected: str) -> None:
    """Byte-order mark, case, runs of spaces and underscores do not matter."""
    assert normalise_header(header) == expected


@given(st.text(alphabet=st.sampled_from("abcXYZ _\t\ufeff"), max_size=30))
def test_normalise_header_is_idempotent(header: str) -> None:
    """Normalising twice changes nothing, and the result has no blanks at the ends."""
    once = normalise_header(header)
    assert normalise_header(once) == once
    assert once == once.strip()


def test_bom_and_snake_case_headers_and_big_ids_round_trip(tmp_path: Path) -> None:
    """A BOM, snake_case headers (the original tool's output) and 19-digit ids survive read and rewrite exactly."""
    header = "\ufeffmms_id,holding_id,item_id,library_code,location_code,Extra Column"
    row = "9912345678901234567,2212345678901234567,2312345678901234567,MAIN,stacks,keep me"
    path = tmp_path / "items.csv"
    path.write_bytes(("\n".join([header, row]) + "\n").encode("utf-8"))
    table = read_items(path, "perm")
    assert table.get(0, "item_pid") == "2312345678901234567"
    write_items_atomic(table)
    text = path.read_bytes().decode("utf-8-sig")
    assert text.splitlines() == [
        "mms_id,holding_id,item_id,library_code,location_code,Extra Column,done,outcome,error,attempts",
        row + ",,,,",
    ]
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")


def test_utf16_tab_separated_export(tmp_path: Path) -> None:
    """Scheduled exports in UTF-16 with tabs are read, and written back the same way."""
    path = tmp_path / "items.tsv"
    path.write_text("\n".join([HEADER.replace(",", "\t"), ROWS[0].replace(",", "\t")]) + "\n", encoding="utf-16")
    table = read_items(path)
    assert table.delimiter == "\t"
    assert table.get(0, "mms_id") == "9912345678901234561"
    write_items_atomic(table)
    assert path.read_text(encoding="utf-16").splitlines()[0].endswith("\tdone\toutcome\terror\tattempts")


@pytest.mark.parametrize(
    ("location_type", "drop", "missing"),
    [
        ("perm", "MMS Id", "'MMS Id'"),
        ("perm", "Physical Item Id", "'Physical Item Id (or Item Id)'"),
        ("auto", "Location Code", "'Location Code'"),
        ("temp", "Temporary Location Code", "'Temporary Location Code'"),
    ],
)
def test_missing_column_is_refused_by_name(tmp_path: Path, location_type: str, drop: str, missing: str) -> None:
    """A missing column is named, with the columns that were found."""
    columns = HEADER.split(",")
    index = columns.index(drop)
    header = ",".join(c for i, c in enumerate(columns) if i != index)
    rows = [",".join(c for i, c in enumerate(r.split(",")) if i != index) for r in ROWS]
    path = items_file(tmp_path, rows, header)
    with pytest.raises(InputError) as caught:
        read_items(path, location_type)
    message = str(caught.value)
    assert message.startswith(f"items file {path}: column {missing} not found (found: {header.replace(',', ', ')})")


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing items file names the path and what to check."""
    with pytest.raises(InputError) as caught:
        read_items(tmp_path / "gone.csv")
    assert str(caught.value) == f"items file {tmp_path / 'gone.csv'} not found: check the path in the configuration"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("location,desk_code\nstacks,D\n", "column 'circ_desk' not found (found: location, desk_code)"),
        ("location_code,circ_desk\nstacks,\n", "line 2: empty circ_desk: fill it in or delete the line"),
        (
            "location_code,circ_desk\nstacks,A\nstacks,B\n",
            "line 3: location 'stacks' is mapped twice (also on line 2, to a different desk): keep one, or add a library_code column",
        ),
    ],
)
def test_bad_desks_file(tmp_path: Path, text: str, message: str) -> None:
    """Desks file problems are refused with the line and the fix."""
    path = desks_file(tmp_path, text)
    with pytest.raises(InputError) as caught:
        read_desks(path)
    assert str(caught.value).startswith(f"desks file {path}")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("location_type", "expected"),
    [
        # auto: row 2 is in its temporary location (reserve), the others in their permanent one
        ("auto", [("MAIN", "MAIN_DESK"), ("MAIN", "RES_DESK"), ("LAW", "LAW_DESK")]),
        ("perm", [("MAIN", "MAIN_DESK"), ("MAIN", "MAIN_DESK"), ("LAW", "LAW_DESK")]),
    ],
)
def test_desk_resolution(tmp_path: Path, location_type: str, expected: list[tuple[str, str]]) -> None:
    """Library-specific desk rows win; auto takes the temporary location only where one is in use."""
    table = read_items(items_file(tmp_path), location_type)
    plan = build_plan(table, read_desks(desks_file(tmp_path)), location_type)
    assert [(r.library, r.circ_desk) for r in plan.requests] == expected
    assert [(p.line, p.reason) for p in plan.problems] == [
        (5, "no circulation desk mapped for location 'basement' in library 'LAW'")
    ]


def test_temp_location_type_refuses_rows_without_temporary_location(tmp_path: Path) -> None:
    """With location_type temp (the original tool's mode), rows with no temporary location are listed, not sent."""
    table = read_items(items_file(tmp_path), "temp")
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "temp")
    assert [r.item_pid for r in plan.requests] == ["2312345678901234562"]
    assert [p.line for p in plan.problems] == [2, 4, 5]
    assert {p.reason for p in plan.problems} == {"empty Temporary Location Code (location_type is temp)"}


def test_mixed_bad_rows_are_listed_never_dropped(tmp_path: Path) -> None:
    """Missing ids, Excel-mangled ids, duplicates and done rows are each accounted for."""
    rows = [
        ROWS[0],
        ",2212345678901234562,2312345678901234562,MAIN,stacks,,No,",
        "9.91234567890123E+18,2212345678901234563,2312345678901234563,MAIN,stacks,,No,",
        ROWS[0],  # the same item again
        "9912345678901234565,2212345678901234565,2312345678901234565,MAIN,stacks,,No,",
    ]
    header = HEADER + ",done"
    rows = [r + ("," if i != 4 else ",True") for i, r in enumerate(rows)]
    table = read_items(items_file(tmp_path, rows, header))
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "auto")
    assert [r.item_pid for r in plan.requests] == ["2312345678901234561"]
    assert plan.already_done == 1
    assert [(p.line, p.reason) for p in plan.problems] == [
        (3, "missing MMS Id"),
        (4, "MMS Id '9.91234567890123E+18' is not an Alma id (digits only): export the report without number formatting"),
        (5, "same Physical Item Id as line 2: the item is sent once"),
    ]
    text = format_plan(plan, Path("items.csv"), Path("desks.csv"))
    assert text.splitlines()[0] == "items file items.csv: 5 rows, 1 already done, 1 to send, 3 not sent"
    assert "  missing MMS Id (1 item); lines 3" in text


def test_unmapped_location_message_names_the_desks_file(tmp_path: Path) -> None:
    """The plan groups unmapped rows and says which file to add the location to."""
    table = read_items(items_file(tmp_path))
    plan = build_plan(table, read_desks(desks_file(tmp_path, "location_code,circ_desk\nreserve,RES\n")), "auto")
    text = format_plan(plan, Path("items.csv"), Path("desks.csv"))
    assert (
        "  no circulation desk mapped for location 'stacks' in library 'MAIN' (1 item): add it to desks.csv; lines 2"
        in text.splitlines()
    )
    assert (
        "  no circulation desk mapped for location 'stacks' in library 'LAW' (1 item): add it to desks.csv; lines 4"
        in text.splitlines()
    )


def test_limit_takes_the_first_pending_rows(tmp_path: Path) -> None:
    """--limit N keeps the first N sendable rows and counts the rest as left for later."""
    table = read_items(items_file(tmp_path))
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "auto", limit=2)
    assert [r.row for r in plan.requests] == [0, 1]
    assert plan.not_selected == 1


def test_process_type_column_marks_items_not_on_loan(tmp_path: Path) -> None:
    """With Analytics' Process Type column, a row not on loan is known before sending; blank means unknown."""
    rows = [ROWS[0] + ",Loan", ROWS[1] + ",None", ROWS[2] + ",", ROWS[3].replace("basement", "stacks") + ",Transit"]
    table = read_items(items_file(tmp_path, rows, HEADER + ",Process Type"))
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "auto")
    assert [r.known_not_on_loan for r in plan.requests] == [False, True, False, True]


def test_results_apply_and_a_failure_never_undoes_a_return(tmp_path: Path) -> None:
    """Journal entries fill done/outcome/error/attempts; a later failure of a done item is ignored."""
    table = read_items(items_file(tmp_path))
    changed = apply_results(table, [
        {"item_pid": "2312345678901234561", "done": True, "outcome": "in transit", "error": "", "attempts": 2},
        {"item_pid": "2312345678901234561", "done": False, "outcome": "error", "error": "HTTP 500: x", "attempts": 1},
        {"item_pid": "2312345678901234563", "done": False, "outcome": "error", "error": "401872: bad desk", "attempts": 1},
        {"item_pid": "999", "done": True},
    ])
    assert changed == 2
    assert table.rows[0][-4:] == ["True", "in transit", "", "2"]
    assert table.rows[2][-4:] == ["False", "error", "401872: bad desk", "1"]


def test_problems_are_written_into_the_error_column(tmp_path: Path) -> None:
    """A row that is not sent says why in the file itself."""
    table = read_items(items_file(tmp_path))
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "auto")
    mark_problems(table, plan)
    assert table.rows[3][-4:] == ["False", "", "not sent: no circulation desk mapped for location 'basement' in library 'LAW'", ""]


def test_atomic_rewrite_leaves_no_temporary_file_and_replaces_inode(tmp_path: Path) -> None:
    """The rewrite goes through a temporary file renamed over the original."""
    path = items_file(tmp_path)
    before = os.stat(path).st_ino
    table = read_items(path)
    table.set(0, "done", "True")
    write_items_atomic(table)
    assert os.stat(path).st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.csv"]
    assert read_items(path).is_done(0)


def test_atomic_rewrite_keeps_the_file_permissions(tmp_path: Path) -> None:
    """The rewritten items file keeps its mode (a shared export stays readable by colleagues)."""
    path = items_file(tmp_path)
    os.chmod(path, 0o664)
    table = read_items(path)
    write_items_atomic(table)
    assert os.stat(path).st_mode & 0o777 == 0o664


def test_problem_lines_are_the_lines_of_the_file(tmp_path: Path) -> None:
    """A blank line or a quoted cell over two lines does not shift the line numbers a person is told to look at."""
    path = tmp_path / "items.csv"
    path.write_text(
        "MMS Id,Holding Id,Physical Item Id,Library Code,Location Code,Note\n"
        '9900000000000016421,2200000000000016421,2300000000000016421,MAIN,stacks,"two\nlines"\n'
        "\n"
        "9900000000000026421,,2300000000000026421,MAIN,stacks,\n"
        "9900000000000036421,2200000000000036421,2300000000000036421,MAIN,attic,\n",
        encoding="utf-8",
    )
    table = read_items(path)
    plan = build_plan(table, read_desks(desks_file(tmp_path)), "auto")
    assert [(p.line, p.item_pid) for p in plan.problems] == [(5, "2300000000000026421"), (6, "2300000000000036421")]
    mark_problems(table, plan)
    assert [row[-2] for row in table.rows] == [
        "", "not sent: missing Holding Id", "not sent: no circulation desk mapped for location 'attic' in library 'MAIN'",
    ]


def test_desks_file_lines_are_the_lines_of_the_file(tmp_path: Path) -> None:
    """A desks-file message names the line as the file counts it, blank lines included."""
    with pytest.raises(InputError, match=r"desks\.csv, line 4: empty circ_desk"):
        read_desks(desks_file(tmp_path, "location_code,circ_desk\nstacks,D\n\nattic,\n"))


def test_cells_beyond_the_header_are_refused_not_dropped(tmp_path: Path) -> None:
    """The items file is rewritten, so a row with more non-empty cells than the header is refused (empty extras are fine)."""
    path = items_file(tmp_path, rows=[ROWS[0] + ",,", ROWS[1] + ",,see note"])
    with pytest.raises(InputError) as caught:
        read_items(path)
    assert str(caught.value) == (
        f"items file {path}, line 3: 10 cells, but the header has 8: "
        "give the extra column a header or remove the extra cells"
    )


@pytest.mark.parametrize("how", ["never closed", "closed by a later quote"])
def test_a_stray_quote_is_refused_not_read_as_one_row(tmp_path: Path, how: str) -> None:
    """A stray quote makes the default csv reader take the lines after it as one cell: those items
    would be neither sent nor counted. The file is refused, naming the row, before anything is sent;
    a properly quoted note over two lines is still read (test_problem_lines_are_the_lines_of_the_file)."""
    stray = ROWS[1].replace(",2212345678901234562", ',"2212345678901234562')
    rows = [ROWS[0], stray, ROWS[2], ROWS[3]]
    if how == "closed by a later quote":  # one row swallowed, then text after the closing quote
        rows[2] = rows[2].replace(",stacks,", ',"stacks",', 1)
    path = items_file(tmp_path, rows=rows)
    with pytest.raises(InputError) as caught:
        read_items(path)
    assert str(caught.value).startswith(f"items file {path}, line 3: a quote in this row is not closed where a cell ends (")
    assert str(caught.value).endswith("so the lines after it would be read as one cell: correct the quote (or remove "
                                      "it) and run again; nothing was sent")
    desks = tmp_path / "desks.csv"
    desks.write_text('location_code,circ_desk\n"stacks,MAIN_DESK\nreserve,RES_DESK\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"desks\.csv, line 2: a quote in this row is not closed"):
        read_desks(desks)


def test_an_error_message_with_line_breaks_is_written_on_one_line(tmp_path: Path) -> None:
    """An Alma error text may hold line breaks; written as they are, the next run would refuse the file."""
    path = items_file(tmp_path)
    table = read_items(path)
    entry = {"item_pid": "2312345678901234561", "done": False, "error": "401873: Item\r\nnot found\nhere", "attempts": 1}
    assert apply_results(table, [entry]) == 1
    write_items_atomic(table)
    assert read_items(path).get(0, "error") == "401873: Item not found here"


def test_a_linked_items_file_gets_the_results_and_the_link_stays(tmp_path: Path) -> None:
    """items.csv a symbolic link to the export: the export itself is rewritten (the lock is beside
    it), and the link still names it."""
    exports = tmp_path / "exports"
    exports.mkdir()
    real = items_file(exports, name="export.csv")
    link = tmp_path / "items.csv"
    link.symlink_to(Path("exports") / "export.csv")
    table = read_items(link)
    apply_results(table, [{"item_pid": "2312345678901234561", "done": True, "outcome": "returned", "attempts": 1}])
    write_items_atomic(table)
    assert link.is_symlink() and read_items(real).get(0, "done") == "True"
    assert not [p.name for p in exports.iterdir() if p.name.endswith(".tmp")]
    newer = items_file(exports, rows=ROWS[:1], name="newer.csv")  # a scheduled job points the link at a new export
    link.unlink()
    link.symlink_to(Path("exports") / "newer.csv")
    write_items_atomic(table)  # the run goes on writing the export it read
    assert len(read_items(newer).rows) == 1 and len(read_items(real).rows) == len(ROWS)


def test_a_file_saved_on_windows_keeps_its_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(("\r\n".join([HEADER, *ROWS]) + "\r\n").encode())
    table = read_items(path)
    write_items_atomic(table)
    data = path.read_bytes()
    assert data.count(b"\r\n") == len(ROWS) + 1 and b"\n" not in data.replace(b"\r\n", b"")
