"""Evaluate any checkpoint on a processed dataset folder without training (zero-shot or finetuned).

The metrics and inputs are finetune.py's (dev input: the train sequence; test input: train + val).
A finetuned best_model.bin is scored with its own item table unless --reencode_items is given.
Several GPUs or nodes: start it with torchrun (`torchrun --nproc_per_node 4 evaluate.py ...`).
Example (zero-shot transfer of the released checkpoint to a new domain):
    python evaluate.py --ckpt pretrain_ckpt/recformer_seqrec_ckpt.bin --data_path finetune_data/Scientific \\
        --output zero_shot_scientific.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recformer.argparsing import build_parser as build_args_parser
from recformer.argparsing import parse_command_line
from recformer.args import EvaluateArgs
from recformer.cli import argument_error, run_command
from recformer.io.fileio import dumps_json
from recformer.io.output_paths import STDOUT, check_not_input, check_output_file


def build_parser() -> argparse.ArgumentParser:
    return build_args_parser(EvaluateArgs, __doc__)


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(EvaluateArgs, build_parser(), argv)
    if (code := argument_error(args)) is not None:
        return code
    return run_command(lambda: evaluate(args))


def evaluate(args: EvaluateArgs) -> int:
    # torch and transformers load only now: --help and bad flags answer at once
    from recformer import distributed
    from recformer.devices import keep_freed_memory
    from recformer.inference.checkpoint_eval import evaluate_checkpoint
    from recformer.io.fileio import atomic_write_json
    from recformer.metrics import format_metrics_table

    logging.basicConfig(
        level=distributed.cli_log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    keep_freed_memory()
    try:
        if not Path(args.ckpt).exists():  # a path, never a hub id: fail here, not after trying the network
            raise FileNotFoundError(f"--ckpt {args.ckpt}: no such file or folder")
        if args.output and args.output != STDOUT:  # before any input is read (every rank: all stop together)
            check_not_input(args.output, {"--ckpt": args.ckpt})
            args.output = str(check_output_file(args.output))
        distributed.init_from_env(args.device)
        result = evaluate_checkpoint(args)
        if args.output == STDOUT:
            distributed.on_main(lambda: sys.stdout.buffer.write(dumps_json(result.to_json(), indent=True) + b"\n"))
        elif args.output:
            distributed.on_main(lambda: atomic_write_json(args.output, result.to_json(), indent=True))
        distributed.barrier()  # leave together: a rank that tears down while another still sends aborts
    finally:
        distributed.teardown()
    if distributed.env_rank() != 0:
        return 0
    report = sys.stderr if args.output == STDOUT else sys.stdout  # stdout holds the metrics JSON then
    print(file=report)
    print(format_metrics_table({f"{result.dataset} {result.split}": result.metrics}), file=report)
    print(f"{result.users} users, {result.items} items, item table: {result.item_table}"
          + (f"; metrics: {args.output}" if args.output else ""), file=report)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
