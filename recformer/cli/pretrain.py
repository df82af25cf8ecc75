"""Pretrain Recformer (MLM + item-item contrastive) with PyTorch Lightning.

DeepSpeed ZeRO-2 is the default strategy on CUDA GPUs; CPU runs use a plain strategy. Checkpoints
(top 5 by dev contrastive accuracy, plus `last.ckpt`) go to `<output_dir>/checkpoints/`, the
TensorBoard log to `<output_dir>/tensorboard/`, the resolved arguments to `<output_dir>/args.json`
and the config + tokenizer to `<output_dir>/recformer_config/`. Resume a killed run with
`--ckpt <output_dir>/checkpoints/last.ckpt`. `--valid_step`, `--log_step` and `--max_steps` all count
optimizer steps (one step = --gradient_accumulation_steps batches).

    python lightning_pretrain.py --model_name_or_path allenai/longformer-base-4096 \\
        --longformer_ckpt longformer_ckpt/longformer-base-4096.bin \\
        --train_file pretrain_data/train.json --dev_file pretrain_data/dev.json \\
        --item_attr_file pretrain_data/meta_data.json --output_dir result/recformer_pretraining \\
        --batch_size 16 --gradient_accumulation_steps 8 --fp16 --fix_word_embedding
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from recformer.argparsing import build_parser as build_args_parser
from recformer.argparsing import parse_command_line
from recformer.args import PretrainArgs
from recformer.cli import argument_error, run_command


def build_parser() -> argparse.ArgumentParser:
    return build_args_parser(PretrainArgs, __doc__)


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(PretrainArgs, build_parser(), argv)
    if (code := argument_error(args)) is not None:
        return code
    from recformer.train.run_log import ConsoleLog

    with ConsoleLog() as console:  # copied into <output_dir>/run.log once the folder is accepted
        return run_command(lambda: pretrain(args, console))


def pretrain(args: PretrainArgs, console: Any) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # torch, transformers and Lightning load only now: --help and bad flags answer at once
    from recformer.devices import keep_freed_memory
    from recformer.train.pretraining import run_pretraining
    from recformer.train.run_log import RUN_LOG

    keep_freed_memory()
    summary = run_pretraining(
        args, on_output_dir=lambda folder: console.attach(folder / RUN_LOG, append=bool(args.ckpt))
    )
    if summary is not None:  # the global-zero process
        print(f"done: {summary['global_step']} optimizer steps; best {summary['best_val_accuracy']} "
              f"at {summary['best_checkpoint'] or '-'}; last: {summary['last_checkpoint']}")  # fmt: skip
        print(f"throughput per process: {summary['sequences_per_s']:.2f} sequences/s, "
              f"{summary['tokens_per_s']:.0f} tokens/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
