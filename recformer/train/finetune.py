"""The two-stage finetuning recipe of RecformerForSeqRec (see docs/design.md, "Finetuning").

1. Tokenize every item once; encode each as a one-item sequence -> the item table.
2. Zero-shot: evaluate the test split before training.
3. Stage 1: every epoch re-encode all items into the frozen table, train one epoch, evaluate dev
   every `verbose` epochs, keep the best dev NDCG@10, stop after 5 evaluations without improvement.
4. Stage 2: reload the best, keep its table as it is, train; patience 3; save only on improvement.
   Its learning rate follows `--stage2_schedule`: `shared` (the original) continues stage 1's one
   schedule, which a full stage 1 has used up, so stage 2 would train at learning rate 0 and change
   nothing; its training is then skipped and its records written as that run would write them
   (`skip_stage_two`). `restart` gives stage 2 its own warm-up and linear decay.
5. Reload the best and evaluate test.

Differences from the reference loop: the scheduler steps after the optimizer, the last partial accumulation of
an epoch is stepped instead of leaking into the next epoch, metrics are averaged over users, ties count
against the target, and the run can resume from its last evaluation with identical results (the data order and
targets of an epoch are a function of the seed, the stage and the epoch; RNG states are saved).

Under torchrun (`distributed.py`) every step's global batch is split across the ranks and trained with
DistributedDataParallel, item tables are encoded and evaluation users ranked in shards, and only rank 0 writes
files and logs. The global batches do not depend on the world size, and each rank's loss is weighted by its
share of the global batch, so the gradients are those of one process.

The model, its catalogue and item table are a `runtime.ModelRuntime`; the resume file and the run's
fingerprint are `training_state.py`, the run log `run_log.py`. No library module imports this recipe.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from recformer import distributed
from recformer.args import TARGET_METRIC, FinetuneArgs, run_arguments
from recformer.data.finetune_reader import FinetuneData, load_finetune_data
from recformer.devices import InferenceSettings
from recformer.errors import RecformerFailure
from recformer.inference.evaluation import to_device
from recformer.io.cache import file_fingerprint, tokenizer_fingerprint
from recformer.io.checkpoint import load_checkpoint
from recformer.io.fileio import atomic_torch_save, atomic_write_json
from recformer.io.folders import check_replaceable
from recformer.io.output_paths import (
    check_output_dir,
    check_output_file,
    refuse_existing_run,
    save_pretrained_folder,
)
from recformer.metrics import NonFiniteScores, format_metrics
from recformer.model.configuration import build_config, field_values
from recformer.model.modeling import RecformerForSeqRec
from recformer.model.tokenization import RecformerTokenizer, check_tokenizer_fits
from recformer.runtime import ModelRuntime, model_sources
from recformer.train import stage_two
from recformer.train.collators import FinetuneCollator, GlobalBatchCollator, train_pack_tokens
from recformer.train.optimization import parameter_groups
from recformer.train.run_log import METRICS_FILE, RunLog
from recformer.train.training_state import (
    STATE_FILE,
    TrainingState,
    check_resume_layout,
    run_fingerprint,
)

logger = logging.getLogger(__name__)

STAGE_PATIENCE = {1: 5, 2: 3}
BEST_MODEL_FOLDER = "best_model"  # save_pretrained folder of the best model and the tokenizer
ARGS_FILE = "args.json"  # the run's flags (`args.run_arguments`): a --config file that reproduces the run
def _mix_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


class TrainingDiverged(RecformerFailure, FloatingPointError):
    """The loss became NaN or infinite."""


class Finetuner:
    """Runs the whole two-stage procedure for one dataset; see the module docstring."""

    def __init__(self, args: FinetuneArgs):
        args.validate()
        self.args = args
        torch.manual_seed(args.seed)
        with distributed.fail_together():  # a setup error on any rank stops every rank
            self._setup_device()
            self._setup_data()
            self._setup_model()
            self._setup_optimization()
        self._setup_ddp()
        self.log = RunLog(self.out_dir, enabled=distributed.is_main())
        self.state = TrainingState(patience=STAGE_PATIENCE[1])

    # -- setup ---------------------------------------------------------------------------------
    def _setup_device(self) -> None:
        args = self.args
        self.device = distributed.rank_device(args.device)
        self.progress = args.progress and distributed.is_main()
        if args.fp16 and self.device.type != "cuda":
            logger.warning("--fp16 needs a CUDA device; running in float32 on %s", self.device)
        self.use_scaler = args.fp16 and self.device.type == "cuda"
        # batch size None: item encoding and evaluation batch by a token budget (`evaluation.pooled_batches`)
        self.settings = InferenceSettings(
            self.device, fp16=args.fp16, bf16=args.bf16, batch_size=args.eval_batch_size, progress=self.progress
        )
        # an implementation that cannot train on this device stops here, before any data is read
        self.train_attention = ModelRuntime.check_attention(args.attn_implementation, self.device, training=True)
        train_pack_tokens(args.pack_train_batches, self.train_attention, 1)  # --pack_train_batches on + eager stops here

    def _setup_data(self) -> None:
        args = self.args
        # the output folder is named after the data folder; checked before any input is read, by rank 0,
        # the only writer (`fail_together` in __init__ stops the others when it fails)
        main = distributed.is_main()
        check_dir, check_file = (check_output_dir, check_output_file) if main else (Path, Path)
        self.out_dir = check_dir(Path(args.output_dir) / Path(args.data_path).name)
        self.cache_dir = check_dir(Path(args.cache_dir) if args.cache_dir else self.out_dir / "cache")
        self.ckpt_path = check_file(self.out_dir / args.ckpt)
        self.state_path = check_file(self.out_dir / STATE_FILE)
        best = check_dir(self.out_dir / BEST_MODEL_FOLDER)
        if main:  # exported at the end: a folder recformer did not write there is refused now, not then
            check_replaceable(best)
        if main and not (args.resume or args.overwrite_output_dir):
            refuse_existing_run(self.out_dir, (STATE_FILE, METRICS_FILE, args.ckpt, BEST_MODEL_FOLDER),
                                "finetuning run", "--resume")  # fmt: skip
        self.data: FinetuneData = load_finetune_data(
            args.data_path, args.train_file, args.dev_file, args.test_file, args.item2id_file, args.meta_file
        )
        if distributed.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.data_files = [
            Path(args.data_path) / name
            for name in (args.train_file, args.dev_file, args.test_file, args.item2id_file, args.meta_file)
        ]

    def _setup_model(self) -> None:
        args = self.args
        # --model_name_or_path, else --pretrain_ckpt's own config and tokenizer, as evaluate.py and recommend.py
        config_source, tokenizer_source = model_sources(args.pretrain_ckpt, args.model_name_or_path)
        if args.model_name_or_path is None:
            logger.info("config from %s, tokenizer from %s (pass --model_name_or_path for others)", config_source,
                        tokenizer_source)  # fmt: skip
        self.config = build_config(config_source, field_values(args), temp=args.temp,
                                   finetune_negative_sample_size=args.finetune_negative_sample_size)  # fmt: skip
        self.config.item_num = self.data.num_items
        self.tokenizer = RecformerTokenizer.from_pretrained(tokenizer_source, self.config)
        check_tokenizer_fits(self.tokenizer, self.config, f"{tokenizer_source} (tokenizer) with {config_source} (config)")
        model = RecformerForSeqRec(self.config)
        report = load_checkpoint(model, args.pretrain_ckpt)
        logger.info("pretrained checkpoint %s: %s", args.pretrain_ckpt, report.summary())
        if args.fix_word_embedding:
            model.longformer.embeddings.word_embeddings.weight.requires_grad_(False)
        self.runtime = ModelRuntime.place(
            model, self.tokenizer, self.settings, attn_implementation=args.attn_implementation,
            compile=args.compile, training=True,
        )  # fmt: skip
        self.model = self.runtime.model
        self.items = self.runtime.tokenize(self.data.items, cache_dir=self.cache_dir)
        self.train_sequences = self.data.train_sequences()

    def _setup_optimization(self) -> None:
        args = self.args
        world = distributed.world_size()
        distributed.check_world_size(len(self.train_sequences), str(Path(args.data_path) / args.train_file))
        self.micro_batch, accumulation, self.global_batch = args.batch_layout(world)
        logger.info("global batch %d = %d sequences x %d accumulation steps x %d processes", self.global_batch,
                    self.micro_batch, accumulation, world)  # fmt: skip
        self.steps_per_epoch = math.ceil(len(self.train_sequences) / self.global_batch)
        # AdamW without weight decay on biases and LayerNorm weights.
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, args.weight_decay), lr=args.learning_rate)
        self.scheduler = self.new_schedule()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)

    def new_schedule(self) -> Any:
        """--warmup_steps of linear warm-up, then linear decay to 0 at the end of --num_train_epochs epochs.

        Stage 1 starts one; stage 2 starts another with --stage2_schedule restart, and continues stage 1's
        with shared (the original). Both have the same shape, so a resume file's scheduler state
        (its step count) fits either.
        """
        total_steps = self.steps_per_epoch * self.args.num_train_epochs
        return get_linear_schedule_with_warmup(self.optimizer, self.args.warmup_steps, max(total_steps, 1))

    def _setup_ddp(self) -> None:
        """`train_model`, what training calls: the model in DistributedDataParallel on several processes
        (its constructor is collective: rank 0's weights go to every rank), else the model itself."""
        self.train_model: torch.nn.Module = self.model
        if distributed.world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # The only buffer (position ids) is constant: synced at construction, not before every forward.
            self.train_model = DistributedDataParallel(
                self.model, device_ids=device_ids, forward_sync_buffers=False
            )

    # -- item table ----------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        """Every item encoded by the current encoder [N, H]."""
        return self.runtime.encode_items()

    @functools.cached_property
    def checkpoint_fingerprint(self) -> str:
        """Hash of the `--pretrain_ckpt` file's bytes (read once per run)."""
        return file_fingerprint(self.args.pretrain_ckpt)

    @functools.cached_property
    def fingerprint(self) -> dict[str, dict[str, Any]]:
        """What produced this run's numbers (`training_state.fingerprint_differences`): every flag but
        `RESUME_FREE_FLAGS` and `INPUT_FLAGS`, the content of every input file, the tokenizer, the
        config, the device type and the global batch. Files are hashed once per run."""
        files = {f"data file {path.name}": file_fingerprint(path) for path in self.data_files}
        files["checkpoint --pretrain_ckpt"] = self.checkpoint_fingerprint
        files["tokenizer of --model_name_or_path"] = tokenizer_fingerprint(self.tokenizer)
        return run_fingerprint(self.args, files, self.config, self.device.type, self.global_batch)

    def initial_item_table(self) -> torch.Tensor:
        """Item vectors of the pretrained encoder, cached (`cache.item_table_path`)."""
        return self.runtime.item_table(self.checkpoint_fingerprint, self.data.items, self.cache_dir)

    def _set_item_table(self, table: torch.Tensor) -> None:
        self.runtime.set_item_table(table)

    # -- saving --------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Everything needed to continue from this point (`training_state.pt`), with the world size and
        global batch it was trained with (written by rank 0)."""
        layout = {"world_size": distributed.world_size(), "global_batch": self.global_batch}
        distributed.on_main(lambda: self.state.save(
            self.state_path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, args={**asdict(self.args), **layout}, fingerprint=self.fingerprint,
        ))  # fmt: skip

    def load_state(self, exists: bool | None = None) -> bool:
        """Continue from `training_state.pt` (False when there is none yet).

        `exists`: whether rank 0 sees the file (default: whether this process does); every rank of a
        distributed run must decide alike, so a rank that cannot see rank 0's file is an error.
        """
        exists = self.state_path.is_file() if exists is None else exists
        if not exists:
            logger.info("--resume: no %s yet, starting from the beginning", self.state_path)
            return False
        if not self.state_path.is_file():
            raise FileNotFoundError(
                f"{self.state_path}: rank 0 resumes from it but rank {distributed.rank()} cannot read it; the "
                "output folder must be shared by every process"
            )
        self.state, _ = TrainingState.load(
            self.state_path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            fingerprint=self.fingerprint,
            check_args=lambda saved: check_resume_layout(
                saved, self.args, distributed.world_size(), self.state_path
            ),
        )  # fmt: skip
        self.model.to(self.device)
        self.log.trim(self.state.global_step)
        logger.info("--resume: continuing after stage %d epoch %d (step %d)", self.state.stage, self.state.epoch,
                    self.state.global_step)  # fmt: skip
        return True

    def save_best(self) -> None:
        distributed.on_main(lambda: atomic_torch_save(self.model.state_dict(), self.ckpt_path))

    def load_best(self) -> None:
        load_checkpoint(self.model, self.ckpt_path)
        self.model.to(self.device)

    def export_best(self) -> None:
        """`save_pretrained` folder of the best model, with the tokenizer files (written by rank 0)."""
        folder = self.out_dir / BEST_MODEL_FOLDER
        distributed.on_main(lambda: save_pretrained_folder(folder, self.model, self.tokenizer))

    # -- training ------------------------------------------------------------------------------
    def train_loader(self, stage: int, epoch: int) -> DataLoader:
        """This rank's optimizer steps of one epoch (`collators.GlobalBatchCollator`).

        The user order, targets and negatives are a function of (seed, stage, epoch, step) and the
        global batch, whatever the world size: a resumed run, or a run on another number of
        processes with the same global batch, sees the same global batches.
        """
        seed = _mix_seed(self.args.seed, stage, epoch)
        n, g = len(self.train_sequences), self.global_batch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        steps = [(i, [self.train_sequences[u] for u in order[a : a + g]]) for i, a in enumerate(range(0, n, g))]
        negatives = max(self.config.finetune_negative_sample_size, 0)
        pack = train_pack_tokens(self.args.pack_train_batches, self.train_attention, self.config.max_token_num)
        collator = GlobalBatchCollator(
            FinetuneCollator(self.tokenizer, self.items, num_negatives=negatives, pack_tokens=pack),
            seed, self.micro_batch,
            distributed.rank(), distributed.world_size(),
        )  # fmt: skip
        return DataLoader(
            steps,
            batch_size=None,  # each element is one whole step
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_one_epoch(self, stage: int, epoch: int) -> None:
        args = self.args
        self.model.train()
        # Dropout masks are a function of (seed, stage, epoch, rank), so a resumed run draws the same ones.
        torch.manual_seed(_mix_seed(args.seed, stage, epoch, "dropout", distributed.rank()))
        world = distributed.world_size()
        t0 = time.perf_counter()
        bar = tqdm(self.train_loader(stage, epoch), desc=f"stage {stage} epoch {epoch}", disable=not self.progress,
                   unit="step")  # fmt: skip
        for step in bar:
            # -- distributed: each micro-batch's mean loss is weighted by its share of the global batch times
            # the world size (DDP averages gradients over the ranks), so the gradient is the one-process
            # gradient of the global batch's mean loss, an uneven last step included; DDP synchronises
            # gradients on the last micro-batch of the step only.
            # this rank's loss sum, sequences, tokens
            totals = torch.zeros(3, dtype=torch.float64, device=self.device)
            for j, (batch, rows) in enumerate(step.micro):
                batch = to_device(batch, self.device)
                sync = self.train_model is self.model or j == len(step.micro) - 1
                with contextlib.nullcontext() if sync else self.train_model.no_sync():
                    with self.runtime.autocast():
                        loss = self.train_model(**batch)  # mean over the micro-batch
                    self.scaler.scale(loss * (rows * world / step.size)).backward()
                if rows:
                    totals[0] += loss.detach().double() * rows
                    totals[1] += rows
                    totals[2] += batch["attention_mask"].sum()
            loss_sum, seqs, tokens = distributed.all_reduce_sum(totals).tolist()
            step_loss = loss_sum / step.size  # the mean over the global batch
            if not math.isfinite(step_loss):
                distributed.raise_everywhere(TrainingDiverged(
                    f"loss is {step_loss} at stage {stage} epoch {epoch} step {self.state.global_step}; "
                    f"the last good checkpoint is {self.ckpt_path}"
                ))  # fmt: skip
            # -- end distributed
            if args.max_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() >= scale:  # fp16 skips the step when gradients overflow
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.global_step += 1
            elapsed = max(time.perf_counter() - t0, 1e-9)
            record = {
                "stage": stage,
                "epoch": epoch,
                "step": self.state.global_step,
                "loss": step_loss,
                "sequences": step.size,
                "lr": self.scheduler.get_last_lr()[0],
                "seqs_per_s": seqs / elapsed,
                "tokens_per_s": tokens / elapsed,
            }
            self.log.log_step(record)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{record['lr']:.2e}")
            t0 = time.perf_counter()

    def evaluate_split(self, split: str) -> dict[str, float]:
        pairs = self.data.dev_pairs() if split == "dev" else self.data.test_pairs()
        return self.runtime.evaluate(pairs, self.args.metric_ks, exclude_history=self.args.exclude_history,
                                     desc=f"evaluate {split}")  # fmt: skip

    def checked_evaluation(self, split: str, what: str) -> dict[str, float]:
        """`evaluate_split`, stopping with one line naming the evaluation (`what`: split, stage, epoch)
        when the model's scores are not finite: metrics of such scores are never recorded or saved."""
        try:
            return self.evaluate_split(split)
        except NonFiniteScores as e:
            kept = f"{self.ckpt_path} is left as it was" if self.ckpt_path.is_file() else "no checkpoint was saved"
            raise NonFiniteScores(f"{what}: {e}; stopped, {kept}") from None

    def run_stage(self, stage: int) -> None:
        args, state = self.args, self.state
        for epoch in range(state.epoch + 1, args.num_train_epochs):
            if stage == 1:
                self._set_item_table(self.item_vectors())
            self.train_one_epoch(stage, epoch)
            state.epoch = epoch
            if (epoch + 1) % args.verbose != 0:
                continue
            metrics = self.checked_evaluation("dev", f"dev evaluation at stage {stage} epoch {epoch}")
            record = {"stage": stage, "epoch": epoch, "step": state.global_step, **metrics}
            state.metrics["dev"].append(record)
            self.log.log_dev(metrics, state.global_step)
            logger.info("stage %d epoch %d dev: %s", stage, epoch, format_metrics(metrics))
            if metrics[TARGET_METRIC] > state.best_target:
                state.best_target = metrics[TARGET_METRIC]
                state.patience = STAGE_PATIENCE[stage]
                state.metrics["best_dev"] = record
                self.save_best()
                logger.info("new best dev %s %.4f: saved %s", TARGET_METRIC, metrics[TARGET_METRIC], self.ckpt_path)
            else:
                state.patience -= 1
            stop = state.patience <= 0
            if stop:
                state.epoch = args.num_train_epochs  # nothing left in this stage
            self.save_state()
            self.log.write_metrics(state.metrics)
            if stop:
                logger.info("stage %d: no improvement in %d evaluations, stopping", stage, STAGE_PATIENCE[stage])
                break

    def stage_two_learning_rate_is_zero(self) -> bool:
        """Whether every step stage 2 can still take would run at learning rate 0 (`stage_two.is_idle`)."""
        return stage_two.is_idle(self.args, self.state, self.steps_per_epoch, self.scheduler)

    def skip_stage_two(self) -> None:
        """Record what training stage 2 at learning rate 0 would record, untrained (`stage_two.record_idle`)."""
        logger.info("stage 2: its learning rate would be 0 at every step (--stage2_schedule shared: the one "
                    "schedule ended with stage 1), so its training is skipped and its result is the stage-1 best "
                    "model; --stage2_schedule restart trains it")  # fmt: skip
        stage_two.record_idle(self.args, self.state, self.steps_per_epoch, self.log)
        self.save_state()
        self.log.write_metrics(self.state.metrics)

    def clear_previous_run(self) -> None:
        """Remove what an earlier run left in the output folder (a fresh start there: --overwrite_output_dir,
        or --resume without a resume file), so no file of it outlives this run: its checkpoint, resume
        file, save_pretrained folder, metrics, step log and TensorBoard events. Caches stay (keyed by
        their content)."""
        for name in (self.args.ckpt, STATE_FILE):
            (self.out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / BEST_MODEL_FOLDER, ignore_errors=True)
        self.log.start_fresh()

    def run(self, on_start: Callable[[bool], None] | None = None) -> dict:
        """Run (or resume) the whole procedure; returns the metrics record also written to metrics.json.

        `on_start(resumed)` is called on rank 0 once the folder is taken: after a resumption was accepted
        (True) or an earlier run's outputs removed (False); a refused resumption leaves the folder as it
        was and never calls it. The command starts its run.log there.
        """
        args = self.args
        exists = args.resume and distributed.broadcast_object(self.state_path.is_file())  # rank 0's view
        with distributed.fail_together():  # an unreadable or refused resume file stops every rank
            resumed = args.resume and self.load_state(exists)  # a refused resumption leaves the folder as it was
        if not resumed:
            distributed.on_main(self.clear_previous_run)
        if on_start is not None:
            distributed.on_main(lambda: on_start(bool(resumed)))
        distributed.on_main(lambda: atomic_write_json(self.out_dir / ARGS_FILE, run_arguments(args), indent=True))
        if not resumed:
            random.seed(args.seed)
            np.random.seed(args.seed % 2**32)
            torch.manual_seed(args.seed)
            self._set_item_table(self.initial_item_table())
            zero_shot = self.checked_evaluation("test", "zero-shot test evaluation (before training)")
            self.state.metrics["zero_shot_test"] = zero_shot
            self.log.log_test("zero_shot_test", zero_shot, 0)
            logger.info("zero-shot test: %s", format_metrics(zero_shot))
            self.save_best()  # the zero-shot model is the best so far until a dev evaluation says otherwise
            self.save_state()
            self.log.write_metrics(self.state.metrics)
        if self.state.stage == 1:
            self.run_stage(1)
            logger.info("stage 2: loading the best stage-1 checkpoint %s", self.ckpt_path)
            self.load_best()
            self.state.stage, self.state.epoch, self.state.patience = 2, -1, STAGE_PATIENCE[2]
            if args.stage2_schedule == "restart":
                self.scheduler = self.new_schedule()
            self.save_state()
        if self.state.stage == 2 and not self.state.done:
            if self.stage_two_learning_rate_is_zero():
                self.skip_stage_two()
            else:
                self.run_stage(2)
        self.load_best()
        self.state.metrics["test"] = self.checked_evaluation("test", "final test evaluation (best checkpoint)")
        self.state.done = True
        self.log.write_metrics(self.state.metrics)
        self.log.log_test("test", self.state.metrics["test"], self.state.global_step)
        self.log.log_hparams(run_arguments(args), {k: self.state.metrics[k] for k in ("zero_shot_test", "test")})
        self.save_state()
        self.export_best()
        self.log.close()
        if self.train_model is not self.model:  # free the DDP wrapper now: freed after the process group, it hung
            self.train_model = self.model
            gc.collect()  # (it sits in reference cycles)
        return self.state.metrics
