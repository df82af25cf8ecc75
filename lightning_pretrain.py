"""Pretrain Recformer (MLM + item-item contrastive) with PyTorch Lightning (SPEC H).

DeepSpeed ZeRO-2 is the default strategy on CUDA GPUs; CPU runs use a plain strategy. Checkpoints
(top 5 by dev contrastive accuracy, plus `last.ckpt`) go to `<output_dir>/checkpoints/`, the
TensorBoard log to `<output_dir>/tensorboard/`, the resolved arguments to `<output_dir>/args.json`
and the config + tokenizer to `<output_dir>/recformer_config/`. Resume a killed run with
`--ckpt <output_dir>/checkpoints/last.ckpt`.

    python lightning_pretrain.py --model_name_or_path allenai/longformer-base-4096 \
        --longformer_ckpt longformer_ckpt/longformer-base-4096.bin \
        --train_file pretrain_data/train.json --dev_file pretrain_data/dev.json \
        --item_attr_file pretrain_data/meta_data.json --output_dir result/recformer_pretraining \
        --batch_size 16 --gradient_accumulation_steps 8 --fp16 --fix_word_embedding
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from recformer.configuration import add_recformer_field_args
from save_longformer_ckpt import DEFAULT_MODEL, field_values

logger = logging.getLogger("lightning_pretrain")

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
DEFAULT_START = "longformer_ckpt/longformer-base-4096.bin"  # the reference default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=DEFAULT_MODEL,
                   help="Longformer masked-LM (hub id or folder), or a Recformer start-point folder: config + tokenizer")
    p.add_argument("--longformer_ckpt", default=DEFAULT_START,
                   help="start point written by save_longformer_ckpt.py (the reference default; when that default "
                        "file is absent, --model_name_or_path is converted now)")
    p.add_argument("--train_file", required=True, help="JSON list of asin lists")
    p.add_argument("--dev_file", required=True, help="JSON list of asin lists")
    p.add_argument("--item_attr_file", required=True, help="meta_data.json: {asin: {title, brand, category}}")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--ckpt", default=None, help="Lightning checkpoint to resume from (model, optimizer, schedule, epoch, step)")
    p.add_argument("--num_train_epochs", type=int, default=10)
    p.add_argument("--max_steps", type=int, default=-1, help="optimizer steps (overrides the epochs when > 0)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=2, help="sequences per device per batch")
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--mlm_weight", type=float, default=None, help="weight of each MLM loss (config default 0.1)")
    p.add_argument("--temp", type=float, default=None, help="similarity temperature (config default 0.05)")
    p.add_argument("--fix_word_embedding", action="store_true", help="freeze the word embeddings")
    p.add_argument("--valid_step", type=int, default=2000, help="validate (and checkpoint) every N training batches")
    p.add_argument("--log_step", type=int, default=2000, help="log every N optimizer steps")
    p.add_argument("--preprocessing_num_workers", type=int, default=8, help="tokenizer threads")
    p.add_argument("--dataloader_num_workers", type=int, default=2)
    p.add_argument("--device", default="auto",
                   help="'cpu', 'auto', a number of GPUs per node (the reference's meaning), or GPU ids '0,1'")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, gpu, cpu, ...")
    p.add_argument("--strategy", default="auto",
                   help="auto = DeepSpeed ZeRO-2 on CUDA GPUs, a plain strategy otherwise; or any Lightning strategy name")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--fp16", action="store_true", help="fp16 mixed precision (GPU; CPU runs fall back to fp32)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="overrides --fp16")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cache_dir", default=None, help="tokenized-item cache (default <output_dir>/cache)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_recformer_field_args(p)
    return p.parse_args(argv)


def resolve_hardware(args: argparse.Namespace) -> tuple[str, object, str, str]:
    """(accelerator, devices, strategy, precision) from the flags; one log line per fallback."""
    import torch

    device = str(args.device).strip().lower()
    accelerator = args.accelerator
    if device == "cpu":
        accelerator, devices = "cpu", 1
    elif device == "auto":
        devices = "auto"
    elif "," in device:
        devices = [int(d) for d in device.split(",") if d != ""]
    else:
        devices = int(device)
    uses_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --accelerator {accelerator}: no CUDA GPU is available")

    strategy = args.strategy
    if strategy == "auto":
        if uses_cuda:
            strategy = "deepspeed_stage_2"
        else:
            logger.info("strategy: a plain Lightning strategy (DeepSpeed ZeRO-2 is used on CUDA GPUs only)")
    precision = args.precision or ("16-mixed" if args.fp16 else "32-true")
    if precision == "16-mixed" and not uses_cuda:
        logger.info("precision: fp16 mixed precision needs a CUDA GPU; training in fp32 (ask for bf16-mixed if wanted)")
        precision = "32-true"
    return accelerator, devices, strategy, precision


def build_model(args: argparse.Namespace, config):
    """RecformerForPretraining with its start point loaded."""
    from recformer import RecformerForPretraining, load_checkpoint
    from recformer.configuration import is_recformer_config_dict
    from recformer.conversion import build_start_point
    from recformer.fileio import read_json

    model = RecformerForPretraining(config)
    config_file = Path(args.model_name_or_path) / "config.json"
    start = args.longformer_ckpt
    if start == DEFAULT_START and not Path(start).is_file():
        logger.info("no start point at the default %s: converting %s instead", start, args.model_name_or_path)
        start = None
    if start:
        report = load_checkpoint(model, start)
        logger.info("start point %s: %s", start, report.summary())
    elif config_file.is_file() and is_recformer_config_dict(read_json(config_file)):
        report = load_checkpoint(model, args.model_name_or_path)
        logger.info("start point %s: %s", args.model_name_or_path, report.summary())
    else:
        state, report = build_start_point(args.model_name_or_path, config, seed=args.seed)
        load_checkpoint(model, state)
        logger.info("start point converted from %s: %s", args.model_name_or_path, report.summary())
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.preprocessing_num_workers > 0:  # the Rust tokenizer's thread pool
        os.environ.setdefault("RAYON_RS_NUM_CPUS", str(args.preprocessing_num_workers))

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from recformer import CheckpointError, RecformerTokenizer
    from recformer.conversion import ConversionError, pretraining_config
    from recformer.data.pretrain_reader import PretrainDataError
    from recformer.fileio import atomic_write_json
    from recformer.lightning_module import PretrainDataModule, RecformerPretrainModule, throughput_summary

    output_dir = Path(args.output_dir)
    pl.seed_everything(args.seed, workers=True)
    accelerator, devices, strategy, precision = resolve_hardware(args)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    try:
        config = pretraining_config(args.model_name_or_path, field_values(args), temp=args.temp, mlm_weight=args.mlm_weight)
        tokenizer = RecformerTokenizer.from_pretrained(args.model_name_or_path, config)
        data = PretrainDataModule(
            tokenizer,
            args.train_file,
            args.dev_file,
            args.item_attr_file,
            batch_size=args.batch_size,
            mlm_probability=args.mlm_probability,
            num_workers=args.dataloader_num_workers,
            seed=args.seed,
            cache_dir=args.cache_dir or output_dir / "cache",
            progress=not args.no_progress,
        )
        data.load()  # fail on bad input before anything is built
        model = build_model(args, config)
    except (PretrainDataError, CheckpointError, ConversionError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    module = RecformerPretrainModule(
        config,
        model=model,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        fix_word_embedding=args.fix_word_embedding,
    )
    checkpoints = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="step={step}-acc={val_accuracy:.4f}",
        auto_insert_metric_name=False,
        monitor="val_accuracy",
        mode="max",
        save_top_k=5,
        save_last=True,
    )
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        accumulate_grad_batches=args.gradient_accumulation_steps,
        gradient_clip_val=args.max_grad_norm if args.max_grad_norm > 0 else None,
        val_check_interval=args.valid_step,
        check_val_every_n_epoch=None,  # validate every `valid_step` batches, across epochs
        num_sanity_val_steps=0,
        log_every_n_steps=args.log_step,
        logger=TensorBoardLogger(str(output_dir), name="tensorboard"),
        callbacks=[checkpoints],
        enable_progress_bar=not args.no_progress,
        default_root_dir=str(output_dir),
        deterministic=False,
    )
    if trainer.is_global_zero:
        resolved = {**vars(args), "accelerator": accelerator, "devices": devices, "strategy": str(strategy),
                    "precision": precision, "world_size": trainer.world_size}
        print("resolved arguments:")
        for key, value in resolved.items():
            print(f"  {key}: {value}")
        atomic_write_json(output_dir / "args.json", resolved, indent=True)
        config.save_pretrained(output_dir / "recformer_config")
        tokenizer.save_pretrained(output_dir / "recformer_config")
        for name, stats in data.stats.items():
            print(f"{name} data: {stats.summary()}")

    trainer.fit(module, datamodule=data, ckpt_path=args.ckpt)
    # The last steps since the last validation are kept too (a later --ckpt resumes from here).
    trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt")
    if trainer.is_global_zero:
        summary = {**throughput_summary(module), "world_size": trainer.world_size, "global_step": trainer.global_step,
                   "best_checkpoint": checkpoints.best_model_path, "best_val_accuracy":
                   float(checkpoints.best_model_score) if checkpoints.best_model_score is not None else None}
        atomic_write_json(output_dir / "train_summary.json", summary, indent=True)
        print(f"done: {trainer.global_step} optimizer steps; best {summary['best_val_accuracy']} "
              f"at {summary['best_checkpoint'] or '-'}; last: {output_dir / 'checkpoints' / 'last.ckpt'}")
        print(f"throughput per process: {summary['sequences_per_s']:.2f} sequences/s, "
              f"{summary['tokens_per_s']:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
