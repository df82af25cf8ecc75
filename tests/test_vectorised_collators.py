"""The numpy collators give exactly the tensors of the per-token Python path (`vectorised=False`, which lays
sequences out with `tokenizer.encode` + `tokenizer.padding`) for the same generator state."""

import random

import numpy as np
import pytest
import torch

from recformer import RecformerTokenizer
from recformer.model.batching import encode_item_sequences
from recformer.model.item_tokens import TokenizedItems
from recformer.train.collators import FinetuneCollator, GlobalBatchCollator, PretrainCollator, WholeWordMasker

from .conftest import TINY_TOKENIZER_DIR, tiny_config

CHARS = "abcdefghij klmnop!?.,-' 0123 red shoe title brand "


def random_items(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        item = {"title": "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 60)))}
        if rng.random() < 0.6:
            item["brand"] = "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 12)))
        items.append(item)
    return items


def make_tokenizer(max_token_num: int) -> RecformerTokenizer:
    return RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config(max_token_num=max_token_num))


def histories(n_items: int, count: int, seed: int, longest: int = 70) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n_items) for _ in range(rng.randint(2, longest))] for _ in range(count)]


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("max_token_num", [64, 256, 1024])
@pytest.mark.parametrize("pad_to_max", [False, True])
def test_padded_layout_equals_the_tokenizer(max_token_num, pad_to_max):
    tok = make_tokenizer(max_token_num)
    items = random_items(40, seed=max_token_num)
    table = TokenizedItems.from_lists(tok.tokenize_items(items))
    seqs = histories(len(items), 12, seed=1) + [[], [3], [0] * 60]  # empty, one item, past max_items
    got = encode_item_sequences(tok, table, seqs, pad_to_max=pad_to_max)
    python = encode_item_sequences(tok, table, seqs, pad_to_max=pad_to_max, vectorised=False)
    assert_same(got, python)
    want = tok.padding([tok.encode([items[i] for i in s]) for s in seqs], pad_to_max=pad_to_max)
    for name, value in want.items():
        assert got[name].tolist() == value, name


def test_keyed_table_and_unknown_keys():
    tok = make_tokenizer(128)
    items = random_items(10, seed=3)
    keys = [f"B{i:03d}" for i in range(10)]
    table = TokenizedItems.from_lists(tok.tokenize_items(items), keys)
    seqs = [["B001", "B007", "B003"], ["B009"]]
    assert_same(encode_item_sequences(tok, table, seqs), encode_item_sequences(tok, table, seqs, vectorised=False))
    with pytest.raises(KeyError, match="'B999'"):
        encode_item_sequences(tok, table, [["B001", "B999"]])


@pytest.mark.parametrize("negatives", [0, 5])
def test_finetune_collator_equals_the_python_path(negatives):
    tok = make_tokenizer(1024)
    items = random_items(60, seed=negatives)
    table = TokenizedItems.from_lists(tok.tokenize_items(items))
    fast = FinetuneCollator(tok, table, random.Random(11), num_negatives=negatives)
    slow = FinetuneCollator(tok, table, random.Random(11), num_negatives=negatives, vectorised=False)
    for step in range(6):
        batch = histories(len(items), 16, seed=step)
        assert_same(fast(batch), slow(batch))
    assert fast.rng.getstate() == slow.rng.getstate()


def test_global_batch_collator_equals_the_python_path():
    tok = make_tokenizer(512)
    items = random_items(50, seed=5)
    table = TokenizedItems.from_lists(tok.tokenize_items(items))
    fast = GlobalBatchCollator(FinetuneCollator(tok, table, num_negatives=3), seed=4, micro_batch=3, rank=1, world=2)
    slow = GlobalBatchCollator(FinetuneCollator(tok, table, num_negatives=3, vectorised=False), 4, 3, 1, 2)
    for step in range(3):
        got, want = fast((step, histories(len(items), 13, seed=step))), slow((step, histories(len(items), 13, step)))
        assert got.size == want.size and len(got.micro) == len(want.micro)
        for (rows, n), (rows_want, n_want) in zip(got.micro, want.micro):
            assert n == n_want
            assert_same(rows, rows_want)


@pytest.mark.parametrize("max_token_num", [96, 1024])
def test_pretrain_collator_equals_the_python_path(max_token_num):
    tok = make_tokenizer(max_token_num)
    items = random_items(80, seed=7)
    keys = [f"A{i}" for i in range(len(items))]
    table = TokenizedItems.from_lists(tok.tokenize_items(items), keys)
    fast = PretrainCollator(tok, table, 0.15, rng=random.Random(3))
    slow = PretrainCollator(tok, table, 0.15, rng=random.Random(3), vectorised=False)
    for step in range(5):
        batch = [[keys[i] for i in seq] for seq in histories(len(items), 8, seed=100 + step)]
        assert_same(fast(batch), slow(batch))
    assert fast.rng.getstate() == slow.rng.getstate()


@pytest.mark.parametrize("probability", [0.05, 0.15, 0.5, 0.9])
def test_masker_equals_the_python_path_on_any_ids(probability):
    tok = make_tokenizer(256)
    fast = WholeWordMasker(tok, probability, max_predictions=40)
    slow = WholeWordMasker(tok, probability, max_predictions=40, vectorised=False)
    gen = np.random.default_rng(int(probability * 100))
    # any ids: <s> and </s> inside rows (a continuing token after </s> joins the word before it), padding,
    # <unk>, <mask>, rows made only of skipped tokens
    ids = torch.from_numpy(gen.integers(0, len(tok), size=(24, 77)))
    ids[gen.random(ids.shape) < 0.05] = tok.eos_token_id
    ids[gen.random(ids.shape) < 0.02] = tok.unk_token_id
    ids[gen.random(ids.shape) < 0.02] = tok.mask_token_id
    ids[:, 50:] = torch.where(torch.arange(24)[:, None] % 3 == 0, tok.pad_token_id, ids[:, 50:])
    ids[:, 0] = tok.bos_token_id
    ids[5] = tok.eos_token_id
    for seed in range(3):
        rng_fast, rng_slow = random.Random(seed), random.Random(seed)
        got, want = fast(ids, rng_fast), slow(ids, rng_slow)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert rng_fast.getstate() == rng_slow.getstate()
    assert fast(ids[:0], random.Random(0))[0].shape == (0, 77)
