"""Select and describe the pretraining items (the files: recformer/data/formats.py).

An item is kept if some meta file gives it a title and some review file reviews it; a later category's meta
record replaces an earlier one. Writes meta_data.json, meta_stats.json and meta_manifest.json to
--output_dir. Example:

    recformer-pretrain-meta --meta_root raw/meta --seq_root raw/5core --output_dir pretrain

(`python pretrain_data/meta_data_process.py` takes the same flags.)
"""

from __future__ import annotations

import argparse

from recformer.argparsing import HelpFormatter
from recformer.data.cli import run_cli
from recformer.data.formats import PRETRAIN
from recformer.data.pretrain_writer import PRETRAIN_CATEGORIES, process_pretrain_meta


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--meta_root", required=True, help="folder holding meta_<Category>.json.gz")
    parser.add_argument("--seq_root", required=True, help="folder holding <Category>_5.json.gz")
    parser.add_argument("--output_dir", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=list(PRETRAIN_CATEGORIES),
        help="categories, in the order their meta files are read (default: the paper's eight)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(
        args,
        args.output_dir,
        lambda: process_pretrain_meta(
            args.meta_root, args.seq_root, args.output_dir, args.categories, progress=not args.no_progress
        ),
        PRETRAIN.meta_stats,
    )
