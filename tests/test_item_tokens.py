import numpy as np
import pytest

from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue

ITEMS = [{"title": "red shoe", "brand": "b"}, {}, {"title": "shoe"}]


def test_table_matches_encode_item_and_round_trips(tmp_path, tokenizer):
    table = tokenize_catalogue(tokenizer, ITEMS, keys=["A", "B", "C"], progress=False)
    for i, item in enumerate(ITEMS):
        assert table[i] == tokenizer.encode_item(item)
        assert table["ABC"[i]] == tokenizer.encode_item(item)
    assert table.lengths().tolist() == [5, 0, 5]
    assert table.ids.dtype == np.int32 and table.types.dtype == np.int8
    table.save(tmp_path / "t.npz")
    again = TokenizedItems.load(tmp_path / "t.npz")
    assert [again[i] for i in range(3)] == [table[i] for i in range(3)]
    assert again["C"] == table["C"]
    with pytest.raises(KeyError):
        table["Z"]
    with pytest.raises(KeyError):
        table[3]


def test_disk_cache_is_keyed_by_tokenizer_fields_and_items(tmp_path, tokenizer):
    tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("items-*.npz"))) == 1
    tokenizer.config.max_attr_length = 2
    short = tokenize_catalogue(tokenizer, ITEMS, cache_dir=tmp_path, progress=False)
    assert short[0][0] == tokenizer.encode_item(ITEMS[0])[0] and len(short[0][0]) == 4
    tokenize_catalogue(tokenizer, ITEMS[:2], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("items-*.npz"))) == 3


def test_take_gives_the_rows_in_the_given_order():
    table = TokenizedItems.from_lists([([1, 2], [0, 1]), ([3], [1]), ([], []), ([4, 5, 6], [0, 0, 1])], keys="abcd")
    part = table.take([3, 0, 2])
    assert len(part) == 3 and part.keys == ["d", "a", "c"]
    assert [part[i] for i in range(3)] == [([4, 5, 6], [0, 0, 1]), ([1, 2], [0, 1]), ([], [])]
    assert part["a"] == table["a"] and part.lengths().tolist() == [3, 2, 0]
    assert len(table.take([])) == 0


def test_sequences_of_empty_items_are_just_their_s_token(tokenizer):
    table = TokenizedItems.from_lists([([], []), ([], [])])
    fields, lengths = table.encode_sequences(tokenizer, [[0, 1], [], [1]])
    assert lengths.tolist() == [1, 1, 1]
    assert fields["input_ids"].tolist() == [tokenizer.bos_token_id] * 3
    assert fields["global_attention_mask"].tolist() == [1, 1, 1]
    with pytest.raises(KeyError, match="item 2 is not in the tokenized item table"):
        table.encode_sequences(tokenizer, [[2]])
