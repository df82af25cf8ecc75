"""Turn a pretraining checkpoint into the released Recformer files (SPEC D, H).

Accepts a DeepSpeed checkpoint folder (the ZeRO shards are consolidated here with DeepSpeed's
utility; no hand-run `zero_to_fp32.py`), a consolidated `.bin`, or a plain Lightning `.ckpt`. Writes
into `--output_dir`:

    recformer_ckpt.bin          RecformerModel state dict (no prefix): strict-loads into RecformerModel
    recformer_seqrec_ckpt.bin   RecformerForSeqRec form (`longformer.*` + `lm_head.*`): finetune.py --pretrain_ckpt
    recformer/, recformer_seqrec/   save_pretrained folders (config, weights, tokenizer)

    python convert_pretrain_ckpt.py --lightning_ckpt result/recformer_pretraining/checkpoints/last.ckpt \
        --longformer_ckpt longformer_ckpt/longformer-base-4096.bin --output_dir pretrain_ckpt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from save_longformer_ckpt import start_point_folder

MODEL_FILE = "recformer_ckpt.bin"
SEQREC_FILE = "recformer_seqrec_ckpt.bin"
NEITHER = (
    "is neither a DeepSpeed checkpoint folder, a Lightning .ckpt nor a consolidated state dict (.bin) "
    "of the Recformer pretraining module"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lightning_ckpt", required=True, help="DeepSpeed folder, Lightning .ckpt or consolidated .bin")
    p.add_argument("--longformer_ckpt", required=True, help="the start point written by save_longformer_ckpt.py")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--model_name_or_path", default=None,
                   help="config + tokenizer folder (default: the save_pretrained folder beside --longformer_ckpt)")
    p.add_argument("--restore_word_embeddings", choices=("auto", "yes", "no"), default="auto",
                   help="take the word embeddings from the start point: auto = when frozen in training or absent")
    return p.parse_args(argv)


def read_training_checkpoint(path: Path) -> tuple[dict, dict, str]:
    """(weights, hyperparameters, form) of a DeepSpeed folder, a Lightning .ckpt or a consolidated .bin."""
    import torch

    from recformer.checkpoint import CheckpointError

    if path.is_dir():
        model_states = sorted(path.glob("**/mp_rank_*_model_states.pt"))
        if not model_states:
            raise CheckpointError(f"{path}: {NEITHER} (a folder without DeepSpeed *_model_states.pt files)")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = None
        if not (path / "latest").is_file():  # no 'latest' pointer: the one tag folder holding the states
            tags = sorted({p.parent.relative_to(path).as_posix() for p in model_states})
            if len(tags) != 1:
                raise CheckpointError(f"{path}: several DeepSpeed tags {tags} and no 'latest' file")
            tag = tags[0]
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag)
        client = torch.load(model_states[0], map_location="cpu", weights_only=False)
        return dict(state), dict(client.get("hyper_parameters") or {}), "DeepSpeed checkpoint folder"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path}: {NEITHER} (cannot be read: {type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], dict(obj.get("hyper_parameters") or {}), "Lightning checkpoint"
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        return obj["module"], dict(obj.get("hyper_parameters") or {}), "DeepSpeed model-states file"
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj, {}, "consolidated state dict"
    raise CheckpointError(f"{path}: {NEITHER}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from recformer import (
        CheckpointError,
        RecformerConfig,
        RecformerForSeqRec,
        RecformerModel,
        RecformerTokenizer,
    )
    from recformer.checkpoint import read_state_dict
    from recformer.conversion import ConversionError, pretraining_to_released, to_float32
    from recformer.fileio import atomic_torch_save

    source = Path(args.lightning_ckpt)
    config_dir = Path(args.model_name_or_path) if args.model_name_or_path else start_point_folder(args.longformer_ckpt)
    try:
        if not (config_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{config_dir}: no config.json; pass --model_name_or_path (the folder save_longformer_ckpt.py wrote)"
            )
        config = RecformerConfig.from_pretrained(config_dir)
        state, hparams, form = read_training_checkpoint(source)
        start = read_state_dict(args.longformer_ckpt)
        restore = {"yes": True, "no": False}.get(args.restore_word_embeddings)
        if restore is None and "fix_word_embedding" in hparams:
            restore = bool(hparams["fix_word_embedding"])  # what training did, when the checkpoint says
        model_state, seqrec_state, report = pretraining_to_released(state, start, restore_word_embeddings=restore)
        model_state, seqrec_state = to_float32(model_state), to_float32(seqrec_state)

        model = RecformerModel(config)
        model.load_state_dict(model_state, strict=True)
        seqrec = RecformerForSeqRec(config)
        result = seqrec.load_state_dict(seqrec_state, strict=False)
        if result.missing_keys or any(not k.startswith("lm_head.") for k in result.unexpected_keys):
            raise CheckpointError(
                f"SeqRec form does not fit RecformerForSeqRec: missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
    except (CheckpointError, ConversionError, OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out = Path(args.output_dir)
    atomic_torch_save(model_state, out / MODEL_FILE)
    atomic_torch_save(seqrec_state, out / SEQREC_FILE)
    tokenizer = RecformerTokenizer.from_pretrained(str(config_dir), config)
    for folder, net in (("recformer", model), ("recformer_seqrec", seqrec)):
        net.save_pretrained(out / folder)
        tokenizer.save_pretrained(out / folder)
    print(f"read {source} ({form}; {len(state)} tensors)")
    for line in report.lines():
        print(f"  {line}")
    print(f"wrote {out / MODEL_FILE} ({len(model_state)} keys; strict load into RecformerModel OK)")
    print(f"wrote {out / SEQREC_FILE} ({len(seqrec_state)} keys; loads into RecformerForSeqRec, lm_head.* unused)")
    print(f"wrote save_pretrained folders {out / 'recformer'}/ and {out / 'recformer_seqrec'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
