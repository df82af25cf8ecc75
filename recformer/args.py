"""The arguments of the finetuning, pretraining, evaluation and recommendation commands, as documented
dataclasses.

Each field is one command-line flag: its name, default and help text are defined here once;
`argparsing.build_parser` turns a dataclass into a parser and `argparsing.parse_command_line` reads
`--config` files too. Flag names and defaults are the reference scripts'.

This module imports neither torch nor transformers (only `recformer.defaults`), so that every command
answers `--help` and argument errors before the model libraries load; the commands import those after
parsing (the whole `--help` takes about 0.2 s, bench/bench_startup.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recformer.defaults import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_MODEL,
    PRECISIONS,
    TRUST_CHECKPOINT_HELP,
    capped_workers,
    check_attn_name,
)

# Finetuning keeps the checkpoint with the best dev value of this metric.
TARGET_METRIC = "NDCG@10"
# Stage 2's learning-rate schedule in finetuning: the original's one schedule, or its own.
STAGE2_SCHEDULES = ("shared", "restart")
# The reference default start point of pretraining.
DEFAULT_START = "longformer_ckpt/longformer-base-4096.bin"

A = TypeVar("A")

ATTN_HELP = (
    f"attention implementation: {', '.join(ATTN_IMPLEMENTATIONS)}. auto = the fastest that runs on the device "
    "(sdpa on CPU and CUDA, measured faster than compiled flex_attention on an H200); "
    "eager = transformers' Longformer attention (the reference). A name that cannot run here stops at start-up"
)
BF16_HELP = "bfloat16 autocast: use it on Ampere or newer GPUs (A100, H100, RTX 30xx and later) and CPUs with bf16"
FP16_HELP = "float16 autocast + gradient scaling (CUDA): for GPUs without bf16 (V100, T4, RTX 20xx)"
COMPILE_HELP = "torch.compile the encoder (off by default: compiling takes minutes, then steps run faster on GPUs)"
MODEL_HELP = (
    "Longformer/Recformer config + tokenizer: hub id or folder (default: the checkpoint's own: a save_pretrained "
    "folder's; for a checkpoint file in a finetuning run folder, that run's best_model/, else the model its "
    f"args.json names; else {DEFAULT_MODEL})"
)
EVAL_BATCH_HELP = (
    "sequences per batch for item encoding and evaluation (default: batches of a token budget measured "
    "fastest on the device, see recformer.inference.evaluation.token_budget)"
)
RECOMMEND_BATCH_HELP = (
    "sequences per batch for item and history encoding (default: batches of a token budget measured "
    "fastest on the device, see recformer.inference.evaluation.token_budget)"
)
METRIC_KS_HELP = "cut-offs k of the metrics (NDCG@k, Recall@k)"
SEED_HELP = "random seed (initialisation, shuffling, sampling, dropout)"
# Tokenizer threads and data-loader workers by default: the reference's numbers, or the machine's cores when fewer.
TOKENIZER_THREADS = capped_workers(8)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def flag(default: Any = dataclasses.MISSING, help: str = "", **options: Any) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
        default: the flag's default; a list default is copied per instance; none = a required flag.
        help: the flag's help text.
        **options: `type` (argparse type, e.g. `positive_int`), `choices`, `flag` (another flag name,
            e.g. `--no_progress` for `progress`, which then stores False).
    """
    metadata = {"help": help, **options}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def recformer_field() -> Any:
    """A Recformer field (None = the saved Recformer config's value or the reference value)."""
    return field(default=None, metadata={"recformer_field": True})


@dataclass(kw_only=True)
class RecformerFieldArgs:
    """The five Recformer field flags every model command takes (`configuration.add_recformer_field_args`)."""

    max_attr_num: int | None = recformer_field()
    max_attr_length: int | None = recformer_field()
    max_item_embeddings: int | None = recformer_field()
    attention_window: list[int] | None = recformer_field()
    max_token_num: int | None = recformer_field()


# What a run does with its output folder, given anew each time: never stored in a run's args.json.
FOLDER_FLAGS = ("resume", "overwrite_output_dir")


def run_arguments(args: Any) -> dict[str, Any]:
    """An argument dataclass as a run folder's args.json holds it: every field but `FOLDER_FLAGS`, so
    that `--config args.json` reproduces the run and never replaces or continues a folder by itself."""
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in FOLDER_FLAGS}


class _Validated:
    """Checks shared by the argument dataclasses; each failure names the flag."""

    def _at_least(self, minimum: float, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"--{name} must be >= {minimum}, got {value}")

    def _check_attention(self) -> None:
        """--attn_implementation names an implementation (the error lists the valid names)."""
        try:
            check_attn_name(self.attn_implementation)
            if self.attn_implementation == "flex_attention":  # only this one asks what torch can do
                from recformer.model.attention import check_attn_implementation

                check_attn_implementation(self.attn_implementation)
        except (ValueError, ImportError) as e:
            raise ValueError(f"--attn_implementation: {e}") from None

    def _above(self, minimum: float, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > minimum:
                raise ValueError(f"--{name} must be > {minimum}, got {value}")


@dataclass(kw_only=True)
class FinetuneArgs(RecformerFieldArgs, _Validated):
    """Every finetuning option (the flags of `finetune.py` / `recformer-finetune`)."""

    pretrain_ckpt: str = flag(
        help="released SeqRec/RecformerModel file, save_pretrained folder or finetuned checkpoint"
    )
    data_path: str = flag(help="processed dataset folder")
    model_name_or_path: str | None = flag(None, MODEL_HELP.replace("the checkpoint", "--pretrain_ckpt", 1))
    output_dir: str = flag("checkpoints", "outputs go to <output_dir>/<dataset name>/")
    ckpt: str = flag("best_model.bin", "file name of the best checkpoint")
    train_file: str = flag("train.json", "training sequences, in --data_path")
    dev_file: str = flag("val.json", "dev targets, in --data_path")
    test_file: str = flag("test.json", "test targets, in --data_path")
    item2id_file: str = flag("smap.json", "item id -> index map, in --data_path")
    meta_file: str = flag("meta_data.json", "item attributes, in --data_path")
    num_train_epochs: int = flag(16, "epochs per stage (at most)")
    gradient_accumulation_steps: int = flag(8, "batches per optimizer step", type=positive_int)
    global_batch_size: int | None = flag(
        None,
        "sequences per optimizer step over all processes, whatever their number: each process's batch "
        "(at most --batch_size) and gradient accumulation are derived from it (default: batch_size x "
        "gradient_accumulation_steps x processes)",
        type=positive_int,
    )
    finetune_negative_sample_size: int = flag(1000, "sampled negatives per user; <= 0 = full softmax over all items")
    metric_ks: list[int] = flag([10, 50], METRIC_KS_HELP + "; must include 10 (model selection uses NDCG@10)")
    batch_size: int = flag(16, "training sequences per process per batch", type=positive_int)
    eval_batch_size: int | None = flag(None, EVAL_BATCH_HELP, type=positive_int)
    learning_rate: float = flag(5e-5, "peak learning rate of AdamW (linear warm-up, then linear decay)")
    weight_decay: float = flag(0.0, "AdamW weight decay (not on biases and LayerNorm weights)")
    warmup_steps: int = flag(100, "optimizer steps of linear warm-up")
    stage2_schedule: str = flag(
        "shared",
        "learning-rate schedule of stage 2. shared (the original): one warm-up + linear decay sized for stage "
        "1, so stage 2 starts where it ended (at 0 after a full stage 1: its training is then skipped, its "
        "result is the stage-1 best model); restart: stage 2 gets its own warm-up and linear decay",
        choices=list(STAGE2_SCHEDULES),
    )
    device: str = flag("auto", "auto, cpu, cuda, cuda:N, or a GPU index (-1 = CPU)")
    fp16: bool = flag(False, FP16_HELP)
    bf16: bool = flag(False, BF16_HELP)
    attn_implementation: str = flag("auto", ATTN_HELP)
    pack_train_batches: str = flag(
        "off", "training batches: off = padded; on = histories packed into rows of up to max_token_num tokens "
        "(sdpa/flex only; the same loss up to float rounding, other dropout draws); auto = packed unless eager runs",
        choices=["off", "on", "auto"],
    )
    compile: bool = flag(False, COMPILE_HELP)
    fix_word_embedding: bool = flag(False, "freeze the word embeddings")
    verbose: int = flag(3, "evaluate dev every N epochs", type=positive_int)
    preprocessing_num_workers: int = flag(
        TOKENIZER_THREADS, "tokenizer threads (default: 8, or the cores of this machine when fewer)", type=positive_int
    )
    dataloader_num_workers: int = flag(0, "data-loader worker processes (0: batches are built in the main process)")
    seed: int = flag(42, SEED_HELP)
    max_grad_norm: float | None = flag(None, "clip gradients to this norm (off by default)")
    exclude_history: bool = flag(False, "never recommend items already in the history")
    resume: bool = flag(False, "continue from the last evaluation in the output folder")
    overwrite_output_dir: bool = flag(
        False, "replace the run in <output_dir>/<dataset name>/ (without it, or --resume, a folder that holds a "
        "run is refused)"
    )
    temp: float | None = flag(None, "similarity temperature (default: the config's, 0.05)")
    cache_dir: str | None = flag(None, "tokenized items and item tables (default <output>/cache)")
    progress: bool = flag(True, "hide progress bars", flag="--no_progress")

    def validate(self) -> None:
        """Raise a ValueError naming the flag for a value that cannot work."""
        self._at_least(1, "batch_size", "gradient_accumulation_steps", "verbose", "eval_batch_size",
                       "preprocessing_num_workers", "global_batch_size")  # fmt: skip
        self._at_least(0, "num_train_epochs", "warmup_steps", "weight_decay", "dataloader_num_workers")
        self._above(0, "learning_rate", "temp")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are exclusive")
        if self.stage2_schedule not in STAGE2_SCHEDULES:
            raise ValueError(f"--stage2_schedule must be one of {', '.join(STAGE2_SCHEDULES)}, got {self.stage2_schedule!r}")
        self._check_attention()
        if not self.metric_ks or any(k < 1 for k in self.metric_ks):
            raise ValueError(f"--metric_ks must be positive integers, got {self.metric_ks}")
        if TARGET_METRIC not in [f"NDCG@{k}" for k in self.metric_ks]:
            raise ValueError(f"--metric_ks must include 10: model selection uses {TARGET_METRIC}")

    def batch_layout(self, world_size: int) -> tuple[int, int, int]:
        """(per-process micro-batch, gradient accumulation steps, global batch) on `world_size` processes.

        Without --global_batch_size: --batch_size, --gradient_accumulation_steps and their product
        times the world size. With it, each process takes global / world sequences per step in the
        fewest equal micro-batches of at most --batch_size.

        Raises:
            ValueError: --global_batch_size is not divisible by the world size (both named).
        """
        if self.global_batch_size is None:
            accum = self.gradient_accumulation_steps
            return self.batch_size, accum, self.batch_size * accum * world_size
        if self.global_batch_size % world_size:
            raise ValueError(
                f"--global_batch_size {self.global_batch_size} is not divisible by the world size "
                f"{world_size}"
            )
        per_process = self.global_batch_size // world_size
        accum = -(-per_process // self.batch_size)
        while per_process % accum:
            accum += 1
        return per_process // accum, accum, self.global_batch_size


@dataclass(kw_only=True)
class PretrainArgs(RecformerFieldArgs, _Validated):
    """Every pretraining option (the flags of `lightning_pretrain.py` / `recformer-pretrain`)."""

    model_name_or_path: str = flag(
        DEFAULT_MODEL,
        "Longformer masked-LM (hub id or folder), or a Recformer start-point folder: config + tokenizer",
    )
    longformer_ckpt: str = flag(
        DEFAULT_START,
        "start point written by save_longformer_ckpt.py (the reference default; when that default file is "
        "absent, --model_name_or_path is converted now)",
    )
    train_file: str = flag(help="JSON list of asin lists")
    dev_file: str = flag(help="JSON list of asin lists")
    item_attr_file: str = flag(help="meta_data.json: {asin: {title, brand, category}}")
    output_dir: str = flag(help="run folder: checkpoints/, tensorboard/, args.json, recformer_config/, cache/")
    ckpt: str | None = flag(None, "Lightning checkpoint to resume from (model, optimizer, schedule, epoch, step)")
    num_train_epochs: int = flag(10, "epochs (at most)")
    max_steps: int = flag(-1, "optimizer steps (overrides the epochs when > 0)")
    gradient_accumulation_steps: int = flag(8, "batches per optimizer step")
    batch_size: int = flag(2, "sequences per device per batch")
    learning_rate: float = flag(5e-5, "peak learning rate of AdamW (linear warm-up, then linear decay)")
    weight_decay: float = flag(0.0, "AdamW weight decay (not on biases and LayerNorm weights)")
    warmup_steps: int = flag(0, "optimizer steps of linear warm-up")
    max_grad_norm: float = flag(1.0, "clip gradients to this norm (<= 0: no clipping)")
    mlm_probability: float = flag(0.15, "share of words masked for the MLM loss")
    mlm_weight: float | None = flag(None, "weight of each MLM loss (config default 0.1)")
    temp: float | None = flag(None, "similarity temperature (config default 0.05)")
    fix_word_embedding: bool = flag(False, "freeze the word embeddings")
    valid_step: int = flag(
        250,
        "validate (and checkpoint) every N optimizer steps, N x --gradient_accumulation_steps batches (default: 250, "
        "the reference's 2000 batches at its accumulation of 8; the reference counted batches)",
    )
    log_step: int = flag(2000, "log every N optimizer steps")
    preprocessing_num_workers: int = flag(
        TOKENIZER_THREADS, "tokenizer threads (default: 8, or the cores of this machine when fewer)"
    )
    dataloader_num_workers: int = flag(
        capped_workers(2), "data-loader worker processes per device (default: 2, or the cores of this machine when fewer)"
    )
    device: str = flag("auto", "'cpu', 'auto', a number of GPUs per node (the reference's meaning), or GPU ids '0,1'")
    accelerator: str = flag("auto", "Lightning accelerator: auto, gpu, cpu, ...")
    strategy: str = flag(
        "auto", "auto = DeepSpeed ZeRO-2 on CUDA GPUs, a plain strategy otherwise; or any Lightning strategy name"
    )
    num_nodes: int = flag(1, "machines (Lightning num_nodes)")
    fp16: bool = flag(False, "fp16 mixed precision (GPU; CPU runs fall back to fp32): for GPUs without bf16 (V100, T4)")
    precision: str | None = flag(
        None, "instead of --fp16 (not together with it, unless 16-mixed); bf16-mixed on Ampere or newer GPUs "
        "(A100, H100)", choices=PRECISIONS,
    )
    attn_implementation: str = flag("auto", ATTN_HELP)
    pack_sides: str = flag(
        "auto", "on = both sides of a pair and their MLM copies in one packed pass (sdpa/flex; the same loss and "
        "gradients), off = one pass per side; auto = on on CUDA (measured 1.29x the steps/s on an H200), off on "
        "CPU (measured 0.76x)", choices=["auto", "on", "off"],
    )
    pack_train_batches: str = flag(
        "off", "training batches: off = padded (each side to its longest sequence); on = both sides of every pair "
        "and their MLM copies packed into rows of up to max_token_num tokens (sdpa/flex only; the same loss up to "
        "float rounding, other dropout draws); auto = packed unless eager runs",
        choices=["off", "on", "auto"],
    )
    compile: bool = flag(False, COMPILE_HELP)
    seed: int = flag(42, SEED_HELP)
    cache_dir: str | None = flag(None, "tokenized-item cache (default <output_dir>/cache)")
    progress: bool = flag(True, "hide progress bars", flag="--no_progress")
    trust_checkpoint: bool = flag(False, f"for --ckpt: {TRUST_CHECKPOINT_HELP}")
    overwrite_output_dir: bool = flag(
        False, "replace the run in --output_dir (without it, or --ckpt to resume, a folder that holds a run is "
        "refused)"
    )

    def validate(self) -> None:
        """Raise a ValueError naming the flag for a value that cannot work."""
        self._at_least(1, "batch_size", "gradient_accumulation_steps", "num_train_epochs", "valid_step", "log_step",
                       "num_nodes")  # fmt: skip
        self._at_least(0, "warmup_steps", "weight_decay", "preprocessing_num_workers", "dataloader_num_workers",
                       "mlm_weight")  # fmt: skip
        self._above(0, "learning_rate", "temp")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"--max_steps must be -1 (no limit) or >= 1, got {self.max_steps}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"--mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.fp16 and self.precision not in (None, "16-mixed"):
            raise ValueError(f"--fp16 and --precision {self.precision} are exclusive")
        self._check_attention()


@dataclass(kw_only=True)
class EvaluateArgs(RecformerFieldArgs, _Validated):
    """Every option of the evaluation command (`evaluate.py` / `recformer-evaluate`)."""

    ckpt: str = flag(
        help="any checkpoint form: released RecformerModel/SeqRec file, finetuned best_model.bin, save_pretrained folder"
    )
    data_path: str = flag(help="processed dataset folder (as finetune.py reads it)")
    split: str = flag("test", "test: input train + val, target test; val: input train, target val", choices=["test", "val"])
    model_name_or_path: str | None = flag(None, MODEL_HELP.replace("the checkpoint", "--ckpt", 1))
    metric_ks: list[int] = flag([10, 50], METRIC_KS_HELP)
    exclude_history: bool = flag(False, "never rank items already in the history")
    output: str | None = flag(None, "write the metrics here as JSON")
    reencode_items: bool = flag(
        False, "encode the item table with the checkpoint's encoder even when the checkpoint holds one"
    )
    batch_size: int | None = flag(None, EVAL_BATCH_HELP, type=positive_int)
    device: str = flag("auto", "auto, cpu, cuda, cuda:N, or a GPU index (-1 = CPU)")
    fp16: bool = flag(False, "float16 autocast (CUDA): for GPUs without bf16 (V100, T4)")
    bf16: bool = flag(False, BF16_HELP)
    attn_implementation: str = flag("auto", ATTN_HELP)
    compile: bool = flag(False, COMPILE_HELP)
    temp: float | None = flag(None, "similarity temperature (default: the config's, 0.05)")
    cache_dir: str | None = flag(None, "cache the tokenized items and the item table here")
    progress: bool = flag(True, "hide progress bars", flag="--no_progress")

    def validate(self) -> None:
        """Raise a ValueError naming the flag for a value that cannot work."""
        self._at_least(1, "batch_size")
        self._above(0, "temp")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are exclusive")
        self._check_attention()
        if not self.metric_ks or any(k < 1 for k in self.metric_ks):
            raise ValueError(f"--metric_ks must be positive integers, got {self.metric_ks}")


@dataclass(kw_only=True)
class RecommendArgs(RecformerFieldArgs, _Validated):
    """Every option of the recommendation command (`recommend.py` / `recformer-recommend`)."""

    ckpt: str | None = flag(
        None, "any checkpoint form (required unless --index_dir holds a saved index; then it is checked against it)"
    )
    items: str | None = flag(
        None, "catalogue: meta_data.json ({id: attributes}) or JSON lines ({\"id\": ..., attributes})"
    )
    model_name_or_path: str | None = flag(None, MODEL_HELP.replace("the checkpoint", "--ckpt", 1))
    index_dir: str | None = flag(
        None, "saved index: reused when present (new or changed items of --items are encoded and added), else written"
    )
    index_dtype: str | None = flag(
        None, "dtype of the vectors saved in --index_dir (default: the saved index's, float32 for a new one)",
        choices=["float32", "float16"],
    )
    input: str = flag(help='histories, JSON lines: {"user": ..., "history": [id or {attributes}, ...]} (oldest first)')
    output: str = flag(help='recommendations, JSON lines in input order: {"user": ..., "items": [...], "scores": [...]}')
    k: int = flag(
        10, "items per user (>= 1; a k larger than the catalogue is clipped to its size with a warning)", type=positive_int
    )
    keep_history: bool = flag(False, "also recommend items already in the user's history")
    with_text: bool = flag(
        False, 'add each recommended item\'s text to its line, "texts": [...] beside "items" (its attribute values '
        'from --items joined by " | "; null for an item of the saved index that --items lacks)'
    )
    on_unknown: str = flag(
        "error", "an id in a history that is not in the index: stop with an error, or skip it (counted in the summary)",
        choices=["error", "skip"],
    )
    device: str = flag("auto", "auto, cpu, cuda, cuda:N, or a GPU index (-1 = CPU)")
    batch_size: int | None = flag(None, RECOMMEND_BATCH_HELP, type=positive_int)
    attn_implementation: str = flag("auto", ATTN_HELP)
    compile: bool = flag(False, COMPILE_HELP)
    cache_dir: str | None = flag(None, "cache the tokenized items and item vectors here")
    progress: bool = flag(True, "hide progress bars", flag="--no_progress")

    def validate(self) -> None:
        """Raise a ValueError naming the flag for a value that cannot work."""
        self._at_least(1, "batch_size", "k")
        self._check_attention()
        if self.ckpt is None and self.index_dir is None:
            raise ValueError("--ckpt is required (or --index_dir with a saved index)")
        if self.items is None and self.index_dir is None:
            raise ValueError("--items is required (or --index_dir with a saved index)")
        if self.with_text and self.items is None:
            raise ValueError("--with_text needs --items (the catalogue that holds the item texts)")
