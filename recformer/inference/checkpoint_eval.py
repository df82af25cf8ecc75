"""Evaluate any checkpoint on a processed dataset folder without training, as finetune.py evaluates.

Same inputs (dev: the train sequence, target the val item; test: train + val, target the test item),
same metrics and the same `evaluation.evaluate`. The item table is the checkpoint's own when it holds
one (a finetuned `best_model.bin` or a finetuned `save_pretrained` folder), unless re-encoding is asked
for; otherwise every item is encoded by the checkpoint's encoder, as finetune.py's zero-shot
evaluation does (`ModelRuntime.item_table`, with the same item-table cache key).

Under torchrun the items are encoded and the users ranked in shards across the processes
(`ModelRuntime.encode_items`, `ModelRuntime.evaluate`): the same metrics as one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from recformer import distributed
from recformer.args import EvaluateArgs
from recformer.data.finetune_reader import load_finetune_data
from recformer.devices import InferenceSettings
from recformer.io.cache import file_fingerprint
from recformer.io.checkpoint_files import CheckpointError
from recformer.io.checkpoint_keys import ITEM_TABLE_KEY
from recformer.model.configuration import field_values
from recformer.runtime import ModelRuntime

logger = logging.getLogger(__name__)

SPLITS = {"test": "test_pairs", "val": "dev_pairs"}


@dataclass
class CheckpointEvaluation:
    """The metrics of one checkpoint on one split, and what they were computed from."""

    metrics: dict[str, float]
    checkpoint: str
    dataset: str
    split: str
    item_table: str  # "checkpoint" (its saved table) or "encoded"
    users: int
    items: int
    exclude_history: bool

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def evaluate_checkpoint(args: EvaluateArgs) -> CheckpointEvaluation:
    """Full-ranking metrics of `args.ckpt` on `args.split` of `args.data_path`.

    Raises:
        FileNotFoundError, DataError: a missing or malformed data folder (the file named).
        CheckpointError: a checkpoint that does not fit, or whose saved item table has another number
            of items than the dataset (both named).
    """
    args.validate()
    device = distributed.rank_device(args.device)
    ModelRuntime.check_attention(args.attn_implementation, device)  # one that cannot run here stops now
    data = load_finetune_data(args.data_path)
    settings = InferenceSettings(device, fp16=args.fp16, bf16=args.bf16, batch_size=args.batch_size,
                                 progress=args.progress and distributed.is_main())  # fmt: skip
    runtime, report = ModelRuntime.from_checkpoint(
        args.ckpt, settings, model_name_or_path=args.model_name_or_path, fields=field_values(args), temp=args.temp,
        attn_implementation=args.attn_implementation, compile=args.compile,
    )  # fmt: skip
    runtime.tokenize(data.items, cache_dir=args.cache_dir)
    if ITEM_TABLE_KEY in report.loaded and not args.reencode_items:
        n = runtime.model.item_embedding.num_embeddings
        if n != data.num_items:
            raise CheckpointError(
                f"{args.ckpt}: its item table has {n} items but {args.data_path} has {data.num_items}; "
                "pass --reencode_items to encode this dataset's items with the checkpoint's encoder"
            )
        source = "checkpoint"
    else:
        checkpoint_hash = file_fingerprint(args.ckpt) if args.cache_dir else None
        runtime.set_item_table(runtime.item_table(checkpoint_hash, data.items, args.cache_dir))
        source = "encoded"
    pairs = getattr(data, SPLITS[args.split])()
    distributed.check_world_size(len(pairs), f"the {args.split} split of {args.data_path}")
    logger.info("evaluating %s on %s %s: %d users, %d items, item table %s", args.ckpt, data.name, args.split,
                len(pairs), data.num_items, source)  # fmt: skip
    metrics = runtime.evaluate(pairs, args.metric_ks, exclude_history=args.exclude_history,
                               desc=f"evaluate {args.split}")  # fmt: skip
    return CheckpointEvaluation(
        metrics, str(args.ckpt), data.name, args.split, source, len(pairs), data.num_items, args.exclude_history
    )
