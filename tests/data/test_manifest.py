from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recognizer.data.manifest import (
    ALL_COLUMNS,
    ManifestError,
    ManifestRow,
    check_relative_path,
    load_manifest,
    parse_manifest_text,
    write_manifest,
)


def test_good_manifest_all_columns(tmp_path):
    text = (
        "path,item_id,split,role,candidates,bbox\n"
        "a/1.jpg,apple,train,gallery,,\n"
        "b/2.jpg,,test,query,apple;pear,10 20 30 40\n"
    )
    m = parse_manifest_text(text, data_root=tmp_path)
    assert not m.errors
    assert m.rows[0] == ManifestRow(2, "a/1.jpg", "apple", "train", "gallery")
    assert m.rows[1].candidates == ("apple", "pear")
    assert m.rows[1].bbox == (10.0, 20.0, 30.0, 40.0)
    assert m.resolve(m.rows[0]) == tmp_path / "a/1.jpg"
    assert m.item_ids == ["apple"]
    assert m.select(role="query") == [m.rows[1]]


@pytest.mark.parametrize(
    "row, message",
    [
        ("x.jpg,a,training,,,", "split 'training' is not one of train, val, test"),
        ("x.jpg,a,,curator,,", "role 'curator' is not one of gallery, query"),
        ("x.jpg,,train,gallery,,", "item_id is empty"),
        ("x.jpg,a;b,,,,", "contains ';'"),
        ("x.jpg,a,,,a;;b,", "empty id"),
        ("x.jpg,a,,,a;a,", "repeats an id"),
        ("x.jpg,a,,,,1 2 3", "must be 4 numbers"),
        ("x.jpg,a,,,,1 2 -3 4", "w,h > 0"),
        ("x.jpg,a,,,,1 2 nan 4", "w,h > 0"),
        ("/etc/passwd,a,,,,", "absolute path"),
        ("../../secret.jpg,a,,,,", "escapes the data root"),
        (",a,,,,", "empty path"),
        ("x.jpg,a,,", "has 4 fields, the header has 6"),
    ],
)
def test_bad_rows_are_reported_by_line(row, message, tmp_path):
    text = "path,item_id,split,role,candidates,bbox\nok.jpg,a,,,,\n" + row + "\nok2.jpg,b,,,,\n"
    m = parse_manifest_text(text, data_root=tmp_path)
    assert [r.path for r in m.rows] == ["ok.jpg", "ok2.jpg"]  # the good rows survive
    assert len(m.errors) == 1
    assert m.errors[0].line == 3
    assert message in m.errors[0].message
    assert "line 3" in m.error_report()


def test_duplicate_rows_are_reported():
    m = parse_manifest_text("path,item_id\na.jpg,x\nb.jpg,x\na.jpg,x\n")
    assert len(m.rows) == 2
    assert str(m.errors[0]) == "line 4: duplicate of line 2 ('a.jpg', item 'x')"


def test_quoted_fields_with_commas_and_unicode():
    m = parse_manifest_text('path,item_id\n"dir, with comma/été 1.jpg","Crème fraîche"\n')
    assert m.rows[0].path == "dir, with comma/été 1.jpg"
    assert m.rows[0].item_id == "Crème fraîche"


def test_unterminated_quote_is_a_row_error():
    m = parse_manifest_text('path,item_id\na.jpg,x\n"b.jpg,y\n')
    assert [r.path for r in m.rows] == ["a.jpg"]
    assert m.errors and m.errors[0].line == 3


def test_header_errors():
    with pytest.raises(ManifestError, match="unknown column.*'label'.*valid columns: path, item_id"):
        parse_manifest_text("path,label\na,b\n")
    with pytest.raises(ManifestError, match="missing required column.*item_id"):
        parse_manifest_text("path,split\na,train\n")
    with pytest.raises(ManifestError, match="empty file"):
        parse_manifest_text("")
    with pytest.raises(ManifestError, match="repeats a column"):
        parse_manifest_text("path,item_id,path\n")


def test_load_manifest_defaults_root_and_checks_encoding(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes("\ufeffpath,item_id\nimg.jpg,x\n".encode())  # BOM from Excel is fine
    m = load_manifest(p)
    assert m.data_root == tmp_path and m.rows[0].path == "img.jpg"
    p.write_bytes(b"path,item_id\nimg.jpg,x\ncaf\xe9.jpg,y\n")  # Latin-1 byte on line 3
    with pytest.raises(ManifestError, match=r"m\.csv: line 3 is not valid UTF-8"):
        load_manifest(p)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="data root is not a folder"):
        load_manifest(p, tmp_path / "missing_root")


def test_strict_raises_with_all_bad_lines(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("path,item_id,split\na.jpg,x,bogus\nb.jpg,y,train\nc.jpg,,train\n")
    with pytest.raises(ManifestError, match=r"(?s)2 bad row\(s\).*line 2.*line 4"):
        load_manifest(p, strict=True)


def test_paths_outside_root_need_explicit_permission():
    assert check_relative_path("a/../b.jpg") == "a/../b.jpg"
    with pytest.raises(ValueError):
        check_relative_path("a/../../b.jpg")
    assert check_relative_path("../b.jpg", allow_outside_root=True) == "../b.jpg"
    m = parse_manifest_text("path,item_id\n../x.jpg,a\n", allow_outside_root=True)
    assert m.rows[0].path == "../x.jpg"


_ids = (
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";"), min_size=1, max_size=8
    )
    .map(str.strip)
    .filter(bool)
)
_paths = st.lists(
    st.text(
        st.characters(whitelist_categories=("L", "N"), whitelist_characters=" ,'\"_-"), min_size=1, max_size=6
    )
    .map(str.strip)
    .filter(lambda s: s not in ("", ".", "..")),
    min_size=1,
    max_size=3,
).map("/".join)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.builds(
            ManifestRow,
            line=st.just(0),
            path=_paths,
            item_id=_ids,
            split=st.sampled_from(["", "train", "val", "test"]),
            role=st.sampled_from(["", "gallery", "query"]),
            candidates=st.one_of(st.none(), st.lists(_ids, min_size=1, max_size=4, unique=True).map(tuple)),
            bbox=st.one_of(
                st.none(),
                st.tuples(*[st.integers(0, 500).map(float)] * 2, *[st.integers(1, 500).map(float)] * 2),
            ),
        ),
        max_size=12,
        unique_by=lambda r: (r.path, r.item_id, r.bbox),
    )
)
def test_write_then_load_round_trips(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("rt") / "m.csv"
    write_manifest(p, rows, columns=ALL_COLUMNS)
    m = load_manifest(p, strict=True)
    assert [(r.path, r.item_id, r.split, r.role, r.candidates, r.bbox) for r in m.rows] == [
        (r.path, r.item_id, r.split, r.role, r.candidates, r.bbox) for r in rows
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_crashes_on_arbitrary_text(text):
    try:
        m = parse_manifest_text("path,item_id,split,role,candidates,bbox\n" + text)
    except ManifestError:
        return
    for r in m.rows:  # every accepted row satisfies the schema
        assert r.path and (r.item_id or r.role == "query")
