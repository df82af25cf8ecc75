"""The robust reader of Amazon 2018 review/meta lines: formats, bad lines and their counts."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from recformer.data import amazon
from recformer.data.amazon import FileStats

from ..helpers import write_gz

GOOD_REVIEW = {"reviewerID": "U1", "asin": "B000000001", "unixReviewTime": 1400000000, "overall": 5.0}


def write_lines(path, lines: list[str], gz: bool | None = None) -> None:
    """Write raw lines (each ends with a newline); gzipped when the name ends in .gz unless told."""
    if gz if gz is not None else str(path).endswith(".gz"):
        write_gz(path, lines)
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# Every kind of line the reader meets, with what it must make of it.
MIXED_LINES = [
    json.dumps(GOOD_REVIEW),  # 1 record
    "",  # 2 blank
    "   ",  # 3 blank
    repr(
        {"reviewerID": "U2", "asin": "B000000002", "unixReviewTime": 5, "verified": True, "vote": None}
    ),  # 4 literal
    '{"reviewerID": "U3", "asin": "B00000',  # 5 cut-off line: unparseable
    "[1, 2, 3]",  # 6 not a record
    "null",  # 7 not a record
    "not json at all {",  # 8 unparseable
    '{"reviewerID": "U4", "asin": "B000000004", "unixReviewTime": 7}\r',  # 9 CRLF line end: record
    '{"a": NaN}',  # 10 JSON orjson rejects, stdlib accepts: record
]


@pytest.mark.parametrize("name", ["mixed.json.gz", "mixed.json"])
def test_iter_records_parses_json_and_python_literals_and_counts_bad_lines(tmp_path, name):
    path = tmp_path / name
    write_lines(path, MIXED_LINES)
    stats = FileStats(str(path))
    records = list(amazon.iter_records(path, stats, progress=False))
    assert [r.get("reviewerID") for r in records] == ["U1", "U2", "U4", None]
    assert records[1] == {
        "reviewerID": "U2",
        "asin": "B000000002",
        "unixReviewTime": 5,
        "verified": True,
        "vote": None,
    }
    assert stats.lines == 10
    assert stats.records == 4
    assert stats.python_literal == 1
    assert stats.skipped == {"blank": 2, "unparseable": 2, "not_a_record": 2}


def test_gzip_is_detected_by_content_not_by_name(tmp_path):
    path = tmp_path / "reviews.json"  # gzipped, but named like a plain file
    write_lines(path, [json.dumps(GOOD_REVIEW)], gz=True)
    assert [r["asin"] for r in amazon.iter_records(path, progress=True)] == ["B000000001"]


def test_last_line_without_line_end_and_lines_across_blocks(tmp_path):
    # ~1.6 MB of text: lines cross the 1 MiB block boundaries of the reader.
    lines = [
        json.dumps({**GOOD_REVIEW, "reviewerID": f"U{i}", "reviewText": "x" * (i % 97)}) for i in range(20000)
    ]
    path = tmp_path / "big.json.gz"
    path.write_bytes(gzip.compress(("\n".join(lines)).encode(), mtime=0))  # no final newline
    stats = FileStats(str(path))
    users = [r["reviewerID"] for r in amazon.iter_records(path, stats, progress=False)]
    assert users == [f"U{i}" for i in range(20000)]
    assert stats.lines == 20000 and stats.skipped == {}


def test_split_lines_joins_lines_cut_by_block_ends():
    blocks = [b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}']
    assert [line for lines in amazon._split_lines(blocks) for line in lines] == [
        b'{"a":1}',
        b'{"b":2}',
        b"",
        b'{"c":3}',
    ]


def test_concatenated_gzip_members_are_all_read(tmp_path):
    path = tmp_path / "two_members.json.gz"
    first = gzip.compress(b'{"asin": "A"}\n', mtime=0)
    second = gzip.compress(b'{"asin": "B"}\n', mtime=0)
    path.write_bytes(first + second)
    assert [r["asin"] for r in amazon.iter_records(path, progress=False)] == ["A", "B"]


def test_truncated_gzip_fails_naming_the_file(tmp_path):
    path = tmp_path / "cut.json.gz"
    data = gzip.compress("".join(json.dumps(GOOD_REVIEW) + "\n" for _ in range(500)).encode(), mtime=0)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.json\.gz: the gzip stream ends early"):
        list(amazon.iter_records(path, progress=False))


def test_corrupt_gzip_fails_naming_the_file(tmp_path):
    path = tmp_path / "corrupt.json.gz"
    data = bytearray(gzip.compress(b'{"asin": "A"}\n' * 100, mtime=0))
    data[12:20] = b"\xff" * 8  # garbage in the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt\.json\.gz"):
        list(amazon.iter_records(path, progress=False))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "Missing_5.json.gz"
    with pytest.raises(FileNotFoundError, match="Missing_5.json.gz"):
        list(amazon.iter_records(missing, progress=False))


def test_resolve_input_accepts_an_unzipped_copy(tmp_path):
    plain = tmp_path / "Cat_5.json"
    write_lines(plain, [json.dumps(GOOD_REVIEW)])
    assert amazon.resolve_input(tmp_path / "Cat_5.json.gz") == plain


def test_iter_reviews_skips_lines_missing_fields_or_with_bad_values(tmp_path):
    lines = [
        json.dumps(GOOD_REVIEW),
        json.dumps({"asin": "B1", "unixReviewTime": 1}),  # no reviewerID -> missing_field
        json.dumps({"reviewerID": None, "asin": "B1", "unixReviewTime": 1}),  # null -> missing_field
        json.dumps({"reviewerID": "U", "unixReviewTime": 1}),  # no asin -> missing_field
        json.dumps({"reviewerID": "U", "asin": "B1"}),  # no time -> missing_field
        json.dumps({"reviewerID": "U", "asin": "B1", "unixReviewTime": "soon"}),  # bad_value
        json.dumps({"reviewerID": "U", "asin": 12345, "unixReviewTime": 1}),  # bad_value
        json.dumps({"reviewerID": "", "asin": "B1", "unixReviewTime": 1}),  # bad_value
        json.dumps({"reviewerID": "U9", "asin": "B9", "unixReviewTime": "1500000000"}),  # digits: accepted
        "{}",  # missing_field
        "",  # blank
    ]
    path = tmp_path / "r.json.gz"
    write_lines(path, lines)
    stats = FileStats(str(path))
    reviews = list(amazon.iter_reviews(path, stats, progress=False))
    assert reviews == [("U1", "B000000001", 1400000000), ("U9", "B9", 1500000000)]
    assert stats.lines == 11 and stats.records == 2
    assert stats.skipped == {"missing_field": 5, "bad_value": 3, "blank": 1}


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            {
                "asin": "A",
                "title": "Salt &amp; Pepper Mill",
                "brand": "K&amp;Co",
                "category": ["Home &amp; Kitchen", "Mills"],
            },
            (
                "A",
                {
                    "title": "Salt &amp; Pepper Mill",
                    "brand": "K&amp;Co",
                    "category": "Home &amp; Kitchen Mills",
                },
            ),
        ),
        ({"asin": "A", "title": "T"}, ("A", {"title": "T", "brand": "", "category": ""})),
        (
            {"asin": "A", "title": "T", "brand": None, "category": None},
            ("A", {"title": "T", "brand": "", "category": ""}),
        ),
        (
            {"asin": "A", "title": "T", "brand": "", "category": []},
            ("A", {"title": "T", "brand": "", "category": ""}),
        ),
        (
            {"asin": "A", "title": " spaced  title ", "category": ["a", "", "b"]},
            ("A", {"title": " spaced  title ", "brand": "", "category": "a  b"}),
        ),
        ({"asin": "A"}, "no_title"),
        ({"asin": "A", "title": None}, "no_title"),
        ({"asin": "A", "title": ""}, "no_title"),
        ({"asin": "A", "title": "   "}, "no_title"),
        ({"title": "T"}, "missing_field"),
        ({"asin": None, "title": "T"}, "missing_field"),
        ({"asin": 7, "title": "T"}, "bad_value"),
    ],
)
def test_normalize_meta(record, expected):
    assert amazon.normalize_meta(record) == expected


def test_load_meta_later_line_wins_and_title_less_lines_never_replace(tmp_path):
    lines = [
        json.dumps({"asin": "A", "title": "old A", "brand": "b", "category": ["c"]}),
        json.dumps({"asin": "B", "title": "B"}),
        json.dumps({"asin": "A", "title": "new A", "brand": "b2", "category": ["c", "d"]}),  # replaces line 1
        json.dumps({"asin": "B", "title": None}),  # no title: skipped, B keeps its record
        repr({"asin": "C", "title": "C's", "brand": None, "category": ["x"]}),  # Python literal
    ]
    path = tmp_path / "meta.json.gz"
    write_lines(path, lines)
    stats = FileStats(str(path))
    meta, duplicates = amazon.load_meta(path, stats, progress=False)
    assert meta == {
        "A": {"title": "new A", "brand": "b2", "category": "c d"},
        "B": {"title": "B", "brand": "", "category": ""},
        "C": {"title": "C's", "brand": "", "category": "x"},
    }
    assert list(meta) == ["A", "B", "C"]
    assert duplicates == 1
    assert stats.records == 4 and stats.skipped == {"no_title": 1} and stats.python_literal == 1


def test_iter_records_json_then_python_literal_then_unparseable(tmp_path):
    path = tmp_path / "lines.json"
    write_lines(path, ['{"a": 1}', "{'a': True, 'b': None}", "{'a': "])
    stats = FileStats(str(path))
    assert list(amazon.iter_records(path, stats, progress=False)) == [{"a": 1}, {"a": True, "b": None}]
    assert stats.python_literal == 1
    assert stats.skipped == {"unparseable": 1}


def test_gzip_with_trailing_zero_padding_is_read(tmp_path):
    """Zero bytes after the last member (tape and block padding) pass `gzip -t` and Python's gzip."""
    path = tmp_path / "padded.json.gz"
    data = gzip.compress(b'{"asin": "A"}\n{"asin": "B"}\n', mtime=0)
    path.write_bytes(data + b"\0" * 3000 + gzip.compress(b'{"asin": "C"}\n', mtime=0) + b"\0" * 1024)
    assert gzip.decompress(path.read_bytes()) == b'{"asin": "A"}\n{"asin": "B"}\n{"asin": "C"}\n'
    assert [r["asin"] for r in amazon.iter_records(path, progress=False)] == ["A", "B", "C"]
    # Padding across the reader's block boundary.
    blocks = list(amazon._read_blocks(io.BytesIO(data + b"\0" * 10), True, block_size=len(data) + 3))
    assert b"".join(blocks) == b'{"asin": "A"}\n{"asin": "B"}\n'
    # Anything but zeros after a member is still an error.
    path.write_bytes(data + b"\0\0garbage")
    with pytest.raises(ValueError, match="padded.json.gz: corrupt gzip data"):
        list(amazon.iter_records(path, progress=False))


def test_a_deeply_nested_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "deep.json"
    write_lines(path, [json.dumps(GOOD_REVIEW), "[" * 2000 + "]" * 2000, '{"a": ' * 2000 + "1" + "}" * 2000])
    stats = FileStats(str(path))
    assert [r["reviewerID"] for r in amazon.iter_records(path, stats, progress=False)] == ["U1"]
    assert stats.skipped == {"too_deep": 2} and stats.lines == 3


def test_lone_surrogates_are_cleaned_in_text_and_refused_in_ids(tmp_path):
    # orjson rejects a lone surrogate escape; the fallback parsers accept it, and it cannot be written back.
    lines = [
        '{"asin": "A", "title": "Cable \\ud800 3ft", "brand": "B\\udfff", "category": ["x\\ud801", "y"]}',
        '{"asin": "B", "title": "Smile \\ud83d\\ude00"}',  # a valid pair: one character, nothing to clean
        "{'asin': 'C', 'title': 'Smile \\ud83d\\ude00'}",  # the same pair as a Python literal: two units
        '{"asin": "D\\ud800", "title": "bad id"}',
    ]
    path = tmp_path / "meta.json"
    write_lines(path, lines)
    stats = FileStats(str(path))
    meta = dict(amazon.iter_meta(path, stats, progress=False))
    assert meta == {
        "A": {"title": "Cable \ufffd 3ft", "brand": "B\ufffd", "category": "x\ufffd y"},
        "B": {"title": "Smile \U0001f600", "brand": "", "category": ""},
        "C": {"title": "Smile \U0001f600", "brand": "", "category": ""},
    }
    assert stats.cleaned == {"lone_surrogate": 4} and stats.skipped == {"bad_value": 1}
    assert json.dumps(meta, ensure_ascii=False).encode("utf-8")  # everything kept is UTF-8 text

    reviews = tmp_path / "reviews.json"
    write_lines(
        reviews, [json.dumps(GOOD_REVIEW), '{"reviewerID": "U\\ud800", "asin": "A", "unixReviewTime": 1}']
    )
    stats = FileStats(str(reviews))
    assert list(amazon.iter_reviews(reviews, stats, progress=False)) == [("U1", "B000000001", 1400000000)]
    assert stats.skipped == {"bad_value": 1}


def test_non_text_attribute_values_are_made_text_or_left_out_and_counted():
    stats = FileStats("meta")
    record = {"asin": "A", "title": "T", "brand": 3, "category": [["nested"], "y", None, True, 2.5, {"k": 1}]}
    assert amazon.normalize_meta(record, stats) == ("A", {"title": "T", "brand": "3", "category": "y 2.5"})
    assert stats.cleaned == {"non_text": 6}
    stats = FileStats("meta")
    deep: list = []
    for _ in range(5000):  # deeper than repr() can go: never turned into text
        deep = [deep]
    assert amazon.normalize_meta({"asin": "A", "title": "T", "brand": deep, "category": {"a": 1}}, stats) == (
        "A",
        {"title": "T", "brand": "", "category": ""},
    )
    assert stats.cleaned == {"non_text": 2}


def test_the_stats_count_what_was_cleaned(tmp_path):
    path = tmp_path / "meta.json"
    write_lines(path, ['{"asin": "A", "title": "T\\udc00", "brand": 7}', '{"asin": "B", "title": "T"}'])
    stats = FileStats(str(path))
    assert len(amazon.load_meta(path, stats, progress=False)[0]) == 2
    assert stats.to_dict()["cleaned"] == {"lone_surrogate": 1, "non_text": 1}
    assert amazon.sum_file_stats([stats, stats])["values_cleaned"] == {"lone_surrogate": 2, "non_text": 2}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty (0 bytes; an interrupted download?)"),
        (gzip.compress(b"", mtime=0), "no line holds a JSON record (0 lines read)"),
        (b"\n \n", "no line holds a JSON record (2 lines read, skipped {'blank': 2})"),
        ('{"asin": "A", "title": "T"}\n'.encode("utf-16"), "the file is UTF-16 text"),
        (gzip.compress('{"asin": "A"}\n'.encode("utf-16-be"), mtime=0), "no line holds a JSON record"),
    ],
    ids=["0-byte", "empty-gzip", "blank-lines", "utf16", "utf16-gzip-no-bom"],
)
def test_a_file_without_any_record_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "meta_Cat.json.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        list(amazon.iter_records(path, progress=False))
    assert str(e.value).startswith(f"{path}: {message}")


def test_a_file_without_any_usable_review_or_item_is_an_error_naming_it(tmp_path):
    reviews = tmp_path / "Cat_5.json"
    write_lines(reviews, ['{"reviewerID": "U"}', '{"asin": "A"}'])
    with pytest.raises(ValueError, match=f"{reviews}: no line is a usable review .*missing_field"):
        list(amazon.iter_reviews(reviews, progress=False))
    meta = tmp_path / "meta_Cat.json"
    write_lines(meta, ['{"asin": "A", "title": ""}', '{"asin": "B"}'])
    with pytest.raises(ValueError, match=f"{meta}: no line is a usable item with an asin and a title"):
        amazon.load_meta(meta, progress=False)


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_REVIEW).encode() + b"\n")
    stats = FileStats(str(path))
    assert [r["asin"] for r in amazon.iter_records(path, stats, progress=False)] == ["B000000001"]
    assert stats.skipped == {}


def test_a_folder_given_as_input_file_is_called_a_folder(tmp_path):
    folder = tmp_path / "Cat_5.json.gz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=f"input file is a folder: {folder}"):
        amazon.resolve_input(folder)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        amazon.category_paths(tmp_path, ["Cat"], amazon.REVIEW_FILE)
