import math

import pytest
import torch

from recformer.metrics import (
    NonFiniteScores,
    check_finite_scores,
    compute_ranks,
    metrics_from_ranks,
    ranking_metrics,
)


def test_hand_computed_values_two_users():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # target 2 -> one item above -> rank 1
            [0.2, 0.8, 0.4, 0.1],  # target 1 -> best -> rank 0
        ]
    )
    m = ranking_metrics(scores, torch.tensor([2, 1]), ks=(1, 2))
    assert m["Recall@1"] == pytest.approx(0.5)
    assert m["Recall@2"] == pytest.approx(1.0)
    assert m["NDCG@1"] == pytest.approx(0.5)
    assert m["NDCG@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert m["MRR"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["AUC"] == pytest.approx(((1 - 1 / 4) + 1) / 2)
    assert m["Hit@1"] == pytest.approx(0.5) and m["Hit@2"] == pytest.approx(1.0)
    assert m["MRR@1"] == pytest.approx((0 + 1) / 2)  # the rank-1 target is cut off at k = 1
    assert m["MRR@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert list(m) == ["NDCG@1", "Recall@1", "Hit@1", "MRR@1", "NDCG@2", "Recall@2", "Hit@2", "MRR@2", "MRR", "AUC"]


def test_hit_and_truncated_mrr_by_hand_with_ties():
    # user 0: target 1 ties with item 0 and item 3 -> both count against it -> rank 2
    # user 1: target 4 has one item above and one tie -> rank 2;  user 2: target 0 is best -> rank 0
    # user 3: target 2 scored 0.1, four items above -> rank 4
    scores = torch.tensor(
        [
            [0.5, 0.5, 0.1, 0.5, 0.2],
            [0.9, 0.1, 0.3, 0.0, 0.3],
            [0.8, 0.1, 0.2, 0.3, 0.4],
            [0.5, 0.6, 0.1, 0.7, 0.8],
        ]
    )
    labels = torch.tensor([1, 4, 0, 2])
    assert compute_ranks(scores, labels)[0].tolist() == [2, 2, 0, 4]
    m = ranking_metrics(scores, labels, ks=(1, 3, 5))
    assert m["Hit@1"] == pytest.approx(1 / 4)
    assert m["Hit@3"] == pytest.approx(3 / 4)
    assert m["Hit@5"] == pytest.approx(1.0)
    assert m["MRR@1"] == pytest.approx(1 / 4)  # only user 2: 1/1
    assert m["MRR@3"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 4)  # rank 4 is cut off
    assert m["MRR@5"] == pytest.approx((1 / 3 + 1 / 3 + 1 + 1 / 5) / 4)
    assert m["MRR"] == pytest.approx(m["MRR@5"])  # every rank is below 5: nothing cut
    for k in (1, 3, 5):
        assert m[f"Hit@{k}"] == m[f"Recall@{k}"]  # one target per user: the same number


def test_ties_count_against_the_target():
    scores = torch.zeros(1, 5)  # a model that scores everything equal
    m = ranking_metrics(scores, torch.tensor([[3]]), ks=(1, 5))
    assert compute_ranks(scores, torch.tensor([3]))[0].tolist() == [4]
    assert m["Recall@1"] == 0.0 and m["Hit@1"] == 0.0 and m["MRR@1"] == 0.0
    assert m["Recall@5"] == 1.0 and m["Hit@5"] == 1.0 and m["MRR@5"] == pytest.approx(1 / 5)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(6))
    assert m["MRR"] == pytest.approx(1 / 5)


def test_masked_items_never_outrank_and_are_not_counted_for_auc():
    inf = float("-inf")
    scores = torch.tensor([[inf, 0.2, inf, 0.1, inf, -2e4]])
    ranks, n_valid = compute_ranks(scores, torch.tensor([3]))
    assert ranks.tolist() == [1]  # only item 1 is above; -inf items and the -2e4 item are below
    assert n_valid.tolist() == [2]  # items scoring above -1e4: 1 and 3
    m = ranking_metrics(scores, torch.tensor([3]), ks=(10,))
    assert m["AUC"] == pytest.approx(1 - 1 / 2)


def test_single_user_and_mrr_not_truncated():
    scores = torch.arange(100, 0, -1, dtype=torch.float).unsqueeze(0)  # item i has rank i
    m = ranking_metrics(scores, torch.tensor([60]), ks=(10, 50))
    assert m["Recall@50"] == 0.0 and m["NDCG@50"] == 0.0
    assert m["MRR"] == pytest.approx(1 / 61)


def test_averaged_over_users_not_batches():
    r1, v1 = compute_ranks(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    r2, v2 = compute_ranks(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([1, 1, 1]))
    m = metrics_from_ranks(torch.cat([r1, r2]), torch.cat([v1, v2]), ks=(1,))
    assert m["Recall@1"] == pytest.approx(1 / 4)  # per-batch averaging would give 1/2


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels must be in"):
        ranking_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="2 labels for 1"):
        ranking_metrics(torch.zeros(1, 3), torch.tensor([0, 1]))


def test_a_non_finite_target_ranks_last_and_never_scores_a_hit():
    nan, inf = float("nan"), float("inf")
    everything_nan = torch.full((2, 5), nan)
    ranks, _ = compute_ranks(everything_nan, torch.tensor([1, 3]))
    assert ranks.tolist() == [4, 4]
    m = ranking_metrics(everything_nan, torch.tensor([1, 3]), ks=(1, 4))
    assert m["NDCG@1"] == 0.0 and m["Recall@4"] == 0.0 and m["MRR"] == pytest.approx(1 / 5)
    assert m["AUC"] == pytest.approx(1 - 4 / 5)
    scores = torch.tensor(
        [
            [0.1, nan, 0.3, 0.2],  # NaN target: last among the 4
            [0.1, inf, 0.3, 0.2],  # +inf target: last
            [0.1, -inf, 0.3, 0.2],  # -inf target: last
            [-inf, nan, -inf, 0.2],  # NaN target with two masked items: only item 3 counts
            [0.1, 0.5, nan, 0.2],  # finite target, one NaN item: the NaN item counts against it
        ]
    )
    ranks, n_valid = compute_ranks(scores, torch.tensor([1, 1, 1, 1, 1]))
    assert ranks.tolist() == [3, 3, 3, 1, 1]
    assert n_valid.tolist() == [4, 4, 3, 2, 4]
    assert ranking_metrics(scores[:4], torch.tensor([1, 1, 1, 1]), ks=(1,))["Recall@1"] == 0.0


def test_auc_is_never_negative():
    scores = torch.tensor([[0.5, -1.5e4, -2e4]])  # two items above the target, one of them below -1e4
    ranks, n_valid = compute_ranks(scores, torch.tensor([2]))
    assert (ranks.tolist(), n_valid.tolist()) == ([2], [1])  # 1 - 2 / 1 would be -1
    assert ranking_metrics(scores, torch.tensor([2]), ks=(1,))["AUC"] == 0.0


def test_check_finite_scores_counts_nan_and_inf():
    check_finite_scores(torch.tensor([[0.0, -1e30, 1e30]]))  # finite: no error
    with pytest.raises(NonFiniteScores, match=r"^3 of 4 scores are not finite \(2 NaN, 1 infinite\)$"):
        check_finite_scores(torch.tensor([[float("nan"), 0.0], [float("-inf"), float("nan")]]))
