"""Loading any checkpoint form into any Recformer model class, never dropping weights silently.

`load_checkpoint(model, source)` maps any form (`checkpoint_keys`) read from any file
(`checkpoint_files`) onto any Recformer model class (`TARGETS` says where each class keeps its encoder and
which extra parts it takes or ignores), and fails with the missing, unexpected and mis-shaped keys named
for anything else. The names of the two modules below it are importable from here too.
"""

import functools
import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

# defined in .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import TRUST_CHECKPOINT_HELP as TRUST_CHECKPOINT_HELP
from recformer.io.checkpoint_files import CheckpointError, read_state_dict
from recformer.io.checkpoint_keys import (
    ITEM_TABLE_KEY,
    LM_HEAD_PREFIX,
    PREFIX,
    detect_form,
    fill_position_ids,
    split_encoder,
    strip_wrapper_prefixes,
    tie_lm_head_bias,
)

logger = logging.getLogger(__name__)


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



# -- loading into a model ---------------------------------------------------------------------------

# The extra parts a checkpoint may carry besides the encoder.
LM_HEAD, ITEM_TABLE = "lm_head", "item_table"


def _part(key: str) -> str | None:
    if key.startswith(LM_HEAD_PREFIX):
        return LM_HEAD
    if key == ITEM_TABLE_KEY:
        return ITEM_TABLE
    return None


@dataclass(frozen=True)
class Target:
    """How a model class holds a checkpoint: its encoder's key prefix, the extra parts it loads and
    those it ignores (any other extra key is unexpected)."""

    encoder_prefix: str
    takes: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()


@functools.cache
def _targets() -> dict[type, Target]:
    from recformer.model.modeling import RecformerForSeqRec, RecformerModel
    from recformer.model.modeling_pretraining import RecformerForPretraining

    return {
        RecformerModel: Target("", ignores=(LM_HEAD, ITEM_TABLE)),
        RecformerForSeqRec: Target(PREFIX, takes=(ITEM_TABLE,), ignores=(LM_HEAD,)),
        RecformerForPretraining: Target(PREFIX, takes=(LM_HEAD,), ignores=(ITEM_TABLE,)),
    }


def _target_of(model: nn.Module) -> Target:
    for cls, target in _targets().items():
        if isinstance(model, cls):
            return target
    raise TypeError(f"load_checkpoint expects a Recformer model, got {type(model).__name__}")


def _read_known(source: str | os.PathLike | dict, origin: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's state dict (wrapper prefixes stripped) and its form; refuses an unknown form."""
    state = strip_wrapper_prefixes(read_state_dict(source))
    form = detect_form(state)
    if form == "unknown":
        raise CheckpointError(
            f"{origin}: not a Recformer checkpoint; expected keys like 'embeddings.word_embeddings.weight' "
            f"or 'longformer.embeddings.word_embeddings.weight', found {_preview(list(state))}"
        )
    return state, form


def _sort_extra(
    extra: dict[str, torch.Tensor], target: Target, report: LoadReport
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """The extra keys by the part the target takes, with the keys it has no place for (the known parts it
    ignores go to `report.ignored`)."""
    parts: dict[str, dict[str, torch.Tensor]] = {LM_HEAD: {}, ITEM_TABLE: {}}
    unknown: list[str] = []
    for k, v in extra.items():
        part = _part(k)
        if part in target.takes:
            parts[part][k] = v
        elif part in target.ignores:
            report.ignored.append(k)
        else:
            unknown.append(k)
    return parts, unknown


@dataclass
class _Fit:
    """How a checkpoint's keys line up with a model's: what is missing, unexpected, and the expected
    tensors by full key (for the shape check)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes_of: dict[str, torch.Tensor] = field(default_factory=dict)


def _fit_lm_head(
    model: nn.Module, lm: dict[str, torch.Tensor], strict_lm_head: bool, fit: _Fit, report: LoadReport
) -> dict[str, torch.Tensor]:
    """The LM head keys to load; records the head's missing and unexpected keys in `fit`. Without a head
    in the checkpoint and `strict_lm_head` off, the model keeps its own (nothing to load)."""
    head_expected = {k: v for k, v in model.state_dict().items() if k.startswith(LM_HEAD_PREFIX)}
    head_state: dict[str, torch.Tensor] = {}
    if not lm and not strict_lm_head:
        report.filled += list(head_expected)
    else:
        tie_lm_head_bias(lm)
        fit.missing += [k for k in head_expected if k not in lm]
        fit.unexpected += [k for k in lm if k not in head_expected]
        head_state = {k: v for k, v in lm.items() if k in head_expected}
    fit.shapes_of.update(head_expected)
    return head_state


def _refuse_unfit(fit: _Fit, named: list[tuple[str, torch.Tensor]], header: str) -> None:
    """Raise CheckpointError naming the missing, unexpected and mis-shaped keys, if there are any."""
    mismatched = [
        f"{name}: checkpoint {tuple(v.shape)} vs model {tuple(fit.shapes_of[name].shape)}"
        for name, v in named
        if name in fit.shapes_of and tuple(v.shape) != tuple(fit.shapes_of[name].shape)
    ]
    if fit.missing or fit.unexpected or mismatched:
        lines = [header]
        if fit.missing:
            lines.append(f"  missing keys: {_preview(fit.missing, 20)}")
        if fit.unexpected:
            lines.append(f"  unexpected keys: {_preview(fit.unexpected, 20)}")
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:20]))
        raise CheckpointError("\n".join(lines))


def _load_item_table(
    model: nn.Module, table_part: dict[str, torch.Tensor], origin: str | os.PathLike, report: LoadReport
) -> None:
    """Set the model's item table from the checkpoint's, checking its width; without one the model keeps
    its own table, if it has one."""
    table = table_part.get(ITEM_TABLE_KEY)
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


def load_checkpoint(model: nn.Module, source: str | os.PathLike | dict, strict_lm_head: bool = True) -> LoadReport:
    """Load any known checkpoint form into a RecformerModel, RecformerForSeqRec or RecformerForPretraining.

    Args:
        model: the target model (its config must match the checkpoint's sizes).
        source: a file, a `save_pretrained` folder, or a state dict.
        strict_lm_head: for RecformerForPretraining, fail when the checkpoint has no LM head.

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys.
    """
    target = _target_of(model)
    origin = source if not isinstance(source, dict) else "state dict"
    state, form = _read_known(source, origin)
    prefix = target.encoder_prefix
    encoder = model if not prefix else getattr(model, prefix.rstrip("."))
    encoder_state, extra = split_encoder(state)
    report = LoadReport(form=form)
    parts, unknown = _sort_extra(extra, target, report)

    expected = encoder.state_dict()
    report.filled += [prefix + k for k in fill_position_ids(encoder_state)]
    fit = _Fit(
        missing=[prefix + k for k in expected if k not in encoder_state],
        unexpected=[k for k in encoder_state if k not in expected],
        shapes_of={prefix + k: v for k, v in expected.items()},
    )
    head_state: dict[str, torch.Tensor] = {}
    if LM_HEAD in target.takes:
        head_state = _fit_lm_head(model, parts[LM_HEAD], strict_lm_head, fit, report)
    fit.unexpected += unknown
    named = [*((prefix + k, v) for k, v in encoder_state.items()), *head_state.items()]
    _refuse_unfit(fit, named, f"{origin} ({form} form) does not fit {type(model).__name__}:")

    to_load = {k: v for k, v in encoder_state.items() if k in expected}
    encoder.load_state_dict(to_load, strict=False)
    report.loaded += [prefix + k for k in to_load if prefix + k not in report.filled]
    if head_state:
        model.lm_head.load_state_dict({k[len(LM_HEAD_PREFIX) :]: v for k, v in head_state.items()}, strict=False)
        model.lm_head.decoder.bias = model.lm_head.bias  # keep the tie after loading
        report.loaded += list(head_state)
    if ITEM_TABLE in target.takes:
        _load_item_table(model, parts[ITEM_TABLE], origin, report)
    logger.info("loaded %s into %s: %s", origin, type(model).__name__, report.summary())
    return report
