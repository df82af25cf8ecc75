"""The fast attention implementations against the eager Longformer attention (fp32, dropout off).

Every implementation that runs on CPU is compared with "eager" on hidden states and pooled outputs
(1e-5), parameter gradients (1e-4) and the pretraining / finetuning losses (1e-5). FlexAttention
has no CPU backward, so its gradients are checked on a GPU only (skipped here).
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import torch.nn.functional as F

from recformer import RecformerConfig, RecformerForPretraining, RecformerForSeqRec, RecformerModel
from recformer.model import attention as attention_module
from recformer.model import layers
from recformer.model.attention import (
    ATTN_IMPLEMENTATIONS,
    AttentionLayout,
    block_size,
    global_positions_from_mask,
    resolve_attn_implementation,
    uses_blocks,
)
from recformer.model.layout import SEQUENCE_FIELDS
from recformer.model.packing import PACKED_INPUT_NAMES, pack_sequences
from recformer.train.collators import PretrainCollator

from .conftest import tiny_config
from .test_modeling import ITEMS, batch_of

CPU_IMPLEMENTATIONS = ["sdpa", "flex_attention"]
LONG = dict(max_position_embeddings=1100, max_token_num=1024, attention_window=[64, 32])


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


def random_batch(config: RecformerConfig, lengths: list[int], extra_globals=(), seed: int = 0) -> dict:
    """A padded batch of random sequences with the tokenizer's layout; `<s>` (position 0) is global,
    plus the (row, position) pairs of `extra_globals`."""
    g = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    real = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    pad_item = config.max_item_embeddings - 1
    input_ids = torch.randint(3, config.vocab_size, (batch, length), generator=g)
    input_ids[:, 0] = 0
    token_types = torch.randint(1, 3, (batch, length), generator=g)
    token_types[:, 0] = 0
    item_positions = torch.randint(1, pad_item, (batch, length), generator=g).sort(dim=1).values
    item_positions[:, 0] = 0
    global_mask = torch.zeros(batch, length, dtype=torch.long)
    global_mask[:, 0] = 1
    for row, position in extra_globals:
        global_mask[row, position] = 1
    return {
        "input_ids": torch.where(real, input_ids, config.pad_token_id),
        "attention_mask": real.long(),
        "global_attention_mask": global_mask * real,
        "token_type_ids": torch.where(real, token_types, 3),
        "item_position_ids": torch.where(real, item_positions, pad_item),
    }


def forward(model, implementation: str, batch: dict, **kwargs):
    model.config._attn_implementation = implementation
    return model(**batch, **kwargs)


def assert_same_outputs(got, expected, mask: torch.Tensor) -> None:
    mask = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[mask], expected.last_hidden_state[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)


def gradients(model, implementation: str, batch: dict) -> dict[str, torch.Tensor]:
    """Gradients of a loss that reads every real hidden state and the pooled output."""
    model.zero_grad(set_to_none=True)
    out = forward(model, implementation, batch)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(out.last_hidden_state.shape, generator=g).to(out.last_hidden_state.device)
    mask = batch["attention_mask"].unsqueeze(-1)
    loss = (out.last_hidden_state * weights * mask).sum() + out.pooler_output.square().sum()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)


def batches(tokenizer):
    config = tiny_config(**LONG)
    return {
        # one-item sequences: the item-encoding path
        "items": (tiny_config(), batch_of(tokenizer, [[0], [1], [2], [3], [4]])),
        # padded histories, lengths that are not a multiple of either window, an empty history
        "histories": (tiny_config(), batch_of(tokenizer, [[0, 1, 2], [3], [4, 0, 1, 2, 3, 4, 0], []])),
        "several_globals": (tiny_config(), random_batch(tiny_config(), [97, 60, 33], [(0, 5), (0, 50), (1, 59), (2, 20)])),
        "several_globals_short": (tiny_config(), random_batch(tiny_config(), [30, 17], [(0, 5), (0, 20), (1, 3)])),
        "long": (config, random_batch(config, [1024, 700, 333], [(1, 400)])),
    }


CASES = ["items", "histories", "several_globals", "several_globals_short", "long"]


@pytest.mark.parametrize("pooler_type", ["cls", "avg"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_outputs_equal_eager(tokenizer, implementation, case, pooler_type):
    config, batch = batches(tokenizer)[case]
    config.pooler_type = pooler_type
    model = RecformerModel(config).eval()
    with torch.no_grad():
        expected = forward(model, "eager", batch, output_hidden_states=True)
        got = forward(model, implementation, batch, output_hidden_states=True)
    assert_same_outputs(got, expected, batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    assert len(got.hidden_states) == len(expected.hidden_states) == config.num_hidden_layers + 1
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got.last_hidden_state).all()  # padding rows too


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_pooled_only_runs_the_last_layer_for_global_tokens_only(tokenizer, implementation, case, monkeypatch):
    config, batch = batches(tokenizer)[case]
    model = RecformerModel(config).eval()
    rows = []  # the rows that reach each layer's global query projection and feed-forward
    monkeypatch.setattr(layers, "FEED_FORWARD_ROUND", 1)  # inference feeds [tokens, H] blocks, not rounded up here
    for layer in model.encoder.layer:
        for module in (layer.attention.self.query_global, layer.intermediate):
            module.register_forward_hook(lambda m, i, o: rows.append(tuple(i[0].shape[:-1])))
    local_calls = []
    local_attention = attention_module.local_attention
    monkeypatch.setattr(attention_module, "local_attention", lambda *a, **k: local_calls.append(1) or local_attention(*a, **k))
    with torch.no_grad():
        expected = forward(model, "eager", batch)
        rows.clear()
        got = forward(model, implementation, batch, pooled_only=True)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
    assert got.last_hidden_state is None
    batch_size, length = batch["input_ids"].shape
    globals_per_row = int(batch["global_attention_mask"].sum(1).max())
    # every layer but the last in full; the last one: no band attention, the global rows only
    assert len(local_calls) == config.num_hidden_layers - 1
    assert rows == [(batch_size, globals_per_row), (batch_size * length,)] * (config.num_hidden_layers - 1) + [
        (batch_size, globals_per_row), (batch_size * globals_per_row,)
    ]


@pytest.mark.parametrize("pooler_type", ["cls", "avg"])
def test_pooled_only_on_packed_rows(tokenizer, pooler_type):
    config = tiny_config(pooler_type=pooler_type)
    tokenizer.config = config
    table = tokenizer.tokenize_items(ITEMS)
    histories = [[0, 1, 2], [3], [4, 0, 1, 2, 3, 4, 0], [1], [2, 2], [], [0, 4]]
    encoded = [tokenizer.encode([table[i] for i in h], encode_item=False) for h in histories]
    packed = packed_tensors(pack_sequences(encoded, 160, tokenizer.pad_token_id, config.max_item_embeddings - 1))
    model = RecformerModel(config).eval()
    with torch.no_grad():
        expected = forward(model, "eager", batch_of(tokenizer, histories)).pooler_output
        got = forward(model, "sdpa", packed, pooled_only=True)
    torch.testing.assert_close(got.pooler_output, expected, atol=1e-5, rtol=1e-5)
    # the avg pooler reads every token: the whole encoder runs
    assert (got.last_hidden_state is None) == (pooler_type == "cls")


def test_pooled_only_runs_everything_when_a_pooled_token_is_not_global(tokenizer):
    config, batch = batches(tokenizer)["histories"]
    model = RecformerModel(config).eval()
    batch = {k: v for k, v in batch.items() if k != "global_positions"}
    batch["global_attention_mask"] = batch["global_attention_mask"].clone()
    batch["global_attention_mask"][1, 0] = 0  # row 1's <s> attends locally
    with torch.no_grad():
        expected = forward(model, "eager", batch).pooler_output
        got = forward(model, "sdpa", batch, pooled_only=True)
        eager = forward(model, "eager", batch, pooled_only=True)
    torch.testing.assert_close(got.pooler_output, expected, atol=1e-5, rtol=1e-5)
    assert got.last_hidden_state is not None and eager.last_hidden_state is not None
    with torch.no_grad():  # a model's scores read the pooled vectors only
        seqrec = RecformerForSeqRec(config).eval()
        seqrec.longformer.load_state_dict(model.state_dict())
        seqrec.init_item_embedding(torch.randn(6, config.hidden_size))
        torch.testing.assert_close(forward(seqrec, "sdpa", batch), forward(seqrec, "eager", batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra_globals", [0, 9])
def test_global_rows_projected_or_reassociated_equal_eager(extra_globals, monkeypatch):
    """Few global tokens: the key/value projections move to the query side; many: they run over every token."""
    config = tiny_config()
    batch = random_batch(config, [60, 45], [(0, 3 + 5 * i) for i in range(extra_globals)] + [(1, 7)])
    projected = []
    fused = attention_module.fused_linear
    monkeypatch.setattr(attention_module, "fused_linear", lambda x, *layers: projected.append(len(layers)) or fused(x, *layers))
    model = RecformerModel(config)
    with torch.no_grad():
        expected = forward(model.eval(), "eager", batch)
        projected.clear()
        got = forward(model, "sdpa", batch)
    assert_same_outputs(got, expected, batch["attention_mask"])
    globals_per_row = 1 + extra_globals
    reassociated = globals_per_row * config.num_attention_heads < config.hidden_size
    assert reassociated == (extra_globals == 0)
    # Q/K/V in every layer; key_global/value_global over every token only when not reassociated
    assert projected == ([3] if reassociated else [3, 2]) * config.num_hidden_layers
    assert_same_gradients(gradients(model.train(), "sdpa", batch), gradients(model, "eager", batch))


def test_cases_cover_both_sdpa_paths_and_several_windows(tokenizer):
    found = batches(tokenizer)

    def banded(case):
        config, batch = found[case]
        return {uses_blocks(batch["input_ids"].shape[1], w // 2) for w in config.attention_window}

    assert banded("items") == banded("several_globals_short") == {False}  # one dense mask
    assert banded("histories") == banded("several_globals") == banded("long") == {True}  # query blocks
    assert found["long"][1]["input_ids"].shape[1] == 1024
    assert found["histories"][1]["input_ids"].shape[1] % 8 != 0  # not a multiple of either window
    assert all(len(set(config.attention_window)) == 2 for config, _ in found.values())


@pytest.mark.parametrize("case", CASES)
def test_sdpa_gradients_equal_eager(tokenizer, case):
    config, batch = batches(tokenizer)[case]
    model = RecformerModel(config).train()  # dropout probabilities are 0 in the tiny configs
    expected = gradients(model, "eager", batch)
    got = gradients(model, "sdpa", batch)
    assert_same_gradients(got, expected)
    assert all(torch.isfinite(g).all() for g in got.values())


def sdpa_as_torch_runs_it(q, k, v, mask, dropout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


@pytest.mark.parametrize("extra_globals", [0, 9])
@pytest.mark.parametrize("lengths", [[3, 1], [97, 60, 33]])
def test_cpu_training_with_dropout_is_bitwise_torchs_sdpa(lengths, extra_globals, monkeypatch):
    """With dropout on the CPU the attention is SDPA's math path written out (`attention._sdpa`): the loss,
    every gradient and the random generator's state afterwards are bitwise those of torch's own SDPA, on the
    dense and the banded local paths and with global rows through SDPA (many global tokens) or not."""
    config = tiny_config(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1)
    globals_ = [(0, 1 + i) for i in range(extra_globals)] if min(lengths) > extra_globals else []
    batch = random_batch(config, lengths, globals_)
    model = RecformerModel(config).train()
    model.config._attn_implementation = "sdpa"
    calls = []
    written_out = attention_module._sdpa

    def run(sdpa) -> tuple[torch.Tensor, dict, torch.Tensor]:
        monkeypatch.setattr(attention_module, "_sdpa", lambda *a: calls.append(a[3].shape) or sdpa(*a))
        torch.manual_seed(7)
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        loss = out.last_hidden_state.square().mean() + out.pooler_output.sum()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, torch.get_rng_state()

    expected = run(sdpa_as_torch_runs_it)
    calls.clear()
    got = run(written_out)
    assert calls and len(calls) >= config.num_hidden_layers
    assert torch.equal(got[0], expected[0])
    assert got[1].keys() == expected[1].keys() and all(torch.equal(got[1][n], expected[1][n]) for n in expected[1])
    assert torch.equal(got[2], expected[2])  # the same number of draws
    # dropout is on: other draws give another loss, so a change in the draws would show above
    monkeypatch.setattr(torch, "manual_seed", lambda seed, _seed=torch.manual_seed: _seed(seed + 1))
    assert not torch.equal(run(written_out)[0], expected[0])


def test_gradient_checkpointing_on_the_sdpa_path_keeps_gradients(tokenizer):
    config, batch = batches(tokenizer)["several_globals"]
    model = RecformerModel(config).train()
    expected = gradients(model, "sdpa", batch)
    # transformers renamed gradient_checkpointing_enable (deprecated, warns) to activation_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert_same_gradients(gradients(model, "sdpa", batch), expected)


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_pretraining_loss_equals_eager(tokenizer, implementation):
    config = tiny_config()
    model = RecformerForPretraining(config).eval()
    collator = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(3))
    batch = collator([[0, 1, 2], [3, 4], [1, 2, 3, 4], [4, 0]])
    assert (batch["mlm_labels_a"] != -100).any() and (batch["mlm_labels_b"] != -100).any()
    with torch.no_grad():
        expected = forward(model, "eager", batch)
        got = forward(model, implementation, batch)
    for name in ("loss", "cl_loss", "mlm_loss_a", "mlm_loss_b", "logits"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=1e-5, msg=name)
    if implementation == "sdpa":  # a training step's gradients as well
        model.train()
        grads = {}
        for impl in ("eager", "sdpa"):
            model.zero_grad(set_to_none=True)
            forward(model, impl, batch).loss.backward()
            grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert_same_gradients(grads["sdpa"], grads["eager"])


@pytest.mark.parametrize("negatives", [0, 3])
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_finetuning_loss_equals_eager(tokenizer, implementation, negatives):
    config = tiny_config(finetune_negative_sample_size=negatives)
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(torch.randn(6, config.hidden_size))
    batch = batch_of(tokenizer, [[0, 1], [2], [3, 4, 0, 1]])
    labels = torch.tensor([3, 5, 0])
    losses = {}
    with torch.no_grad():
        for impl in ("eager", implementation):
            torch.manual_seed(7)  # the same sampled negatives
            losses[impl] = forward(model, impl, batch, labels=labels)
    torch.testing.assert_close(losses[implementation], losses["eager"], atol=1e-5, rtol=1e-5)


# -- packed rows -------------------------------------------------------------------------------------


def packed_tensors(packed: dict) -> dict:
    return {name: torch.tensor(value) for name, value in packed.items()}


@pytest.mark.parametrize("pooler_type", ["cls", "avg"])
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_packed_rows_equal_per_sequence_results(tokenizer, implementation, pooler_type):
    config = tiny_config(pooler_type=pooler_type)
    tokenizer.config = config
    table = tokenizer.tokenize_items(ITEMS)
    histories = [[0, 1, 2], [3], [4, 0, 1, 2, 3, 4, 0], [1], [2, 2], [], [0, 4]]
    encoded = [tokenizer.encode([table[i] for i in h], encode_item=False) for h in histories]
    packed = pack_sequences(encoded, 160, tokenizer.pad_token_id, config.max_item_embeddings - 1)
    assert len(packed["input_ids"]) > 1  # several rows, several sequences per row
    assert any(len(set(row) - {-1}) > 2 for row in packed["segment_ids"])
    assert uses_blocks(len(packed["input_ids"][0]), 4)  # long rows take the banded path
    model = RecformerModel(config).eval()
    padded = batch_of(tokenizer, histories)
    with torch.no_grad():
        expected = forward(model, "eager", padded)
        got = forward(model, implementation, packed_tensors(packed))
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
    flat = got.last_hidden_state.reshape(-1, config.hidden_size)
    for n, sequence in enumerate(encoded):
        start, length = packed["sequence_starts"][n], len(sequence["input_ids"])
        torch.testing.assert_close(flat[start : start + length], expected.last_hidden_state[n, :length], atol=1e-5, rtol=1e-5)


def test_packed_gradients_equal_per_sequence_gradients(tokenizer):
    config = tiny_config(pooler_type="avg")
    table = tokenizer.tokenize_items(ITEMS)
    histories = [[0, 1, 2], [3], [4, 0, 1, 2, 3, 4, 0], [1, 3]]
    encoded = [tokenizer.encode([table[i] for i in h], encode_item=False) for h in histories]
    packed = packed_tensors(pack_sequences(encoded, 200, tokenizer.pad_token_id, config.max_item_embeddings - 1))
    model = RecformerModel(config).train()
    target = torch.randn(len(histories), config.hidden_size, generator=torch.Generator().manual_seed(0))
    grads = {}
    for impl, batch in (("eager", batch_of(tokenizer, histories)), ("sdpa", packed)):
        model.zero_grad(set_to_none=True)
        (forward(model, impl, batch).pooler_output * target).sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same_gradients(grads["sdpa"], grads["eager"])


def test_packed_inputs_need_a_fast_implementation_and_their_fields(tokenizer, config):
    encoded = [tokenizer.encode(ITEMS[:2]), tokenizer.encode(ITEMS[2:3])]
    packed = packed_tensors(pack_sequences(encoded, 100, tokenizer.pad_token_id, config.max_item_embeddings - 1))
    model = RecformerModel(config).eval()
    with pytest.raises(ValueError, match="packed inputs \\(segment_ids\\) need attn_implementation 'sdpa', 'flex_attention' or 'auto'"):
        forward(model, "eager", packed)
    with pytest.raises(ValueError, match="need position_ids that restart with every sequence"):
        forward(model, "sdpa", {k: v for k, v in packed.items() if k != "position_ids"})
    with pytest.raises(ValueError, match="need sequence_starts"):
        forward(model, "sdpa", {k: v for k, v in packed.items() if k != "sequence_starts"})


def test_pack_sequences_layout():
    def seq(ids, globals_=(0,)):
        n = len(ids)
        return {
            "input_ids": ids,
            "item_position_ids": [0] + [1] * (n - 1),
            "token_type_ids": [0] + [2] * (n - 1),
            "attention_mask": [1] * n,
            "global_attention_mask": [int(i in globals_) for i in range(n)],
        }

    sequences = [seq([0, 7, 8]), seq([0, 9, 9, 9, 9, 9], (0, 3)), seq([0, 5]), seq([0, 1, 6])]  # id 1 is padding
    packed = pack_sequences(sequences, 8, pad_token_id=1, pad_item_position_id=50)
    # first-fit decreasing: [seq 1 (6 tokens), seq 2 (2)], [seq 0 (3), seq 3 (3)]
    assert packed["input_ids"] == [[0, 9, 9, 9, 9, 9, 0, 5], [0, 7, 8, 0, 1, 6, 1, 1]]
    assert packed["segment_ids"] == [[1, 1, 1, 1, 1, 1, 2, 2], [0, 0, 0, 3, 3, 3, -1, -1]]
    assert packed["position_ids"] == [[2, 3, 4, 5, 6, 7, 2, 3], [2, 3, 4, 2, 1, 3, 1, 1]]
    assert packed["sequence_starts"] == [8, 0, 6, 11]
    assert packed["global_positions"] == [[0, 3, 6], [0, 3, -1]]
    assert packed["global_attention_mask"] == [[1, 0, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0, 0, 0]]
    assert packed["attention_mask"][1] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert packed["item_position_ids"][1][-2:] == [50, 50] and packed["token_type_ids"][1][-2:] == [3, 3]
    assert set(packed) == set(SEQUENCE_FIELDS) | set(PACKED_INPUT_NAMES)  # exactly what the model takes
    with pytest.raises(ValueError, match="sequence 1 has 6 tokens, more than max_tokens=5"):
        pack_sequences(sequences, 5, 1, 50)
    broken = dict(sequences[0], token_type_ids=[0])
    with pytest.raises(ValueError, match="sequence 0: token_type_ids has 1 values for 3 input ids"):
        pack_sequences([broken], 8, 1, 50)


# -- global positions -------------------------------------------------------------------------------


def test_global_positions_from_mask():
    mask = torch.tensor([[1, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert global_positions_from_mask(mask).tolist() == [[0, 3, 4], [2, 5, 5], [5, 5, 5]]
    assert global_positions_from_mask(torch.zeros(2, 4, dtype=torch.bool)) is None


def test_precomputed_global_positions_give_the_same_outputs():
    config = tiny_config()
    batch = random_batch(config, [40, 25], [(0, 9), (0, 30)])
    positions = torch.tensor([[0, 9, 30], [0, -1, -1]])
    model = RecformerModel(config).eval()
    with torch.no_grad():
        expected = forward(model, "eager", batch)
        got = forward(model, "sdpa", batch, global_positions=positions)
        without_mask = forward(model, "sdpa", {k: v for k, v in batch.items() if k != "global_attention_mask"},
                               global_positions=positions)
    assert_same_outputs(got, expected, batch["attention_mask"])
    assert_same_outputs(without_mask, expected, batch["attention_mask"])
    layout = AttentionLayout.build("sdpa", batch["attention_mask"], global_positions=positions)
    assert layout.is_global.nonzero().tolist() == [[0, 0], [0, 9], [0, 30], [1, 0]]


def test_batch_without_global_tokens_equals_eager():
    config = tiny_config()
    batch = random_batch(config, [50, 90])
    batch["global_attention_mask"].zero_()
    model = RecformerModel(config).eval()
    with torch.no_grad():
        assert_same_outputs(forward(model, "sdpa", batch), forward(model, "eager", batch), batch["attention_mask"])


# -- choosing the implementation ---------------------------------------------------------------------


def test_unknown_implementation_is_refused_with_the_valid_names(config):
    message = "unknown attn_implementation 'fast'; valid names: auto, eager, sdpa, flex_attention"
    with pytest.raises(ValueError, match=message):
        RecformerModel(tiny_config(attn_implementation="fast"))
    model = RecformerModel(config)
    with pytest.raises(ValueError, match=message):
        model.set_attn_implementation("fast")
    model.config._attn_implementation = "fast"
    with pytest.raises(ValueError, match=message):
        model(**random_batch(config, [5]))
    assert ATTN_IMPLEMENTATIONS == ("auto", "eager", "sdpa", "flex_attention")


def test_flash_attention_2_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="^attn_implementation='flash_attention_2' cannot run Recformer: flash-attn has no global tokens"):
        RecformerModel(tiny_config(attn_implementation="flash_attention_2"))


def test_default_is_auto_and_from_pretrained_takes_attn_implementation(tmp_path, config):
    model = RecformerForSeqRec(config)
    assert model.config._attn_implementation == "auto"
    model.save_pretrained(tmp_path)
    assert not [key for key in json.loads((tmp_path / "config.json").read_text()) if "attn_implementation" in key]
    assert RecformerForSeqRec.from_pretrained(tmp_path).config._attn_implementation == "auto"
    loaded = RecformerForSeqRec.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    loaded.set_attn_implementation("sdpa")
    assert loaded.config._attn_implementation == "sdpa" and loaded.longformer.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match=re.escape("unknown attn_implementation 'paged|eager'")):
        RecformerModel.from_pretrained(tmp_path, attn_implementation="paged|eager")


def test_resolution_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attn_implementation(None, cpu) == "sdpa"
    assert resolve_attn_implementation("auto", cpu, dropout_active=True, needs_grad=True) == "sdpa"
    assert resolve_attn_implementation("auto", cpu, output_attentions=True) == "eager"
    assert resolve_attn_implementation("eager", cpu, output_attentions=True) == "eager"
    with pytest.raises(ValueError, match="output_attentions needs attn_implementation='eager'"):
        resolve_attn_implementation("sdpa", cpu, output_attentions=True)
    assert resolve_attn_implementation("flex_attention", cpu) == "flex_attention"
    with pytest.raises(RuntimeError, match="^attn_implementation='flex_attention' cannot backpropagate on cpu"):
        resolve_attn_implementation("flex_attention", cpu, needs_grad=True)
    with pytest.raises(RuntimeError, match="has no attention-probability dropout"):
        resolve_attn_implementation("flex_attention", cpu, dropout_active=True)

    monkeypatch.setattr(attention_module, "flex_compiler_available", lambda device: False)
    assert resolve_attn_implementation("auto", cuda) == "sdpa"
    with pytest.raises(RuntimeError, match="^attn_implementation='flex_attention' on CUDA needs triton"):
        resolve_attn_implementation("flex_attention", cuda)
    monkeypatch.setattr(attention_module, "flex_compiler_available", lambda device: True)
    assert resolve_attn_implementation("auto", cuda) == "sdpa"  # measured faster on an H200
    assert resolve_attn_implementation("auto", cuda, dropout_active=True) == "sdpa"
    assert resolve_attn_implementation("flex_attention", cuda, needs_grad=True) == "flex_attention"
    assert resolve_attn_implementation("flex_attention", cuda, head_dim=16) == "flex_attention"
    with pytest.raises(RuntimeError, match="^attn_implementation='flex_attention' on CUDA needs a head dimension of "
                                           "at least 16 \\(hidden_size / num_attention_heads\\), this model's is 8: use 'sdpa'$"):
        resolve_attn_implementation("flex_attention", cuda, head_dim=8)
    assert resolve_attn_implementation("flex_attention", cpu, head_dim=8) == "flex_attention"  # CPU runs it uncompiled


def test_flex_training_on_cpu_fails_at_first_use(config):
    model = RecformerModel(config).train()
    with pytest.raises(RuntimeError, match="cannot backpropagate on cpu"):
        forward(model, "flex_attention", random_batch(config, [12]))


def test_output_attentions_with_auto_runs_eager(config):
    model = RecformerModel(config).eval()
    batch = random_batch(config, [20, 11])
    with torch.no_grad():
        out = forward(model, "auto", batch, output_attentions=True)
    assert len(out.attentions) == config.num_hidden_layers and out.global_attentions is not None


def test_block_size_covers_the_window():
    for w in (2, 4, 16, 32, 256):
        assert block_size(w) >= w


# -- GPU ----------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def flex_cuda_case():
    """The "long" case with 2 heads: compiled FlexAttention on CUDA needs a head dimension of at least 16."""
    config = tiny_config(**LONG, num_attention_heads=2)
    return config, random_batch(config, [1024, 700, 333], [(1, 400)])


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_half_precision_fast_paths_are_close_to_fp32_eager(tokenizer, implementation, dtype):
    if implementation == "flex_attention" and not attention_module.flex_compiler_available(torch.device("cuda")):
        pytest.skip("no triton for compiled FlexAttention")
    config, batch = flex_cuda_case()
    model = RecformerModel(config).eval().cuda()
    batch = {k: v.cuda() for k, v in batch.items()}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = forward(model, "eager", batch)
        with torch.autocast("cuda", dtype=dtype):
            got = forward(model, implementation, batch)
    hidden = got.last_hidden_state.float()[mask]
    assert F.cosine_similarity(hidden, expected.last_hidden_state[mask], dim=-1).min() > 0.999
    torch.testing.assert_close(hidden, expected.last_hidden_state[mask], atol=0.1, rtol=0.05)
    torch.testing.assert_close(got.pooler_output.float(), expected.pooler_output, atol=0.1, rtol=0.05)


@gpu
def test_compiled_flex_attention_on_cuda_equals_eager(tokenizer):
    if not attention_module.flex_compiler_available(torch.device("cuda")):
        pytest.skip("no triton for compiled FlexAttention")
    config, batch = flex_cuda_case()
    model = RecformerModel(config).train().cuda()
    batch = {k: v.cuda() for k, v in batch.items()}
    expected = gradients(model, "eager", batch)
    got = gradients(model, "flex_attention", batch)
    assert_same_gradients(got, expected)
    with torch.no_grad():
        assert_same_outputs(forward(model, "auto", batch), forward(model, "eager", batch), batch["attention_mask"])
