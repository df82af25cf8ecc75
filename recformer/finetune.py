"""Two-stage finetuning and full-ranking evaluation of RecformerForSeqRec (SPEC I).

1. Tokenize every item once; encode each as a one-item sequence -> the item table.
2. Zero-shot: evaluate the test split before training.
3. Stage 1: every epoch re-encode all items into the frozen table, train one epoch, evaluate dev
   every `verbose` epochs, keep the best dev NDCG@10, stop after 5 evaluations without improvement.
4. Stage 2: reload the best, keep its table as it is, train; patience 3; save only on improvement.
5. Reload the best and evaluate test.

Differences from the reference loop (SPEC K): the scheduler steps after the optimizer, the last
partial accumulation of an epoch is stepped instead of leaking into the next epoch, metrics are
averaged over users, ties count against the target, and the run can resume from its last
evaluation with identical results (the data order and targets of an epoch are a function of the
seed, the stage and the epoch; RNG states are saved).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .checkpoint import load_checkpoint
from .collators import EvalCollator, FinetuneCollator, encode_item_sequences
from .configuration import REFERENCE_SCRIPT_VALUES, RecformerConfig, is_recformer_config_dict
from .data.finetune_reader import FinetuneData, load_finetune_data
from .fileio import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from .item_tokens import TokenizedItems, catalogue_fingerprint, tokenize_catalogue, tokenizer_fingerprint
from .metrics import compute_ranks, metrics_from_ranks
from .modeling import RecformerForSeqRec, RecformerModel
from .optimization import parameter_groups
from .tokenization import RecformerTokenizer

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
TARGET_METRIC = "NDCG@10"
STAGE_PATIENCE = {1: 5, 2: 3}


@dataclass
class FinetuneArgs:
    """Every finetuning option (the CLI flags of `finetune.py`)."""

    pretrain_ckpt: str
    data_path: str
    model_name_or_path: str = "allenai/longformer-base-4096"
    output_dir: str = "checkpoints"
    ckpt: str = "best_model.bin"
    train_file: str = "train.json"
    dev_file: str = "val.json"
    test_file: str = "test.json"
    item2id_file: str = "smap.json"
    meta_file: str = "meta_data.json"
    num_train_epochs: int = 16
    gradient_accumulation_steps: int = 8
    finetune_negative_sample_size: int = 1000
    metric_ks: list[int] = field(default_factory=lambda: [10, 50])
    batch_size: int = 16
    eval_batch_size: int | None = None
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 100
    device: str = "auto"
    fp16: bool = False
    bf16: bool = False
    fix_word_embedding: bool = False
    verbose: int = 3
    preprocessing_num_workers: int = 8
    dataloader_num_workers: int = 0
    seed: int = 42
    max_grad_norm: float | None = None
    exclude_history: bool = False
    resume: bool = False
    temp: float | None = None
    max_attr_num: int | None = None
    max_attr_length: int | None = None
    max_item_embeddings: int | None = None
    attention_window: list[int] | None = None
    max_token_num: int | None = None
    cache_dir: str | None = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps", "verbose"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"--eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.num_train_epochs < 0:
            raise ValueError(f"--num_train_epochs must be >= 0, got {self.num_train_epochs}")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are exclusive")
        if not self.metric_ks or any(k < 1 for k in self.metric_ks):
            raise ValueError(f"--metric_ks must be positive integers, got {self.metric_ks}")
        if TARGET_METRIC not in [f"NDCG@{k}" for k in self.metric_ks]:
            raise ValueError(f"--metric_ks must include 10: model selection uses {TARGET_METRIC}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")


def resolve_device(device: str | int) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N`, or an integer (the reference's GPU index; -1 = CPU)."""
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text.lstrip("-").isdigit():
        index = int(text)
        return torch.device("cpu") if index < 0 else torch.device(f"cuda:{index}")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine")
    return dev


def build_config(args: FinetuneArgs) -> RecformerConfig:
    """Config from `model_name_or_path`; Recformer fields from the flags, else the saved Recformer
    config's own values, else the reference scripts' values."""
    config = RecformerConfig.from_pretrained(args.model_name_or_path)
    saved = {}
    config_file = Path(args.model_name_or_path) / "config.json"
    if config_file.is_file():
        saved = read_json(config_file)
    own = is_recformer_config_dict(saved)
    for name, reference in REFERENCE_SCRIPT_VALUES.items():
        flag = getattr(args, name)
        if flag is not None:
            value = flag
        elif own:
            value = getattr(config, name)
        else:
            value = reference
        if name == "attention_window":
            value = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(set(value)) == 1:  # one window for every layer
                value = value[:1] * config.num_hidden_layers
        setattr(config, name, value)
    if args.temp is not None:
        config.temp = args.temp
    config.finetune_negative_sample_size = args.finetune_negative_sample_size
    config.validate_recformer_fields()
    return config


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file (or of the weights file of a folder): keys the item-table cache."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
    else:
        files = [p]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def autocast_context(device: torch.device, fp16: bool, bf16: bool):
    if device.type == "cuda" and (fp16 or bf16):
        return torch.autocast("cuda", dtype=torch.float16 if fp16 else torch.bfloat16)
    if device.type == "cpu" and bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def encode_all_items(
    encoder: RecformerModel,
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = True,
) -> torch.Tensor:
    """Pooled vector of every item encoded alone (`<s>` + item) [N, H], float32 on CPU, in id order.

    Items are batched in order of length (less padding) and put back in id order.
    """
    was_training = encoder.training
    encoder.eval()
    order = np.argsort(-table.lengths(), kind="stable")
    out = torch.empty(len(table), encoder.config.hidden_size, dtype=torch.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="encode items", disable=not progress, unit="batch"):
        ids = order[start : start + batch_size].tolist()
        batch = _to(encode_item_sequences(tokenizer, table, [[i] for i in ids]), device)
        with amp():
            pooled = encoder(**batch).pooler_output
        out[ids] = pooled.float().cpu()
    encoder.train(was_training)
    return out


def score_items(model: RecformerForSeqRec, pooled: torch.Tensor, chunk_size: int = 262_144) -> torch.Tensor:
    """Scores [B, N] of pooled sequences against the whole item table, one chunk of items at a time
    (the matrix product never holds more than [B, chunk] intermediates)."""
    weight = model.item_embedding.weight
    norms = model.item_norms()
    n = weight.size(0)
    if n <= chunk_size:
        return model.sim(pooled.float(), weight, y_norm=norms)
    scores = torch.empty(pooled.size(0), n, dtype=torch.float32, device=pooled.device)
    q = pooled.float()
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        scores[:, start:end] = model.sim(q, weight[start:end], y_norm=norms[start:end])
    return scores


@torch.no_grad()
def evaluate(
    model: RecformerForSeqRec,
    pairs: Sequence[tuple[list[int], int]],
    tokenizer: RecformerTokenizer,
    table: TokenizedItems,
    batch_size: int,
    device: torch.device,
    ks: Sequence[int],
    exclude_history: bool = False,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Full-ranking metrics over all items for (history, target) pairs, averaged over users."""
    was_training = model.training
    model.eval()
    collator = EvalCollator(tokenizer, table)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    ranks, n_valid = [], []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = [pairs[i] for i in order[start : start + batch_size]]
        batch = _to(collator(chunk), device)
        labels = batch.pop("labels")
        with amp():
            pooled = model.longformer(**batch).pooler_output
        scores = score_items(model, pooled)
        if exclude_history:
            for row, (history, target) in enumerate(chunk):
                seen = [i for i in set(history) if i != target]
                if seen:
                    scores[row, seen] = float("-inf")
        r, v = compute_ranks(scores, labels)
        ranks.append(r.cpu())
        n_valid.append(v.cpu())
    model.train(was_training)
    return metrics_from_ranks(torch.cat(ranks), torch.cat(n_valid), ks)


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate)


def _mix_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


class Finetuner:
    """Runs the whole SPEC I procedure for one dataset; see the module docstring."""

    def __init__(self, args: FinetuneArgs):
        args.validate()
        self.args = args
        torch.manual_seed(args.seed)
        self.device = resolve_device(args.device)
        if args.fp16 and self.device.type != "cuda":
            logger.warning("--fp16 needs a CUDA device; running in float32 on %s", self.device)
        self.use_scaler = args.fp16 and self.device.type == "cuda"
        self.amp = lambda: autocast_context(self.device, args.fp16, args.bf16)
        self.eval_batch_size = args.eval_batch_size or args.batch_size * 4

        self.data: FinetuneData = load_finetune_data(
            args.data_path, args.train_file, args.dev_file, args.test_file, args.item2id_file, args.meta_file
        )
        self.out_dir = Path(args.output_dir) / self.data.name
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(args.cache_dir) if args.cache_dir else self.out_dir / "cache"
        self.ckpt_path = self.out_dir / args.ckpt

        self.config = build_config(args)
        self.config.item_num = self.data.num_items
        self.tokenizer = RecformerTokenizer.from_pretrained(args.model_name_or_path, self.config)
        self.model = RecformerForSeqRec(self.config)
        report = load_checkpoint(self.model, args.pretrain_ckpt)
        logger.info("pretrained checkpoint %s: %s", args.pretrain_ckpt, report.summary())
        if args.fix_word_embedding:
            self.model.longformer.embeddings.word_embeddings.weight.requires_grad_(False)
        self.model.to(self.device)

        self.items = tokenize_catalogue(
            self.tokenizer, self.data.items, cache_dir=self.cache_dir, progress=args.progress
        )
        self.train_sequences = self.data.train_sequences()
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_sequences) / args.batch_size) / args.gradient_accumulation_steps)
        total_steps = self.steps_per_epoch * args.num_train_epochs
        self.optimizer = make_optimizer(self.model, args.learning_rate, args.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, args.warmup_steps, max(total_steps, 1))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.writer = None
        self.state = {
            "stage": 1,
            "epoch": -1,  # last finished epoch of `stage`
            "global_step": 0,
            "patience": STAGE_PATIENCE[1],
            "best_target": float("-inf"),
            "metrics": {"zero_shot_test": None, "dev": [], "best_dev": None, "test": None},
            "done": False,
        }

    # -- item table --------------------------------------------------------------------------
    def encode_items(self) -> torch.Tensor:
        return encode_all_items(
            self.model.longformer, self.tokenizer, self.items, self.eval_batch_size, self.device, self.amp,
            self.args.progress,
        )

    def initial_item_table(self) -> torch.Tensor:
        """Item table of the pretrained encoder, cached under a key of checkpoint, tokenizer and fields."""
        fields = {k: getattr(self.config, k) for k in (*REFERENCE_SCRIPT_VALUES, "pooler_type", "hidden_size")}
        key = hashlib.sha256(
            json.dumps(
                [file_fingerprint(self.args.pretrain_ckpt), tokenizer_fingerprint(self.tokenizer), fields,
                 catalogue_fingerprint(self.data.items, None)],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        path = self.cache_dir / f"item_table-{key}.pt"
        if path.is_file():
            logger.info("item table: reusing %s", path)
            return torch.load(path, map_location="cpu", weights_only=True)
        table = self.encode_items()
        atomic_torch_save(table, path)
        return table

    # -- bookkeeping ---------------------------------------------------------------------------
    def _log_jsonl(self, record: dict) -> None:
        with open(self.out_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _tb(self):
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is in requirements.txt
                logger.warning("tensorboard is not installed: no event files")
                self.writer = False
            else:
                purge = getattr(self, "_tb_purge_step", None)  # on resume, drop events after the state
                self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=purge)
        return self.writer or None

    def _write_metrics(self) -> None:
        atomic_write_json(self.out_dir / "metrics.json", self.state["metrics"], indent=True)

    def save_state(self) -> None:
        """Everything needed to continue from this point (written atomically)."""
        payload = {
            "state": self.state,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "args": asdict(self.args),
        }
        atomic_torch_save(payload, self.out_dir / STATE_FILE)

    def load_state(self) -> bool:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            logger.info("--resume: no %s yet, starting from the beginning", path)
            return False
        payload = torch.load(path, map_location="cpu", weights_only=False)
        for key in ("seed", "batch_size", "gradient_accumulation_steps", "num_train_epochs", "learning_rate"):
            if payload["args"].get(key) != getattr(self.args, key):
                logger.warning("--resume: %s was %s, now %s", key, payload["args"].get(key), getattr(self.args, key))
        self.model.init_item_embedding(payload["model"]["item_embedding.weight"])
        self.model.load_state_dict(payload["model"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        random.setstate(payload["python_rng"])
        np.random.set_state(payload["numpy_rng"])
        self.state = payload["state"]
        self._trim_train_log(self.state["global_step"])
        logger.info("--resume: continuing after stage %d epoch %d (step %d)", self.state["stage"],
                    self.state["epoch"], self.state["global_step"])
        return True

    def _trim_train_log(self, last_step: int) -> None:
        """Drop log records of steps after the resumed state (they are trained again)."""
        path = self.out_dir / "train_log.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._tb_purge_step = last_step + 1

    def save_best(self) -> None:
        atomic_torch_save(self.model.state_dict(), self.ckpt_path)

    def load_best(self) -> None:
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        self.model.init_item_embedding(state["item_embedding.weight"])
        self.model.load_state_dict(state)
        self.model.to(self.device)

    # -- training ------------------------------------------------------------------------------
    def train_loader(self, stage: int, epoch: int) -> DataLoader:
        """Order and targets are a function of (seed, stage, epoch), so a resumed run sees the same data."""
        seed = _mix_seed(self.args.seed, stage, epoch)
        collator = FinetuneCollator(self.tokenizer, self.items, random.Random(seed))

        def reseed_worker(worker_id: int) -> None:
            collator.rng.seed(_mix_seed(seed, worker_id))

        return DataLoader(
            self.train_sequences,
            batch_size=self.args.batch_size,
            shuffle=True,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
            worker_init_fn=reseed_worker if self.args.dataloader_num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.device.type == "cuda",
        )

    def train_one_epoch(self, stage: int, epoch: int) -> None:
        args = self.args
        self.model.train()
        loader = self.train_loader(stage, epoch)
        accum = args.gradient_accumulation_steps
        n_batches = len(loader)
        window_loss, window_seqs, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"stage {stage} epoch {epoch}", disable=not args.progress, unit="batch")
        for i, batch in enumerate(bar):
            batch = _to(batch, self.device)
            # the last window of an epoch may hold fewer than `accum` batches
            group = accum if (i // accum) < (n_batches // accum) else n_batches % accum
            with self.amp():
                loss = self.model(**batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at stage {stage} epoch {epoch} step {self.state['global_step']} "
                    f"(batch {i}); the last good checkpoint is {self.ckpt_path}"
                )
            self.scaler.scale(loss / group).backward()
            window_loss += loss.item() / group
            window_seqs += batch["input_ids"].size(0)
            window_tokens += int(batch["attention_mask"].sum())
            if (i + 1) % accum == 0 or i + 1 == n_batches:
                if args.max_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                scale = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scaler.get_scale() >= scale:  # fp16 skips the step when gradients overflow
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state["global_step"] += 1
                elapsed = max(time.perf_counter() - t0, 1e-9)
                record = {
                    "stage": stage,
                    "epoch": epoch,
                    "step": self.state["global_step"],
                    "loss": window_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "seqs_per_s": window_seqs / elapsed,
                    "tokens_per_s": window_tokens / elapsed,
                }
                self._log_jsonl(record)
                if (tb := self._tb()) is not None:
                    for k in ("loss", "lr", "seqs_per_s"):
                        tb.add_scalar(f"train/{k}", record[k], record["step"])
                bar.set_postfix(loss=f"{window_loss:.4f}", lr=f"{record['lr']:.2e}")
                window_loss, window_seqs, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()

    def evaluate_split(self, split: str) -> dict[str, float]:
        pairs = self.data.dev_pairs() if split == "dev" else self.data.test_pairs()
        return evaluate(
            self.model, pairs, self.tokenizer, self.items, self.eval_batch_size, self.device, self.args.metric_ks,
            self.args.exclude_history, self.amp, self.args.progress, desc=f"evaluate {split}",
        )

    def run_stage(self, stage: int) -> None:
        args = self.args
        for epoch in range(self.state["epoch"] + 1, args.num_train_epochs):
            if stage == 1:
                self.model.init_item_embedding(self.encode_items())
                self.model.to(self.device)
            self.train_one_epoch(stage, epoch)
            self.state["epoch"] = epoch
            if (epoch + 1) % args.verbose != 0:
                continue
            metrics = self.evaluate_split("dev")
            record = {"stage": stage, "epoch": epoch, "step": self.state["global_step"], **metrics}
            self.state["metrics"]["dev"].append(record)
            if (tb := self._tb()) is not None:
                for k, v in metrics.items():
                    tb.add_scalar(f"dev/{k}", v, self.state["global_step"])
            logger.info("stage %d epoch %d dev: %s", stage, epoch, _fmt(metrics))
            if metrics[TARGET_METRIC] > self.state["best_target"]:
                self.state["best_target"] = metrics[TARGET_METRIC]
                self.state["patience"] = STAGE_PATIENCE[stage]
                self.state["metrics"]["best_dev"] = record
                self.save_best()
                logger.info("new best dev %s %.4f: saved %s", TARGET_METRIC, metrics[TARGET_METRIC], self.ckpt_path)
            else:
                self.state["patience"] -= 1
            stop = self.state["patience"] <= 0
            if stop:
                self.state["epoch"] = args.num_train_epochs  # nothing left in this stage
            self.save_state()
            self._write_metrics()
            if stop:
                logger.info("stage %d: no improvement in %d evaluations, stopping", stage, STAGE_PATIENCE[stage])
                break

    def run(self) -> dict:
        """Run (or resume) the whole procedure; returns the metrics record also written to metrics.json."""
        args = self.args
        atomic_write_json(self.out_dir / "args.json", asdict(args), indent=True)
        if not (args.resume and self.load_state()):
            (self.out_dir / "train_log.jsonl").unlink(missing_ok=True)
            random.seed(args.seed)
            np.random.seed(args.seed % 2**32)
            torch.manual_seed(args.seed)
            self.model.init_item_embedding(self.initial_item_table())
            self.model.to(self.device)
            zero_shot = self.evaluate_split("test")
            self.state["metrics"]["zero_shot_test"] = zero_shot
            logger.info("zero-shot test: %s", _fmt(zero_shot))
            self.save_best()  # the zero-shot model is the best so far until a dev evaluation says otherwise
            self.save_state()
            self._write_metrics()
        if self.state["stage"] == 1:
            self.run_stage(1)
            logger.info("stage 2: loading the best stage-1 checkpoint %s", self.ckpt_path)
            self.load_best()
            self.state.update(stage=2, epoch=-1, patience=STAGE_PATIENCE[2])
            self.save_state()
        if self.state["stage"] == 2 and not self.state["done"]:
            self.run_stage(2)
        self.load_best()
        test = self.evaluate_split("test")
        self.state["metrics"]["test"] = test
        self.state["done"] = True
        self._write_metrics()
        self.save_state()
        self.export_best()
        if self.writer:
            self.writer.close()
        return self.state["metrics"]

    def export_best(self) -> None:
        """`save_pretrained` folder of the best model, with the tokenizer files."""
        folder = self.out_dir / "best_model"
        tmp = self.out_dir / ".best_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per named metrics dict, one column per metric."""
    names = list(next(iter(rows.values())).keys())
    width = max(len(r) for r in rows) + 2
    lines = [" " * width + "".join(f"{n:>11}" for n in names)]
    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}" + "".join(f"{metrics[n]:>11.4f}" for n in names))
    return "\n".join(lines)
