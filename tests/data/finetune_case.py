"""The hand-worked finetuning case: raw review and meta lines, and the folder they must give."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def review(user: str, asin: str, t: int) -> str:
    return json.dumps(
        {"overall": 5.0, "reviewerID": user, "asin": asin, "unixReviewTime": t, "summary": "ok"}
    )


META_LINES = [
    json.dumps({"asin": "A", "title": "Alpha &amp; Co Lens", "brand": "Acme", "category": ["Cam", "Lenses"]}),
    json.dumps({"asin": "B", "title": "Beta", "category": []}),  # no brand key, empty category list
    json.dumps({"asin": "C", "title": "Gamma", "brand": None}),  # null brand, no category key
    json.dumps({"asin": "D", "title": ""}),  # no title: D has no metadata
    json.dumps({"asin": "E", "title": "Eps", "brand": "X", "category": ["Z"]}),
    json.dumps(
        {"asin": "A", "title": "Alpha &amp; Co Lens v2", "brand": "Acme", "category": ["Cam", "Lenses"]}
    ),  # later wins
    repr({"asin": "F", "title": "Phi", "brand": "Y", "category": ["Q", "R"]}),  # Python literal
    '{"asin": "Z", "title": "broken',  # cut-off line
    json.dumps({"asin": "G", "title": None}),  # no title: G has no metadata
    json.dumps({"asin": "H", "title": "Eta", "brand": "W", "category": ["V"]}),  # never reviewed
]
REVIEW_LINES = [
    review("u1", "C", 300),  # 1
    review("u2", "A", 100),  # 2
    review("u1", "A", 100),  # 3
    review("u3", "B", 50),  # 4
    review("u1", "D", 200),  # 5  D has no metadata: does not count
    review("u2", "X", 10),  # 6  X is not in the meta file
    review("u1", "B", 100),  # 7  ties with line 3: A stays before B
    review("u2", "B", 200),  # 8
    review("u1", "F", 50),  # 9
    review("u2", "E", 300),  # 10
    review("u3", "A", 60),  # 11
    review("u2", "C", 150),  # 12
    json.dumps({"reviewerID": "u3", "asin": "C"}),  # 13 no time: skipped
    review("u3", "E", 70),  # 14 u3 ends with 3 interactions: below min_seq_len 4
    review("u4", "G", 10),  # 15 G has no metadata: u4 has nothing
    review("u1", "E", 300),  # 16 ties with line 1: C stays before E
]

# Worked out by hand. Users in order of first counted line: u1 (line 1), u2 (line 2); u3 has 3 < 4.
# Item ids walking u1's lines in file order: C 0, A 1, B 2, F 3, E 4 (u2 meets nothing new).
# u1 by time (stable): F50 A100 B100 C300 E300 -> 3 1 2 0 4;  u2: A100 C150 B200 E300 -> 1 0 2 4.
EXPECTED = {
    "umap.json": {"u1": 0, "u2": 1},
    "smap.json": {"C": 0, "A": 1, "B": 2, "F": 3, "E": 4},
    "train.json": {"0": [3, 1, 2], "1": [1, 0]},
    "val.json": {"0": [0], "1": [2]},
    "test.json": {"0": [4], "1": [4]},
    "meta_data.json": {
        "A": {"title": "Alpha &amp; Co Lens v2", "brand": "Acme", "category": "Cam Lenses"},
        "B": {"title": "Beta", "brand": "", "category": ""},
        "C": {"title": "Gamma", "brand": "", "category": ""},
        "E": {"title": "Eps", "brand": "X", "category": "Z"},
        "F": {"title": "Phi", "brand": "Y", "category": "Q R"},
        "H": {"title": "Eta", "brand": "W", "category": "V"},
    },
}


# The same case as tables (tests/data/test_tables.py): RecBole atomic files, CSV, TSV, JSON lines.
# (user, item, time) of REVIEW_LINES, in file order; None marks line 13 (no time).
INTERACTIONS = [
    ("u1", "C", 300), ("u2", "A", 100), ("u1", "A", 100), ("u3", "B", 50), ("u1", "D", 200),
    ("u2", "X", 10), ("u1", "B", 100), ("u2", "B", 200), ("u1", "F", 50), ("u2", "E", 300),
    ("u3", "A", 60), ("u2", "C", 150), ("u3", "C", None), ("u3", "E", 70), ("u4", "G", 10),
    ("u1", "E", 300),
]  # fmt: skip
# (item, title, brand, category) of META_LINES that parse; D and G have no text at all.
ITEMS = [
    ("A", "Alpha &amp; Co Lens", "Acme", "Cam Lenses"), ("B", "Beta", "", ""), ("C", "Gamma", "", ""),
    ("D", "", "", ""), ("E", "Eps", "X", "Z"), ("A", "Alpha &amp; Co Lens v2", "Acme", "Cam Lenses"),
    ("F", "Phi", "Y", "Q R"), ("G", "", "", ""), ("H", "Eta", "W", "V"),
]  # fmt: skip


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "".join(line + "\n" for line in lines)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def recbole_files(root: Path, gz: bool = False) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t5.0\t{'' if t is None else float(t)}" for u, i, t in INTERACTIONS]
    item = ["item_id:token\ttitle:token_seq\tbrand:token\tcategory:token_seq\tprice:float"]
    item += [f"{i}\t{t}\t{b}\t{c}\t9.5" for i, t, b, c in ITEMS]
    item.insert(8, "Z\tbroken")  # line 9: two columns of five
    return write(root / f"tiny.inter{suffix}", inter, gz), write(root / f"tiny.item{suffix}", item, gz)
