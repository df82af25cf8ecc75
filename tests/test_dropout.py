"""`recformer.model.dropout`: F.dropout bitwise, masks drawn through uniform_ where that gives the same draws;
and the training key spans of the banded attention (`attention._key_spans`), bitwise pad + unfold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recformer import RecformerForSeqRec, RecformerModel
from recformer.model import attention as attention_module
from recformer.model import dropout as dropout_module
from recformer.model.attention import block_size
from recformer.model.dropout import Dropout, dropout, uniform_draws_match, use_fast_dropout

from .conftest import tiny_config
from .test_attention import random_batch

needs_matching_draws = pytest.mark.skipif(
    not uniform_draws_match(), reason="torch's CPU Bernoulli draws differ from uniform_ here (MKL's, on Intel CPUs)"
)


def both(fn, x: torch.Tensor, seed: int = 3):
    """fn(x) and the generator's state afterwards, from a fixed seed."""
    torch.manual_seed(seed)
    out = fn(x)
    return out, torch.get_rng_state()


@needs_matching_draws
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "expanded"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_is_f_dropout_bitwise(dtype, layout, p):
    base = torch.randn(6, 7, 33, dtype=dtype)
    x = {"contiguous": base, "transposed": base.transpose(0, 2), "expanded": base[:, :1].expand(-1, 7, -1)}[layout]
    leaf_a, leaf_b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    expected, expected_state = both(lambda t: F.dropout(t, p, True), leaf_a)
    got, got_state = both(lambda t: dropout(t, p, True), leaf_b)
    assert torch.equal(got, expected) and got.stride() == expected.stride()
    assert torch.equal(got_state, expected_state)  # the same number of draws
    weights = torch.randn(expected.shape, dtype=dtype)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert torch.equal(leaf_a.grad, leaf_b.grad)
    assert 0 < int((got == 0).sum()) < got.numel()  # it did drop something, and not everything


def test_dropout_passes_through_where_f_dropout_does():
    x = torch.randn(4, 5)
    assert dropout(x, 0.3, training=False) is x
    assert torch.equal(dropout(x, 0.0, True), x)
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


def test_dropout_falls_back_to_f_dropout_when_the_draws_differ(monkeypatch):
    monkeypatch.setattr(dropout_module, "uniform_draws_match", lambda: False)
    calls = []
    monkeypatch.setattr(dropout_module.F, "dropout", lambda *a: calls.append(a) or a[0])
    x = torch.randn(3, 4)
    assert dropout(x, 0.2, True) is x and len(calls) == 1


def test_the_draw_check_notices_other_draws(monkeypatch):
    """`uniform_draws_match` compares against torch's real Bernoulli: a Bernoulli that draws otherwise fails it."""
    uniform_draws_match.cache_clear()
    real = torch.Tensor.bernoulli_
    monkeypatch.setattr(torch.Tensor, "bernoulli_", lambda self, p, generator=None: real(self, 1 - p, generator=generator))
    try:
        assert not uniform_draws_match()
    finally:
        monkeypatch.undo()
        uniform_draws_match.cache_clear()


def test_models_use_it_and_keep_their_state_dict_keys():
    config = tiny_config(hidden_dropout_prob=0.2)
    model = RecformerForSeqRec(config)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is Dropout and m.p == 0.2 for m in dropouts)
    plain = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.4), nn.Sequential(nn.Dropout(0.1, inplace=True)))
    keys = list(plain.state_dict())
    use_fast_dropout(plain)
    assert type(plain[1]) is Dropout and plain[1].p == 0.4 and type(plain[2][0]) is Dropout and plain[2][0].inplace
    assert list(plain.state_dict()) == keys


@needs_matching_draws
def test_training_with_it_is_bitwise_training_with_f_dropout(monkeypatch):
    """A training step of the encoder (hidden and attention dropout, banded and global paths): the loss, every
    gradient and the generator's state afterwards are those of the same step with torch's F.dropout."""
    config = tiny_config(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1)
    batch = random_batch(config, [97, 60, 33], [(0, 1)])
    model = RecformerModel(config).train()
    model.config._attn_implementation = "sdpa"

    def run():
        torch.manual_seed(11)
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        loss = out.last_hidden_state.square().mean() + out.pooler_output.sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, torch.get_rng_state()

    got = run()
    with monkeypatch.context() as m:
        m.setattr(dropout_module, "uniform_draws_match", lambda: False)  # every draw through F.dropout
        expected = run()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])
    assert got[1].keys() == expected[1].keys() and all(torch.equal(got[1][n], expected[1][n]) for n in got[1])


def unfolded_key_spans(x, layout, w):
    """The training key spans as pad + unfold (their former layout): the reference."""
    batch, length, heads, dim = x.shape
    s = block_size(w)
    nb = -(-length // s)
    spans = F.pad(x, (0, 0, 0, 0, w, nb * s - length + w)).unfold(1, s + 2 * w, s).transpose(-1, -2)
    if layout.global_positions is not None:
        index = layout.global_positions.clamp(max=length - 1)[:, :, None, None].expand(-1, -1, heads, dim)
        glob = x.gather(1, index).transpose(1, 2)[:, None].expand(-1, nb, -1, -1, -1)
        spans = torch.cat([glob, spans], dim=3)
    return spans.reshape(batch * nb, heads, -1, dim)


@pytest.mark.parametrize("globals_", [[], [(0, 1), (1, 2)]])
@pytest.mark.parametrize("window", [8, 16, 40])
def test_key_spans_are_pad_and_unfold_bitwise(window, globals_, monkeypatch):
    config = tiny_config(attention_window=[window, window])
    batch = random_batch(config, [230, 97, 61], globals_)
    model = RecformerModel(config).train()
    model.config._attn_implementation = "sdpa"
    calls = []
    spans = attention_module._key_spans

    def run(fn):
        monkeypatch.setattr(attention_module, "_key_spans", lambda *a: calls.append(1) or fn(*a))
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.last_hidden_state.square().mean().backward()
        return out.last_hidden_state.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = run(unfolded_key_spans)
    assert calls  # the banded path ran
    got = run(spans)
    assert torch.equal(got[0], expected[0])
    assert all(torch.equal(got[1][n], expected[1][n]) for n in expected[1])
