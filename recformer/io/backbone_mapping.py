"""The weight mapping from a BERT-layout encoder to Recformer, as a pure function over state dicts
(`encoder_to_pretraining`), driven by `ENCODER_KEY_MAP` and `HEAD_KEY_MAPS`; `backbones.py` says what
each part maps to and writes the start point."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from recformer.io.checkpoint import _preview
from recformer.io.checkpoint_keys import PREFIX, position_ids, tie_lm_head_bias
from recformer.io.conversion import ConversionError, ConversionReport, pretraining_state_shapes
from recformer.model.configuration import RecformerConfig


@dataclass(frozen=True)
class Family:
    """How one accepted `model_type` saves its encoder."""

    name: str
    prefix: str  # the encoder's prefix in task-model checkpoints ("bert.", "roberta.")
    head: str  # key of `HEAD_KEY_MAPS`
    roberta_positions: bool  # positions numbered from pad_token_id + 1 (else from 0)


FAMILIES = {
    "bert": Family("bert", "bert.", "bert", roberta_positions=False),
    "roberta": Family("roberta", "roberta.", "roberta", roberta_positions=True),
}

# Source encoder key (prefix stripped; a regex) -> Recformer encoder keys (templates over the groups).
ENCODER_KEY_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embeddings\.word_embeddings\.weight", ("embeddings.word_embeddings.weight",)),
    (r"embeddings\.LayerNorm\.(weight|bias)", ("embeddings.LayerNorm.{0}",)),
    (
        r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)",
        ("encoder.layer.{0}.attention.self.{1}.{2}", "encoder.layer.{0}.attention.self.{1}_global.{2}"),
    ),
    (r"encoder\.layer\.(\d+)\.attention\.output\.(dense|LayerNorm)\.(weight|bias)", ("encoder.layer.{0}.attention.output.{1}.{2}",)),
    (r"encoder\.layer\.(\d+)\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)", ("encoder.layer.{0}.{1}.{2}.{3}",)),
)
POSITION_KEY = "embeddings.position_embeddings.weight"
TOKEN_TYPE_SOURCE_KEY = "embeddings.token_type_embeddings.weight"
# Source masked-LM head key (a regex over the full key) -> Recformer `lm_head` key.
HEAD_KEY_MAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "bert": (
        (r"cls\.predictions\.transform\.dense\.(weight|bias)", "lm_head.dense.{0}"),
        (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", "lm_head.layer_norm.{0}"),
        (r"cls\.predictions\.decoder\.weight", "lm_head.decoder.weight"),
        (r"cls\.predictions\.bias", "lm_head.bias"),
    ),
    "roberta": (
        (r"lm_head\.(dense|layer_norm)\.(weight|bias)", "lm_head.{0}.{1}"),
        (r"lm_head\.decoder\.weight", "lm_head.decoder.weight"),
        (r"lm_head\.bias", "lm_head.bias"),
    ),
}
# Source keys with no place in Recformer (prefix stripped): the pooler (dense + tanh), next-sentence
# and classification heads, buffers.
DROPPED_PATTERNS = (
    r"pooler\..*", r"cls\.seq_relationship\..*", r"embeddings\.position_ids", r"embeddings\.token_type_ids",
    r"lm_head\.decoder\.bias", r"cls\.predictions\.decoder\.bias",
)  # fmt: skip


def _normalise_key(key: str) -> str:
    """Old BERT checkpoints name LayerNorm parameters gamma/beta."""
    if "LayerNorm." in key or "layer_norm." in key:
        key = re.sub(r"\.gamma$", ".weight", key)
        key = re.sub(r"\.beta$", ".bias", key)
    return key


def _match(patterns, key: str):
    for pattern, targets in patterns:
        found = re.fullmatch(pattern, key)
        if found:
            return found, targets
    return None, None


def position_rows(source_rows: int, family: Family, source_pad_token_id: int) -> tuple[int, int]:
    """(first learned row of token position 0 in the source, number of learned token positions)."""
    first = source_pad_token_id + 1 if family.roberta_positions else 0
    if source_rows <= first:
        raise ConversionError(f"the source's position table has {source_rows} rows, none past its offset {first}")
    return first, source_rows - first


def encoder_to_pretraining(
    source_state: Mapping[str, torch.Tensor],
    family: str,
    source_pad_token_id: int,
    config: RecformerConfig,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Build the `RecformerForPretraining` start point from a BERT-layout encoder's state dict.

    Args:
        source_state: the source's tensors (`BertModel`, `BertForMaskedLM`, `RobertaModel`, ...: with
            or without the `bert.` / `roberta.` prefix).
        family: a key of `FAMILIES` (how the source numbers positions, names its head).
        source_pad_token_id: the source's padding id (RoBERTa's positions start after it).
        config: the Recformer config: the source's sizes, `max_position_embeddings` =
            `pad_token_id + 1 + max(source positions, max_token_num)`.
        generator: random source of a newly initialised masked-LM head.

    Returns:
        The start-point state dict (every `RecformerForPretraining` key) and a report of what was copied,
        reshaped (positions, token types), made new and dropped; `report.notes` says how.

    Raises:
        ConversionError: an unmapped source key, a missing layer, a shape that does not fit `config`.
    """
    build = _StartPointBuilder(FAMILIES[family], config)
    positions, token_types = build.map_keys(source_state)
    build.positions(positions, source_pad_token_id)
    build.token_types(token_types)
    build.refuse_misfits()
    build.finish(generator)
    return build.out, build.report


class _StartPointBuilder:
    """The steps of `encoder_to_pretraining`, sharing the target shapes, the output and the report."""

    def __init__(self, family: Family, config: RecformerConfig):
        self.family, self.config = family, config
        self.targets = pretraining_state_shapes(config)
        self.report = ConversionReport()
        self.out: dict[str, torch.Tensor] = {}
        self.unexpected: list[str] = []
        self.mismatched: list[str] = []

    def put(self, target: str, tensor: torch.Tensor, source_key: str) -> None:
        shape = self.targets.get(target, (None,))[0]
        if shape is None:
            self.unexpected.append(source_key)
        elif tuple(tensor.shape) != tuple(shape):
            self.mismatched.append(f"{source_key}: source {tuple(tensor.shape)} vs Recformer config {tuple(shape)}")
        else:
            self.out[target] = tensor.detach().clone().float()
            self.report.copied.append(target)

    def map_keys(self, source_state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Copy every key the maps know; returns the (positions, token types) tables, which are reshaped."""
        fam = self.family
        positions = token_types = None
        for raw_key, tensor in source_state.items():
            key = _normalise_key(raw_key)
            head_found, head_target = _match(HEAD_KEY_MAPS[fam.head], key)
            if head_found:
                self.put(head_target.format(*head_found.groups()), tensor, raw_key)
                continue
            inner = key[len(fam.prefix):] if key.startswith(fam.prefix) else key
            if inner in (POSITION_KEY, TOKEN_TYPE_SOURCE_KEY):
                positions, token_types = (tensor, token_types) if inner == POSITION_KEY else (positions, tensor)
                continue
            found, templates = _match(ENCODER_KEY_MAP, inner)
            if found:
                for template in templates:
                    self.put(PREFIX + template.format(*found.groups()), tensor, raw_key)
            elif any(re.fullmatch(p, inner) for p in DROPPED_PATTERNS):
                self.report.dropped.append(raw_key)
            else:
                self.unexpected.append(raw_key)
        return positions, token_types

    def positions(self, positions: torch.Tensor | None, source_pad_token_id: int) -> None:
        """The source's learned rows moved to Recformer's numbering, repeated past their end when asked."""
        pos_key = PREFIX + POSITION_KEY
        pos_shape = self.targets[pos_key][0]
        if positions is None:
            raise ConversionError(f"the source has no {POSITION_KEY} (learned absolute positions are required)")
        if positions.shape[1] != self.config.hidden_size:
            self.mismatched.append(f"{POSITION_KEY}: source {tuple(positions.shape)} vs hidden size {self.config.hidden_size}")
            return
        first, learned = position_rows(positions.shape[0], self.family, source_pad_token_id)
        offset = self.config.pad_token_id + 1
        wanted = pos_shape[0] - offset
        table = torch.zeros(pos_shape, dtype=torch.float32)
        table[offset:] = positions[first:].float().repeat(-(-wanted // learned), 1)[:wanted]
        self.out[pos_key] = table
        self.report.reshaped.append(pos_key)
        self.report.notes.append(
            f"positions: source rows {first}..{first + learned - 1} -> Recformer rows {offset}..{offset + learned - 1} "
            f"(token positions 0..{learned - 1}); rows 0..{offset - 1} zero"
        )
        if wanted > learned:
            self.report.notes.append(
                f"positions extended: the {learned} learned positions repeated to {wanted} "
                f"({wanted / learned:.2g}x; tokens past {learned} reuse learned positions, see README)"
            )

    def token_types(self, token_types: torch.Tensor | None) -> None:
        """Every Recformer token-type row is the source's segment-0 vector (zero without a table)."""
        type_key = PREFIX + "embeddings.token_type_embeddings.weight"
        type_shape = self.targets[type_key][0]
        if token_types is None:
            self.out[type_key] = torch.zeros(type_shape)
            self.report.new.append(type_key)
            self.report.notes.append("token types: the source has none; every Recformer token-type row is zero")
        elif token_types.shape[1] != self.config.hidden_size:
            self.mismatched.append(
                f"{TOKEN_TYPE_SOURCE_KEY}: source {tuple(token_types.shape)} vs hidden size {self.config.hidden_size}"
            )
        else:
            self.out[type_key] = token_types[0].float().expand(type_shape).clone()
            self.report.reshaped.append(type_key)
            self.report.notes.append(f"token types: all {type_shape[0]} rows are the source's segment-0 vector")

    def refuse_misfits(self) -> None:
        if self.unexpected or self.mismatched:
            lines = [f"the {self.family.name} weights do not fit the Recformer config:"]
            if self.unexpected:
                lines.append(f"  keys Recformer has no place for: {_preview(self.unexpected, 12)}")
            if self.mismatched:
                lines.append("  shape mismatches: " + "; ".join(self.mismatched[:12]))
            raise ConversionError("\n".join(lines))

    def finish(self, generator: torch.Generator | None) -> None:
        """Item positions zero, the position-id buffer, every encoder tensor present, the masked-LM head."""
        item_key = PREFIX + "embeddings.item_position_embeddings.weight"
        self.out[item_key] = torch.zeros(self.targets[item_key][0])
        self.report.new.append(item_key)
        pos_key = PREFIX + POSITION_KEY
        self.out[PREFIX + "embeddings.position_ids"] = position_ids(self.targets[pos_key][0][0], self.out[pos_key])
        self.report.new.append(PREFIX + "embeddings.position_ids")
        missing = [k for k in self.targets if k.startswith(PREFIX) and k not in self.out]
        if missing:
            raise ConversionError(
                f"the {self.family.name} weights lack Recformer encoder tensors {_preview(missing, 12)} "
                f"(a source with fewer layers than num_hidden_layers={self.config.num_hidden_layers}?)"
            )
        _fill_lm_head(self.out, self.targets, self.config, self.report, generator)


def _fill_lm_head(out, targets, config: RecformerConfig, report: ConversionReport, generator) -> None:
    """A masked-LM head for whatever the source did not have: dense normal(0, initializer_range), LayerNorm
    ones/zeros, bias zero, decoder a copy of the word embeddings (as a tied head starts)."""
    words = out[PREFIX + "embeddings.word_embeddings.weight"]
    made = []
    for key, (shape, _dtype) in targets.items():
        if not key.startswith("lm_head.") or key in out or key == "lm_head.decoder.bias":
            continue
        if key == "lm_head.decoder.weight":
            out[key] = words.clone()
            report.filled.append(key)
            continue
        if key == "lm_head.dense.weight":
            out[key] = torch.randn(shape, generator=generator) * config.initializer_range
        elif key == "lm_head.layer_norm.weight":
            out[key] = torch.ones(shape)
        else:
            out[key] = torch.zeros(shape)
        made.append(key)
    report.new += made
    if made:
        report.notes.append("masked-LM head: the source has none; a new one (used by pretraining only)")
    report.filled += tie_lm_head_bias(out)
