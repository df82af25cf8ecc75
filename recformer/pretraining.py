"""A whole pretraining run (what `lightning_pretrain.py` does): data module, start point, Lightning
trainer, fit, summary.

DeepSpeed ZeRO-2 is the default strategy on CUDA GPUs; CPU runs use a plain strategy. Checkpoints
(top 5 by dev contrastive accuracy, plus `last.ckpt`) go to `<output_dir>/checkpoints/`, the
TensorBoard log to `<output_dir>/tensorboard/`, the resolved arguments to `<output_dir>/args.json`,
the config + tokenizer to `<output_dir>/recformer_config/` and the throughput summary to
`<output_dir>/train_summary.json`. Lightning is imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .args import DEFAULT_START, PretrainArgs
from .attention import configure_attention, resolve_attn_implementation
from .checkpoint import (
    load_checkpoint,
    refuse_unsafe_objects,
    training_checkpoint_types,
    weights_only_loading,
)
from .configuration import RecformerConfig, build_config, field_values, is_recformer_config_dict
from .conversion import build_start_point
from .devices import resolve_pretrain_hardware, set_tokenizer_threads
from .fileio import atomic_write_json, read_json
from .modeling import RecformerForPretraining
from .tokenization import RecformerTokenizer, check_tokenizer_fits

logger = logging.getLogger(__name__)


class PretrainingSetupError(ValueError):
    """Bad arguments or input found before training started (the message names the flag or file)."""


def build_pretraining_model(args: PretrainArgs, config: RecformerConfig) -> RecformerForPretraining:
    """RecformerForPretraining with its start point loaded.

    The start point is `--longformer_ckpt`; when that is the reference default and the file is
    absent, it is `--model_name_or_path` itself (a Recformer start-point folder), or that Longformer
    converted now.
    """
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


def run_pretraining(args: PretrainArgs) -> dict[str, Any] | None:
    """Pretrain as `args` say and write the outputs listed in the module docstring.

    Returns:
        The run summary (also in `train_summary.json`) on the global-zero process; None on the others.

    Raises:
        PretrainingSetupError: bad arguments, data or checkpoints, found before training starts.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from .lightning_module import PretrainDataModule, RecformerPretrainModule, throughput_summary

    output_dir = Path(args.output_dir)
    try:
        args.validate()
        set_tokenizer_threads(args.preprocessing_num_workers)
        pl.seed_everything(args.seed, workers=True)
        accelerator, devices, strategy, precision = resolve_pretrain_hardware(
            args.device, args.accelerator, args.strategy, args.fp16, args.precision
        )
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if on_gpu else "cpu")
        # an implementation that cannot train on this device stops here, before any data is read
        resolve_attn_implementation(args.attn_implementation, device, needs_grad=True)
        config = build_config(args.model_name_or_path, field_values(args), temp=args.temp, mlm_weight=args.mlm_weight)
        tokenizer = RecformerTokenizer.from_pretrained(args.model_name_or_path, config)
        check_tokenizer_fits(tokenizer, config, f"--model_name_or_path {args.model_name_or_path}")
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
            progress=args.progress,
        )
        data.load()  # fail on bad input before anything is built
        model = build_pretraining_model(args, config)
        configure_attention(model, args.attn_implementation, device, training=True)
        if args.compile:
            model.longformer.compile()  # in place: parameter names (and checkpoints) stay the same
        allowed = training_checkpoint_types(args.ckpt) if args.ckpt else []
        if args.ckpt and not args.trust_checkpoint:
            refuse_unsafe_objects(args.ckpt, allowed)
    except (ValueError, OSError) as e:
        raise PretrainingSetupError(str(e)) from e

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
        enable_progress_bar=args.progress,
        default_root_dir=str(output_dir),
        deterministic=False,
    )
    if trainer.is_global_zero:
        resolved = {**asdict(args), "accelerator": accelerator, "devices": devices, "strategy": str(strategy),
                    "precision": precision, "world_size": trainer.world_size}  # fmt: skip
        logger.info("resolved arguments:\n%s", "\n".join(f"  {k}: {v}" for k, v in resolved.items()))
        atomic_write_json(output_dir / "args.json", resolved, indent=True)
        config.save_pretrained(output_dir / "recformer_config")
        tokenizer.save_pretrained(output_dir / "recformer_config")
        for name, stats in data.stats.items():
            logger.info("%s data: %s", name, stats.summary())

    # Lightning (and DeepSpeed's engine) would unpickle --ckpt fully: read it weights-only instead
    safe = args.ckpt and not args.trust_checkpoint
    with weights_only_loading(allowed) if safe else contextlib.nullcontext():
        trainer.fit(module, datamodule=data, ckpt_path=args.ckpt, weights_only=bool(safe))
    # The last steps since the last validation are kept too (a later --ckpt resumes from here).
    last = output_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    if not trainer.is_global_zero:
        return None
    best_score = checkpoints.best_model_score
    summary = {
        **throughput_summary(module),
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "best_checkpoint": checkpoints.best_model_path,
        "best_val_accuracy": float(best_score) if best_score is not None else None,
        "last_checkpoint": str(last),
    }
    atomic_write_json(output_dir / "train_summary.json", summary, indent=True)
    return summary
