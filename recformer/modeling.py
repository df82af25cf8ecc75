"""Recformer models: the encoder, the pretraining model and the sequential-recommendation model.

The encoder is Longformer's (`transformers.models.longformer`) with Recformer's embeddings in front
of it and a parameter-free pooler behind it. Parameter names and shapes match the reference
checkpoints exactly (see `tests/test_state_dict_keys.py`).

Importing this module registers the models with transformers' auto classes (`register_auto_models`), so
that `AutoModel.from_pretrained(folder)` of any folder this package saved returns a `RecformerModel`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForPreTraining, PreTrainedModel
from transformers import initialization as hf_init
from transformers.models.longformer.modeling_longformer import (
    LongformerEncoder,
    LongformerLayer,
    LongformerLMHead,
)
from transformers.pytorch_utils import apply_chunking_to_forward
from transformers.utils import ModelOutput

from .attention import (
    AttentionLayout,
    check_attn_implementation,
    global_inputs,
    global_rows,
    longformer_self_attention,
    resolve_attn_implementation,
)
from .configuration import RecformerConfig
from .model_card import write_model_card

logger = logging.getLogger(__name__)


@dataclass
class RecformerModelOutput(ModelOutput):
    """Encoder output: `last_hidden_state` [B, L, H], `pooler_output` [B, H] (packed input: [N, H], one
    row per sequence)."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    global_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RecformerPretrainingOutput(ModelOutput):
    """Pretraining output.

    `loss` = contrastive loss + mlm_weight * (MLM loss a + MLM loss b); `logits` is the [B, B]
    similarity matrix (rows: histories, columns: targets); `cl_correct_num` counts rows whose
    argmax is the diagonal; `cl_total_num` is the number of rows.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cl_correct_num: torch.Tensor | None = None
    cl_total_num: int | None = None
    cl_loss: torch.FloatTensor | None = None
    mlm_loss_a: torch.FloatTensor | None = None
    mlm_loss_b: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    global_attentions: tuple[torch.FloatTensor, ...] | None = None


def create_position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa-style positions over the whole sequence: padding_idx + 1, + 2, ... for real tokens; pads get padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


class RecformerEmbeddings(nn.Module):
    """As LongformerEmbeddings, plus an item-position table and a `token_type_size`-row token-type table."""

    def __init__(self, config: RecformerConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
        )
        self.token_type_embeddings = nn.Embedding(config.token_type_size, config.hidden_size)
        self.item_position_embeddings = nn.Embedding(config.max_item_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Persistent, as in the reference checkpoints (`embeddings.position_ids` [1, P]).
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=True
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        item_position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if position_ids is None:
            if input_ids is None:
                raise ValueError("position_ids are required when input_ids are not given")
            position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(position_ids)
        embeddings = (
            inputs_embeds
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.item_position_embeddings(item_position_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class RecformerPooler(nn.Module):
    """Parameter-free pooler: `cls` takes token 0, `avg` is the mean over real tokens."""

    def __init__(self, config: RecformerConfig):
        super().__init__()
        self.pooler_type = config.pooler_type

    def forward(
        self,
        attention_mask: torch.Tensor,
        hidden_states: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        sequence_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L, H] -> [B, H]; for packed rows (`segment_ids` [B, L], `sequence_starts` [N] flat
        indices of each sequence's first token) -> [N, H], one vector per sequence."""
        if self.pooler_type not in ("cls", "avg"):
            raise ValueError(f"unknown pooler_type {self.pooler_type!r}")
        if segment_ids is None:
            if self.pooler_type == "cls":
                return hidden_states[:, 0]  # [B, H]
            mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # [B, L, 1]
            return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        flat = hidden_states.reshape(-1, hidden_states.size(-1))  # [B * L, H]
        if self.pooler_type == "cls":
            return flat[sequence_starts]  # [N, H]
        mask = attention_mask.reshape(-1, 1).to(flat.dtype)  # [B * L, 1]
        index = segment_ids.reshape(-1).clamp(min=0)  # padding (segment -1) adds zeros to sequence 0
        num = len(sequence_starts)
        sums = flat.new_zeros(num, flat.size(-1)).index_add(0, index, flat * mask)
        counts = mask.new_zeros(num, 1).index_add(0, index, mask)
        return sums / counts.clamp(min=1.0)


class Similarity(nn.Module):
    """Cosine similarity divided by a temperature, as a matrix product.

    `forward(x [B, H], y [N, H]) -> [B, N]`. Same numbers as `nn.CosineSimilarity(dim=-1)` on the
    broadcast `x[:, None]` / `y[None]` pair, without materialising [B, N, H].
    """

    eps = 1e-8

    def __init__(self, config: RecformerConfig):
        super().__init__()
        self.temp = config.temp

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, y_norm: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """With `out` (a [B, N] buffer of x's dtype; no autograd), the scores are written into it in place,
        so scoring chunk after chunk allocates nothing."""
        x = x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)
        if y_norm is None:
            y_norm = y.norm(dim=-1)
        scores = torch.matmul(x, y.to(x.dtype).transpose(-1, -2), out=out)  # [B, N]
        divisor = y_norm.to(scores.dtype).clamp(min=self.eps) * self.temp
        return scores.div_(divisor) if out is not None else scores / divisor


class RecformerPreTrainedModel(PreTrainedModel):
    """Base of the Recformer models: weight init and the attention implementation setting.

    `config._attn_implementation` (also `from_pretrained(..., attn_implementation=...)`,
    `RecformerConfig(attn_implementation=...)` or `model.set_attn_implementation(...)`) is one of
    `recformer.attention.ATTN_IMPLEMENTATIONS`; unset means "auto", resolved on each forward pass
    for the input's device (see `recformer.attention.resolve_attn_implementation`).
    """

    config_class = RecformerConfig
    base_model_prefix = "longformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LongformerSelfAttention"]
    _supports_sdpa = True
    _supports_flex_attn = True

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        # Recformer's own names and checks replace transformers' (which know no "auto" and fall back silently).
        return check_attn_implementation(attn_implementation)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        return check_attn_implementation(requested_attention)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """transformers' `save_pretrained`, plus a model card (`README.md`, `recformer.model_card`): the
        method, the model, the run's data and metrics when the folder is in a finetuning run, how to load it."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(save_directory, type(self).__name__, self.config)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RecformerEmbeddings):
            hf_init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, LongformerLMHead):
            hf_init.zeros_(module.bias)


class RecformerModel(RecformerPreTrainedModel):
    """The Recformer encoder: Recformer embeddings + Longformer encoder + parameter-free pooler.

    Example:
        >>> batch = tokenizer([[item_a, item_b], [item_c]], return_tensor=True)
        >>> out = model(**batch)  # out.last_hidden_state [B, L, H], out.pooler_output [B, H]
    """

    def __init__(self, config: RecformerConfig):
        super().__init__(config)
        if isinstance(config.attention_window, int):
            config.attention_window = [config.attention_window] * config.num_hidden_layers
        if len(config.attention_window) != config.num_hidden_layers:
            raise ValueError(
                f"attention_window has {len(config.attention_window)} values for {config.num_hidden_layers} layers"
            )
        for w in config.attention_window:
            if w <= 0 or w % 2:
                raise ValueError(f"every attention_window value must be a positive even number, got {w}")
        config.validate_recformer_fields()
        self.embeddings = RecformerEmbeddings(config)
        self.encoder = LongformerEncoder(config)
        self.pooler = RecformerPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _pad_to_window_size(self, input_ids, attention_mask, token_type_ids, position_ids, item_position_ids):
        """Right-pad every input to a multiple of the largest attention window (as the reference does)."""
        window = max(self.config.attention_window)
        seq_len = input_ids.shape[1]
        padding_len = (window - seq_len % window) % window
        if padding_len > 0:
            pad = self.config.pad_token_id
            input_ids = F.pad(input_ids, (0, padding_len), value=pad)
            if position_ids is not None:
                position_ids = F.pad(position_ids, (0, padding_len), value=pad)
            item_position_ids = F.pad(item_position_ids, (0, padding_len), value=pad)
            attention_mask = F.pad(attention_mask, (0, padding_len), value=0)
            token_type_ids = F.pad(token_type_ids, (0, padding_len), value=0)
        return padding_len, input_ids, attention_mask, token_type_ids, position_ids, item_position_ids

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        item_position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        global_positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        sequence_starts: torch.Tensor | None = None,
        pooled_only: bool = False,
    ) -> RecformerModelOutput | tuple:
        """Encode a padded batch, or packed rows of several sequences each.

        Args:
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                item_position_ids: [B, L] each, as the tokenizer gives them (position_ids optional).
            global_positions: optional [B, G] positions of the global tokens of each row (-1 in
                empty slots); saves the host sync of finding them in `global_attention_mask` on the
                sdpa/flex paths, and must list exactly the tokens that mask marks.
            segment_ids: packed rows: [B, L] index of the sequence each token belongs to (-1 on
                padding); attention never crosses sequences. Needs `position_ids` (restarting per
                sequence) and `sequence_starts` [N] (flat index `row * L + column` of each
                sequence's first token); `recformer.packing.pack_sequences` builds all of them.
            pooled_only: the caller reads only `pooler_output`. With the `cls` pooler on the sdpa/flex paths,
                and every pooled token global (as the tokenizer marks `<s>`), the last layer then runs only
                for the global tokens: the same pooled vectors (float rounding aside), `last_hidden_state`
                None. One host sync checks that the pooled tokens are global; otherwise, and with
                `output_hidden_states`, the whole encoder runs as usual.

        Returns:
            hidden states [B, L, H] and pooled vectors: [B, H], or [N, H] for packed rows.
        """
        if inputs_embeds is not None:
            raise NotImplementedError("RecformerModel takes input_ids; inputs_embeds is not supported")
        if input_ids is None:
            raise ValueError("input_ids are required")
        if item_position_ids is None:
            raise ValueError(
                "item_position_ids are required: Recformer adds an item-position embedding to every token. "
                "Build inputs with RecformerTokenizer (or a recformer collator), which returns them."
            )
        if head_mask is not None:
            raise NotImplementedError("head_mask is not supported by the Longformer encoder")
        if input_ids.dim() == 1:  # one unbatched sequence, as `tokenizer(sequence, return_tensor=True)` gives
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids = (
                None if t is None else t.unsqueeze(0)
                for t in (input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids)
            )
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if item_position_ids.shape != input_ids.shape:
            raise ValueError(
                f"item_position_ids shape {tuple(item_position_ids.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if segment_ids is not None:
            self._check_packed_inputs(input_ids, position_ids, segment_ids, sequence_starts)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if global_attention_mask is None and global_positions is not None:
            global_attention_mask = self._mask_from_positions(global_positions, input_ids.shape[1])
        implementation = self.running_implementation(input_ids.device, bool(output_attentions))
        if implementation == "eager":
            if segment_ids is not None:
                raise ValueError(
                    "packed inputs (segment_ids) need attn_implementation 'sdpa', 'flex_attention' or 'auto': "
                    "the eager Longformer attention cannot keep the sequences of a row apart"
                )
            outputs = self._encode_eager(
                input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids,
                output_attentions, output_hidden_states,
            )
        else:
            embedding_output = self.embeddings(
                input_ids=input_ids,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                item_position_ids=item_position_ids,
            )
            layout = AttentionLayout.build(
                implementation, attention_mask, global_attention_mask, global_positions, segment_ids
            )
            slots = None
            if pooled_only and self.pooler.pooler_type == "cls" and not output_hidden_states:
                slots = _pooled_global_slots(layout, sequence_starts)
            if slots is not None:
                rows = self._encode_fast(embedding_output, layout, False, last_layer_rows=True)[0]  # [B, G, H]
                pooled_output = rows.reshape(-1, rows.size(-1))[slots]  # [B or N, H]
                out = RecformerModelOutput(pooler_output=pooled_output)
                return out if return_dict else (pooled_output,)
            outputs = self._encode_fast(embedding_output, layout, output_hidden_states)
        sequence_output = outputs[0]  # [B, L, H]
        pooled_output = self.pooler(attention_mask, sequence_output, segment_ids, sequence_starts)  # [B or N, H]
        hidden_states, attentions, global_attentions = (outputs[1:] + (None, None, None))[:3]
        if not return_dict:
            return tuple(
                v
                for v in (sequence_output, pooled_output, hidden_states, attentions, global_attentions)
                if v is not None
            )
        return RecformerModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=hidden_states,
            attentions=attentions,
            global_attentions=global_attentions,
        )

    def running_implementation(self, device: torch.device, output_attentions: bool = False) -> str:
        """The attention implementation a forward pass on `device` runs now (`resolve_attn_implementation` of the
        config's, given training mode, attention dropout and whether gradients are needed)."""
        dropout_active = self.training and self.config.attention_probs_dropout_prob > 0
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        return resolve_attn_implementation(
            self.config._attn_implementation, device, dropout_active, needs_grad, output_attentions
        )

    @staticmethod
    def _check_packed_inputs(input_ids, position_ids, segment_ids, sequence_starts) -> None:
        if segment_ids.shape != input_ids.shape:
            raise ValueError(f"segment_ids shape {tuple(segment_ids.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if position_ids is None:
            raise ValueError("packed inputs (segment_ids) need position_ids that restart with every sequence")
        if sequence_starts is None or sequence_starts.dim() != 1:
            raise ValueError("packed inputs (segment_ids) need sequence_starts: [N] flat index of each sequence's first token")

    @staticmethod
    def _mask_from_positions(global_positions: torch.Tensor, length: int) -> torch.Tensor:
        """[B, L] 0/1 global attention mask from [B, G] positions (-1 in empty slots)."""
        positions = torch.where(global_positions >= 0, global_positions, length)
        mask = torch.zeros(positions.size(0), length + 1, dtype=torch.long, device=positions.device)
        return mask.scatter(1, positions, 1)[:, :length]

    def _encode_eager(
        self,
        input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids,
        output_attentions, output_hidden_states,
    ) -> tuple:
        """transformers' Longformer encoder: inputs padded to a multiple of the window, chunked attention."""
        # 0: no attention, 1: local (sliding window), 2: global.
        if global_attention_mask is not None:
            attention_mask = attention_mask * (global_attention_mask + 1)
        padding_len, input_ids, attention_mask, token_type_ids, position_ids, item_position_ids = (
            self._pad_to_window_size(input_ids, attention_mask, token_type_ids, position_ids, item_position_ids)
        )
        embedding_output = self.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            item_position_ids=item_position_ids,
        )
        # Longformer's self-attention reads only the sign: < 0 masked, 0 local, > 0 global.
        dtype = embedding_output.dtype
        extended_attention_mask = (1.0 - attention_mask.to(dtype)) * torch.finfo(dtype).min  # [B, L]
        outputs = self.encoder(
            embedding_output,
            attention_mask=extended_attention_mask,
            padding_len=padding_len,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )  # hidden states un-padded to the input length
        return outputs.last_hidden_state, outputs.hidden_states, outputs.attentions, outputs.global_attentions

    def _encode_fast(
        self, hidden_states: torch.Tensor, layout: AttentionLayout, output_hidden_states: bool,
        last_layer_rows: bool = False,
    ) -> tuple:
        """The Longformer layers, run with the SDPA/FlexAttention self-attention (same parameters).

        `last_layer_rows`: the last layer computes only the rows of the global tokens, [B, G, H] in
        `layout.global_positions` order (`_global_rows_layer`), instead of [B, L, H].
        """
        all_hidden_states = () if output_hidden_states else None
        layers = list(self.encoder.layer)
        for index, layer in enumerate(layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            run = _global_rows_layer if last_layer_rows and index == len(layers) - 1 else _fast_layer
            if layer.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = layer._gradient_checkpointing_func(run, layer, hidden_states, layout)
            else:
                hidden_states = run(layer, hidden_states, layout)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return hidden_states, all_hidden_states


def _fast_layer(layer: LongformerLayer, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """One `LongformerLayer` with its self-attention computed by `longformer_self_attention`: [B, L, H] -> same."""
    attention = layer.attention
    attn_output = attention.output(longformer_self_attention(attention.self, hidden_states, layout), hidden_states)
    return _feed_forward(layer, attn_output)


def _global_rows_layer(layer: LongformerLayer, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """The rows of the global tokens of `_fast_layer`'s output, [B, L, H] -> [B, G, H]: a global token's output
    reads its own input row and the global keys/values of all tokens, never the other tokens' outputs, so the
    regular Q/K/V, the band attention, the output projection and the feed-forward of the other rows are skipped."""
    attention = layer.attention
    inputs = global_inputs(hidden_states, layout)  # [B, G, H]
    attn_output = attention.output(global_rows(attention.self, hidden_states, layout, inputs), inputs)
    return _feed_forward(layer, attn_output)


# CPU inference runs the feed-forward on blocks of this many tokens, the last block padded to a multiple of
# FEED_FORWARD_ROUND: a bounded working set, and a bounded number of shapes, whatever the batch. (oneDNN, which
# computes the CPU GELU, compiles and caches a kernel per shape; with a shape per batch its cache grew and
# pinned freed memory, so a run's resident memory kept growing.)
FEED_FORWARD_TOKENS = 4096
FEED_FORWARD_ROUND = 256


def _feed_forward(layer: LongformerLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's feed-forward block (intermediate + output) on [B, L, H] -> same; row by row, so blocks
    of tokens give the same values as the whole."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or layer.chunk_size_feed_forward:
        return apply_chunking_to_forward(layer.ff_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, x)
    flat = x.reshape(-1, x.size(-1))  # [T, H]
    out = None
    for start in range(0, flat.size(0), FEED_FORWARD_TOKENS):
        block = flat[start : start + FEED_FORWARD_TOKENS]
        rows = block.size(0)
        padded = -(-rows // FEED_FORWARD_ROUND) * FEED_FORWARD_ROUND
        if padded != rows:
            block = F.pad(block, (0, 0, 0, padded - rows))
        done = layer.ff_chunk(block)[:rows]
        if out is None:  # the block's dtype (autocast may change it)
            out = done.new_empty(flat.shape)
        out[start : start + rows] = done
    return flat if out is None else out.view_as(x)


@torch.compiler.disable  # its host sync splits a compiled forward in two; run it as it is
def _pooled_global_slots(layout: AttentionLayout, sequence_starts: torch.Tensor | None) -> torch.Tensor | None:
    """[B or N] flat index into the [B * G] global rows (`_global_rows_layer`) of each sequence's first token
    (the `cls` pooler's), or None when one of them is not a global token (one host sync)."""
    if layout.global_positions is None:
        return None
    batch, length = layout.key_valid.shape
    if sequence_starts is None:
        sequence_starts = torch.arange(batch, device=layout.key_valid.device) * length
    row, column = sequence_starts // length, sequence_starts % length
    match = layout.global_positions[row] == column[:, None]  # [N, G]
    if not bool(match.any(dim=1).all()):
        return None
    return row * layout.global_positions.size(1) + match.int().argmax(dim=1)


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
    them) saves the host sync of finding them in `labels`.
    """
    if positions is None:
        positions = (labels.reshape(-1) != -100).nonzero().squeeze(1)  # [M]; one host sync
    if positions.numel() == 0:  # a shape: known on the host
        return lm_head(hidden_states[:, :1]).sum() * 0.0
    picked = hidden_states.reshape(-1, hidden_states.size(-1)).index_select(0, positions)  # [M, H]
    scores = lm_head(picked)  # [M, V]
    return F.cross_entropy(scores.float(), labels.reshape(-1).index_select(0, positions))


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

    # Merged passes (same loss and gradients as four passes; dropout draws differ): one pass per side with its
    # MLM copy in the same batch. False runs the four passes of the reference.
    merge_passes = True
    # One packed pass for both sides and their MLM copies (`_encode_sides_packed`, sdpa/flex paths), also the
    # same loss and gradients. Off: on CPU it was slower than a pass per side (bench_throughput.py, hidden 256,
    # batch 16, up to 1,024 tokens: 1.63 against 2.15 sequences/s; the shorter side's rows give every row
    # ~25 global-token slots); the bench's pretrain part measures "sdpa:one_pass" against "sdpa" on a GPU too.
    pack_sides = False

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

    def _packs_sides(self, input_ids_a, mlm_input_ids_a, side_a, mlm_input_ids_b, side_b, output_attentions, output_hidden_states) -> bool:
        """Whether both sides and their MLM copies run as one packed pass: merged passes, an sdpa/flex path (eager
        cannot keep packed sequences apart), both MLM copies, global positions given, no extra outputs."""
        if not (self.merge_passes and self.pack_sides) or output_attentions or output_hidden_states:
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
                 "item_position_ids": self.config.max_item_embeddings - 1}  # fmt: skip
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
    ) -> RecformerPretrainingOutput:
        """`global_positions_*` [B, G] and `mlm_positions_*` [M] (flat indices of the masked tokens), as
        `PretrainCollator` gives them, spare the host syncs of finding them on the device."""
        if inputs_embeds is not None or return_dict is False:
            raise NotImplementedError("RecformerForPretraining takes input ids and always returns a RecformerPretrainingOutput")
        if head_mask is not None:
            raise NotImplementedError("head_mask is not supported by the Longformer encoder")
        side_a = dict(
            attention_mask=attention_mask_a,
            global_attention_mask=global_attention_mask_a,
            token_type_ids=token_type_ids_a,
            item_position_ids=item_position_ids_a,
            global_positions=global_positions_a,
        )
        side_b = dict(
            attention_mask=attention_mask_b,
            global_attention_mask=global_attention_mask_b,
            token_type_ids=token_type_ids_b,
            item_position_ids=item_position_ids_b,
            global_positions=global_positions_b,
        )
        if self._packs_sides(input_ids_a, mlm_input_ids_a, side_a, mlm_input_ids_b, side_b, output_attentions, output_hidden_states):
            (outputs_a, mlm_hidden_a), (outputs_b, mlm_hidden_b) = self._encode_sides_packed(
                [(input_ids_a, mlm_input_ids_a, side_a), (input_ids_b, mlm_input_ids_b, side_b)]
            )
        else:
            outputs_a, mlm_hidden_a = self._encode_side(
                input_ids_a, mlm_input_ids_a, side_a,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )  # fmt: skip
            outputs_b, mlm_hidden_b = self._encode_side(input_ids_b, mlm_input_ids_b, side_b)
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


def draw_candidates(
    labels: torch.Tensor, num_items: int, num_negatives: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B, 1 + K] item ids: each row's positive `labels[b]` first, then K negatives drawn uniformly from
    the other `num_items - 1` items (never the positive), on `labels`' device."""
    if num_items < 2:
        raise ValueError("sampled softmax needs at least 2 items")
    shape = (labels.size(0), num_negatives)
    neg = torch.randint(0, num_items - 1, shape, device=labels.device, generator=generator)
    neg = neg + (neg >= labels.unsqueeze(-1)).long()  # skip the positive
    return torch.cat([labels.unsqueeze(-1), neg], dim=-1)


class RecformerForSeqRec(RecformerPreTrainedModel):
    """Sequential recommendation: score a user's history against a frozen table of item vectors.

    `init_item_embedding(tensor [N, H])` sets the table (and `config.item_num`). Without labels,
    `forward` returns scores [B, N] (cosine / temp); with labels it returns the loss: full softmax
    over all N items when `finetune_negative_sample_size <= 0`, else the positive plus K sampled
    negatives (never the positive itself) with target index 0. `candidates` [B, 1 + K] given with
    the labels (the positive first, as `draw_candidates` makes them) are used instead of drawing.
    """

    def __init__(self, config: RecformerConfig):
        super().__init__(config)
        self.longformer = RecformerModel(config)
        self.sim = Similarity(config)
        self.item_embedding: nn.Embedding | None = None
        if config.item_num > 0:  # a finetuned model restored by from_pretrained carries its table
            self.item_embedding = nn.Embedding(config.item_num, config.hidden_size)
            self.item_embedding.weight.requires_grad_(False)
        self._item_norm_cache: tuple | None = None
        self.post_init()

    def init_item_embedding(self, embeddings: torch.Tensor | None = None) -> None:
        """Set the item table from `embeddings` [N, H] (frozen); without it, a random [item_num, H] table."""
        if embeddings is None:
            if self.config.item_num <= 0:
                raise ValueError("init_item_embedding() without a tensor needs config.item_num > 0")
            table = nn.Embedding(self.config.item_num, self.config.hidden_size)
            self._init_weights(table)
            embeddings = table.weight.detach()
        if embeddings.dim() != 2 or embeddings.size(1) != self.config.hidden_size:
            raise ValueError(
                f"item embeddings must be [num_items, {self.config.hidden_size}], got {tuple(embeddings.shape)}"
            )
        device = self.longformer.embeddings.word_embeddings.weight.device
        self.item_embedding = nn.Embedding.from_pretrained(embeddings.detach().to(device), freeze=True)
        self.config.item_num = embeddings.size(0)
        self._item_norm_cache = None

    def _require_items(self) -> nn.Embedding:
        if self.item_embedding is None:
            raise RuntimeError("the item table is not set: call init_item_embedding(item_vectors) first")
        return self.item_embedding

    def item_norms(self) -> torch.Tensor:
        """L2 norm of every item vector [N], cached until the table changes."""
        weight = self._require_items().weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.device)
        if self._item_norm_cache is None or self._item_norm_cache[0] != key:
            self._item_norm_cache = (key, weight.detach().norm(dim=-1))
        return self._item_norm_cache[1]

    def similarity_score(
        self, pooler_output: torch.Tensor, candidates: torch.Tensor | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Scores (cosine / temp) of `pooler_output` [B, H] against the item table: every item ([B, N]) or
        each row's `candidates` [B, C] ([B, C]).

        With `chunk_size`, the full-table scores are computed `chunk_size` items at a time into a
        float32 [B, N] result, so no intermediate is larger than [B, chunk] (the same numbers as one
        product); use it for evaluation against large catalogues.
        """
        table = self._require_items()
        if candidates is None:
            weight, norms = table.weight, self.item_norms()
            n = weight.size(0)
            if chunk_size is None or n <= chunk_size:
                return self.sim(pooler_output, weight, y_norm=norms)  # [B, N]
            scores = torch.empty(pooler_output.size(0), n, dtype=torch.float32, device=pooler_output.device)
            for start in range(0, n, chunk_size):
                end = min(start + chunk_size, n)
                scores[:, start:end] = self.sim(pooler_output, weight[start:end], y_norm=norms[start:end])
            return scores
        cand = table(candidates)  # [B, C, H]
        scores = torch.einsum("bh,bch->bc", F.normalize(pooler_output, dim=-1, eps=Similarity.eps), cand.to(pooler_output.dtype))
        return scores / (cand.norm(dim=-1).to(scores.dtype).clamp(min=Similarity.eps) * self.sim.temp)

    def sample_candidates(self, labels: torch.Tensor, num_negatives: int) -> torch.Tensor:
        """[B, 1 + K]: the positive first, then K uniform negatives drawn from the other items
        (`draw_candidates` with torch's global generator)."""
        return draw_candidates(labels, self._require_items().num_embeddings, num_negatives)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        item_position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        candidates: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        global_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        outputs = self.longformer(
            global_positions=global_positions,
            input_ids=input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            head_mask=head_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            item_position_ids=item_position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pooled_only=not torch.is_grad_enabled(),  # inference; under autograd the check's host sync would stall
        )
        pooled = outputs.pooler_output  # [B, H]
        if labels is None:
            return self.similarity_score(pooled, candidates)
        labels = labels.reshape(-1)
        if candidates is not None:  # drawn by the caller (`collators.FinetuneCollator`), the positive first
            logits = self.similarity_score(pooled, candidates).float()  # [B, 1 + K]
            return F.cross_entropy(logits, torch.zeros_like(labels))
        k = self.config.finetune_negative_sample_size
        if k <= 0:
            logits = self.similarity_score(pooled)  # [B, N]
            return F.cross_entropy(logits.float(), labels)
        logits = self.similarity_score(pooled, self.sample_candidates(labels, k))  # [B, 1 + K]
        return F.cross_entropy(logits.float(), torch.zeros_like(labels))


def register_auto_models() -> None:
    """Register the models with transformers' auto classes for `model_type: recformer`:
    `AutoModel` -> `RecformerModel` (the encoder; a `RecformerForSeqRec` or pretraining folder gives its
    encoder, as `AutoModel` does for any model with a head) and `AutoModelForPreTraining` ->
    `RecformerForPretraining`. No auto class of transformers means sequential recommendation, so
    `RecformerForSeqRec` is loaded by name (`RecformerForSeqRec.from_pretrained(folder)`).

    Called once when this module is imported, as transformers' own model modules are registered by
    importing them (importing `recformer.configuration`, which this module does, registers the config).
    Idempotent (`exist_ok=True`, the same classes each time); it adds mappings for `RecformerConfig` only
    and changes nothing for transformers' own model types.
    """
    AutoModel.register(RecformerConfig, RecformerModel, exist_ok=True)
    AutoModelForPreTraining.register(RecformerConfig, RecformerForPretraining, exist_ok=True)


register_auto_models()

# The tokenizer module registers RecformerTokenizer with AutoTokenizer when imported; importing it here
# makes one import (any model class) enough for every auto class.
from . import tokenization as _tokenization  # noqa: E402, F401
