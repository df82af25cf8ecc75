"""Recformer pretraining with PyTorch Lightning (see docs/design.md): the LightningModule and the data module.

Imported only by pretraining code: `import recformer` never imports this module (nor Lightning,
nor DeepSpeed). The data files are read and validated by `recformer.data.pretrain_reader`.
"""

from __future__ import annotations

import logging
import os
import random
import time
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import get_linear_schedule_with_warmup

from recformer.data.pretrain_reader import SequenceStats, read_item_metadata, read_pretrain_sequences
from recformer.model.configuration import RecformerConfig
from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue
from recformer.model.modeling_pretraining import RecformerForPretraining
from recformer.model.tokenization import RecformerTokenizer
from recformer.train.collators import PretrainCollator
from recformer.train.optimization import parameter_groups

logger = logging.getLogger(__name__)


class IndexedSequences(Dataset):
    """Sequences as `(index, sequence)` pairs, so a collate function can seed itself from the indices."""

    def __init__(self, sequences: Sequence[Sequence[Hashable]]):
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[int, Sequence[Hashable]]:
        return i, self.sequences[i]


class SeededPretrainCollate:
    """Wraps a PretrainCollator and sets its random source per batch.

    `deterministic=True` (validation): the rng is seeded from the seed and the batch's indices, so
    every validation pass sees the same pairs and masks whatever the worker layout. Otherwise
    (training) the rng continues across batches; in a DataLoader worker it is re-seeded from torch's
    per-worker seed and the rank's seed, so workers and ranks never repeat each other's draws.
    """

    def __init__(self, collator: PretrainCollator, seed: int, deterministic: bool = False):
        self.collator = collator
        self.seed = seed
        self.deterministic = deterministic
        self._seeded_for: tuple | None = None

    def __call__(self, batch: Sequence[tuple[int, Sequence[Hashable]]]) -> dict[str, torch.Tensor]:
        indices = [i for i, _ in batch]
        if self.deterministic:
            self.collator.rng.seed(zlib.crc32(repr((self.seed, indices)).encode()))
        else:
            info = torch.utils.data.get_worker_info()
            if info is not None and self._seeded_for != (info.id, torch.initial_seed()):
                self._seeded_for = (info.id, torch.initial_seed())
                # torch's worker seed is the same on every rank; self.seed carries the rank.
                self.collator.rng.seed(zlib.crc32(repr((self.seed, torch.initial_seed())).encode()))
        return self.collator([seq for _, seq in batch])


@dataclass(frozen=True)
class PretrainFiles:
    """The pretraining data files: train and dev sequences, and the item metadata they refer to."""

    train: str | os.PathLike
    dev: str | os.PathLike
    item_attr: str | os.PathLike


class PretrainDataModule(pl.LightningDataModule):
    """Reads the pretraining files, tokenizes the catalogue once (disk cache) and serves pair batches."""

    def __init__(
        self,
        tokenizer: RecformerTokenizer,
        files: PretrainFiles,
        batch_size: int = 16,
        mlm_probability: float = 0.15,
        num_workers: int = 0,
        seed: int = 42,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        pack_tokens: int | None = None,
    ):
        super().__init__()
        self.pack_tokens = pack_tokens  # packed batches (`PretrainCollator`), or None for padded ones
        self.tokenizer = tokenizer
        self.files = files
        self.batch_size = batch_size
        self.mlm_probability = mlm_probability
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = cache_dir
        self.progress = progress
        self.items: TokenizedItems | None = None
        self.train_sequences: list[list[str]] = []
        self.dev_sequences: list[list[str]] = []
        self.stats: dict[str, SequenceStats] = {}

    def load(self) -> None:
        """Read and validate the files and tokenize the items (idempotent)."""
        if self.items is not None:
            return
        meta = read_item_metadata(self.files.item_attr)
        # Passing the meta file refuses sequences that the interaction step built from another one.
        attr_file = self.files.item_attr
        self.train_sequences, self.stats["train"] = read_pretrain_sequences(self.files.train, meta, attr_file)
        self.dev_sequences, self.stats["dev"] = read_pretrain_sequences(self.files.dev, meta, attr_file)
        asins = list(meta)
        self.items = tokenize_catalogue(
            self.tokenizer, [meta[a] for a in asins], keys=asins, cache_dir=self.cache_dir, progress=self.progress
        )

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _loader(self, sequences, shuffle: bool, rank_seed: int, deterministic: bool) -> DataLoader:
        collator = PretrainCollator(self.tokenizer, self.items, self.mlm_probability, rng=random.Random(rank_seed),
                                    pack_tokens=self.pack_tokens)  # fmt: skip
        return DataLoader(
            IndexedSequences(sequences),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=SeededPretrainCollate(collator, rank_seed, deterministic=deterministic),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_sequences, True, self.seed + self._rank(), deterministic=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dev_sequences, False, self.seed, deterministic=True)


# -- model ---------------------------------------------------------------------------------------


def batch_tokens(batch: Mapping[str, Any]) -> torch.Tensor:
    """Real (non-pad) tokens of both sides of a pretraining batch, padded or packed (there each side's MLM copy
    is counted out), as a tensor on the batch's device (read at logging steps only: reading it is a host sync)."""
    if "packed" in batch:
        return batch["packed"]["attention_mask"].sum() // 2
    return sum(batch[k].sum() for k in ("attention_mask_a", "attention_mask_b") if k in batch)


def batch_pairs(batch: Mapping[str, Any]) -> int:
    """The (history, next item) pairs of a pretraining batch, padded or packed (4 sequences a pair)."""
    if "packed" in batch:
        return batch["packed"]["sequence_starts"].size(0) // 4
    return batch["input_ids_a"].size(0)


class _Clock:
    """Seconds of training, paused around validation; reading it waits for the GPU (a host sync), so it is
    read at logging steps only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self.started: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        if self.started is None:
            self._sync()
            self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is not None:
            self._sync()
            self.seconds += time.perf_counter() - self.started
            self.started = None

    def read(self) -> float:
        self.stop()
        self.start()
        return self.seconds


class RecformerPretrainModule(pl.LightningModule):
    """Lightning wrapper of `RecformerForPretraining` (the pretraining objective: docs/design.md).

    AdamW (no decay on biases and LayerNorm weights), linear decay to 0 over
    `trainer.estimated_stepping_batches` after `warmup_steps` of linear warm-up. Logs train loss,
    contrastive accuracy, both MLM losses, learning rate and throughput; validation loss and accuracy
    (sum of correct retrievals / sum of pairs over the whole dev set and all ranks).

    Args:
        config: the Recformer config (a dict is accepted so the checkpoint's hyperparameters rebuild it).
        model: an already-initialised model (its start point loaded); built from `config` when None.
        fix_word_embedding: freeze the word embeddings (the reference run did).
    """

    def __init__(
        self,
        config: RecformerConfig | dict,
        model: RecformerForPretraining | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        fix_word_embedding: bool = False,
        adam_epsilon: float = 1e-8,
    ):
        super().__init__()
        config_dict = config.to_dict() if isinstance(config, RecformerConfig) else dict(config)
        self.save_hyperparameters(
            {
                "config": config_dict,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "fix_word_embedding": fix_word_embedding,
                "adam_epsilon": adam_epsilon,
            }
        )
        self.model = model if model is not None else RecformerForPretraining(RecformerConfig.from_dict(config_dict))
        if fix_word_embedding:
            self.model.longformer.embeddings.word_embeddings.weight.requires_grad_(False)
        self._val_correct = 0
        self._val_total = 0
        # Counted on the host (sequences) and on the device (tokens); the clocks run over whole windows of
        # batches, so no step waits for the GPU except at logging steps.
        self._window: dict[str, Any] = {"sequences": 0, "tokens": 0, "start": 0.0}
        self._totals: dict[str, Any] = {"sequences": 0, "tokens": 0, "batches": 0}
        self._clock: _Clock | None = None  # all training time since the warm-up batches
        self.throughput_totals = {"sequences": 0, "tokens": 0, "seconds": 0.0, "batches": 0}
        self.batches_trained = 0  # by this process in this run (a resumed run starts at 0)

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        bs = batch_pairs(batch)
        self.log("train_loss", out.loss, prog_bar=True, batch_size=bs)
        self.log("train_cl_loss", out.cl_loss, batch_size=bs)
        self.log("train_accuracy", out.cl_correct_num.float() / out.cl_total_num, prog_bar=True, batch_size=bs)
        if out.mlm_loss_a is not None:
            self.log("train_mlm_loss_a", out.mlm_loss_a, batch_size=bs)
        if out.mlm_loss_b is not None:
            self.log("train_mlm_loss_b", out.mlm_loss_b, batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return out.loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if not self._window["start"]:
            self._window["start"] = time.perf_counter()
        # The first batches pay for compilation and allocator warm-up; the totals start after them.
        if self._clock is None and (self.global_step >= 2 or batch_idx >= 2 * self.trainer.accumulate_grad_batches):
            self._clock = _Clock(self.device)
            self._clock.start()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.batches_trained += 1
        n_seq, n_tok = batch_pairs(batch), batch_tokens(batch)
        window = self._window
        window["sequences"] += n_seq
        window["tokens"] = window["tokens"] + n_tok
        if self._clock is not None:
            self._totals["sequences"] += n_seq
            self._totals["tokens"] = self._totals["tokens"] + n_tok
            self._totals["batches"] += 1
        # a throughput window per --log_step optimizer steps, as the other logged values
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps * self.trainer.accumulate_grad_batches) == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            seconds = now - window["start"] if window["start"] else 0.0
            if seconds > 0:
                self.log("train_seq_per_s", window["sequences"] / seconds, batch_size=n_seq)
                self.log("train_tokens_per_s", float(window["tokens"]) / seconds, batch_size=n_seq)
            self._window = {"sequences": 0, "tokens": 0, "start": now}

    def on_train_end(self) -> None:
        self._update_totals()

    def _update_totals(self) -> None:
        """`throughput_totals` from the counters (a host sync: called at the end of training)."""
        if self._clock is None:
            return
        self.throughput_totals = {
            "sequences": self._totals["sequences"],
            "tokens": int(self._totals["tokens"]),
            "seconds": self._clock.read(),
            "batches": self._totals["batches"],
        }

    # -- validation ----------------------------------------------------------------------------
    def on_validation_start(self) -> None:
        if self._clock is not None:
            self._clock.stop()  # validation time is not training time
        self._window = {"sequences": 0, "tokens": 0, "start": 0.0}

    def on_validation_end(self) -> None:
        if self._clock is not None:
            self._clock.start()

    def on_validation_epoch_start(self) -> None:
        self._val_correct = 0
        self._val_total = 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        bs = batch_pairs(batch)
        self.log("val_loss", out.loss, sync_dist=True, batch_size=bs)
        self._val_correct += int(out.cl_correct_num)
        self._val_total += int(out.cl_total_num)

    def on_validation_epoch_end(self) -> None:
        counts = torch.tensor([self._val_correct, self._val_total], dtype=torch.float64, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # sums over ranks
        accuracy = (counts[0] / counts[1].clamp(min=1)).float()
        # Already identical on every rank; sync_dist keeps Lightning's bookkeeping consistent.
        self.log("val_accuracy", accuracy, prog_bar=True, sync_dist=True)

    # -- optimisation --------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into a decayed group and a no-decay group (biases, LayerNorm weights)."""
        return parameter_groups(self.model, self.hparams.weight_decay)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.learning_rate, eps=self.hparams.adam_epsilon)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, self.hparams.warmup_steps, max(total, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def throughput_summary(module: RecformerPretrainModule) -> dict[str, float]:
    """Sequences/s, tokens/s (per process, warm-up batches excluded) and peak GPU memory in GiB."""
    t = module.throughput_totals
    out = {
        "batches_trained": module.batches_trained,
        "batches_timed": t["batches"],
        "sequences_per_s": t["sequences"] / t["seconds"] if t["seconds"] else float("nan"),
        "tokens_per_s": t["tokens"] / t["seconds"] if t["seconds"] else float("nan"),
    }
    if torch.cuda.is_available():
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out
