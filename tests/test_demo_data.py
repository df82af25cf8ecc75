"""The bundled demo dataset: reproducible, processed cleanly by the three scripts, of the intended scale, and
carrying a text signal that popularity ranking lacks."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recformer.data import amazon
from recformer.data.pretrain_writer import PRETRAIN_CATEGORIES
from recformer.io.fileio import read_json

from .helpers import load_cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
RAW = DEMO / "raw"
RAW_FILES = ["finetune/Demo_5.json.gz", "finetune/meta_Demo.json.gz"] + [
    f"pretrain/{name.format(c)}" for c in PRETRAIN_CATEGORIES for name in (amazon.REVIEW_FILE, amazon.META_FILE)
]


def test_raw_files_are_committed_and_small():
    found = sorted(str(p.relative_to(RAW)) for p in RAW.rglob("*") if p.is_file())
    assert found == sorted(RAW_FILES)
    assert sum((RAW / f).stat().st_size for f in RAW_FILES) < 3 * 2**20


def test_generator_reproduces_the_committed_files(tmp_path):
    load_cli(DEMO / "generate_demo_data.py").generate(tmp_path)
    for name in RAW_FILES:
        new, committed = (tmp_path / name).read_bytes(), (RAW / name).read_bytes()
        assert new[4:8] == b"\0\0\0\0"  # gzip header time 0: the bytes depend only on the content
        # Compare the content: a different zlib build may compress the same lines to other bytes.
        assert gzip.decompress(new) == gzip.decompress(committed), name


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> dict[str, Path]:
    """Run the three command-line scripts on the demo data, as the demo does."""
    out = tmp_path_factory.mktemp("demo_processed")
    finetune, pretrain = out / "finetune", out / "pretrain"
    cli = load_cli(REPO / "finetune_data" / "process.py")
    argv = [
        "--file_path",
        str(RAW / "finetune/Demo_5.json.gz"),
        "--meta_file_path",
        str(RAW / "finetune/meta_Demo.json.gz"),
    ]
    assert cli.main([*argv, "--output_path", str(finetune), "--no_progress"]) == 0
    roots = ["--seq_root", str(RAW / "pretrain"), "--output_dir", str(pretrain), "--no_progress"]
    assert (
        load_cli(REPO / "pretrain_data" / "meta_data_process.py").main(
            ["--meta_root", str(RAW / "pretrain"), *roots]
        )
        == 0
    )
    assert load_cli(REPO / "pretrain_data" / "interaction_data_process.py").main(roots) == 0
    return {"finetune": finetune, "pretrain": pretrain}


# SHA-256 of every processed demo file, as the first release wrote them: the demo's numbers stay put only
# while these bytes do. Stats files are hashed with the repository prefix removed from their input paths;
# manifests (hashes of those stats files, so of the checkout's path) are not pinned.
DEMO_OUTPUT_SHA256 = {
    "finetune": {
        "meta_data.json": "bc017b021f93770655df6c42d8d8ee4e671cfe3ba61d0c74c42230515235390a",
        "smap.json": "8a1449980a620ac1ff67df8378d84a970934e6624c76068b887f2e17b91704ba",
        "stats.json": "623f57058f3044671d13e77196a1e13aeef89f4f84e41f6473a508080a03860c",
        "test.json": "0d510099ea8ed872717d57a9b5400e32c24e23b6cb6d65932d22b6525010dfff",
        "train.json": "5269d958c534f9fb1661fc9f79983e172e9c736991aa34d863f1b6185d3ef546",
        "umap.json": "e22c84fec9bfc8215e87bc5a570088ae9eeb0ca104bcbee3465a48c403491398",
        "val.json": "b315317b152089b31dfef74f43f723ccbfd7b4796940f0910aa25b23f9031110",
    },
    "pretrain": {
        "dev.json": "a284cf7a98e45d263d9509664ce3630c0bf2e997f4b225b1ea3867e929315989",
        "interaction_stats.json": "ea3daf58ac087931d35fbb60cf76c7b9aba2239a1853e8e3d1c0a6d442d9568f",
        "meta_data.json": "e7b899ccb65066be1539d804bad99c9d461cb767cbdfb4bc7851db5fe2acdf49",
        "meta_stats.json": "4db28e48fa9205b7d874339cc0e1a08da38b639957d1748efe248d1eb6fe4c5c",
        "train.json": "3855b6bfe5f1ed947f949ccd3fc025f74366afbab3119cc966b3d9dd84024dc4",
    },
}


@pytest.mark.parametrize("folder", sorted(DEMO_OUTPUT_SHA256))
def test_processed_demo_files_are_byte_identical(processed, folder):
    found = {}
    for path in processed[folder].iterdir():
        if path.name.endswith("manifest.json"):
            continue
        data = path.read_bytes()
        if path.name.endswith("stats.json"):
            data = data.replace(f"{REPO}/".encode(), b"")
        found[path.name] = hashlib.sha256(data).hexdigest()
    assert found == DEMO_OUTPUT_SHA256[folder]


def test_finetune_demo_scale_and_mess(processed):
    out = processed["finetune"]
    stats = read_json(out / "stats.json")
    assert 1000 <= stats["users"] <= 1500
    assert 1000 <= stats["items"] <= 3000
    assert 6 <= stats["avg_seq_len"] <= 12
    assert 0 < stats["users_below_min_seq_len"] < 0.1 * stats["users_with_interactions"]
    # Every kind of bad line the reader handles occurs, and is counted rather than fatal.
    assert set(stats["lines_skipped"]) == {
        "blank",
        "unparseable",
        "not_a_record",
        "missing_field",
        "no_title",
    }
    assert stats["reviews"]["python_literal"] > 0 and stats["meta"]["python_literal"] > 0
    assert stats["meta"]["duplicate_records"] > 0
    assert stats["interactions_without_meta"] > 0

    train, test = read_json(out / "train.json"), read_json(out / "test.json")
    lengths = [len(train[u]) + 2 for u in train]
    assert sum(n >= 5 for n in lengths) > 0.8 * len(lengths)
    assert len(test) == stats["users"]

    meta = read_json(out / "meta_data.json")
    assert len(meta) == stats["meta_data_items"] >= stats["items"]
    assert sum(m["brand"] == "" for m in meta.values()) >= 10
    assert sum(m["category"] == "" for m in meta.values()) >= 10
    assert any("&amp;" in m["title"] for m in meta.values())
    assert all(re.fullmatch(r"B0[01][0-9A-Z]{7}", asin) for asin in meta)

    # Popularity is fairly flat: no item takes more than 1% of the interactions.
    counts = Counter(i for seq in train.values() for i in seq)
    assert counts.most_common(1)[0][1] < 0.01 * sum(counts.values())


def test_demo_reviews_have_time_ties():
    times = Counter(
        (u, t) for u, _, t in amazon.iter_reviews(RAW / "finetune/Demo_5.json.gz", progress=False)
    )
    assert sum(n > 1 for n in times.values()) > 100


def test_pretrain_demo_scale(processed):
    out = processed["pretrain"]
    stats = read_json(out / "interaction_stats.json")
    for f in stats["train"]["files"] + stats["dev"]["files"]:
        assert 130 <= f["sequences"] <= 300, f["path"]
        assert 100 <= f["items"] <= 400, f["path"]
    assert stats["train"]["single_item_sequences"] > 0
    assert 5 <= stats["train"]["avg_seq_len"] <= 9

    train, dev, meta = (
        read_json(out / "train.json"),
        read_json(out / "dev.json"),
        read_json(out / "meta_data.json"),
    )
    assert len(train) == stats["train"]["sequences"] and len(dev) == stats["dev"]["sequences"]
    assert 1000 <= len(meta) <= 3000
    assert all(a in meta for seq in train + dev for a in seq)


def test_pretrain_demo_shares_items_across_categories():
    def asins(path, reviews=False):
        if reviews:
            return {a for _, a, _ in amazon.iter_reviews(path, progress=False)}
        return {a for a, _ in amazon.iter_meta(path, progress=False)}

    root = RAW / "pretrain"
    # The same products listed in two categories (the later category's record wins).
    assert (
        len(
            asins(root / "meta_Cell_Phones_and_Accessories.json.gz")
            & asins(root / "meta_Electronics.json.gz")
        )
        > 20
    )
    # Coffee bought in Home_and_Kitchen's file but described only in Grocery's meta file.
    home_reviews = asins(root / "Home_and_Kitchen_5.json.gz", reviews=True)
    cross = (home_reviews - asins(root / "meta_Home_and_Kitchen.json.gz")) & asins(
        root / "meta_Grocery_and_Gourmet_Food.json.gz"
    )
    assert len(cross) > 5


def ndcg_at_10(scores: np.ndarray, history: list[list[int]], targets: list[int]) -> float:
    """Mean NDCG@10 over users; history items excluded; a tie counts against the target."""
    total = 0.0
    for s, h, t in zip(scores, history, targets):
        s = s.astype(float).copy()
        s[h] = -np.inf
        rank = int((s > s[t]).sum() + (s == s[t]).sum() - 1)
        total += 1 / math.log2(rank + 2) if rank < 10 else 0.0
    return total / len(targets)


def test_text_similarity_clearly_beats_popularity(processed):
    """The signal the demo exists for: the text of the last item points at the next one far better than
    popularity does (a crude TF-IDF ranking stands in for a trained text model)."""
    out = processed["finetune"]
    train, val, test = (read_json(out / f"{s}.json") for s in ("train", "val", "test"))
    smap, meta = read_json(out / "smap.json"), read_json(out / "meta_data.json")
    asins = sorted(smap, key=smap.get)
    docs = [Counter(" ".join(meta[a].values()).lower().replace(",", " ").split()) for a in asins]
    vocab = {w: j for j, w in enumerate(sorted({w for d in docs for w in d}))}
    df = Counter(w for d in docs for w in d)
    x = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w, c in d.items():
            x[i, vocab[w]] = c * math.log(len(docs) / df[w])
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    users = list(test)
    history = [train[u] + val[u] for u in users]
    targets = [test[u][0] for u in users]
    popularity = np.bincount([i for u in users for i in train[u]], minlength=len(asins))
    pop = ndcg_at_10(np.tile(popularity, (len(users), 1)), history, targets)
    text = ndcg_at_10(x[[h[-1] for h in history]] @ x.T, history, targets)
    assert pop < 0.03
    assert text > 3 * pop
