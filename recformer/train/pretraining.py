"""A whole pretraining run (what `lightning_pretrain.py` does): data module, start point, Lightning
trainer, fit, summary.

DeepSpeed ZeRO-2 is the default strategy on CUDA GPUs; CPU runs use a plain strategy. Checkpoints
(top 5 by dev contrastive accuracy, plus `last.ckpt`) go to `<output_dir>/checkpoints/`, the
TensorBoard log to `<output_dir>/tensorboard/`, the flags to `<output_dir>/args.json` (a `--config`
file that reproduces the run; the resolved hardware settings are in the log), the config + tokenizer
to `<output_dir>/recformer_config/` and the throughput summary to `<output_dir>/train_summary.json`.
A folder that holds a run is refused unless `--ckpt` continues it or `--overwrite_output_dir` replaces
it. Lightning is imported only when a run starts.

`--max_steps`, `--log_step` and `--valid_step` all count optimizer steps (one step is
`--gradient_accumulation_steps` batches); Lightning's `val_check_interval` counts batches, so
`validation_interval` converts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recformer.args import DEFAULT_START, PretrainArgs, run_arguments
from recformer.devices import resolve_pretrain_hardware, set_tokenizer_threads
from recformer.errors import RecformerError
from recformer.io.checkpoint import load_checkpoint
from recformer.io.checkpoint_files import (
    refuse_unsafe_objects,
    training_checkpoint_types,
    weights_only_loading,
)
from recformer.io.fileio import atomic_write_json, read_json
from recformer.io.output_paths import check_output_dir, refuse_existing_run
from recformer.io.pipeline_steps import build_start_point
from recformer.model.attention import configure_attention
from recformer.model.configuration import (
    RecformerConfig,
    build_config,
    field_values,
    is_recformer_config_dict,
)
from recformer.model.modeling_pretraining import RecformerForPretraining
from recformer.model.tokenization import RecformerTokenizer, check_tokenizer_fits
from recformer.runtime import ModelRuntime
from recformer.train.collators import train_pack_tokens

if TYPE_CHECKING:  # Lightning is imported only when a run starts
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from recformer.train.lightning_module import PretrainDataModule, RecformerPretrainModule

logger = logging.getLogger(__name__)


def validation_interval(args: PretrainArgs) -> int:
    """Lightning's `val_check_interval` (training batches) for `--valid_step` (optimizer steps)."""
    return args.valid_step * args.gradient_accumulation_steps


class PretrainingSetupError(RecformerError, ValueError):
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


# What a pretraining run writes in --output_dir (the tokenized-item cache aside).
RUN_OUTPUTS = ("checkpoints", "tensorboard", "train_summary.json", "args.json", "recformer_config")


def first_process() -> bool:
    """Whether this is the process a pretraining command was started as: not a process that torchrun or
    Lightning's launcher started for another rank (they run the command again)."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def check_run_folder(args: PretrainArgs) -> Path:
    """--output_dir, refused (one line naming it) when it holds a pretraining run, unless --ckpt continues
    a run or --overwrite_output_dir replaces it. Only the first process checks."""
    output_dir = check_output_dir(args.output_dir)
    if first_process() and not (args.ckpt or args.overwrite_output_dir):
        resume = output_dir / "checkpoints" / "last.ckpt"
        refuse_existing_run(output_dir, RUN_OUTPUTS, "pretraining run", f"--ckpt {resume}")
    return output_dir


def clear_run_folder(output_dir: Path) -> None:
    """Remove an earlier run's outputs (--overwrite_output_dir without --ckpt), so that its checkpoints
    and TensorBoard events do not mix with this run's."""
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Hardware:
    """Where a run trains: Lightning's settings and the torch device the model is checked for."""

    accelerator: str
    devices: int | str | list[int]
    strategy: str
    precision: str
    device: torch.device


def _resolve_hardware(args: PretrainArgs) -> _Hardware:
    """The resolved hardware settings; refuses an attention implementation that cannot train on the
    device, before any data is read."""
    accelerator, devices, strategy, precision = resolve_pretrain_hardware(
        args.device, args.accelerator, args.strategy, args.fp16, args.precision
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    ModelRuntime.check_attention(args.attn_implementation, device, training=True)
    return _Hardware(accelerator, devices, strategy, precision, device)


def _setup_data(
    args: PretrainArgs, output_dir: Path
) -> tuple[RecformerConfig, RecformerTokenizer, PretrainDataModule]:
    """The config, the tokenizer and the data module, its files read and checked (bad input fails here,
    before any model is built)."""
    from recformer.train.lightning_module import PretrainDataModule, PretrainFiles

    config = build_config(args.model_name_or_path, field_values(args), temp=args.temp, mlm_weight=args.mlm_weight)
    tokenizer = RecformerTokenizer.from_pretrained(args.model_name_or_path, config)
    check_tokenizer_fits(tokenizer, config, f"--model_name_or_path {args.model_name_or_path}")
    data = PretrainDataModule(
        tokenizer,
        PretrainFiles(args.train_file, args.dev_file, args.item_attr_file),
        batch_size=args.batch_size,
        mlm_probability=args.mlm_probability,
        num_workers=args.dataloader_num_workers,
        seed=args.seed,
        cache_dir=args.cache_dir or output_dir / "cache",
        progress=args.progress,
    )
    data.load()
    return config, tokenizer, data


def _setup_model(
    args: PretrainArgs, config: RecformerConfig, device: torch.device, data: PretrainDataModule
) -> RecformerForPretraining:
    """The model from its start point, its attention set for training on `device` (compiled with
    --compile); `data` is told whether to pack its batches (--pack_train_batches, by the attention that runs)."""
    model = build_pretraining_model(args, config)
    model.config.pack_sides = args.pack_sides == "on" or (args.pack_sides == "auto" and device.type == "cuda")
    implementation = configure_attention(model, args.attn_implementation, device, training=True)
    data.pack_tokens = train_pack_tokens(args.pack_train_batches, implementation, config.max_token_num)
    if args.compile:
        model.longformer.compile()  # in place: parameter names (and checkpoints) stay the same
    return model


def _resume_types(args: PretrainArgs) -> list[type]:
    """The object types --ckpt may hold besides tensors; a --ckpt that holds others is refused unless
    --trust_checkpoint."""
    allowed = training_checkpoint_types(args.ckpt) if args.ckpt else []
    if args.ckpt and not args.trust_checkpoint:
        refuse_unsafe_objects(args.ckpt, allowed)
    return allowed


def _build_trainer(args: PretrainArgs, hardware: _Hardware, output_dir: Path) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Lightning trainer and its checkpoint callback (top 5 by dev accuracy, plus `last.ckpt`)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

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
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=args.num_nodes,
        strategy=hardware.strategy,
        precision=hardware.precision,
        max_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        accumulate_grad_batches=args.gradient_accumulation_steps,
        gradient_clip_val=args.max_grad_norm if args.max_grad_norm > 0 else None,
        val_check_interval=validation_interval(args),
        check_val_every_n_epoch=None,  # validate every `valid_step` optimizer steps, across epochs
        num_sanity_val_steps=0,
        log_every_n_steps=args.log_step,
        logger=TensorBoardLogger(str(output_dir), name="tensorboard"),
        callbacks=[checkpoints],
        enable_progress_bar=args.progress,
        default_root_dir=str(output_dir),
        deterministic=False,
    )
    return trainer, checkpoints


def _save_run_settings(
    args: PretrainArgs,
    hardware: _Hardware,
    world_size: int,
    config: RecformerConfig,
    tokenizer: RecformerTokenizer,
    data: PretrainDataModule,
    output_dir: Path,
) -> None:
    """Log the resolved arguments and the data stats; write `args.json` and `recformer_config/`."""
    resolved = {**asdict(args), "accelerator": hardware.accelerator, "devices": hardware.devices,
                "strategy": str(hardware.strategy), "precision": hardware.precision, "world_size": world_size}  # fmt: skip
    logger.info("resolved arguments:\n%s", "\n".join(f"  {k}: {v}" for k, v in resolved.items()))
    atomic_write_json(output_dir / "args.json", run_arguments(args), indent=True)  # a --config file
    config.save_pretrained(output_dir / "recformer_config")
    tokenizer.save_pretrained(output_dir / "recformer_config")
    for name, stats in data.stats.items():
        logger.info("%s data: %s", name, stats.summary())


def _fit(
    args: PretrainArgs,
    trainer: pl.Trainer,
    module: RecformerPretrainModule,
    data: PretrainDataModule,
    allowed: list[type],
    output_dir: Path,
) -> Path:
    """Train, then save `last.ckpt` (the steps since the last validation too: a later --ckpt resumes from
    there); returns its path."""
    # Lightning (and DeepSpeed's engine) would unpickle --ckpt fully: read it weights-only instead
    safe = args.ckpt and not args.trust_checkpoint
    with weights_only_loading(allowed) if safe else contextlib.nullcontext():
        trainer.fit(module, datamodule=data, ckpt_path=args.ckpt, weights_only=bool(safe))
    last = output_dir / "checkpoints" / "last.ckpt"
    # Lightning's weights_only here means "leave out the optimizer and schedule", which a resume needs;
    # saying False keeps Lightning from logging that it defaulted (files are still read weights-only).
    trainer.save_checkpoint(last, weights_only=False)
    return last


def run_pretraining(
    args: PretrainArgs, on_output_dir: Callable[[Path], None] | None = None
) -> dict[str, Any] | None:
    """Pretrain as `args` say and write the outputs listed in the module docstring.

    `on_output_dir(folder)` is called once --output_dir is accepted (`check_run_folder`), before any
    input is read (the command starts its run.log there).

    Returns:
        The run summary (also in `train_summary.json`) on the global-zero process; None on the others.

    Raises:
        PretrainingSetupError: bad arguments, data or checkpoints, found before training starts.
    """
    import pytorch_lightning as pl

    from recformer.train.lightning_module import RecformerPretrainModule, throughput_summary

    output_dir = Path(args.output_dir)
    try:
        args.validate()
        check_run_folder(args)
        if on_output_dir is not None and first_process():
            output_dir.mkdir(parents=True, exist_ok=True)
            on_output_dir(output_dir)
        set_tokenizer_threads(args.preprocessing_num_workers)
        pl.seed_everything(args.seed, workers=True)
        hardware = _resolve_hardware(args)
        config, tokenizer, data = _setup_data(args, output_dir)
        model = _setup_model(args, config, hardware.device, data)
        allowed = _resume_types(args)
    except (ValueError, OSError) as e:
        raise PretrainingSetupError(str(e)) from e
    if args.overwrite_output_dir and not args.ckpt and first_process():
        clear_run_folder(output_dir)

    module = RecformerPretrainModule(
        config,
        model=model,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        fix_word_embedding=args.fix_word_embedding,
    )
    trainer, checkpoints = _build_trainer(args, hardware, output_dir)
    if trainer.is_global_zero:
        _save_run_settings(args, hardware, trainer.world_size, config, tokenizer, data, output_dir)
    last = _fit(args, trainer, module, data, allowed, output_dir)
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
