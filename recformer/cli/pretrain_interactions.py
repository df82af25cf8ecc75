"""Build the pretraining sequences (the files: recformer/data/formats.py).

One sequence per reviewer per review file, keeping the items of meta_data.json, sorted by (time, asin).
The training categories go to train.json and the dev categories to dev.json (JSON lists of asin lists),
with interaction_stats.json and interaction_manifest.json beside them. Run the meta step
(recformer-pretrain-meta) first. Example:

    recformer-pretrain-interactions --seq_root raw/5core --output_dir pretrain

(`python pretrain_data/interaction_data_process.py` takes the same flags.)
"""

from __future__ import annotations

import argparse
import os

from recformer.argparsing import HelpFormatter
from recformer.data.cli import run_cli
from recformer.data.formats import PRETRAIN
from recformer.data.pretrain_writer import (
    PRETRAIN_DEV_CATEGORIES,
    PRETRAIN_TRAIN_CATEGORIES,
    process_pretrain_interactions,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--seq_root", required=True, help="folder holding <Category>_5.json.gz")
    parser.add_argument("--output_dir", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--meta_file",
        default=None,
        help=f"{PRETRAIN.meta_data.name} from the meta step (default: OUTPUT_DIR/{PRETRAIN.meta_data.name})",
    )
    parser.add_argument(
        "--train_categories",
        nargs="+",
        default=list(PRETRAIN_TRAIN_CATEGORIES),
        help=f"categories whose sequences go to {PRETRAIN.train.name} (default: the paper's seven)",
    )
    parser.add_argument(
        "--dev_categories",
        nargs="+",
        default=list(PRETRAIN_DEV_CATEGORIES),
        help=f"categories whose sequences go to {PRETRAIN.dev.name} (default: CDs_and_Vinyl)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags, with --meta_file defaulting to the meta step's output in --output_dir."""
    args = build_parser().parse_args(argv)
    if args.meta_file is None:
        args.meta_file = os.path.join(args.output_dir, PRETRAIN.meta_data.name)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(
        args,
        args.output_dir,
        lambda: process_pretrain_interactions(
            args.seq_root,
            args.meta_file,
            args.output_dir,
            args.train_categories,
            args.dev_categories,
            progress=not args.no_progress,
        ),
        PRETRAIN.interaction_stats,
    )
