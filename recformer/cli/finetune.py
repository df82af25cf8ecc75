"""Finetune a pretrained Recformer on one processed dataset (two stages) and evaluate it.

Flags keep the reference script's names and defaults. Several GPUs or nodes: start it with torchrun
(`torchrun --nproc_per_node 4 finetune.py ...`). Example (the reference run; `bash finetune.sh DATA CKPT`):
    python finetune.py --pretrain_ckpt pretrain_ckpt/recformer_seqrec_ckpt.bin \\
        --data_path finetune_data/Scientific --num_train_epochs 128 --batch_size 16 --device 0 --fp16 \\
        --finetune_negative_sample_size -1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

from recformer.argparsing import build_parser as build_args_parser
from recformer.argparsing import parse_command_line
from recformer.args import FinetuneArgs
from recformer.cli import argument_error, run_command


def build_parser() -> argparse.ArgumentParser:
    return build_args_parser(FinetuneArgs, __doc__)


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(FinetuneArgs, build_parser(), argv)
    if (code := argument_error(args)) is not None:
        return code
    # torch and transformers load only now: --help and bad flags answer at once
    from recformer.train.run_log import ConsoleLog

    with ConsoleLog() as console:  # copied into the run folder's run.log once the folder is accepted
        return run_command(lambda: finetune(args, console))


def finetune(args: FinetuneArgs, console: Any) -> int:
    from recformer import distributed
    from recformer.devices import keep_freed_memory, set_tokenizer_threads
    from recformer.metrics import format_metrics_table
    from recformer.train.finetune import Finetuner
    from recformer.train.run_log import RUN_LOG

    logging.basicConfig(
        level=distributed.cli_log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_tokenizer_threads(args.preprocessing_num_workers)
    keep_freed_memory()
    if distributed.env_rank() == 0:
        print("finetune arguments:", json.dumps(asdict(args), indent=1), flush=True)
    try:
        distributed.init_from_env(args.device)
        finetuner = Finetuner(args)
        metrics = finetuner.run(on_start=lambda resumed: console.attach(finetuner.out_dir / RUN_LOG, append=resumed))
        distributed.barrier()  # leave together: a rank that tears down while another still sends aborts
    finally:
        distributed.teardown()
    if distributed.env_rank() == 0:
        print()
        table = {"zero-shot test": metrics["zero_shot_test"], "finetuned test": metrics["test"]}
        print(format_metrics_table(table))
        print(f"outputs: {finetuner.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
