"""Own data in: RecBole atomic files and CSV/TSV/JSON-lines tables give the folder the Amazon path gives.

The hand-worked case of finetune_case.py is written in each format; every format must give its folder
(`EXPECTED`) byte for byte in meaning, and bad rows are counted and named with their file and line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from recformer.cli import process_finetune as cli
from recformer.data import finetune_writer, tables
from recformer.data.finetune_reader import load_finetune_data
from recformer.data.finetune_writer import FinetuneOptions
from recformer.data.tables import TableFields, TableStats
from recformer.io.fileio import read_json

from .finetune_case import EXPECTED, INTERACTIONS, ITEMS, recbole_files, write


def assert_expected_folder(out: Path, meta: dict | None = None) -> None:
    for name, expected in EXPECTED.items():
        if name == "meta_data.json" and meta is not None:
            expected = meta
        assert read_json(out / name) == expected, name
    assert (out / "manifest.json").is_file() and (out / "stats.json").is_file()
    assert load_finetune_data(out).num_items == 5  # finetune and evaluate read it unchanged


def test_recbole_atomic_files_give_the_amazon_folder(tmp_path):
    inter, item = recbole_files(tmp_path)
    stats = finetune_writer.process_finetune_tables("recbole", inter, item, tmp_path / "out", progress=False)
    assert_expected_folder(tmp_path / "out")  # price (a float column) is not text; the type suffixes go
    assert stats["format"] == "recbole"
    assert stats["interaction_file"]["skipped"] == {"missing_field": 1}
    assert stats["interaction_file"]["bad_rows"] == [f"{inter} line 14: no timestamp"]
    assert stats["item_file"]["skipped"] == {"bad_columns": 1, "no_text": 2}
    assert stats["item_file"]["bad_rows"] == [
        f"{item} line 5: item 'D' has no text in title, brand, category",
        f"{item} line 9: 2 columns, the header has 5",
        f"{item} line 10: item 'G' has no text in title, brand, category",
    ]
    assert (stats["item_file"]["duplicate_records"], stats["item_file"]["items_with_text"]) == (1, 6)
    assert stats["lines_read"] == 17 + 11 and stats["lines_skipped"] == {
        "bad_columns": 1, "missing_field": 1, "no_text": 2,
    }  # fmt: skip
    assert stats["interactions_without_meta"] == 3  # D and G (no text) and X (no row)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 5, 9)
    assert read_json(tmp_path / "out" / "stats.json") == stats


def test_recbole_item_file_defaults_to_the_one_beside_the_inter_file(tmp_path, capsys):
    inter, _ = recbole_files(tmp_path, gz=True)
    out = tmp_path / "out"
    argv = ["--format", "recbole", "--file_path", str(inter), "--output_path", str(out), "--no_progress"]
    assert cli.main(argv) == 0
    assert f"meta_file_path = {tmp_path / 'tiny.item.gz'}" in capsys.readouterr().out
    assert_expected_folder(out)
    assert tables.recbole_item_file("data/ml-1m.inter") == Path("data/ml-1m.item")


def test_recbole_text_fields_choose_and_order_the_attributes(tmp_path):
    inter, item = recbole_files(tmp_path)
    fields = TableFields(text=("brand", "title"))
    finetune_writer.process_finetune_tables("recbole", inter, item, tmp_path / "out", fields, progress=False)
    meta = read_json(tmp_path / "out" / "meta_data.json")
    assert meta["A"] == {"brand": "Acme", "title": "Alpha &amp; Co Lens v2"} and list(meta["A"]) == ["brand", "title"]


def test_csv_tables_with_own_column_names_iso_dates_and_quoted_fields(tmp_path, capsys):
    def iso(t: int) -> str:
        return f"1970-01-01T00:{t // 60:02d}:{t % 60:02d}Z"

    inter = write(
        tmp_path / "events.csv",
        ["who,what,when"] + [f"{u},{i},{'' if t is None else iso(t)}" for u, i, t in INTERACTIONS],
    )
    rows = [f'{i},"{t}",{b},{c}' for i, t, b, c in ITEMS]
    rows[-1] = 'H,"Eta, the\nsecond",W,V'  # a quoted comma and line end: one row over two lines
    items = write(tmp_path / "items.csv", ["sku,title,brand,category", *rows, "Q,,,", "R,only-title"])
    out = tmp_path / "out"
    argv = ["--format", "csv", "--file_path", str(inter), "--meta_file_path", str(items), "--output_path",
            str(out), "--user_field", "who", "--item_field", "what", "--time_field", "when",
            "--item_table_id_field", "sku", "--text_fields", "title", "brand", "category", "--no_progress"]  # fmt: skip
    assert cli.main(argv) == 0
    meta = copy.deepcopy(EXPECTED["meta_data.json"])
    meta["H"]["title"] = "Eta, the\nsecond"
    assert_expected_folder(out, meta)
    stats = read_json(out / "stats.json")
    # the row after the two-line one starts on line 12; the next one has too few columns
    assert stats["item_file"]["bad_rows"][-2:] == [
        f"{items} line 12: item 'Q' has no text in title, brand, category",
        f"{items} line 13: 2 columns, the header has 4",
    ]


def test_tsv_and_json_lines_tables(tmp_path):
    inter = write(
        tmp_path / "inter.tsv.gz",
        ["user_id\titem_id\ttimestamp"] + [f"{u}\t{i}\t{'' if t is None else t}" for u, i, t in INTERACTIONS],
        gz=True,
    )
    lines = [json.dumps({"item_id": i, "title": t, "brand": b or None, "category": c.split()}) for i, t, b, c in ITEMS]
    lines.insert(3, "[1, 2]")
    lines.insert(4, "{not json")
    items = write(tmp_path / "items.jsonl", lines)
    fields = TableFields(text=("title", "brand", "category"))
    stats = finetune_writer.process_finetune_tables("csv", inter, items, tmp_path / "out", fields, progress=False)
    assert_expected_folder(tmp_path / "out")
    assert stats["item_file"]["bad_rows"][:2] == [f"{items} line 4: a JSON list, not an object", f"{items} line 5: not JSON"]


def test_kcore_filter_by_hand():
    rows = [("u1", "A", 1), ("u1", "B", 2), ("u2", "A", 3), ("u2", "C", 4), ("u3", "A", 5)]
    kept, stats = finetune_writer.kcore_filter(rows, 2)
    assert kept == [] and stats["kcore_removed_interactions"] == 5  # the docstring's example
    # u3 and D go in round 1 (one interaction each); then A..C each have 2, u1 u2 have 3: stable.
    rows = [("u1", "A", 1), ("u1", "B", 2), ("u1", "C", 3), ("u2", "A", 1), ("u2", "B", 2), ("u2", "C", 3),
            ("u3", "D", 1), ("u4", "X", 1)]  # fmt: skip
    kept, stats = finetune_writer.kcore_filter(rows, 2, counted=lambda item: item != "X")
    assert kept == rows[:6] + [("u4", "X", 1)]  # X has no text: left for the builder to count and drop
    assert stats == {"kcore": 2, "kcore_rounds": 2, "kcore_removed_interactions": 1, "kcore_removed_users": 1,
                     "kcore_removed_items": 1}  # fmt: skip
    # the cascade: u2 goes (pass 1), which leaves B with one interaction (pass 2), which leaves u1 with one
    # (pass 3); pass 4 removes nothing
    rows = [("u1", "A", 1), ("u1", "B", 2), ("u2", "B", 1), ("u3", "A", 1), ("u3", "C", 1), ("u4", "C", 1),
            ("u4", "A", 2)]  # fmt: skip
    kept, stats = finetune_writer.kcore_filter(rows, 2)
    assert kept == [("u3", "A", 1), ("u3", "C", 1), ("u4", "C", 1), ("u4", "A", 2)]
    assert stats["kcore_rounds"] == 4 and stats["kcore_removed_users"] == 2
    with pytest.raises(ValueError, match="kcore must be at least 1, got 0"):
        finetune_writer.kcore_filter(rows, 0)


def test_kcore_option_on_the_amazon_and_table_paths(finetune_raw, tmp_path):
    # 3-core of the case: items with text counted: A 3, B 3, C 2, E 3, F 1 ... F and C go, then u3 etc.
    stats = finetune_writer.process_finetune(*finetune_raw, tmp_path / "a", min_seq_len=3, kcore=3, progress=False)
    inter, item = recbole_files(tmp_path)
    stats2 = finetune_writer.process_finetune_tables(
        "recbole", inter, item, tmp_path / "r", options=FinetuneOptions(min_seq_len=3, kcore=3), progress=False
    )
    for name in EXPECTED:
        assert read_json(tmp_path / "a" / name) == read_json(tmp_path / "r" / name), name
    train = read_json(tmp_path / "a" / "train.json")
    smap = read_json(tmp_path / "a" / "smap.json")
    # counted: u1 C A B F E, u2 A B E C, u3 B A E. F (1) goes; C (2) goes; then u3 B A E, u1 A B E, u2 A B E:
    # every item 3 times, every user 3 times.
    assert smap == {"A": 0, "B": 1, "E": 2}
    assert train == {"0": [0], "1": [0], "2": [1]}
    assert stats["kcore_removed_interactions"] == stats2["kcore_removed_interactions"] == 3
    assert stats["kcore_removed_items"] == 2 and stats["kcore_removed_users"] == 0


def test_default_amazon_stats_have_no_kcore_keys(finetune_raw, tmp_path):
    stats = finetune_writer.process_finetune(*finetune_raw, tmp_path / "o", progress=False)
    assert not any(k.startswith("kcore") for k in stats)


def test_a_missing_column_names_the_file_the_column_and_the_flag(tmp_path, capsys):
    inter = write(tmp_path / "r.csv", ["user,item,ts", "u1,A,1"])
    items = write(tmp_path / "i.csv", ["item_id,title", "A,x"])
    argv = ["--format", "csv", "--file_path", str(inter), "--meta_file_path", str(items), "--output_path",
            str(tmp_path / "o"), "--user_field", "user", "--no_progress"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {inter} line 1: no column 'item_id' (columns: user, item, ts); name it with --item_field\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "fmt, inter_lines, message",
    [
        ("recbole", ["user_id\titem_id\ttimestamp"], "{inter} line 1: RecBole columns are name:type (e.g. "
         "item_id:token), got user_id, item_id, timestamp"),
        ("csv", [], "{inter}: the file is empty (0 bytes)"),
        ("csv", ["user_id,item_id,timestamp", "u1,A,yesterday", "u1,A"],
         "{inter}: no row is a usable interaction with user_id, item_id and timestamp (3 lines read, skipped "
         "<'bad_columns': 1, 'bad_value': 1>; first: {inter} line 2: timestamp 'yesterday' is neither a number "
         "nor a date)"),
    ],
)  # fmt: skip
def test_unusable_interaction_files_are_one_line_naming_the_file(tmp_path, fmt, inter_lines, message):
    inter = tmp_path / "x.inter"
    inter.write_text("".join(line + "\n" for line in inter_lines))
    if fmt == "recbole":
        items = write(tmp_path / "x.item", ["item_id:token\ttitle:token_seq", "A\tx"])
    else:
        items = write(tmp_path / "items.csv", ["item_id,title", "A,x"])
    with pytest.raises(ValueError) as e:
        finetune_writer.process_finetune_tables(fmt, inter, items, tmp_path / "o", progress=False)
    assert str(e.value) == message.format(inter=inter).replace("<", "{").replace(">", "}")


def test_text_fields_missing_from_the_item_table_are_named(tmp_path):
    inter, item = recbole_files(tmp_path)
    with pytest.raises(ValueError, match=r"line 1: no column 'name' \(columns: item_id:token, .*\); name it with "
                       r"--text_fields"):  # fmt: skip
        finetune_writer.process_finetune_tables(
            "recbole", inter, item, tmp_path / "o", TableFields(text=("name",)), progress=False
        )


def test_no_qualifying_user_names_both_tables(tmp_path):
    inter, item = recbole_files(tmp_path)
    with pytest.raises(ValueError) as e:
        finetune_writer.process_finetune_tables(
            "recbole", inter, item, tmp_path / "o", options=FinetuneOptions(min_seq_len=9), progress=False
        )
    assert str(e.value) == (
        f"{inter}: no user qualifies: 3 users interact with items of {item}, 3 of them fewer than 9 times, 0 sampled "
        "out; 3 interactions are of items without text (no row in the item table, or every text column empty) there"
    )


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--text_fields", "title"], "--text_fields: only for --format recbole or csv"),
        (["--format", "csv"], "--meta_file_path is required for --format csv"),
        (["--kcore", "0"], "--kcore must be at least 1"),
        (["--format", "recbole", "--delimiter", ","], "--delimiter: RecBole atomic files are tab-separated"),
    ],
)
def test_flags_that_do_not_fit_the_format_are_usage_errors(argv, flag, capsys):
    base = ["--file_path", "x", "--output_path", "o"]
    if "--format" not in argv or "recbole" in argv:
        base += ["--meta_file_path", "m"]
    with pytest.raises(SystemExit) as e:
        cli.parse_args(base + argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, expected",
    [(978300760, 978300760), ("978300760.0", 978300760), ("1.5", 1.5), (" 42 ", 42), ("2020-01-01", 1577836800),
     ("2020-01-01T01:00:00+01:00", 1577836800), ("1970-01-01T00:00:10Z", 10), ("nan", None), ("inf", None),
     ("", None), ("soon", None), (True, None), (None, None), (float("nan"), None)],
)  # fmt: skip
def test_parse_time(value, expected):
    assert tables.parse_time(value) == expected


def test_named_bad_rows_are_capped_and_all_counted(tmp_path):
    lines = ["user_id,item_id,timestamp"] + ["u,A,"] * 25 + ["u,A,1"]
    inter = write(tmp_path / "r.csv", lines)
    stats = TableStats(str(inter))
    assert list(tables.iter_interactions(inter, "csv", TableFields(), stats, progress=False)) == [("u", "A", 1)]
    assert stats.skipped == {"missing_field": 25}
    assert len(stats.bad_rows) == tables.NAMED_BAD_ROWS and stats.bad_rows[0] == f"{inter} line 2: no timestamp"


def test_a_failed_run_leaves_the_old_folder_as_it_was(tmp_path):
    inter, item = recbole_files(tmp_path)
    out = tmp_path / "out"
    finetune_writer.process_finetune_tables("recbole", inter, item, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write(tmp_path / "bad.item", ["item_id:token\ttitle:token_seq", "A\t"])  # no item has text
    with pytest.raises(ValueError, match=r"bad.item: no row is a usable item with item_id and text"):
        finetune_writer.process_finetune_tables("recbole", inter, bad, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
