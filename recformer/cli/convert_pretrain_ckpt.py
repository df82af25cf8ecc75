"""Turn a pretraining checkpoint into the released Recformer files.

Accepts a DeepSpeed checkpoint folder (the ZeRO shards are consolidated here with DeepSpeed's
utility; no hand-run `zero_to_fp32.py`), a consolidated `.bin`, or a plain Lightning `.ckpt`. Writes
into `--output_dir`:

    recformer_ckpt.bin          RecformerModel state dict (no prefix): strict-loads into RecformerModel
    recformer_seqrec_ckpt.bin   RecformerForSeqRec form (`longformer.*` + `lm_head.*`): finetune.py --pretrain_ckpt
    recformer/, recformer_seqrec/   save_pretrained folders (config, weights, tokenizer)

    python convert_pretrain_ckpt.py --lightning_ckpt result/recformer_pretraining/checkpoints/last.ckpt \\
        --longformer_ckpt longformer_ckpt/longformer-base-4096.bin --output_dir pretrain_ckpt
"""

from __future__ import annotations

import argparse
import logging
import sys

from recformer.argparsing import HelpFormatter
from recformer.defaults import TRUST_CHECKPOINT_HELP

RESTORE_CHOICES = {"auto": None, "yes": True, "no": False}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--lightning_ckpt", required=True, help="DeepSpeed folder, Lightning .ckpt or consolidated .bin")
    p.add_argument("--longformer_ckpt", required=True, help="the start point written by save_longformer_ckpt.py")
    p.add_argument("--output_dir", required=True, help="folder for the released files and save_pretrained folders")
    p.add_argument("--model_name_or_path", default=None,
                   help="config + tokenizer folder (default: the save_pretrained folder beside --longformer_ckpt)")
    p.add_argument("--restore_word_embeddings", choices=tuple(RESTORE_CHOICES), default="auto",
                   help="take the word embeddings from the start point: auto = when frozen in training or absent")
    p.add_argument("--trust_checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recformer.io.pipeline_steps import MODEL_FILE, SEQREC_FILE, write_released

    try:
        released = write_released(
            args.lightning_ckpt, args.longformer_ckpt, args.output_dir, args.model_name_or_path,
            restore_word_embeddings=RESTORE_CHOICES[args.restore_word_embeddings], trust_checkpoint=args.trust_checkpoint,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = released.output_dir
    print(f"read {args.lightning_ckpt} ({released.source_form}; {released.source_tensors} tensors)")
    for line in released.report.lines():
        print(f"  {line}")
    print(f"wrote {out / MODEL_FILE} ({released.model_keys} keys; strict load into RecformerModel OK)")
    print(f"wrote {out / SEQREC_FILE} ({released.seqrec_keys} keys; loads into RecformerForSeqRec, lm_head.* unused)")
    print(f"wrote save_pretrained folders {out / 'recformer'}/ and {out / 'recformer_seqrec'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
