"""Results a person can read: a markdown table of the test metrics of finetuning runs, a popularity baseline
row per dataset, and a PNG of each run's training loss, learning rate and dev NDCG@10 per epoch.

A RUN_DIR is a folder finetune.py wrote (<output_dir>/<dataset>/, holding metrics.json, train_log.jsonl and
args.json). Writes OUTPUT_DIR/report.md (the table, and the plots linked) and OUTPUT_DIR/<run>_curves.png,
and prints the table.

Examples:

    recformer-report checkpoints/Scientific                    # -> ./report/
    recformer-report runs/lr1e-4/Scientific runs/lr5e-5/Scientific --output_dir report_lr \\
        --metrics NDCG@10 Hit@10 MRR@10
"""

from __future__ import annotations

import argparse
import logging
import sys

from recformer.argparsing import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recformer-report",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="finetuning run folders (with metrics.json)"
    )
    parser.add_argument(
        "--output_dir", default="report", help="where report.md and the plots go"
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="the table's columns, e.g. NDCG@10 Recall@10 Hit@10 MRR@10 MRR AUC (default: every test metric "
        "the finished runs share)",
    )
    parser.add_argument(
        "--data_path",
        default=None,
        help="dataset folder of the popularity row (default: each run's data_path from its args.json)",
    )
    parser.add_argument(
        "--zero_shot", action="store_true", help="also a row of each run's zero-shot test metrics"
    )
    parser.add_argument("--no_popularity", action="store_true", help="leave out the popularity baseline")
    parser.add_argument("--no_plots", action="store_true", help="write the table only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recformer.report import ReportError, write_report

    try:
        report = write_report(
            args.run_dirs,
            args.output_dir,
            columns=args.metrics,
            popularity=not args.no_popularity,
            zero_shot=args.zero_shot,
            data_path=args.data_path,
            plots=not args.no_plots,
        )
    except (ReportError, OSError, ValueError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(report.table, end="")
    print(f"\nwritten: {report.table_path}" + "".join(f", {p}" for p in report.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
