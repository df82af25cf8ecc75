"""Build the Recformer pretraining start point from a Longformer masked-LM checkpoint, or from a local
folder of a BERT-layout encoder (BERT, RoBERTa, DistilRoBERTa, MiniLM; transformers or sentence-transformers).

Writes the reference file (a state dict with the reference key names, `torch.save`d) and, beside it,
a `save_pretrained` folder named after the file (config, weights, tokenizer), so later steps need no
hub access:

    python save_longformer_ckpt.py --model_name_or_path allenai/longformer-base-4096 \\
        --output longformer_ckpt/longformer-base-4096.bin
    # -> longformer_ckpt/longformer-base-4096.bin and longformer_ckpt/longformer-base-4096/
    python save_longformer_ckpt.py --model_name_or_path path/to/all-MiniLM-L6-v2 --output start/minilm.bin

A BERT-layout source keeps its sizes and tokenizer; its learned positions bound --max_token_num
unless positions are extended (a larger --max_token_num repeats the learned ones).
"""

from __future__ import annotations

import argparse
import logging
import sys

from recformer.argparsing import HelpFormatter, add_recformer_field_args
from recformer.args import DEFAULT_START
from recformer.defaults import DEFAULT_MODEL, TRUST_CHECKPOINT_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="Longformer masked-LM (hub id or local folder), or a local BERT-layout encoder folder")
    parser.add_argument("--output", default=DEFAULT_START, help="start-point state dict file")
    parser.add_argument("--seed", type=int, default=42, help="seed of newly initialised tensors")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true",
        help="replace the folder beside --output when this tool wrote it before (a folder it did not write is never replaced)",
    )  # fmt: skip
    parser.add_argument("--trust_checkpoint", action="store_true", help=f"for a pytorch_model.bin: {TRUST_CHECKPOINT_HELP}")
    parser.add_argument(
        "--pooler_type", choices=("cls", "avg"), default=None,
        help="pooling of the sequence vector (default: as the source was trained: avg for a mean-pooling "
        "sentence-transformers folder, cls otherwise)",
    )  # fmt: skip
    add_recformer_field_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recformer.io.pipeline_steps import write_start_point
    from recformer.model.configuration import field_values

    try:
        start = write_start_point(
            args.model_name_or_path, args.output, field_values(args), seed=args.seed,
            overwrite=args.overwrite_output_dir, trust_checkpoint=args.trust_checkpoint, pooler_type=args.pooler_type,
        )  # fmt: skip
    except (ValueError, OSError) as e:  # the library's messages name the path
        print(f"error: {e}", file=sys.stderr)
        return 2
    if start.report.source_tensors:
        print("start point from {}: copied {} of {} Longformer tensors".format(args.model_name_or_path, *start.report.source_tensors))
    else:
        print(f"start point from {args.model_name_or_path}:")
    for line in start.report.lines():
        print(f"  {line}")
    print(f"wrote {start.file} ({start.num_keys} keys) and {start.folder}/ (config, weights, tokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
