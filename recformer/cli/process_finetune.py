"""Build a finetuning folder from one Amazon 2018 category, RecBole atomic files, or your own tables.

Writes umap.json, smap.json, train.json, val.json, test.json, meta_data.json, stats.json and manifest.json
to --output_path (the folder's format: README, "The processed finetuning folder"; recformer/data/formats.py).

  --format amazon (default): --file_path <Category>_5.json.gz, --meta_file_path meta_<Category>.json.gz
  --format recbole: --file_path <name>.inter, --meta_file_path <name>.item (default: beside the .inter)
  --format csv: --file_path interactions (.csv, .tsv or .jsonl), --meta_file_path the item table; the
      columns are named by --user_field, --item_field, --time_field and --text_fields

Examples:

    recformer-process-finetune --file_path Industrial_and_Scientific_5.json.gz \\
        --meta_file_path meta_Industrial_and_Scientific.json.gz --output_path Scientific
    recformer-process-finetune --format recbole --file_path ml-1m/ml-1m.inter --output_path ml-1m \\
        --text_fields movie_title genre --kcore 5
    recformer-process-finetune --format csv --file_path ratings.csv --meta_file_path movies.csv \\
        --user_field userId --item_field movieId --time_field timestamp --text_fields title genres \\
        --output_path movielens

(`python finetune_data/process.py` takes the same flags.)
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from recformer.argparsing import HelpFormatter
from recformer.data.cli import run_cli
from recformer.data.finetune_writer import FinetuneOptions, process_finetune, process_finetune_tables
from recformer.data.tables import TableFields, recbole_item_file

FORMATS = ("amazon", "recbole", "csv")
# Flags that name the columns of a table: meaningless for the Amazon files.
TABLE_FLAGS = ("user_field", "item_field", "time_field", "text_fields", "item_table_id_field", "delimiter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="amazon",
        help="input format: Amazon 2018 files (default), RecBole atomic files, or CSV/TSV/JSON-lines tables",
    )
    parser.add_argument(
        "--file_path",
        required=True,
        help="interactions: review file <Category>_5.json.gz (amazon), <name>.inter (recbole), "
        "a .csv/.tsv/.jsonl table (csv); gzipped or plain",
    )
    parser.add_argument(
        "--meta_file_path",
        help="items: meta file meta_<Category>.json.gz (amazon), <name>.item (recbole; default: beside "
        "--file_path), a .csv/.tsv/.jsonl table (csv)",
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
    parser.add_argument(
        "--kcore",
        type=int,
        default=None,
        help="first keep only the k-core: drop users and items with fewer than this many interactions, "
        "again and again until every user and item left has that many (default: off)",
    )
    table = parser.add_argument_group("columns (--format recbole and csv)")
    table.add_argument(
        "--user_field", default="user_id", help="the interactions' user column (default user_id)"
    )
    table.add_argument(
        "--item_field", default="item_id", help="the item column of both tables (default item_id)"
    )
    table.add_argument(
        "--time_field",
        default="timestamp",
        help="the interactions' time column: Unix seconds or ISO 8601 dates (default timestamp)",
    )
    table.add_argument(
        "--text_fields",
        nargs="+",
        default=None,
        help="the item table's columns that become the item text, in this order (default: every text column "
        "but the id; for recbole the :token and :token_seq columns)",
    )
    table.add_argument(
        "--item_table_id_field",
        default=None,
        help="the item table's id column when it differs from --item_field",
    )
    table.add_argument(
        "--delimiter",
        default=None,
        help="csv column separator (default: a tab for .tsv/.tab, else a comma; 'tab' or '\\t' for a tab)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags; a value out of range, or a flag that the format does not take, exits with a usage
    error naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_seq_len < 3:
        parser.error("--min_seq_len must be at least 3 (train, val and test each need an item)")
    if not 0.0 < args.user_sample_rate <= 1.0:
        parser.error("--user_sample_rate must be in (0, 1]")
    if args.kcore is not None and args.kcore < 1:
        parser.error("--kcore must be at least 1")
    if args.format == "amazon":
        given = [f"--{name}" for name in TABLE_FLAGS if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(
                f"{', '.join(given)}: only for --format recbole or csv (Amazon files have fixed fields)"
            )
    if args.meta_file_path is None:
        if args.format != "recbole":
            parser.error(f"--meta_file_path is required for --format {args.format}")
        args.meta_file_path = str(recbole_item_file(args.file_path))
    if args.format == "recbole" and args.delimiter is not None:
        parser.error("--delimiter: RecBole atomic files are tab-separated")
    return args


def table_fields(args: argparse.Namespace) -> TableFields:
    return TableFields(
        user=args.user_field,
        item=args.item_field,
        time=args.time_field,
        text=tuple(args.text_fields) if args.text_fields else None,
        item_table_id=args.item_table_id_field,
        delimiter=args.delimiter,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = FinetuneOptions(
        min_seq_len=args.min_seq_len,
        user_sample_rate=args.user_sample_rate,
        seed=args.seed,
        kcore=args.kcore,
    )
    progress = not args.no_progress
    if args.format == "amazon":
        job = lambda: process_finetune(  # noqa: E731
            args.file_path, args.meta_file_path, args.output_path, **asdict(options), progress=progress
        )
    else:
        job = lambda: process_finetune_tables(  # noqa: E731
            args.format, args.file_path, args.meta_file_path, args.output_path, table_fields(args),
            options=options, progress=progress,
        )  # fmt: skip
    return run_cli(args, args.output_path, job)
