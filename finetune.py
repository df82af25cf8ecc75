"""Finetune a pretrained Recformer on one processed dataset (two stages) and evaluate it.

Flags keep the reference script's names and defaults; see `python finetune.py --help`.
Example:
    python finetune.py --pretrain_ckpt pretrain_ckpt/recformer_seqrec_ckpt.bin \
        --data_path finetune_data/Scientific --num_train_epochs 128 --batch_size 16 --device 0 --fp16 \
        --finetune_negative_sample_size -1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from recformer.checkpoint import CheckpointError
from recformer.configuration import add_recformer_field_args
from recformer.data.finetune_reader import DataError
from recformer.finetune import FinetuneArgs, Finetuner, TrainingDiverged, format_metrics_table


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneArgs(pretrain_ckpt="", data_path="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain_ckpt", required=True, help="released SeqRec/RecformerModel file, save_pretrained folder or finetuned checkpoint")
    p.add_argument("--data_path", required=True, help="processed dataset folder")
    p.add_argument("--model_name_or_path", default=d.model_name_or_path, help="Longformer/Recformer config + tokenizer")
    p.add_argument("--output_dir", default=d.output_dir, help="outputs go to <output_dir>/<dataset name>/")
    p.add_argument("--ckpt", default=d.ckpt, help="file name of the best checkpoint")
    p.add_argument("--train_file", default=d.train_file)
    p.add_argument("--dev_file", default=d.dev_file)
    p.add_argument("--test_file", default=d.test_file)
    p.add_argument("--item2id_file", default=d.item2id_file)
    p.add_argument("--meta_file", default=d.meta_file)
    p.add_argument("--num_train_epochs", type=int, default=d.num_train_epochs, help="epochs per stage (at most)")
    p.add_argument("--gradient_accumulation_steps", type=positive_int, default=d.gradient_accumulation_steps)
    p.add_argument("--finetune_negative_sample_size", type=int, default=d.finetune_negative_sample_size,
                   help="sampled negatives per user; <= 0 = full softmax over all items")
    p.add_argument("--metric_ks", nargs="+", type=int, default=d.metric_ks)
    p.add_argument("--batch_size", type=positive_int, default=d.batch_size)
    p.add_argument("--eval_batch_size", type=positive_int, default=None, help="for item encoding and evaluation (default 4 x batch_size)")
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup_steps", type=int, default=d.warmup_steps)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N, or a GPU index (-1 = CPU)")
    p.add_argument("--fp16", action="store_true", help="float16 autocast + gradient scaling (CUDA)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--fix_word_embedding", action="store_true", help="freeze the word embeddings")
    p.add_argument("--verbose", type=positive_int, default=d.verbose, help="evaluate dev every N epochs")
    p.add_argument("--preprocessing_num_workers", type=positive_int, default=d.preprocessing_num_workers,
                   help="tokenizer threads")
    p.add_argument("--dataloader_num_workers", type=int, default=d.dataloader_num_workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients to this norm (off by default)")
    p.add_argument("--exclude_history", action="store_true", help="never recommend items already in the history")
    p.add_argument("--resume", action="store_true", help="continue from the last evaluation in the output folder")
    p.add_argument("--temp", type=float, default=None, help="similarity temperature (default: the config's, 0.05)")
    p.add_argument("--cache_dir", default=None, help="tokenized items and item tables (default <output>/cache)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_recformer_field_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import os

    os.environ.setdefault("RAYON_NUM_THREADS", str(ns.preprocessing_num_workers))
    values = vars(ns)
    values["progress"] = not values.pop("no_progress")
    args = FinetuneArgs(**values)
    print("finetune arguments:", json.dumps(asdict(args), indent=1), flush=True)
    try:
        finetuner = Finetuner(args)
        metrics = finetuner.run()
    except (DataError, CheckpointError, OSError, ValueError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_metrics_table({"zero-shot test": metrics["zero_shot_test"], "finetuned test": metrics["test"]}))
    print(f"outputs: {finetuner.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
