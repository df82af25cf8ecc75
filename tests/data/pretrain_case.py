"""The hand-worked pretraining case: raw files of three categories, and the corpus they must give."""

from __future__ import annotations

import json

TRAIN, DEV = ["CatA", "CatB"], ["CatC"]


def meta(asin: str, title, brand=None, category=None) -> str:
    rec = {"asin": asin, "title": title}
    if brand is not None:
        rec["brand"] = brand
    if category is not None:
        rec["category"] = category
    return json.dumps(rec)


def review(user: str, asin: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t, "overall": 4.0})


RAW = {
    "meta_CatA.json.gz": [
        meta("a1", "A one", "BA", ["CatA", "Sub"]),
        meta("a2", "A two"),  # no brand, no category
        meta("s1", "Shared from A", "S", ["CatA"]),
        meta("n1", None),  # no title: n1 is never selected
        meta("u1", "Unreviewed"),  # reviewed nowhere: not selected
    ],
    "meta_CatB.json.gz": [
        meta("b1", "B one", category=[]),
        meta("s1", "Shared from B", "S", ["CatB", "X"]),  # a later category's record replaces CatA's
        meta("a2", ""),  # an empty title never replaces a good record
    ],
    "meta_CatC.json.gz": [
        meta("c1", "C one"),
        meta("c2", "C two"),
        meta("x1", "Cross item", "XB", ["CatC"]),  # described in CatC, reviewed in CatA's file
    ],
    "CatA_5.json.gz": [
        review("r1", "a1", 100),
        review("r2", "a2", 50),
        review("r1", "s1", 100),  # ties with a1: sorted by asin, a1 < s1
        review("r1", "x1", 90),
        review("r1", "n1", 10),  # no metadata
        review("r3", "zz", 10),  # no metadata: r3 gets no sequence at all
        review("r2", "a1", 50),  # ties with a2, later in the file, but a1 < a2 comes first
        '{"reviewerID": "r2", "asin": "a1", "unixRe',  # broken line
    ],
    "CatB_5.json.gz": [
        review("r1", "b1", 5),  # r1 again: a separate sequence per review file
        review("r4", "s1", 1),
        review("r4", "b1", 1),  # tie: b1 < s1
        repr({"reviewerID": "r5", "asin": "b1", "unixReviewTime": 7, "verified": True}),  # Python literal
    ],
    "CatC_5.json.gz": [
        review("r6", "c2", 20),
        review("r6", "c1", 10),
        review("r7", "c1", 5),  # a one-item sequence: kept and counted
        json.dumps({"asin": "c2", "unixReviewTime": 3}),  # no reviewerID
    ],
}

EXPECTED_META = {
    "a1": {"title": "A one", "brand": "BA", "category": "CatA Sub"},
    "a2": {"title": "A two", "brand": "", "category": ""},
    "s1": {"title": "Shared from B", "brand": "S", "category": "CatB X"},
    "x1": {"title": "Cross item", "brand": "XB", "category": "CatC"},
    "b1": {"title": "B one", "brand": "", "category": ""},
    "c1": {"title": "C one", "brand": "", "category": ""},
    "c2": {"title": "C two", "brand": "", "category": ""},
}
# CatA: r1 -> x1@90, a1@100, s1@100; r2 -> a1@50, a2@50; r3 has nothing. CatB: r1, r4, r5. CatC: r6, r7.
EXPECTED_TRAIN = [["x1", "a1", "s1"], ["a1", "a2"], ["b1"], ["b1", "s1"], ["b1"]]
EXPECTED_DEV = [["c1", "c2"], ["c1"]]
