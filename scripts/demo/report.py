"""Demo step: the finetuned model's test metrics next to zero-shot and a popularity ranking, as a markdown
table and training-curve plots in the demo's output folder (`recformer.report`, what `recformer-report`
runs), then the finetuned model's gain over popularity and the demo's wall time."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recformer.report import write_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run_dir", required=True, type=Path, help="the finetuning run folder (with metrics.json)")
    p.add_argument("--data_path", required=True, type=Path, help="the processed demo dataset")
    p.add_argument("--output_dir", required=True, type=Path, help="where report.md and the plot go")
    p.add_argument("--seconds", type=float, default=None, help="wall time of the demo, to print")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = write_report([a.run_dir], a.output_dir, zero_shot=True, data_path=a.data_path)
    print()
    print("Demo test split (leave-one-out, full ranking over all items):")
    print(report.table)
    finetuned = report.runs[0].test
    popularity = next(iter(report.popularity.values()))
    gain = finetuned["NDCG@10"] / max(popularity["NDCG@10"], 1e-12)
    print(f"finetuned NDCG@10 is {gain:.2f}x popularity's ({finetuned['NDCG@10']:.4f} vs {popularity['NDCG@10']:.4f})")
    print(f"table and training curves: {report.table_path}, " + ", ".join(str(x) for x in report.plots))
    if a.seconds is not None:
        print(f"demo wall time: {a.seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
