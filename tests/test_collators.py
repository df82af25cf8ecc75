import random
from collections import Counter

import pytest
import torch

from recformer.model.batching import encode_item_sequences
from recformer.train.collators import (
    EvalCollator,
    FinetuneCollator,
    GlobalBatchCollator,
    PretrainCollator,
    WholeWordMasker,
)

from .test_tokenization import BRAND, RED, SHOE, TITLE, byte

ITEMS = [{"title": "red shoe"}, {"brand": "b"}, {"title": "red", "brand": "b!"}, {"title": "shoe"}]


@pytest.fixture
def table(tokenizer):
    return tokenizer.tokenize_items(ITEMS)


def test_shared_encoder_equals_tokenizer_on_item_dicts(tokenizer, table):
    seqs = [[0, 1, 2], [], [3]]
    got = encode_item_sequences(tokenizer, table, seqs)
    want = tokenizer([[ITEMS[i] for i in s] for s in seqs], return_tensor=True)
    assert got.keys() == want.keys() | {"global_positions"}
    for k in want:
        assert torch.equal(got[k], want[k])
    # the <s> of every row is its one global token, listed so the model needs no host sync to find it
    assert got["global_positions"].tolist() == [[0], [0], [0]]


def test_packed_sequences_hold_every_sequence_once(tokenizer, table):
    from recformer.model.batching import pack_item_sequences

    seqs = [[0, 1, 2], [], [3], [2, 0]]
    packed = pack_item_sequences(tokenizer, table, seqs, max_tokens=12)
    padded = encode_item_sequences(tokenizer, table, seqs)
    assert packed["input_ids"].size(1) <= 12 and len(packed["sequence_starts"]) == 4
    for n in range(4):
        real = packed["segment_ids"] == n
        assert torch.equal(packed["input_ids"][real], padded["input_ids"][n][padded["attention_mask"][n].bool()])
        assert packed["input_ids"].view(-1)[packed["sequence_starts"][n]] == tokenizer.bos_token_id


def test_unknown_item_id_is_named(tokenizer, table):
    with pytest.raises(KeyError, match="item 9 is not in the tokenized item table"):
        encode_item_sequences(tokenizer, table, [[0, 9]])
    with pytest.raises(KeyError, match="'B00X'"):
        encode_item_sequences(tokenizer, {"A": table[0]}, [["A", "B00X"]])


def test_finetune_collator_targets_cover_every_position_and_repeat_with_seed(tokenizer, table):
    seq = [0, 1, 2, 3]
    collator = FinetuneCollator(tokenizer, table, random.Random(7))
    labels = Counter()
    for _ in range(200):
        out = collator([seq])
        label = out["labels"].item()
        labels[label] += 1
        t = seq.index(label)
        expected = encode_item_sequences(tokenizer, table, [seq[:t]])
        assert torch.equal(out["input_ids"], expected["input_ids"])
    assert set(labels) == {0, 1, 2, 3}
    a = [FinetuneCollator(tokenizer, table, random.Random(1))([seq, seq])["labels"].tolist() for _ in range(3)]
    b = [FinetuneCollator(tokenizer, table, random.Random(1))([seq, seq])["labels"].tolist() for _ in range(3)]
    assert a == b


def test_eval_collator_uses_the_whole_history(tokenizer, table):
    out = EvalCollator(tokenizer, table)([([0, 1], 3), ([], 2)])
    assert out["labels"].tolist() == [3, 2]
    assert torch.equal(out["input_ids"], encode_item_sequences(tokenizer, table, [[0, 1], []])["input_ids"])


def test_whole_word_groups(tokenizer):
    masker = WholeWordMasker(tokenizer)
    # <s> title red | Ġshoe brand b | ! | <pad> | <pad>: padding is a candidate (each pad its own word,
    # '<' being punctuation) that is dropped after the choice, as in the reference
    ids = [0, TITLE, RED, SHOE, BRAND, byte("b"), byte("!"), 1, 1]
    assert masker.words(ids) == [[1, 2], [3, 4, 5], [6], [7], [8]]
    # a token starting with punctuation starts a word even if it goes on with letters
    assert masker.continues_word[byte("b")] and not masker.continues_word[byte("!")]


def test_masking_is_whole_word_never_special_and_repeatable(tokenizer):
    masker = WholeWordMasker(tokenizer, mlm_probability=0.3)
    ids = torch.tensor([[0, TITLE, RED, SHOE, BRAND, byte("b"), byte("!"), SHOE, RED, 1, 1]] * 50)
    masked, labels = masker(ids, random.Random(0))
    words = masker.words(ids[0].tolist())
    for row in range(ids.size(0)):
        chosen = (labels[row] != -100).nonzero().flatten().tolist()
        assert 1 <= len(chosen) <= round(11 * 0.3)
        for w in words:  # a word is masked whole or not at all
            assert all(i in chosen for i in w) or not any(i in chosen for i in w)
        assert 0 not in chosen and 9 not in chosen and 10 not in chosen
        assert torch.equal(labels[row][chosen], ids[row][chosen])
        untouched = [i for i in range(11) if i not in chosen]
        assert torch.equal(masked[row][untouched], ids[row][untouched])
    again = masker(ids, random.Random(0))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(ids, masked)


def test_mask_replacement_proportions(tokenizer):
    masker = WholeWordMasker(tokenizer, mlm_probability=0.15)
    ids = torch.tensor([[0] + [SHOE] * 199])  # 199 one-token words
    picked = Counter()
    rng = random.Random(0)
    for _ in range(100):
        masked, labels = masker(ids, rng)
        sel = labels != -100
        assert sel.sum().item() == 30  # round(200 * 0.15)
        for v in masked[sel].tolist():
            picked["mask" if v == tokenizer.mask_token_id else "same" if v == SHOE else "random"] += 1
    total = sum(picked.values())
    assert abs(picked["mask"] / total - 0.8) < 0.03
    assert abs(picked["same"] / total - 0.1) < 0.03
    assert abs(picked["random"] / total - 0.1) < 0.03


def test_pretrain_collator_pairs(tokenizer, table):
    collator = PretrainCollator(tokenizer, {k: v for k, v in zip("ABCD", table)}, rng=random.Random(0))
    seen = Counter()
    for _ in range(100):
        batch = collator([["A", "B", "C", "D"], ["C", "A"]])
        assert set(batch) == {
            f"{n}_{s}" for s in "ab" for n in ("input_ids", "item_position_ids", "token_type_ids", "attention_mask",
                                                "global_attention_mask", "global_positions", "mlm_input_ids",
                                                "mlm_labels", "mlm_positions")
        }
        for s in "ab":  # the masked tokens, listed as flat indices
            labels = batch[f"mlm_labels_{s}"].reshape(-1)
            assert batch[f"mlm_positions_{s}"].tolist() == [i for i, v in enumerate(labels.tolist()) if v != -100]
        # side b is always exactly one item: item positions are 0 and 1 only
        assert set(batch["item_position_ids_b"][batch["attention_mask_b"].bool()].tolist()) <= {0, 1}
        n_items_a = batch["item_position_ids_a"][0][batch["attention_mask_a"][0].bool()].max().item()
        seen[n_items_a] += 1
    # L = 4: t in [1, 3] -> history of 1, 2 or 3 items, never 0
    assert set(seen) == {1, 2, 3}


def test_pretrain_collator_rejects_single_item_sequences(tokenizer, table):
    with pytest.raises(ValueError, match="at least 2 items"):
        PretrainCollator(tokenizer, table)([[0]])


@pytest.mark.parametrize("world, micro", [(2, 2), (3, 1), (4, 8)])
def test_a_global_batch_split_over_ranks_is_the_one_process_batch(tokenizer, table, world, micro):
    """Targets and negatives are drawn for the whole step, so the ranks' rows put together in rank order
    are the one-process rows; a rank without a user gets a stand-in row counted 0 times."""
    sequences = [[0, 1, 2], [3, 1], [2, 0, 3, 1], [1]]
    collator = FinetuneCollator(tokenizer, table, num_negatives=2)
    (whole, rows), = GlobalBatchCollator(collator, seed=5, micro_batch=8)((3, sequences)).micro
    assert rows == 4 and whole["candidates"].shape == (4, 3)
    assert (whole["candidates"][:, 0] == whole["labels"]).all()
    assert not (whole["candidates"][:, 1:] == whole["labels"][:, None]).any()
    parts = [GlobalBatchCollator(collator, 5, micro, r, world)((3, sequences)) for r in range(world)]
    assert all(step.size == 4 for step in parts)
    counted = [(batch, rows) for step in parts for batch, rows in step.micro if rows]
    assert all(len(batch["labels"]) <= micro for batch, _ in counted)
    for name in ("labels", "candidates"):
        assert torch.equal(torch.cat([batch[name] for batch, _ in counted]), whole[name])
    assert sum(rows for _, rows in counted) == 4
    if world == 4:  # 4 users on 4 ranks: one each, no stand-in
        assert [len(step.micro) for step in parts] == [1, 1, 1, 1]
    other_step = GlobalBatchCollator(collator, 5, 8)((4, sequences)).micro[0][0]
    assert not torch.equal(other_step["candidates"], whole["candidates"])  # each step draws anew


def test_a_rank_without_users_gets_a_stand_in_counted_zero_times(tokenizer, table):
    step = GlobalBatchCollator(FinetuneCollator(tokenizer, table), seed=0, micro_batch=4, rank=0, world=2)((0, [[0, 1]]))  # rank 1 has it
    ((batch, rows),) = step.micro
    assert step.size == 1 and rows == 0 and len(batch["labels"]) == 1
