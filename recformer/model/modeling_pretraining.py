"""The pretraining model: a history (side a) and its next item (side b) encoded by one `RecformerModel`,
an in-batch contrastive loss between them, and whole-word MLM on both sides through an untied LM head."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForPreTraining
from transformers.models.longformer.modeling_longformer import LongformerLMHead

from recformer.model.configuration import RecformerConfig
from recformer.model.layers import (
    RecformerModelOutput,
    RecformerPretrainingOutput,
    Similarity,
    create_position_ids_from_input_ids,
)
from recformer.model.layout import pad_item_position
from recformer.model.modeling import RecformerModel, RecformerPreTrainedModel


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather `x` along dim 0 across ranks, keeping the gradient of the local slice (SimCSE style)."""
    world_size = dist.get_world_size()
    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def _mlm_loss(
    lm_head: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens of the batch.

    The LM head runs on the masked positions only ([M, H] -> [M, V] instead of [B, L, V]): the same
    loss as scoring every position, with a fraction of the memory and compute. A side with nothing
    masked contributes 0 (the reference returns NaN), keeping the LM head in the graph. `positions`
    [M] (flat indices `row * L + column` of the masked tokens, as the pretraining collator gives
    them) saves the host sync of finding them in `labels`. `labels` is [B, L] (-100 where nothing is
    masked), or [M], the labels of `positions` already picked (packed batches).
    """
    if positions is None:
        positions = (labels.reshape(-1) != -100).nonzero().squeeze(1)  # [M]; one host sync
    if positions.numel() == 0:  # a shape: known on the host
        return lm_head(hidden_states.reshape(-1, hidden_states.size(-1))[:1]).sum() * 0.0
    picked = hidden_states.reshape(-1, hidden_states.size(-1)).index_select(0, positions)  # [M, H]
    scores = lm_head(picked)  # [M, V]
    targets = labels if labels.dim() == 1 else labels.reshape(-1).index_select(0, positions)
    return F.cross_entropy(scores.float(), targets)


def _side(attention_mask, global_attention_mask, token_type_ids, item_position_ids, global_positions) -> dict:
    """The encoder inputs of one side of a padded pretraining batch, beside its input ids."""
    return dict(attention_mask=attention_mask, global_attention_mask=global_attention_mask,
                token_type_ids=token_type_ids, item_position_ids=item_position_ids, global_positions=global_positions)  # fmt: skip


class RecformerForPretraining(RecformerPreTrainedModel):
    """Recformer pretraining: in-batch contrastive loss between a history (side a) and its next item
    (side b), plus whole-word MLM on both sides through an untied Longformer LM head."""

    # The LM head's output bias is one parameter under two names, as in the reference state dict.
    _tied_weights_keys = {"lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: RecformerConfig):
        super().__init__(config)
        self.longformer = RecformerModel(config)
        self.lm_head = LongformerLMHead(config)
        self.lm_head.decoder.bias = self.lm_head.bias
        self.sim = Similarity(config)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # Independent of `tie_word_embeddings`: the word embeddings are never tied to the decoder.
        return dict(self._tied_weights_keys)

    # One pass per side with its MLM copy in the same batch (the same loss and gradients as four passes; dropout
    # draws differ). False runs the reference's four passes, which tests compare against.
    merge_passes = True

    def _encode_side(
        self, input_ids: torch.Tensor, mlm_input_ids: torch.Tensor | None, inputs: dict, **options
    ) -> tuple[RecformerModelOutput, torch.Tensor | None]:
        """(encoder output of the side, last hidden states of its MLM copy or None): [B, L] inputs each."""
        if mlm_input_ids is None:
            return self.longformer(input_ids=input_ids, **inputs, **options), None
        if not self.merge_passes or any(options.values()):
            mlm = self.longformer(input_ids=mlm_input_ids, **inputs)
            return self.longformer(input_ids=input_ids, **inputs, **options), mlm.last_hidden_state
        batch = input_ids.size(0)
        doubled = {k: None if v is None else torch.cat([v, v]) for k, v in inputs.items()}
        out = self.longformer(input_ids=torch.cat([input_ids, mlm_input_ids]), **doubled)  # [2B, L]
        side = RecformerModelOutput(last_hidden_state=out.last_hidden_state[:batch], pooler_output=out.pooler_output[:batch])
        return side, out.last_hidden_state[batch:]

    def _encode_sides(self, a: tuple, b: tuple, output_attentions, output_hidden_states) -> list:
        """[(side output, MLM copy's hidden states or None)] of sides a and b, each given as (input_ids,
        mlm_input_ids, inputs): one packed pass (`config.pack_sides`) or one pass per side."""
        if self._packs_sides(a[0], a[1], a[2], b[1], b[2], output_attentions, output_hidden_states):
            return self._encode_sides_packed([a, b])
        options = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        return [self._encode_side(*a, **options), self._encode_side(*b)]

    def _packs_sides(self, input_ids_a, mlm_input_ids_a, side_a, mlm_input_ids_b, side_b, output_attentions, output_hidden_states) -> bool:
        """Whether both sides and their MLM copies run as one packed pass: merged passes, an sdpa/flex path (eager
        cannot keep packed sequences apart), both MLM copies, global positions given, no extra outputs."""
        if not (self.merge_passes and self.config.pack_sides) or output_attentions or output_hidden_states:
            return False
        if mlm_input_ids_a is None or mlm_input_ids_b is None:
            return False
        if side_a["global_positions"] is None or side_b["global_positions"] is None:
            return False
        return self.longformer.running_implementation(input_ids_a.device) != "eager"

    def _encode_sides_packed(self, sides: list) -> list[tuple[RecformerModelOutput, torch.Tensor]]:
        """Both sides, each with its MLM copy, in one encoder pass: [(side output, MLM copy's hidden states)].

        The longer side's 2B sequences are rows of their own; the shorter side's 2B sequences are laid k to a
        row (k = longer length // shorter length), as packed sequences (`segment_ids`): each keeps its own
        positions and global tokens and attends only to itself, so the outputs are those of separate passes
        (tested), with the shorter side's padding as its only cost. Shapes only: no host sync.
        """
        pad = self.config.pad_token_id
        stacked = []
        for input_ids, mlm_input_ids, inputs in sides:
            ids = torch.cat([input_ids, mlm_input_ids])  # [2B, L]
            mask = inputs["attention_mask"] if inputs["attention_mask"] is not None else torch.ones_like(input_ids)
            types = inputs["token_type_ids"] if inputs["token_type_ids"] is not None else torch.zeros_like(input_ids)
            stacked.append({
                "input_ids": ids,
                "attention_mask": torch.cat([mask, mask]),
                "token_type_ids": torch.cat([types, types]),
                "item_position_ids": torch.cat([inputs["item_position_ids"]] * 2),
                "position_ids": create_position_ids_from_input_ids(ids, pad),
                "global_positions": torch.cat([inputs["global_positions"]] * 2),
            })  # fmt: skip
        long_index = 0 if stacked[0]["input_ids"].size(1) >= stacked[1]["input_ids"].size(1) else 1
        rows, short = stacked[long_index], stacked[1 - long_index]
        count, width = rows["input_ids"].shape  # 2B sequences of each side
        length = short["input_ids"].size(1)
        per_row = width // length
        short_rows = -(-count // per_row)
        fill = short_rows * per_row - count  # empty sequences completing the last row
        device = rows["input_ids"].device
        fills = {"input_ids": pad, "attention_mask": 0, "token_type_ids": 0, "position_ids": pad,
                 "item_position_ids": pad_item_position(self.config)}  # fmt: skip
        packed = {}
        for name, value in fills.items():
            tiled = F.pad(short[name], (0, 0, 0, fill), value=value).reshape(short_rows, per_row * length)
            packed[name] = torch.cat([rows[name], F.pad(tiled, (0, width - per_row * length), value=value)])
        sequence = torch.arange(2 * count + fill, device=device)
        real = packed["attention_mask"] != 0
        segments = torch.cat([sequence[:count, None].expand(-1, width), torch.full((short_rows, width), -1, device=device)])
        tiled_segments = (sequence[count:, None] + torch.zeros(1, length, dtype=torch.long, device=device)).reshape(short_rows, -1)
        segments[count:, : per_row * length] = tiled_segments
        packed["segment_ids"] = torch.where(real, segments, -1)
        offsets = (torch.arange(count + fill, device=device) % per_row * length)[:, None]  # each short sequence's column
        short_globals = F.pad(short["global_positions"], (0, 0, 0, fill), value=-1)
        short_globals = torch.where(short_globals >= 0, short_globals + offsets, -1).reshape(short_rows, -1)
        most = max(rows["global_positions"].size(1), short_globals.size(1))
        packed["global_positions"] = torch.cat([
            F.pad(rows["global_positions"], (0, most - rows["global_positions"].size(1)), value=-1),
            F.pad(short_globals, (0, most - short_globals.size(1)), value=-1),
        ])  # fmt: skip
        short_starts = (count + torch.arange(count, device=device) // per_row) * width + offsets[:count, 0]
        packed["sequence_starts"] = torch.cat([torch.arange(count, device=device) * width, short_starts])
        out = self.longformer(**packed)
        hidden, pooled = out.last_hidden_state, out.pooler_output  # [R, W, H], [4B, H]
        batch = count // 2
        long_hidden = hidden[:count]
        short_hidden = hidden[count:, : per_row * length].reshape(short_rows * per_row, length, -1)[:count]
        results = [None, None]
        for index, side_hidden, side_pooled in ((long_index, long_hidden, pooled[:count]),
                                                (1 - long_index, short_hidden, pooled[count:])):  # fmt: skip
            side = RecformerModelOutput(last_hidden_state=side_hidden[:batch], pooler_output=side_pooled[:batch])
            results[index] = (side, side_hidden[batch:])
        return results

    def _encode_packed_pairs(
        self, packed: Mapping[str, torch.Tensor], extra_outputs: bool | None, mlm: tuple
    ) -> tuple[RecformerModelOutput, RecformerModelOutput, torch.Tensor]:
        """(side a's pooled output, side b's, the last hidden states of all the packed rows [R, W, H]) of a
        packed batch: 4B sequences, side a, its MLM copy, side b, its MLM copy (`forward`'s `packed`). `mlm`:
        the MLM positions and labels of both sides, which such a batch must have."""
        if extra_outputs:
            raise ValueError("packed pretraining batches return no attentions or hidden states: pass padded ones")
        if any(value is None for value in mlm):
            raise ValueError("packed pretraining batches need mlm_positions_a/b and mlm_labels_a/b")
        out = self.longformer(**packed)
        pooled = out.pooler_output  # [4B, H]
        if pooled.size(0) % 4:
            raise ValueError(f"a packed pretraining batch holds 4 sequences a pair, got {pooled.size(0)} sequences")
        batch = pooled.size(0) // 4
        side_a = RecformerModelOutput(pooler_output=pooled[:batch])
        side_b = RecformerModelOutput(pooler_output=pooled[2 * batch : 3 * batch])
        return side_a, side_b, out.last_hidden_state

    def forward(
        self,
        input_ids_a: torch.Tensor | None = None,
        attention_mask_a: torch.Tensor | None = None,
        global_attention_mask_a: torch.Tensor | None = None,
        token_type_ids_a: torch.Tensor | None = None,
        item_position_ids_a: torch.Tensor | None = None,
        mlm_input_ids_a: torch.Tensor | None = None,
        mlm_labels_a: torch.Tensor | None = None,
        input_ids_b: torch.Tensor | None = None,
        attention_mask_b: torch.Tensor | None = None,
        global_attention_mask_b: torch.Tensor | None = None,
        token_type_ids_b: torch.Tensor | None = None,
        item_position_ids_b: torch.Tensor | None = None,
        mlm_input_ids_b: torch.Tensor | None = None,
        mlm_labels_b: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        global_positions_a: torch.Tensor | None = None,
        global_positions_b: torch.Tensor | None = None,
        mlm_positions_a: torch.Tensor | None = None,
        mlm_positions_b: torch.Tensor | None = None,
        packed: Mapping[str, torch.Tensor] | None = None,
    ) -> RecformerPretrainingOutput:
        """`global_positions_*` [B, G] and `mlm_positions_*` [M] (flat indices of the masked tokens), as
        `PretrainCollator` gives them, spare the host syncs of finding them on the device.

        `packed` (`PretrainCollator(pack_tokens=...)`) replaces the `*_a`/`*_b` inputs: both sides and their MLM
        copies as packed rows, the `RecformerModel` inputs of 4B sequences in the order side a, its MLM copy,
        side b, its MLM copy. `mlm_positions_*` then index those rows and `mlm_labels_*` [M] are their labels.
        """
        if inputs_embeds is not None or return_dict is False:
            raise NotImplementedError("RecformerForPretraining takes input ids and always returns a RecformerPretrainingOutput")
        if head_mask is not None:
            raise NotImplementedError("head_mask is not supported by the Longformer encoder")
        if packed is not None:
            mlm = (mlm_positions_a, mlm_positions_b, mlm_labels_a, mlm_labels_b)
            outputs_a, outputs_b, mlm_hidden_a = self._encode_packed_pairs(packed, output_attentions or output_hidden_states, mlm)
            mlm_hidden_b = mlm_hidden_a  # the positions of both sides index the same rows
        else:
            side_a = _side(attention_mask_a, global_attention_mask_a, token_type_ids_a, item_position_ids_a, global_positions_a)
            side_b = _side(attention_mask_b, global_attention_mask_b, token_type_ids_b, item_position_ids_b, global_positions_b)
            (outputs_a, mlm_hidden_a), (outputs_b, mlm_hidden_b) = self._encode_sides(
                (input_ids_a, mlm_input_ids_a, side_a), (input_ids_b, mlm_input_ids_b, side_b),
                output_attentions, output_hidden_states,
            )  # fmt: skip
        z1, z2 = outputs_a.pooler_output, outputs_b.pooler_output  # [B, H] each
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            z1, z2 = _gather_with_grad(z1), _gather_with_grad(z2)  # [B * world, H]

        cos_sim = self.sim(z1, z2)  # [B, B]
        labels = torch.arange(cos_sim.size(0), device=cos_sim.device)
        cl_loss = F.cross_entropy(cos_sim.float(), labels)
        correct_num = (cos_sim.argmax(dim=1) == labels).sum()
        loss = cl_loss

        mlm_loss_a = mlm_loss_b = None
        if mlm_hidden_a is not None:
            mlm_loss_a = _mlm_loss(self.lm_head, mlm_hidden_a, mlm_labels_a, mlm_positions_a)
            loss = loss + self.config.mlm_weight * mlm_loss_a
        if mlm_hidden_b is not None:
            mlm_loss_b = _mlm_loss(self.lm_head, mlm_hidden_b, mlm_labels_b, mlm_positions_b)
            loss = loss + self.config.mlm_weight * mlm_loss_b

        return RecformerPretrainingOutput(
            loss=loss,
            logits=cos_sim,
            cl_correct_num=correct_num,
            cl_total_num=cos_sim.size(0),
            cl_loss=cl_loss,
            mlm_loss_a=mlm_loss_a,
            mlm_loss_b=mlm_loss_b,
            hidden_states=outputs_a.hidden_states,
            attentions=outputs_a.attentions,
            global_attentions=outputs_a.global_attentions,
        )


# Registered when this module is imported (idempotent; see `modeling.register_auto_models`).
AutoModelForPreTraining.register(RecformerConfig, RecformerForPretraining, exist_ok=True)
