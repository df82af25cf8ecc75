"""Build a finetuning folder from one Amazon 2018 category (the files: recformer/data/formats.py).

Writes umap.json, smap.json, train.json, val.json, test.json, meta_data.json, stats.json and manifest.json
to --output_path. Example:

    recformer-process-finetune --file_path Industrial_and_Scientific_5.json.gz \\
        --meta_file_path meta_Industrial_and_Scientific.json.gz --output_path Scientific

(`python finetune_data/process.py` takes the same flags.)
"""

from __future__ import annotations

import argparse

from recformer.args import HelpFormatter
from recformer.data.cli import run_cli
from recformer.data.finetune_writer import process_finetune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--file_path", required=True, help="review file <Category>_5.json.gz (or plain .json)"
    )
    parser.add_argument(
        "--meta_file_path", required=True, help="meta file meta_<Category>.json.gz (or plain .json)"
    )
    parser.add_argument("--output_path", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--min_seq_len", type=int, default=4, help="keep users with at least this many interactions"
    )
    parser.add_argument(
        "--user_sample_rate",
        type=float,
        default=1.0,
        help="keep each eligible user with this probability (the paper's Games table used 0.2)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the user sampling")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags; a value out of range exits with a usage error naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_seq_len < 3:
        parser.error("--min_seq_len must be at least 3 (train, val and test each need an item)")
    if not 0.0 < args.user_sample_rate <= 1.0:
        parser.error("--user_sample_rate must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(
        args,
        args.output_path,
        lambda: process_finetune(
            args.file_path,
            args.meta_file_path,
            args.output_path,
            min_seq_len=args.min_seq_len,
            user_sample_rate=args.user_sample_rate,
            seed=args.seed,
            progress=not args.no_progress,
        ),
    )
