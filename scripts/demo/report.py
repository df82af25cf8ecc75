"""Demo step: the finetuned model's test metrics next to zero-shot and a popularity ranking."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recformer.data.finetune_reader import load_finetune_data, popularity_scores
from recformer.metrics import format_metrics_table, ranking_metrics


def popularity_metrics(data_path: Path, ks: list[int]) -> dict[str, float]:
    """Rank every item by its interaction count in the test inputs (train + val), ties against the target."""
    data = load_finetune_data(data_path)
    pairs = data.test_pairs()
    counts = popularity_scores([h for h, _ in pairs], data.num_items).float()
    scores = counts.unsqueeze(0).expand(len(pairs), -1)
    return ranking_metrics(scores, torch.tensor([t for _, t in pairs]), ks=ks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data_path", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path, help="metrics.json written by finetune.py")
    p.add_argument("--seconds", type=float, default=None, help="wall time of the demo, to print")
    a = p.parse_args()
    metrics = json.loads(a.metrics.read_text())
    ks = sorted({int(k.split("@")[1]) for k in metrics["test"] if "@" in k})
    popularity = popularity_metrics(a.data_path, ks)
    print()
    print("Demo test split (leave-one-out, full ranking over all items):")
    print(format_metrics_table({
        "popularity": popularity,
        "Recformer zero-shot": metrics["zero_shot_test"],
        "Recformer finetuned": metrics["test"],
    }))
    gain = metrics["test"]["NDCG@10"] / max(popularity["NDCG@10"], 1e-12)
    print(f"\nfinetuned NDCG@10 is {gain:.2f}x popularity's "
          f"({metrics['test']['NDCG@10']:.4f} vs {popularity['NDCG@10']:.4f})")
    if a.seconds is not None:
        print(f"demo wall time: {a.seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
