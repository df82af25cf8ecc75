"""The rules that relate the checkpoint forms, as pure functions over state dicts (no file is read here).

Known forms (all produced by the reference code or by this package):

    model      RecformerModel state dict: `embeddings.*`, `encoder.*` (the released `recformer_ckpt.bin`)
    pretrain   `longformer.*` + the 7 `lm_head.*` keys (RecformerForPretraining, and the released
               `recformer_seqrec_ckpt.bin`)
    finetuned  `longformer.*` + `item_embedding.weight` (a finetuned RecformerForSeqRec, `best_model.bin`)
    folder     a `save_pretrained` folder (`model.safetensors` or `pytorch_model.bin`)

Any of them may come inside a training container (a Lightning `.ckpt`'s `state_dict`, a DeepSpeed
model-states file's `module`) and behind wrapper prefixes (`model.`, `module.`, ...). Each rule is one
helper: `unwrap_training_container`, `strip_wrapper_prefixes`, `detect_form` / `split_encoder` /
`add_encoder_prefix`, `fill_position_ids` and `tie_lm_head_bias`.
"""

from __future__ import annotations

from typing import Any

import torch

PREFIX = "longformer."
LM_HEAD_PREFIX = "lm_head."
ITEM_TABLE_KEY = "item_embedding.weight"
POSITION_IDS_KEY = "embeddings.position_ids"
POSITION_EMBEDDINGS_KEY = "embeddings.position_embeddings.weight"
LM_BIAS_KEY = "lm_head.bias"
LM_DECODER_BIAS_KEY = "lm_head.decoder.bias"
# Prefixes that training wrappers put in front of the model's own keys (Lightning module attribute,
# DDP / DeepSpeed engine, torch.compile).
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.", "model.")



def unwrap_training_container(obj: Any) -> tuple[Any, str | None]:
    """The model weights inside a training checkpoint and the container's name (None: not a container).

    Lightning keeps them under `state_dict`, a DeepSpeed model-states file under `module`.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], "Lightning checkpoint"
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        return obj["module"], "DeepSpeed model-states file"
    return obj, None


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


def has_encoder_prefix(state: dict[str, Any]) -> bool:
    """True when the encoder's keys carry the `longformer.` prefix (every form but `model`)."""
    return any(k.startswith(PREFIX) for k in state)


def detect_form(state: dict[str, torch.Tensor]) -> str:
    """Name of the checkpoint form (`model`, `pretrain`, `finetuned`, `encoder`) or `unknown`."""
    keys = set(state)
    if has_encoder_prefix(state):
        if ITEM_TABLE_KEY in keys:
            return "finetuned"
        if any(k.startswith(LM_HEAD_PREFIX) for k in keys):
            return "pretrain"
        return "encoder"
    if any(k.startswith("embeddings.") for k in keys):
        return "model"
    return "unknown"


def _is_head_part(key: str) -> bool:
    return key.startswith(LM_HEAD_PREFIX) or key == ITEM_TABLE_KEY


def split_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the encoder's tensors without prefix, everything else) of any form.

    In the `model` form (no prefix) every key but the LM head and the item table is the encoder's;
    otherwise the encoder's keys are those under `longformer.`.
    """
    if has_encoder_prefix(state):
        encoder = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        return encoder, {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    return {k: v for k, v in state.items() if not _is_head_part(k)}, {k: v for k, v in state.items() if _is_head_part(k)}


def add_encoder_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors with the encoder under `longformer.` (a `model`-form state gets the prefix;
    anything else is returned as it is)."""
    if detect_form(state) != "model":
        return dict(state)
    return {(k if _is_head_part(k) else PREFIX + k): v for k, v in state.items()}


def position_ids(length: int, like: torch.Tensor) -> torch.Tensor:
    """The position-id buffer `[[0, 1, ..., length - 1]]` (int64; on `like`'s device, meta included)."""
    return torch.arange(length, device=like.device).expand((1, -1)).clone()


def fill_position_ids(state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Add `embeddings.position_ids` when absent (newer transformers versions stop saving the buffer).

    It is always `arange(max_position_embeddings)`, sized from the position table. Modifies `state`;
    returns the keys added.
    """
    key, table = prefix + POSITION_IDS_KEY, prefix + POSITION_EMBEDDINGS_KEY
    if key in state or table not in state:
        return []
    state[key] = position_ids(state[table].shape[0], state[table])
    return [key]


def tie_lm_head_bias(state: dict[str, torch.Tensor]) -> list[str]:
    """Fill whichever of `lm_head.bias` / `lm_head.decoder.bias` is absent with the other.

    The LM head's output bias is one parameter saved under both names; files may hold either.
    Modifies `state`; returns the keys added.
    """
    for present, absent in ((LM_BIAS_KEY, LM_DECODER_BIAS_KEY), (LM_DECODER_BIAS_KEY, LM_BIAS_KEY)):
        if present in state and absent not in state:
            state[absent] = state[present]
            return [absent]
    return []

