"""Build the Recformer pretraining start point from a Longformer masked-LM checkpoint (SPEC H).

Writes the reference file (a state dict with the reference key names, `torch.save`d) and, beside it,
a `save_pretrained` folder named after the file (config, weights, tokenizer), so later steps need no
hub access:

    python save_longformer_ckpt.py --model_name_or_path allenai/longformer-base-4096 \
        --output longformer_ckpt/longformer-base-4096.bin
    # -> longformer_ckpt/longformer-base-4096.bin and longformer_ckpt/longformer-base-4096/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recformer.configuration import add_recformer_field_args

DEFAULT_MODEL = "allenai/longformer-base-4096"


def field_values(args: argparse.Namespace) -> dict:
    from recformer.configuration import REFERENCE_SCRIPT_VALUES

    return {name: getattr(args, name) for name in REFERENCE_SCRIPT_VALUES}


def start_point_folder(output: str | Path) -> Path:
    """The `save_pretrained` folder written beside a start-point file: `dir/name.bin` -> `dir/name/`."""
    output = Path(output)
    return output.with_name(output.stem)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="Longformer masked-LM: hub id or local folder")
    parser.add_argument("--output", default="longformer_ckpt/longformer-base-4096.bin", help="start-point state dict file")
    parser.add_argument("--seed", type=int, default=42, help="seed of the new item-position table")
    add_recformer_field_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recformer import RecformerForPretraining, RecformerTokenizer, load_checkpoint
    from recformer.conversion import ConversionError, build_start_point, pretraining_config, to_float32
    from recformer.fileio import atomic_torch_save

    try:
        config = pretraining_config(args.model_name_or_path, field_values(args))
        state, report = build_start_point(args.model_name_or_path, config, seed=args.seed)
    except (ConversionError, ValueError, OSError) as e:
        print(f"error: {args.model_name_or_path}: {e}", file=sys.stderr)
        return 2
    output = Path(args.output)
    atomic_torch_save(to_float32(state), output)
    folder = start_point_folder(output)
    model = RecformerForPretraining(config)
    load_checkpoint(model, state)  # validates every key and shape once more
    model.save_pretrained(folder)
    RecformerTokenizer.from_pretrained(args.model_name_or_path, config).save_pretrained(folder)
    print(f"start point from {args.model_name_or_path}:")
    for line in report.lines():
        print(f"  {line}")
    print(f"wrote {output} ({len(state)} keys) and {folder}/ (config, weights, tokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
