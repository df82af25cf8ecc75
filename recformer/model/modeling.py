"""Recformer models: the encoder and the sequential-recommendation model (the pretraining model is in
`modeling_pretraining.py`, the building blocks in `layers.py`).

The encoder is Longformer's (`transformers.models.longformer`) with Recformer's embeddings in front
of it and a parameter-free pooler behind it. Parameter names and shapes match the reference
checkpoints exactly (see `tests/test_state_dict_keys.py`).

Importing this module registers the models with transformers' auto classes (`register_auto_models`), so
that `AutoModel.from_pretrained(folder)` of any folder this package saved returns a `RecformerModel`.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as hf_init
from transformers.models.longformer.modeling_longformer import LongformerEncoder, LongformerLMHead

from recformer.io.model_card import write_model_card
from recformer.model.attention import AttentionLayout, check_attn_implementation, resolve_attn_implementation
from recformer.model.configuration import RecformerConfig
from recformer.model.dropout import use_fast_dropout
from recformer.model.layers import (
    RecformerEmbeddings,
    RecformerModelOutput,
    RecformerPooler,
    Similarity,
    draw_candidates,
    fast_layer,
    global_rows_layer,
    pooled_global_slots,
)

logger = logging.getLogger(__name__)


class RecformerPreTrainedModel(PreTrainedModel):
    """Base of the Recformer models: weight init and the attention implementation setting.

    `config._attn_implementation` (also `from_pretrained(..., attn_implementation=...)`,
    `RecformerConfig(attn_implementation=...)` or `model.set_attn_implementation(...)`) is one of
    `recformer.model.attention.ATTN_IMPLEMENTATIONS`; unset means "auto", resolved on each forward pass
    for the input's device (see `recformer.model.attention.resolve_attn_implementation`).
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
        """transformers' `save_pretrained`, plus a model card (`README.md`, `recformer.io.model_card`): the
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
        use_fast_dropout(self)
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
                sequence's first token); `recformer.model.packing.pack_sequences` builds all of them.
            pooled_only: the caller reads only `pooler_output`: with the `cls` pooler on the sdpa/flex
                paths, the last layer runs for the global tokens alone (`_pool_global_rows`; the same
                vectors, `last_hidden_state` None).

        Returns:
            hidden states [B, L, H] and pooled vectors: [B, H], or [N, H] for packed rows.
        """
        fields = (input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids)
        input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids = (
            self._check_inputs(fields, head_mask, inputs_embeds, global_positions, segment_ids, sequence_starts)
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
                input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                item_position_ids=item_position_ids,
            )  # fmt: skip
            layout = AttentionLayout.build(
                implementation, attention_mask, global_attention_mask, global_positions, segment_ids
            )
            if pooled_only and self.pooler.pooler_type == "cls" and not output_hidden_states:
                pooled_output = self._pool_global_rows(embedding_output, layout, sequence_starts)
                if pooled_output is not None:
                    out = RecformerModelOutput(pooler_output=pooled_output)
                    return out if return_dict else (pooled_output,)
            outputs = self._encode_fast(embedding_output, layout, output_hidden_states)
        sequence_output = outputs[0]  # [B, L, H]
        pooled_output = self.pooler(attention_mask, sequence_output, segment_ids, sequence_starts)  # [B or N, H]
        hidden_states, attentions, global_attentions = (outputs[1:] + (None, None, None))[:3]
        if not return_dict:
            values = (sequence_output, pooled_output, hidden_states, attentions, global_attentions)
            return tuple(v for v in values if v is not None)
        return RecformerModelOutput(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states,
            attentions=attentions, global_attentions=global_attentions,
        )  # fmt: skip

    def _pool_global_rows(
        self, embedding_output: torch.Tensor, layout: AttentionLayout, sequence_starts: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The `cls` pooled vectors [B or N, H] with the last layer run for the global tokens alone (the same
        vectors, float rounding aside), or None when a pooled token is not global (one host sync checks;
        the whole encoder then runs)."""
        slots = pooled_global_slots(layout, sequence_starts)
        if slots is None:
            return None
        rows = self._encode_fast(embedding_output, layout, False, last_layer_rows=True)[0]  # [B, G, H]
        return rows.reshape(-1, rows.size(-1))[slots]  # [B or N, H]

    def _check_inputs(self, fields: tuple, head_mask, inputs_embeds, global_positions, segment_ids, sequence_starts) -> tuple:
        """Refuse inputs the encoder cannot take (one line each), batch a single sequence, and fill the
        optional masks. `fields` and the result: (input_ids, attention_mask, global_attention_mask,
        token_type_ids, position_ids, item_position_ids), each [B, L] or None."""
        input_ids, item_position_ids = fields[0], fields[5]
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
            fields = tuple(None if t is None else t.unsqueeze(0) for t in fields)
        input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids = fields
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if item_position_ids.shape != input_ids.shape:
            raise ValueError(
                f"item_position_ids shape {tuple(item_position_ids.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if segment_ids is not None:
            self._check_packed_inputs(input_ids, position_ids, segment_ids, sequence_starts)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if global_attention_mask is None and global_positions is not None:
            global_attention_mask = self._mask_from_positions(global_positions, input_ids.shape[1])
        return input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids, item_position_ids

    def running_implementation(self, device: torch.device, output_attentions: bool = False) -> str:
        """The attention implementation a forward pass on `device` runs now (`resolve_attn_implementation` of the
        config's, given training mode, attention dropout and whether gradients are needed)."""
        dropout_active = self.training and self.config.attention_probs_dropout_prob > 0
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        return resolve_attn_implementation(
            self.config._attn_implementation, device, dropout_active, needs_grad, output_attentions, head_dim
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
        `layout.global_positions` order (`global_rows_layer`), instead of [B, L, H].
        """
        all_hidden_states = () if output_hidden_states else None
        layers = list(self.encoder.layer)
        for index, layer in enumerate(layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            run = global_rows_layer if last_layer_rows and index == len(layers) - 1 else fast_layer
            if layer.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = layer._gradient_checkpointing_func(run, layer, hidden_states, layout)
            else:
                hidden_states = run(layer, hidden_states, layout)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return hidden_states, all_hidden_states


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
        segment_ids: torch.Tensor | None = None,
        sequence_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, candidates], or with `labels` the mean loss. Histories come padded [B, L], or packed
        (`segment_ids`, `sequence_starts`, `position_ids`, as `packing.pack_sequences` lays them out: B
        sequences in fewer rows, on the sdpa/flex paths), which gives the same pooled vectors."""
        outputs = self.longformer(
            global_positions=global_positions,
            segment_ids=segment_ids,
            sequence_starts=sequence_starts,
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
        pooled = outputs.pooler_output  # [B, H], one per sequence (packed too)
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
    """Register `RecformerModel` with transformers' `AutoModel` for `model_type: recformer` (a
    `RecformerForSeqRec` or pretraining folder gives its encoder, as `AutoModel` does for any model with a
    head). `AutoModelForPreTraining` -> `RecformerForPretraining` is registered by `modeling_pretraining`.
    No auto class of transformers means sequential recommendation, so `RecformerForSeqRec` is loaded by name.

    Called once when this module is imported, as transformers' own model modules are registered by importing
    them (importing `recformer.model.configuration`, which this module does, registers the config).
    Idempotent (`exist_ok=True`, the same classes each time); it adds mappings for `RecformerConfig` only and
    changes nothing for transformers' own model types.
    """
    AutoModel.register(RecformerConfig, RecformerModel, exist_ok=True)


register_auto_models()

# The pretraining model registers AutoModelForPreTraining and the tokenizer module AutoTokenizer when
# imported; importing them here makes one import (any model class) enough for every auto class.
import recformer.model.modeling_pretraining  # noqa: E402, F401
import recformer.model.tokenization  # noqa: E402, F401
