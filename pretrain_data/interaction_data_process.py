"""Build the pretraining sequences (formats: SPEC section G).

One sequence per reviewer per review file, keeping the items of meta_data.json, sorted by (time, asin).
The training categories go to train.json and the dev categories to dev.json (JSON lists of asin lists),
with stats.json beside them. Run pretrain_data/meta_data_process.py first. Example:

    python pretrain_data/interaction_data_process.py --seq_root raw/5core --output_dir pretrain
"""

from __future__ import annotations

import argparse
import os
import sys

from recformer import amazon


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq_root", required=True, help="folder holding <Category>_5.json.gz")
    parser.add_argument("--output_dir", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--meta_file",
        default=None,
        help="meta_data.json from meta_data_process.py (default: OUTPUT_DIR/meta_data.json)",
    )
    parser.add_argument(
        "--train_categories",
        nargs="+",
        default=list(amazon.PRETRAIN_TRAIN_CATEGORIES),
        help="categories whose sequences go to train.json (default: the paper's seven)",
    )
    parser.add_argument(
        "--dev_categories",
        nargs="+",
        default=list(amazon.PRETRAIN_DEV_CATEGORIES),
        help="categories whose sequences go to dev.json (default: CDs_and_Vinyl)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.meta_file is None:
        args.meta_file = os.path.join(args.output_dir, "meta_data.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return amazon.run_cli(
        args,
        args.output_dir,
        lambda: amazon.process_pretrain_interactions(
            args.seq_root,
            args.meta_file,
            args.output_dir,
            args.train_categories,
            args.dev_categories,
            progress=not args.no_progress,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
