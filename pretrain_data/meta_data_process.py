"""Select and describe the pretraining items (formats: SPEC section G).

An item is kept if some meta file gives it a title and some review file reviews it; a later category's meta
record replaces an earlier one. Writes meta_data.json and stats.json to --output_dir. Example:

    python pretrain_data/meta_data_process.py --meta_root raw/meta --seq_root raw/5core --output_dir pretrain
"""

from __future__ import annotations

import argparse
import sys

from recformer import amazon


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meta_root", required=True, help="folder holding meta_<Category>.json.gz")
    parser.add_argument("--seq_root", required=True, help="folder holding <Category>_5.json.gz")
    parser.add_argument("--output_dir", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=list(amazon.PRETRAIN_CATEGORIES),
        help="categories, in the order their meta files are read (default: the paper's eight)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return amazon.run_cli(
        args,
        args.output_dir,
        lambda: amazon.process_pretrain_meta(
            args.meta_root, args.seq_root, args.output_dir, args.categories, progress=not args.no_progress
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
