"""Evaluation: excluding the history ranks no history item but keeps the target; metrics wiring."""

from __future__ import annotations

import pytest
import torch

from recformer import RecformerForSeqRec, ranking_metrics
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import evaluate, mask_history
from recformer.metrics import compute_ranks
from recformer.model.item_tokens import tokenize_catalogue
from recformer.train.collators import EvalCollator

ITEMS = [{"title": f"item {i}", "brand": "acme" if i % 2 else "zen"} for i in range(12)]


def test_history_items_are_never_ranked_and_the_target_keeps_its_score():
    torch.manual_seed(0)
    scores = torch.randn(3, 8)
    scores[0, [1, 2]] = 10.0  # history items that would outrank everything
    pairs = [([1, 2, 2], 5), ([3, 4], 4), ([], 0)]  # row 1: the target is also in the history
    before = scores.clone()
    masked = mask_history(scores, pairs)
    assert masked is scores
    assert torch.isinf(masked[0, [1, 2]]).all() and (masked[0, [1, 2]] < 0).all()
    assert masked[1, 3] == float("-inf")
    assert masked[1, 4] == before[1, 4]  # the target keeps its score although it is in the history
    assert torch.equal(masked[2], before[2])  # no history: nothing masked
    top = masked.topk(5, dim=1).indices
    assert not ({1, 2} & set(top[0].tolist())) and 3 not in top[1].tolist()
    ranks, n_valid = compute_ranks(masked, torch.tensor([5, 4, 0]))
    # the target's rank counts only the unmasked items above it
    for row, (history, target) in enumerate(pairs):
        unmasked_others = [i for i in range(8) if i != target and i not in history]
        assert ranks[row] == sum(int(before[row, i] >= before[row, target]) for i in unmasked_others)
    assert n_valid.tolist() == [6, 7, 8]
    # a target that is the best of the unmasked items is ranked first
    scores = torch.tensor([[5.0, 9.0, 1.0]])
    assert compute_ranks(mask_history(scores, [([1], 0)]), torch.tensor([0]))[0].item() == 0


def test_evaluate_with_exclude_history_equals_metrics_of_masked_scores(tokenizer, config):
    torch.manual_seed(0)
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(torch.randn(len(ITEMS), config.hidden_size))
    table = tokenize_catalogue(tokenizer, ITEMS, progress=False)
    pairs = [([0, 1, 2], 3), ([4, 5], 5), ([6], 7), ([8, 9, 10, 11, 8], 0), ([], 1)]
    cpu = torch.device("cpu")
    got = evaluate(model, pairs, tokenizer, table, InferenceSettings(cpu, batch_size=2, progress=False), [1, 5], exclude_history=True)
    plain = evaluate(model, pairs, tokenizer, table, InferenceSettings(cpu, batch_size=2, progress=False), [1, 5])

    batch = EvalCollator(tokenizer, table)(pairs)  # every pair in one batch, in the given order
    labels = batch.pop("labels")
    with torch.no_grad():
        scores = model.similarity_score(model.longformer(**batch).pooler_output)
    assert plain == pytest.approx(ranking_metrics(scores.clone(), labels, ks=(1, 5)), abs=1e-6)
    assert got == pytest.approx(ranking_metrics(mask_history(scores, pairs), labels, ks=(1, 5)), abs=1e-6)
    assert got["MRR"] > plain["MRR"]  # some history item outranked a target before
