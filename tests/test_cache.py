"""The disk caches: a damaged or ill-fitting cache file is rebuilt with a warning naming it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from recformer.io.cache import cached
from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue

ITEMS = [{"title": "red shoe", "brand": "b"}, {"title": "blue hat"}, {"title": "wool sock", "category": "x y"}]


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"not a cache file")
    else:  # empty
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_damaged_tokenized_items_cache_is_rebuilt_with_a_warning(tokenizer, tmp_path, caplog, how):
    first = tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("items-*.npz")
    damage(path, how)
    with caplog.at_level(logging.WARNING, logger="recformer.io.cache"):
        again = tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    assert [again[i] for i in range(3)] == [first[i] for i in range(3)]
    assert f"tokenized items: cache file {path} cannot be read" in caplog.text and "rebuilding it" in caplog.text
    reread = TokenizedItems.load(path)  # the rebuilt file replaced the damaged one
    assert np.array_equal(reread.ids, first.ids)


def test_tokenized_items_cache_of_another_size_is_rebuilt(tokenizer, tmp_path, caplog):
    tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("items-*.npz")
    TokenizedItems.from_lists([([5, 6], [1, 2])]).save(path)  # a readable file holding one item, not three
    with caplog.at_level(logging.WARNING, logger="recformer.io.cache"):
        table = tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    assert len(table) == 3 and f"cache file {path} cannot be read (ValueError)" in caplog.text


def test_cached_reuses_a_good_file_and_builds_a_missing_one(tmp_path):
    path = tmp_path / "value.pt"
    built = []

    def build():
        built.append(1)
        return torch.arange(3)

    save = lambda value, p: torch.save(value, p)  # noqa: E731
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    assert cached(path, build, load, save, "x").tolist() == [0, 1, 2]
    assert cached(path, build, load, save, "x").tolist() == [0, 1, 2]
    assert built == [1]
