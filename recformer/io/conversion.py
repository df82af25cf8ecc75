"""Checkpoint conversions: pure functions over state dicts.

Two conversions, each driven by a small key map:

* `longformer_to_pretraining`: a Longformer masked-LM state dict (`LongformerForMaskedLM`) ->
  the `RecformerForPretraining` start point. Every matching weight is copied; Longformer's single
  token-type row is repeated into each of Recformer's `token_type_size` rows; the item-position table
  is new (normal, std = `initializer_range`); the LM head is an untied copy (its decoder weight is a
  copy of the word embeddings when the source ties them), with `lm_head.decoder.bias` the same
  tensor as `lm_head.bias`.
* `pretraining_to_released`: a consolidated Lightning / DeepSpeed state dict of the pretraining
  module -> the `RecformerModel` form (no prefix, the released `recformer_ckpt.bin`) and the
  `RecformerForSeqRec` form (`longformer.*` + `lm_head.*`, the released `recformer_seqrec_ckpt.bin`),
  with the word embeddings restored from the start point when they were frozen or are absent.

The two conversions read no files and build no trainable model; target shapes come from a
meta-device model, so they run at longformer-base size on meta tensors in tests. The form rules
they share with loading (position ids, the tied LM-head bias, prefixes) live in `checkpoint.py`.

The file-facing steps built on them are in `pipeline_steps.py`. See docs/design.md for the forms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from recformer.io.checkpoint import _preview
from recformer.io.checkpoint_files import CheckpointError
from recformer.io.checkpoint_keys import (
    LM_DECODER_BIAS_KEY,
    LM_HEAD_PREFIX,
    POSITION_IDS_KEY,
    PREFIX,
    add_encoder_prefix,
    fill_position_ids,
    has_encoder_prefix,
    position_ids,
    strip_wrapper_prefixes,
    tie_lm_head_bias,
)
from recformer.model.configuration import RecformerConfig

logger = logging.getLogger(__name__)

WORD_EMBEDDINGS_KEY = PREFIX + "embeddings.word_embeddings.weight"
TOKEN_TYPE_KEY = PREFIX + "embeddings.token_type_embeddings.weight"
ITEM_POSITION_KEY = PREFIX + "embeddings.item_position_embeddings.weight"
FULL_POSITION_IDS_KEY = PREFIX + POSITION_IDS_KEY
LM_DECODER_WEIGHT_KEY = "lm_head.decoder.weight"

# Longformer masked-LM key -> how it becomes a Recformer pretraining key. Keys not listed are copied
# under the same name when the target has them. Rules: "repeat_rows" (1 row -> token_type_size rows).
LONGFORMER_RESHAPE_RULES = {TOKEN_TYPE_KEY: "repeat_rows"}
# Source keys with no place in Recformer (its pooler has no parameters).
LONGFORMER_UNUSED_PREFIXES = (PREFIX + "pooler.",)
# Target keys that the source never has and that are made here.
NEW_KEYS = (ITEM_POSITION_KEY,)
# Target keys filled from another source key when absent: a tied decoder is saved once, under the
# word embeddings. (The decoder bias is the LM head bias under a second name: `tie_lm_head_bias`.)
FILL_FROM = {LM_DECODER_WEIGHT_KEY: WORD_EMBEDDINGS_KEY}


class ConversionError(CheckpointError):
    """A state dict that cannot be converted; the message names the keys and shapes."""


@dataclass
class ConversionReport:
    """Which target keys were copied, reshaped, newly made, filled or restored; which source keys were dropped."""

    copied: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    source_tensors: tuple[int, int] | None = None  # (copied, expected) tensors of a Longformer checkpoint
    notes: list[str] = field(default_factory=list)  # how reshaped and new tensors were made

    def lines(self) -> list[str]:
        out = [f"copied: {len(self.copied)} keys"]
        for name in ("reshaped", "new", "filled", "restored", "dropped"):
            keys = getattr(self, name)
            if keys:
                out.append(f"{name}: {len(keys)} {_preview(keys, 12)}")
        return out + self.notes

    def summary(self) -> str:
        return "; ".join(self.lines())


def pretraining_state_shapes(config: RecformerConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every `RecformerForPretraining` state-dict entry, from a meta-device model."""
    from recformer.model.modeling_pretraining import RecformerForPretraining

    with torch.device("meta"):
        model = RecformerForPretraining(RecformerConfig.from_dict(config.to_dict()))
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def _new_normal(shape: torch.Size, std: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if like.device.type == "meta":
        return torch.empty(shape, dtype=like.dtype, device="meta")
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * std).to(dtype=like.dtype, device=like.device)


def longformer_to_pretraining(
    longformer_state: dict[str, torch.Tensor],
    config: RecformerConfig,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Build the `RecformerForPretraining` start point from a `LongformerForMaskedLM` state dict.

    Args:
        longformer_state: `longformer.*` + `lm_head.*` tensors (the decoder weight and bias and the
            position ids may be absent, as in files written by `save_pretrained`).
        config: the Recformer config (Longformer sizes plus the Recformer fields).
        generator: random source for the new item-position table.

    Returns:
        The start-point state dict (every `RecformerForPretraining` key, decoder untied, decoder bias
        sharing the LM head bias tensor) and a report of what was copied, reshaped and made new.

    Raises:
        ConversionError: a source of the wrong size or form, naming the keys and both shapes.
    """
    source = strip_wrapper_prefixes(dict(longformer_state))
    targets = pretraining_state_shapes(config)
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    like = next(iter(source.values()))

    for key, (shape, _dtype) in targets.items():
        if key in NEW_KEYS:
            out[key] = _new_normal(shape, config.initializer_range, source.get(WORD_EMBEDDINGS_KEY, like), generator)
            report.new.append(key)
            continue
        if key == FULL_POSITION_IDS_KEY:
            if key in source and tuple(source[key].shape) == tuple(shape):
                out[key] = source[key].clone()
                report.copied.append(key)
            else:
                out[key] = position_ids(shape[-1], like)
                report.new.append(key)
            continue
        if key == LM_DECODER_BIAS_KEY:
            continue  # set to the LM head bias tensor below
        src_key = key if key in source else FILL_FROM.get(key)
        if src_key not in source:
            missing.append(key)
            continue
        tensor = source[src_key]
        if LONGFORMER_RESHAPE_RULES.get(key) == "repeat_rows" and tensor.dim() == 2 and tensor.shape[0] == 1:
            if tensor.shape[1] != shape[1]:
                mismatched.append(f"{src_key}: checkpoint {tuple(tensor.shape)} vs Recformer config {tuple(shape)}")
                continue
            out[key] = tensor.expand(shape[0], -1).clone()
            report.reshaped.append(key)
            continue
        if tuple(tensor.shape) != tuple(shape):
            mismatched.append(f"{src_key}: checkpoint {tuple(tensor.shape)} vs Recformer config {tuple(shape)}")
            continue
        out[key] = tensor.clone()  # clone: the LM head must not share storage with the word embeddings
        (report.filled if src_key != key else report.copied).append(key)

    if missing or mismatched:
        lines = ["the Longformer checkpoint does not fit the Recformer config:"]
        if missing:
            lines.append(f"  missing keys: {_preview(missing, 20)}")
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:20]))
        raise ConversionError("\n".join(lines))

    report.filled += tie_lm_head_bias(out)  # the decoder bias: one parameter under two names
    used = set(targets) | set(FILL_FROM.values())
    report.dropped = sorted(k for k in source if k not in used)
    unexpected = [k for k in report.dropped if not k.startswith(LONGFORMER_UNUSED_PREFIXES)]
    if unexpected:
        raise ConversionError(
            f"the Longformer checkpoint has keys Recformer has no place for: {_preview(unexpected, 20)} "
            "(expected a LongformerForMaskedLM state dict: 'longformer.*' and 'lm_head.*')"
        )
    return out, report


def _close_to(saved: torch.Tensor, start: torch.Tensor) -> bool:
    """True when `saved` equals `start` up to the rounding of `saved`'s dtype (a frozen weight saved in fp16)."""
    if saved.shape != start.shape or saved.device.type == "meta" or start.device.type == "meta":
        return False
    if saved.dtype.is_floating_point and saved.dtype != start.dtype:
        start = start.to(saved.dtype)
    return bool(torch.equal(saved.float(), start.float()))


def pretraining_to_released(
    state: dict[str, torch.Tensor],
    start_state: dict[str, torch.Tensor] | None = None,
    restore_word_embeddings: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """The `RecformerModel` and `RecformerForSeqRec` forms of a trained pretraining state dict.

    Args:
        state: the consolidated weights of the pretraining module, with or without wrapper prefixes
            (`model.`, `_forward_module.`, `module.`): `longformer.*` + `lm_head.*`.
        start_state: the start point (`longformer_to_pretraining` output, any known prefix form);
            needed when the word embeddings are restored.
        restore_word_embeddings: True to always take the word embeddings from the start point (they
            were frozen), False never; None restores them when absent or when they equal the start
            point's up to the saved dtype's rounding (frozen weights saved in fp16).

    Returns:
        (model_state, seqrec_state, report): `model_state` has no prefix (strict-loads into
        `RecformerModel`); `seqrec_state` is `longformer.*` + the 7 `lm_head.*` keys.
    """
    state = add_encoder_prefix(strip_wrapper_prefixes(dict(state)))
    report = ConversionReport()
    unexpected = [k for k in state if not k.startswith((PREFIX, LM_HEAD_PREFIX))]
    if unexpected or not has_encoder_prefix(state):
        raise ConversionError(
            "not a Recformer pretraining state dict (expected 'longformer.*' and 'lm_head.*' keys, "
            f"with an optional 'model.' prefix); unexpected keys: {_preview(unexpected or list(state), 12)}"
        )
    start = None if start_state is None else add_encoder_prefix(strip_wrapper_prefixes(dict(start_state)))

    saved_words = state.get(WORD_EMBEDDINGS_KEY)
    if restore_word_embeddings is None:
        restore = saved_words is None or (
            start is not None and WORD_EMBEDDINGS_KEY in start and _close_to(saved_words, start[WORD_EMBEDDINGS_KEY])
        )
    else:
        restore = restore_word_embeddings
    if restore:
        if start is None or WORD_EMBEDDINGS_KEY not in start:
            raise ConversionError(
                f"{WORD_EMBEDDINGS_KEY} must be restored from the Longformer start point "
                f"({'absent from the checkpoint' if saved_words is None else 'frozen in training'}), "
                "but no start point with word embeddings was given"
            )
        words = start[WORD_EMBEDDINGS_KEY]
        if saved_words is not None and tuple(saved_words.shape) != tuple(words.shape):
            raise ConversionError(
                f"{WORD_EMBEDDINGS_KEY}: checkpoint {tuple(saved_words.shape)} vs start point {tuple(words.shape)}"
            )
        state[WORD_EMBEDDINGS_KEY] = words
        report.restored.append(WORD_EMBEDDINGS_KEY)

    report.filled += fill_position_ids(state, PREFIX)
    report.filled += tie_lm_head_bias(state)

    model_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    seqrec_state = dict(state)
    report.copied = sorted(k for k in state if k not in report.restored and k not in report.filled)
    return model_state, seqrec_state, report


def to_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp32 (ids and other integer buffers untouched), contiguous, on the CPU."""
    return {
        k: (v.float() if v.is_floating_point() else v).detach().to("cpu").contiguous() for k, v in state.items()
    }
