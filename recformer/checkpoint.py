"""Checkpoint loading that never drops weights silently.

Known forms (all produced by the reference code or by this package):

    model      RecformerModel state dict: `embeddings.*`, `encoder.*` (the released `recformer_ckpt.bin`)
    pretrain   `longformer.*` + the 7 `lm_head.*` keys (RecformerForPretraining, and the released
               `recformer_seqrec_ckpt.bin`)
    finetuned  `longformer.*` + `item_embedding.weight` (a finetuned RecformerForSeqRec, `best_model.bin`)
    folder     a `save_pretrained` folder (`model.safetensors` or `pytorch_model.bin`)

`load_checkpoint(model, source)` maps any of these onto any Recformer model class: it adds or strips
the `longformer.` prefix, ignores the parts the target has no place for (the LM head for an encoder
or a SeqRec model, the item table for an encoder), installs a finetuned item table into a SeqRec
model, and fails with the missing, unexpected and mis-shaped keys named for anything else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

PREFIX = "longformer."
LM_HEAD_PREFIX = "lm_head."
ITEM_TABLE_KEY = "item_embedding.weight"
POSITION_IDS_KEY = "embeddings.position_ids"
# Prefixes that training wrappers put in front of the model's own keys (Lightning module attribute,
# DDP / DeepSpeed engine, torch.compile).
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.", "model.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "recformer_ckpt.bin", "best_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the keys."""


@dataclass
class LoadReport:
    """What `load_checkpoint` did."""

    form: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known extra parts the target has no place for
    filled: list[str] = field(default_factory=list)  # known gaps filled by the model (position_ids, tied bias)

    def summary(self) -> str:
        parts = [f"form={self.form}", f"loaded={len(self.loaded)}"]
        if self.ignored:
            parts.append(f"ignored={_preview(self.ignored)}")
        if self.filled:
            parts.append(f"kept from model={_preview(self.filled)}")
        return ", ".join(parts)


def _preview(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def read_state_dict(source: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, a `save_pretrained` folder, a Lightning `.ckpt`, or a dict."""
    if isinstance(source, dict):
        state = source
        origin = "state dict"
    else:
        path = Path(source)
        origin = str(path)
        if path.is_dir():
            for name in WEIGHT_FILES:
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise CheckpointError(f"{origin}: folder holds none of {', '.join(WEIGHT_FILES)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # Lightning checkpoint
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # DeepSpeed model-states file
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{origin}: not a state dict (a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin}: holds no tensors")
    return tensors


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove prefixes that every key shares and that come from training wrappers (`model.`, `module.`, ...)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def detect_form(state: dict[str, torch.Tensor]) -> str:
    """Name of the checkpoint form (`model`, `pretrain`, `finetuned`, `encoder`) or `unknown`."""
    keys = set(state)
    if any(k.startswith(PREFIX) for k in keys):
        if ITEM_TABLE_KEY in keys:
            return "finetuned"
        if any(k.startswith(LM_HEAD_PREFIX) for k in keys):
            return "pretrain"
        return "encoder"
    if any(k.startswith("embeddings.") for k in keys):
        return "model"
    return "unknown"


def _encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors without prefix, from any form."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return {k: v for k, v in state.items() if not (k.startswith(LM_HEAD_PREFIX) or k == ITEM_TABLE_KEY)}


def _other_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixed = any(k.startswith(PREFIX) for k in state)
    return {
        k: v
        for k, v in state.items()
        if (k.startswith(LM_HEAD_PREFIX) or k == ITEM_TABLE_KEY or (prefixed and not k.startswith(PREFIX)))
    }


def load_checkpoint(model: nn.Module, source: str | os.PathLike | dict, strict_lm_head: bool = True) -> LoadReport:
    """Load any known checkpoint form into a RecformerModel, RecformerForSeqRec or RecformerForPretraining.

    Args:
        model: the target model (its config must match the checkpoint's sizes).
        source: a file, a `save_pretrained` folder, or a state dict.
        strict_lm_head: for RecformerForPretraining, fail when the checkpoint has no LM head.

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys.
    """
    from .modeling import RecformerForPretraining, RecformerForSeqRec, RecformerModel

    state = strip_wrapper_prefixes(read_state_dict(source))
    form = detect_form(state)
    origin = source if not isinstance(source, dict) else "state dict"
    if form == "unknown":
        raise CheckpointError(
            f"{origin}: not a Recformer checkpoint; expected keys like 'embeddings.word_embeddings.weight' "
            f"or 'longformer.embeddings.word_embeddings.weight', found {_preview(list(state))}"
        )
    encoder_state = _encoder_keys(state)
    extra = _other_keys(state)
    report = LoadReport(form=form)

    if isinstance(model, RecformerModel):
        encoder, target_prefix = model, ""
        known = [k for k in extra if k.startswith(LM_HEAD_PREFIX) or k == ITEM_TABLE_KEY]
        report.ignored += known
        wanted_extra: dict[str, torch.Tensor] = {k: v for k, v in extra.items() if k not in known}
    elif isinstance(model, (RecformerForSeqRec, RecformerForPretraining)):
        encoder, target_prefix = model.longformer, PREFIX
        wanted_extra = {}
        for k, v in extra.items():
            if k == ITEM_TABLE_KEY and isinstance(model, RecformerForSeqRec):
                wanted_extra[k] = v
            elif k.startswith(LM_HEAD_PREFIX) and isinstance(model, RecformerForPretraining):
                wanted_extra[k] = v
            elif k.startswith(LM_HEAD_PREFIX) or k == ITEM_TABLE_KEY:
                report.ignored.append(k)
            else:
                wanted_extra[k] = v  # reported as unexpected below
    else:
        raise TypeError(f"load_checkpoint expects a Recformer model, got {type(model).__name__}")

    # -- encoder --------------------------------------------------------------------------------
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in encoder_state]
    unexpected = [k for k in encoder_state if k not in expected]
    if POSITION_IDS_KEY in missing:  # a buffer newer transformers versions stopped saving
        missing.remove(POSITION_IDS_KEY)
        report.filled.append(target_prefix + POSITION_IDS_KEY)

    # -- heads ----------------------------------------------------------------------------------
    head_state: dict[str, torch.Tensor] = {}
    if isinstance(model, RecformerForPretraining):
        head_expected = {k: v for k, v in model.state_dict().items() if k.startswith(LM_HEAD_PREFIX)}
        lm = {k: v for k, v in wanted_extra.items() if k.startswith(LM_HEAD_PREFIX)}
        if not lm and not strict_lm_head:
            report.filled += list(head_expected)
        else:
            if "lm_head.bias" in lm and "lm_head.decoder.bias" not in lm:
                lm["lm_head.decoder.bias"] = lm["lm_head.bias"]  # one tied parameter under two names
            if "lm_head.decoder.bias" in lm and "lm_head.bias" not in lm:
                lm["lm_head.bias"] = lm["lm_head.decoder.bias"]
            missing += [k for k in head_expected if k not in lm]
            unexpected += [k for k in lm if k not in head_expected]
            head_state = {k: v for k, v in lm.items() if k in head_expected}
        unexpected += [k for k in wanted_extra if not k.startswith(LM_HEAD_PREFIX)]
        shapes_of = {**{target_prefix + k: v for k, v in expected.items()}, **head_expected}
    else:
        unexpected += [k for k in wanted_extra if k != ITEM_TABLE_KEY or isinstance(model, RecformerModel)]
        shapes_of = {target_prefix + k: v for k, v in expected.items()}

    mismatched = [
        f"{target_prefix + k}: checkpoint {tuple(v.shape)} vs model {tuple(shapes_of[target_prefix + k].shape)}"
        for k, v in encoder_state.items()
        if target_prefix + k in shapes_of and tuple(v.shape) != tuple(shapes_of[target_prefix + k].shape)
    ] + [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(shapes_of[k].shape)}"
        for k, v in head_state.items()
        if tuple(v.shape) != tuple(shapes_of[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{origin} ({form} form) does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys: {_preview([target_prefix + k if not k.startswith(LM_HEAD_PREFIX) else k for k in missing], 20)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_preview(unexpected, 20)}")
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:20]))
        raise CheckpointError("\n".join(lines))

    # -- copy -----------------------------------------------------------------------------------
    to_load = {k: v for k, v in encoder_state.items() if k in expected}
    encoder.load_state_dict(to_load, strict=False)
    report.loaded += [target_prefix + k for k in to_load]
    if head_state:
        model.lm_head.load_state_dict({k[len(LM_HEAD_PREFIX) :]: v for k, v in head_state.items()}, strict=False)
        model.lm_head.decoder.bias = model.lm_head.bias  # keep the tie after loading
        report.loaded += list(head_state)
    if isinstance(model, RecformerForSeqRec):
        table = wanted_extra.get(ITEM_TABLE_KEY)
        if table is not None:
            if table.dim() != 2 or table.size(1) != model.config.hidden_size:
                raise CheckpointError(
                    f"{origin}: {ITEM_TABLE_KEY} has shape {tuple(table.shape)}, "
                    f"expected [num_items, {model.config.hidden_size}]"
                )
            model.init_item_embedding(table.to(model.longformer.embeddings.word_embeddings.weight.dtype))
            report.loaded.append(ITEM_TABLE_KEY)
        elif model.item_embedding is not None:
            report.filled.append(ITEM_TABLE_KEY)
    logger.info("loaded %s into %s: %s", origin, type(model).__name__, report.summary())
    return report
