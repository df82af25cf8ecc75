"""The lean paths give today's numbers: fused projections, merged pretraining passes, packed item tables,
token-budget evaluation, no host sync in a training step, attention checked at start-up (fp32, dropout off)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from recformer import RecformerForPretraining, RecformerForSeqRec
from recformer.args import FinetuneArgs
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import encode_items, evaluate, length_batches, sequence_lengths
from recformer.model import attention as attention_module
from recformer.model.attention import AttentionUnavailable, fused_linear
from recformer.model.batching import encode_item_sequences
from recformer.model.item_tokens import tokenize_catalogue
from recformer.train.collators import FinetuneCollator, PretrainCollator
from recformer.train.finetune import Finetuner

from .conftest import tiny_config

WORDS = ["red", "shoe", "blue", "hat", "sock", "wool", "warm", "soft", "brand", "title"]
ITEMS = [
    {"title": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 9)), "brand": WORDS[i % 4]} for i in range(40)
]


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


@pytest.fixture
def table(tokenizer):
    return tokenize_catalogue(tokenizer, ITEMS, progress=False)


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(got: dict, expected: dict, atol: float = 1e-5) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=1e-4, msg=name)


def test_fused_projections_equal_separate_ones_with_the_same_gradients():
    torch.manual_seed(0)
    layers = [nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 8, bias=False)]
    x = torch.randn(3, 5, 16, requires_grad=True)
    weights = torch.randn(3, 5, 40)
    separate = torch.cat([layer(x) for layer in layers], dim=-1)
    (separate * weights).sum().backward()
    expected = [p.grad.clone() for layer in layers for p in layer.parameters()] + [x.grad.clone()]
    for p in [*(q for layer in layers for q in layer.parameters()), x]:
        p.grad = None
    fused = fused_linear(x, *layers)
    assert [t.shape[-1] for t in fused] == [16, 16, 8]
    torch.testing.assert_close(torch.cat(fused, dim=-1), separate, atol=1e-6, rtol=0)
    (torch.cat(fused, dim=-1) * weights).sum().backward()
    got = [p.grad for layer in layers for p in layer.parameters()] + [x.grad]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert all(isinstance(p, nn.Parameter) for layer in layers for p in layer.parameters())  # keys unchanged


@pytest.mark.parametrize("histories", ["long", "short"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_merged_pretraining_passes_give_the_loss_and_gradients_of_four_passes(tokenizer, implementation, histories):
    """One pass per side; with `pack_sides` on sdpa, both sides and both MLM copies in one packed pass (the
    shorter side laid several to a row, whichever side it is)."""
    torch.manual_seed(0)
    model = RecformerForPretraining(tiny_config(attn_implementation=implementation)).train()
    collator = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(3))
    sequences = [list(range(i, i + 12)) for i in range(0, 24, 4)] if histories == "long" else [[i, i + 1] for i in range(7)]
    batch = collator(sequences)
    length_a, length_b = batch["input_ids_a"].size(1), batch["input_ids_b"].size(1)
    assert length_a >= 5 * length_b if histories == "long" else length_a < length_b  # several to a row; the sides swapped
    passes = []
    model.longformer.register_forward_hook(lambda m, i, o: passes.append(1))
    results = {}
    for merged, packed in ((False, False), (True, False), (True, True)):
        model.merge_passes, model.config.pack_sides = merged, packed
        model.zero_grad()
        passes.clear()
        out = model(**batch)
        out.loss.backward()
        results[merged, packed] = (out, gradients(model))
        assert len(passes) == (4 if not merged else 1 if packed and implementation == "sdpa" else 2)
    separate, g_separate = results[False, False]
    for merged, g_merged in (results[True, False], results[True, True]):
        for name in ("loss", "cl_loss", "mlm_loss_a", "mlm_loss_b"):
            torch.testing.assert_close(getattr(merged, name), getattr(separate, name), atol=1e-5, rtol=0)
        assert_same_gradients(g_merged, g_separate)
        assert any(name.startswith("lm_head") for name in g_merged)


def test_packed_item_table_equals_items_encoded_one_by_one(tokenizer, table):
    torch.manual_seed(0)
    model = RecformerForSeqRec(tiny_config(attn_implementation="eager")).eval()
    cpu = torch.device("cpu")
    one_by_one = encode_items(model.longformer, tokenizer, table, InferenceSettings(cpu, batch_size=1, progress=False))
    model.set_attn_implementation("sdpa")
    packed = encode_items(model.longformer, tokenizer, table, InferenceSettings(cpu, max_tokens=64, progress=False))
    assert packed.shape == (len(ITEMS), model.config.hidden_size)
    torch.testing.assert_close(packed, one_by_one, atol=1e-5, rtol=0)


def test_vectorised_packing_equals_packing_the_tokenizer_layout(tokenizer, table):
    from recformer.model.batching import pack_item_sequences

    config = tiny_config(max_token_num=60, max_item_embeddings=9)
    tokenizer.config = config
    by_key = {row: table[row] for row in range(len(table))}  # a plain mapping: encoded one by one
    rng = random.Random(0)
    for _ in range(20):
        histories = [[rng.randrange(len(ITEMS)) for _ in range(rng.randrange(0, 14))] for _ in range(rng.randint(1, 9))]
        fast = pack_item_sequences(tokenizer, table, histories, 80)
        plain = pack_item_sequences(tokenizer, by_key, histories, 80)
        assert fast.keys() == plain.keys()
        for name in fast:
            assert torch.equal(fast[name], plain[name]), name
        for n, history in enumerate(histories):  # every sequence as the tokenizer lays it out, cut where it cuts
            encoded = tokenizer.encode([table[i] for i in history], encode_item=False)
            real = fast["segment_ids"] == n
            assert fast["input_ids"][real].tolist() == encoded["input_ids"]
            assert fast["item_position_ids"][real].tolist() == encoded["item_position_ids"]
            assert fast["token_type_ids"][real].tolist() == encoded["token_type_ids"]
    assert any(len(h) > 8 for h in histories)  # the newest max_item_embeddings - 1 items kept
    with pytest.raises(KeyError, match="item 99 is not in the tokenized item table"):
        pack_item_sequences(tokenizer, table, [[0, 99]], 80)


def test_packed_position_ids_are_the_model_s_and_skip_padding_ids_inside_a_sequence():
    from recformer.model.layers import create_position_ids_from_input_ids
    from recformer.model.packing import pack_sequences

    ids = [[0, 5, 1, 7], [0, 1, 1, 9, 4], [0, 3]]  # 1 is the pad id
    sequences = [
        {"input_ids": s, "item_position_ids": [0] * len(s), "token_type_ids": [0] * len(s),
         "attention_mask": [1] * len(s), "global_attention_mask": [1] + [0] * (len(s) - 1)}
        for s in ids
    ]  # fmt: skip
    packed = pack_sequences(sequences, 9, pad_token_id=1, pad_item_position_id=50)
    flat_ids, flat_positions = sum(packed["input_ids"], []), sum(packed["position_ids"], [])
    for n, s in enumerate(ids):
        start = packed["sequence_starts"][n]
        assert flat_ids[start : start + len(s)] == s
        assert flat_positions[start : start + len(s)] == create_position_ids_from_input_ids(torch.tensor([s]), 1)[0].tolist()


def test_inference_feed_forward_runs_in_blocks_of_a_few_shapes(tokenizer, table, monkeypatch):
    from recformer.model import layers

    torch.manual_seed(0)
    model = RecformerForSeqRec(tiny_config(attn_implementation="sdpa")).eval()
    histories = [list(range(i, i + 1 + i % 7)) for i in range(30)]
    inputs = encode_item_sequences(tokenizer, table, histories)
    with torch.no_grad():
        whole = model.longformer(**inputs).last_hidden_state
        monkeypatch.setattr(layers, "FEED_FORWARD_TOKENS", 64)
        monkeypatch.setattr(layers, "FEED_FORWARD_ROUND", 16)
        shapes = set()
        model.longformer.encoder.layer[0].intermediate.register_forward_hook(lambda m, i, o: shapes.add(i[0].shape))
        blocks = model.longformer(**inputs).last_hidden_state
    torch.testing.assert_close(blocks, whole, atol=1e-6, rtol=1e-6)
    assert inputs["input_ids"].numel() > 64 and len(shapes) == 2  # full blocks, and the last one rounded up
    assert all(rows % 16 == 0 and rows <= 64 for rows, _ in shapes)


def test_length_batches_respect_the_token_budget():
    lengths = [5, 30, 7, 7, 12, 3, 30, 1]
    packed = length_batches(lengths, None, 40, packed=True)
    padded = length_batches(lengths, None, 40, packed=False)
    for batches in (packed, padded):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    assert all(sum(lengths[i] for i in b) <= 40 for b in packed)
    assert all(len(b) * lengths[b[0]] <= 40 for b in padded)
    assert length_batches(lengths, None, 40, packed=True, max_count=2) == [[1], [6], [4, 2], [3, 0], [5, 7]]
    assert length_batches(lengths, 3, 10, packed=True) == [[1, 6, 4], [2, 3, 0], [5, 7]]


def test_sequence_lengths_are_the_encoded_lengths(tokenizer, table):
    histories = [[0, 1, 2], [], [5] * 60, list(range(40))]
    encoded = encode_item_sequences(tokenizer, table, histories)
    assert sequence_lengths(tokenizer, table, histories) == encoded["attention_mask"].sum(1).tolist()


def test_token_budget_evaluation_equals_todays_evaluation(tokenizer, table):
    torch.manual_seed(0)
    model = RecformerForSeqRec(tiny_config(attn_implementation="eager")).eval()
    model.init_item_embedding(torch.randn(len(ITEMS), model.config.hidden_size))
    rng = random.Random(0)
    pairs = [([rng.randrange(len(ITEMS)) for _ in range(rng.randrange(0, 25))], rng.randrange(len(ITEMS)))
             for _ in range(60)]  # fmt: skip
    cpu = torch.device("cpu")
    for exclude in (False, True):
        today = evaluate(model, pairs, tokenizer, table, InferenceSettings(cpu, batch_size=16, progress=False), [1, 5, 10],
                         exclude_history=exclude)
        model.set_attn_implementation("auto")
        budget = evaluate(model, pairs, tokenizer, table, InferenceSettings(cpu, max_tokens=300, progress=False), [1, 5, 10],
                          exclude_history=exclude)
        model.set_attn_implementation("eager")
        assert budget.keys() == today.keys()
        for name, value in today.items():
            assert budget[name] == pytest.approx(value, abs=1e-6), name


SYNCING = ("item", "__bool__", "nonzero", "__int__", "__float__", "tolist", "any", "all")


class SyncCounter:
    """Counts the Tensor methods that read a value back to the host while installed."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in SYNCING:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_a_training_step_reads_nothing_back_from_the_device(tokenizer, monkeypatch, kind):
    torch.manual_seed(0)
    config = tiny_config(attn_implementation="sdpa", finetune_negative_sample_size=5)
    items = tokenizer.tokenize_items(ITEMS)
    if kind == "finetune":
        model = RecformerForSeqRec(config).train()
        model.init_item_embedding(torch.randn(len(ITEMS), config.hidden_size))
        batch = FinetuneCollator(tokenizer, items, random.Random(0))([list(range(i, i + 6)) for i in range(0, 30, 5)])
    else:
        model = RecformerForPretraining(config).train()
        batch = PretrainCollator(tokenizer, items, rng=random.Random(0))([list(range(i, i + 4)) for i in range(0, 30, 5)])
    model(**batch)  # first call: anything cached once per process
    counter = SyncCounter(monkeypatch)
    out = model(**batch)
    loss = out if kind == "finetune" else out.loss
    loss.backward()
    monkeypatch.undo()
    assert counter.calls == []
    assert torch.isfinite(loss)


def test_sync_counter_sees_a_host_read(monkeypatch):
    counter = SyncCounter(monkeypatch)
    bool(torch.ones(1).any())
    torch.ones(1).item()
    monkeypatch.undo()
    assert counter.calls == ["any", "__bool__", "item"]


def test_flex_attention_without_compiler_stops_the_finetuning_before_reading_data(tmp_path, monkeypatch):
    args = FinetuneArgs(pretrain_ckpt="missing.bin", data_path=str(tmp_path / "no-data"), device="cpu",
                        attn_implementation="flex_attention", progress=False)  # fmt: skip
    with pytest.raises(AttentionUnavailable, match="^attn_implementation='flex_attention' cannot backpropagate on cpu"):
        Finetuner(args)
    monkeypatch.setattr(attention_module, "flex_compiler_available", lambda device: False)
    with pytest.raises(AttentionUnavailable, match="^attn_implementation='flex_attention' on CUDA needs triton"):
        attention_module.resolve_attn_implementation("flex_attention", torch.device("cuda"), needs_grad=True)
    assert not (tmp_path / "no-data").exists()


def test_fast_paths_run_under_bf16_autocast_close_to_fp32_eager(tokenizer, table):
    torch.manual_seed(0)
    model = RecformerForSeqRec(tiny_config(attn_implementation="eager")).eval()
    batch = encode_item_sequences(tokenizer, table, [[0, 1, 2], [3], list(range(30))])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = model.longformer(**batch).last_hidden_state[mask]
        for name in ("sdpa", "flex_attention"):
            model.set_attn_implementation(name)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model.longformer(**batch).last_hidden_state[mask]
            torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
            assert torch.nn.functional.cosine_similarity(got.float(), expected, dim=-1).min() > 0.99


def test_compiling_the_encoder_in_place_keeps_the_checkpoint_keys():
    """What `--compile` does (`model.longformer.compile()`): the module is compiled in place, so the
    state dict keeps its names (no `_orig_mod.` prefix) and checkpoints stay loadable."""
    model = RecformerForSeqRec(tiny_config())
    keys = list(model.state_dict())
    model.longformer.compile()
    assert model.longformer._compiled_call_impl is not None
    assert list(model.state_dict()) == keys
