"""The building blocks of the Recformer encoder: outputs, embeddings, the pooler, the similarity, and one
Longformer layer run through the SDPA/FlexAttention self-attention (`recformer.model.attention`).

`modeling.py` assembles them into `RecformerModel`; nothing here holds parameters of its own beyond
transformers' layers and the embedding tables, whose names match the reference checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.longformer.modeling_longformer import LongformerLayer
from transformers.pytorch_utils import apply_chunking_to_forward
from transformers.utils import ModelOutput

from recformer.model.attention import AttentionLayout, global_inputs, global_rows, longformer_self_attention
from recformer.model.configuration import RecformerConfig


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


def fast_layer(layer: LongformerLayer, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """One `LongformerLayer` with its self-attention computed by `longformer_self_attention`: [B, L, H] -> same."""
    attention = layer.attention
    attn_output = attention.output(longformer_self_attention(attention.self, hidden_states, layout), hidden_states)
    return feed_forward(layer, attn_output)


def global_rows_layer(layer: LongformerLayer, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """The rows of the global tokens of `fast_layer`'s output, [B, L, H] -> [B, G, H]: a global token's output
    reads its own input row and the global keys/values of all tokens, never the other tokens' outputs, so the
    regular Q/K/V, the band attention, the output projection and the feed-forward of the other rows are skipped."""
    attention = layer.attention
    inputs = global_inputs(hidden_states, layout)  # [B, G, H]
    attn_output = attention.output(global_rows(attention.self, hidden_states, layout, inputs), inputs)
    return feed_forward(layer, attn_output)


# CPU inference runs the feed-forward on blocks of this many tokens, the last block padded to a multiple of
# FEED_FORWARD_ROUND: a bounded working set, and a bounded number of shapes, whatever the batch. (oneDNN, which
# computes the CPU GELU, compiles and caches a kernel per shape; with a shape per batch its cache grew and
# pinned freed memory, so a run's resident memory kept growing.)
FEED_FORWARD_TOKENS = 4096
FEED_FORWARD_ROUND = 256


def feed_forward(layer: LongformerLayer, x: torch.Tensor) -> torch.Tensor:
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
def pooled_global_slots(layout: AttentionLayout, sequence_starts: torch.Tensor | None) -> torch.Tensor | None:
    """[B or N] flat index into the [B * G] global rows (`global_rows_layer`) of each sequence's first token
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
