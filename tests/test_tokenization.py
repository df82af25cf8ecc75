"""Golden layouts worked out by hand from the layout in recformer/model/tokenization.py with the tiny vocabulary in tests/fixtures.

Tiny vocabulary ids: <s> 0, <pad> 1, </s> 2, <unk> 3; byte b -> 4 + b; merges: title 263, brand 267,
'Ġshoe' 271, red 273; <mask> 274.
"""

import copy

import pytest
import torch

from recformer import RecformerTokenizer
from recformer.model.item_tokens import tokenize_catalogue

from .conftest import TINY_TOKENIZER_DIR, tiny_config

TITLE, BRAND, SHOE, RED = 263, 267, 271, 273


def byte(ch: str) -> int:
    return 4 + ord(ch)


def make(**overrides) -> RecformerTokenizer:
    return RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config(**overrides))


def test_key_and_value_tokenized_separately_without_leading_space():
    tok = make()
    ids, types = tok.encode_item({"title": "red shoe", "brand": "b"})
    assert ids == [TITLE, RED, SHOE, BRAND, byte("b")]
    assert types == [1, 2, 2, 1, 2]
    # "shoe" at the start of a value has no leading space, so it is not the merged ' shoe' token
    assert tok.encode_item({"title": "shoe"})[0] == [TITLE, byte("s"), byte("h"), byte("o"), byte("e")]


def test_key_tokens_count_against_max_attr_length():
    assert make(max_attr_length=3).encode_item({"title": "red shoe"}) == ([TITLE, RED, SHOE], [1, 2, 2])
    assert make(max_attr_length=2).encode_item({"title": "red shoe", "brand": "b"}) == (
        [TITLE, RED, BRAND, byte("b")],
        [1, 2, 1, 2],
    )
    assert make(max_attr_length=1).encode_item({"title": "red shoe"}) == ([TITLE], [1])


def test_first_max_attr_num_attributes_in_insertion_order():
    item = {"brand": "b", "title": "red", "category": "x"}
    assert make(max_attr_num=2).encode_item(item) == ([BRAND, byte("b"), TITLE, RED], [1, 2, 1, 2])


def test_sequence_is_reversed_with_item_positions():
    tok = make()
    old, new = {"title": "red"}, {"brand": "b"}
    out = tok([old, new])
    assert out["input_ids"] == [0, BRAND, byte("b"), TITLE, RED]
    assert out["item_position_ids"] == [0, 1, 1, 2, 2]
    assert out["token_type_ids"] == [0, 1, 2, 1, 2]
    assert out["attention_mask"] == [1] * 5
    assert out["global_attention_mask"] == [1, 0, 0, 0, 0]


def test_newest_fifty_items_kept():
    tok = make(max_token_num=1000)
    items = [{"title": chr(ord("A") + i % 26) + str(i)} for i in range(60)]
    out = tok(items)
    assert max(out["item_position_ids"]) == 50
    # item 59 is the newest: it comes right after <s> with item position 1
    assert out["input_ids"][1:5] == [TITLE, byte(chr(ord("A") + 59 % 26)), byte("5"), byte("9")]
    assert out["item_position_ids"][1:5] == [1, 1, 1, 1]
    # item 10 is the oldest kept (position 50); item 9 is dropped
    last = [i for i, p in enumerate(out["item_position_ids"]) if p == 50]
    assert [out["input_ids"][i] for i in last] == [TITLE, byte(chr(ord("A") + 10)), byte("1"), byte("0")]


def test_cut_to_max_token_num_mid_item():
    tok = make(max_token_num=4)
    out = tok([{"title": "red shoe", "brand": "b"}])  # <s> + 5 tokens -> cut to 4
    assert out["input_ids"] == [0, TITLE, RED, SHOE]
    assert out["item_position_ids"] == [0, 1, 1, 1]
    assert out["token_type_ids"] == [0, 1, 2, 2]
    assert out["global_attention_mask"] == [1, 0, 0, 0]


def test_batch_padding_values_and_pad_to_max():
    tok = make(max_token_num=8)
    batch = tok([[{"title": "red"}], []])
    assert batch["input_ids"] == [[0, TITLE, RED], [0, 1, 1]]
    assert batch["item_position_ids"] == [[0, 1, 1], [0, 50, 50]]
    assert batch["token_type_ids"] == [[0, 1, 2], [0, 3, 3]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]
    assert batch["global_attention_mask"] == [[1, 0, 0], [1, 0, 0]]
    full = tok([[{"title": "red"}], []], pad_to_max=True, return_tensor=True)
    assert all(v.shape == (2, 8) and v.dtype == torch.long for v in full.values())
    assert full["item_position_ids"][1].tolist() == [0] + [50] * 7


def test_pretokenized_items_give_the_same_encoding():
    tok = make()
    items = [{"title": "red shoe"}, {"brand": "b", "title": "red"}]
    pre = [list(tok.encode_item(i)) for i in items]
    assert tok(pre) == tok(items)
    assert tok([pre, pre[:1]]) == tok([items, items[:1]])


def test_padding_does_not_mutate_inputs():
    tok = make()
    encoded = [tok.encode([{"title": "red"}]), tok.encode([])]
    before = copy.deepcopy(encoded)
    tok.padding(encoded)
    assert encoded == before


def test_config_is_per_instance():
    a, b = make(max_attr_length=1), make(max_attr_length=32)
    item = {"title": "red shoe"}
    assert a.encode_item(item)[0] == [TITLE]
    assert b.encode_item(item)[0] == [TITLE, RED, SHOE]


def test_each_distinct_item_tokenized_once():
    tok = make()
    item = {"title": "red shoe"}
    tok([[item, item], [item]])
    cache = tok._item_cache()
    assert len(cache) == 1
    tok.config.max_attr_length = 2  # a changed limit is a different cache entry, never a stale one
    assert tok.encode_item(item) == ([TITLE, RED], [1, 2])
    assert len(cache) == 2


@pytest.mark.parametrize(
    "item, expected_ids",
    [
        ({}, []),  # an item with no attributes
        ({"title": None}, [TITLE]),  # None is an empty string
        ({"title": 12}, [TITLE, byte("1"), byte("2")]),  # numbers become text
        ({"title": ["red", "b"]}, [TITLE, RED, 36, byte("b")]),  # lists joined by spaces ('Ġ' is 36)
        ({"title": "é"}, [TITLE, 4 + 0xC3, 4 + 0xA9]),  # unicode as UTF-8 bytes
        # a lone surrogate (from a JSON escape such as \ud800) becomes U+FFFD (UTF-8 EF BF BD)
        ({"title": "r\ud800b"}, [TITLE, byte("r"), 4 + 0xEF, 4 + 0xBF, 4 + 0xBD, byte("b")]),
        ({"title": "\ud83d\ude00"}, [TITLE, 4 + 0xF0, 4 + 0x9F, 4 + 0x98, 4 + 0x80]),  # a pair is its character
        ({"\udfff": "red"}, [4 + 0xEF, 4 + 0xBF, 4 + 0xBD, RED]),  # keys are cleaned too
        ({"title": b"red"}, [TITLE, RED]),  # bytes are UTF-8 text
        ({"title": b"r\xffb"}, [TITLE, byte("r"), 4 + 0xEF, 4 + 0xBF, 4 + 0xBD, byte("b")]),  # invalid bytes: U+FFFD
        ({"title": 1.5, "brand": True}, [TITLE, byte("1"), byte("."), byte("5"), BRAND, byte("T"), byte("r"), byte("u"),
                                         byte("e")]),  # fmt: skip
        ({"title": {"a": 1}}, [TITLE, *make().item_tokenize("{'a': 1}")]),  # anything else: str()
        ({"title": ["red", None, 2]}, [TITLE, RED, 36, byte("2")]),  # None list elements skipped
    ],
)
def test_odd_values_encode(item, expected_ids):
    assert make().encode_item(item)[0] == expected_ids


def test_very_long_text_and_empty_history_encode():
    tok = make(max_token_num=64)
    out = tok([[{"title": "red " * 5000}], []], return_tensor=True)
    assert out["input_ids"].shape == (2, 33)  # <s> + max_attr_length tokens
    assert tok([])["input_ids"] == [0]


def test_bad_items_raise_clear_errors():
    tok = make()
    with pytest.raises(TypeError, match="not a string"):
        tok("red shoe")
    with pytest.raises(TypeError, match="item 0 of the sequence"):
        tok.encode([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"^item 1: expected a dict of attribute -> text, got NoneType$"):
        tok.tokenize_items([{"title": "red"}, None])


def test_a_catalogue_with_a_non_dict_item_is_refused_naming_the_item():
    with pytest.raises(TypeError, match=r"^item 'B2': expected a dict of attribute -> text, got list$"):
        tokenize_catalogue(make(), [{"title": "red"}, {}, ["red"]], keys=["B0", "B1", "B2"], progress=False)
    with pytest.raises(TypeError, match=r"^item 0: expected a dict of attribute -> text, got str$"):
        tokenize_catalogue(make(), ["red"], progress=False)


def test_odd_text_in_a_whole_batch_tokenizes_every_item():
    """One bad string among many must not abort the Rust batch call half-way."""
    tok = make()
    items = [{"title": "red"}, {"title": "x\ud800"}, {"brand": None}, {"title": b"\xff"}]
    table = tokenize_catalogue(tok, items, progress=False)
    assert [table[i][0] for i in range(4)] == [tok.encode_item(item)[0] for item in items]
    assert table[0][0] == [TITLE, RED]


def test_plain_text_call_still_works():
    tok = make()
    assert tok("red", add_special_tokens=True)["input_ids"] == [0, RED, 2]
