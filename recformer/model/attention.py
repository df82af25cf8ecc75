"""Exact Longformer self-attention through SDPA and FlexAttention, and the choice among implementations.

What every implementation computes (transformers' `LongformerSelfAttention`, the `"eager"` reference):

- a non-global query attends, with the regular query/key/value projections, to the keys within
  +-attention_window/2 of it and to every global key, minus padding; a global key inside the band
  counts once; queries are scaled by 1/sqrt(head_dim);
- a global query is recomputed with `query_global`/`key_global`/`value_global` over all non-padding
  keys and overwrites its row;
- each layer has its own window.

The fast paths add what the reference cannot do: packed rows, where `segment_ids` keep the sequences
of one row apart (no attention across segments). Outputs at padding positions are unspecified (they
are finite: a padding query attends to itself) and never reach a real position.

Cost follows the band, not L^2: short rows use one dense boolean mask; long rows are cut into query
blocks of `block_size(window)` tokens, each attending to the keys of its span (the block plus
window/2 on each side) and to the row's global keys.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# defined in .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import ATTN_IMPLEMENTATIONS as ATTN_IMPLEMENTATIONS
from recformer.defaults import REFUSED_IMPLEMENTATIONS as REFUSED_IMPLEMENTATIONS
from recformer.defaults import check_attn_name
from recformer.errors import RecformerError
from recformer.model.attention_masks import (
    additive,
    block_columns,
    block_size,
    blocked_local_mask,
    dense_local_mask,
    flex_block_mask,
    global_row_mask,
)
from recformer.model.dropout import dropout as fast_dropout

logger = logging.getLogger(__name__)


class AttentionUnavailable(RecformerError, RuntimeError, ValueError):
    """An attention implementation that cannot run on the device or for the work (one line saying what is missing).

    A ValueError too, so that the commands report it as bad input, in one line."""


def check_attn_implementation(name: str | None) -> str:
    """The implementation to store on the config for a requested name (None means "auto").

    Raises:
        ValueError: for an unknown or refused name (one line, listing the valid names).
        ImportError: for "flex_attention" when this torch has no FlexAttention (torch < 2.5).
    """
    if name is None:
        return "auto"
    check_attn_name(name)
    if name == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        raise ImportError(
            f"attn_implementation='flex_attention' needs torch >= 2.5 (FlexAttention); this is torch {torch.__version__}"
        )
    return name


def flex_compiler_available(device: torch.device) -> bool:
    """Whether torch.compile can build FlexAttention kernels on `device` (CUDA: triton and sm >= 7.0)."""
    if device.type != "cuda":
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 7


# torch's compiled FlexAttention kernels need at least this head dimension (an Inductor lowering error below it)
FLEX_MIN_HEAD_DIM = 16


def resolve_attn_implementation(
    requested: str | None,
    device: torch.device,
    dropout_active: bool = False,
    needs_grad: bool = False,
    output_attentions: bool = False,
    head_dim: int | None = None,
) -> str:
    """The implementation one forward pass runs: "eager", "sdpa" or "flex_attention".

    "auto" runs SDPA on every device, and eager with `output_attentions` (the only one that returns
    attention probabilities). SDPA was measured the fastest everywhere by `bench/bench_throughput.py`:
    faster than eager at every length on CPU, and on an H200 at longformer-base size in bf16
    (`bench/results/gpu_throughput_h200.json`) 2.5x compiled FlexAttention's item-encoding speed and
    1.3x its finetuning and pretraining steps. FlexAttention stays available by name. An explicit name
    that cannot run here fails with one line naming what is missing; nothing falls back silently.
    `head_dim` (the model's hidden size per head), when given, is checked against what compiled
    FlexAttention can build on CUDA.
    """
    name = check_attn_implementation(requested)
    if name == "auto":
        chosen = "eager" if output_attentions else "sdpa"
        _log_auto_choice(device.type, chosen)
        return chosen
    if output_attentions and name != "eager":
        raise ValueError(f"output_attentions needs attn_implementation='eager' (or 'auto'), not {name!r}")
    if name == "flex_attention":
        if device.type == "cuda" and not flex_compiler_available(device):
            raise AttentionUnavailable(
                "attn_implementation='flex_attention' on CUDA needs triton (torch.compile's GPU compiler) and a "
                "GPU of compute capability >= 7.0; triton is missing or the GPU is older: install triton or use 'sdpa'"
            )
        if device.type == "cuda" and head_dim is not None and head_dim < FLEX_MIN_HEAD_DIM:
            raise AttentionUnavailable(
                f"attn_implementation='flex_attention' on CUDA needs a head dimension of at least {FLEX_MIN_HEAD_DIM} "
                f"(hidden_size / num_attention_heads), this model's is {head_dim}: use 'sdpa'"
            )
        if dropout_active:
            raise AttentionUnavailable(
                "attn_implementation='flex_attention' has no attention-probability dropout: set "
                "attention_probs_dropout_prob=0 or use 'sdpa' for training"
            )
        if needs_grad and device.type != "cuda":
            raise AttentionUnavailable(
                f"attn_implementation='flex_attention' cannot backpropagate on {device.type} (torch's FlexAttention "
                "has no backward there); use 'sdpa' or 'auto'"
            )
    return name


def configure_attention(model: nn.Module, requested: str | None, device: torch.device, training: bool = False) -> str:
    """Set `requested` on `model` (a Recformer model) and check at start-up that it runs on `device`.

    Fails before any data is read or any step runs, with the one line `resolve_attn_implementation`
    raises (e.g. flex_attention without a GPU compiler, or with attention dropout in training).
    Returns the implementation forward passes will run (what "auto" resolves to); logged once.
    """
    name = check_attn_implementation(requested)
    model.set_attn_implementation(name)
    dropout = training and model.config.attention_probs_dropout_prob > 0
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    chosen = resolve_attn_implementation(name, device, dropout_active=dropout, needs_grad=training, head_dim=head_dim)
    if name != "auto":
        _log_choice(name, device.type, chosen)
    return chosen


@functools.cache
def _log_choice(requested: str, device_type: str, chosen: str) -> None:
    logger.info("attn_implementation %r runs %r on %s", requested, chosen, device_type)


@functools.cache
def _log_auto_choice(device_type: str, chosen: str) -> None:
    logger.info("attn_implementation 'auto' runs %r on %s", chosen, device_type)


@functools.cache
def _flex_attention_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if compiled:
        return torch.compile(flex_attention)
    return flex_attention


def uses_blocks(length: int, one_sided_window: int) -> bool:
    """Whether a row of `length` tokens runs the banded SDPA path (else one dense [L, L] mask)."""
    return length > 2 * (block_size(one_sided_window) + 2 * one_sided_window)


@dataclass
class AttentionLayout:
    """Which keys each query may see, built once per forward pass and shared by every layer.

    Attributes:
        implementation: "sdpa" or "flex_attention".
        key_valid: [B, L] bool, real (non-padding) tokens.
        is_global: [B, L] bool, tokens with global attention.
        segment_ids: [B, L] long, the sequence each token belongs to (packed rows), or None.
        global_positions: [B, G] long, each row's global tokens in order, L in empty slots; None when
            the batch has no global token.
    """

    implementation: str
    key_valid: torch.Tensor
    is_global: torch.Tensor
    segment_ids: torch.Tensor | None = None
    global_positions: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        implementation: str,
        attention_mask: torch.Tensor,
        global_attention_mask: torch.Tensor | None = None,
        global_positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> AttentionLayout:
        """From the encoder inputs ([B, L] each). `global_positions` [B, G] (-1 in empty slots) saves
        the one host sync that finding the global tokens in `global_attention_mask` costs; when given,
        it is the list of global tokens and `global_attention_mask` is not read."""
        key_valid = attention_mask != 0  # [B, L]
        batch, length = key_valid.shape
        if global_positions is not None:
            if global_positions.dim() != 2 or global_positions.size(0) != batch:
                raise ValueError(
                    f"global_positions must be [batch={batch}, G], got shape {tuple(global_positions.shape)}"
                )
            positions = torch.where(global_positions >= 0, global_positions, length)  # [B, G]
            is_global = torch.zeros(batch, length + 1, dtype=torch.bool, device=key_valid.device)
            is_global = is_global.scatter(1, positions, True)[:, :length]
        elif global_attention_mask is not None:
            is_global = (global_attention_mask != 0) & key_valid
            positions = global_positions_from_mask(is_global)
        else:
            is_global = torch.zeros_like(key_valid)
            positions = None
        if positions is not None and positions.size(1) == 0:
            positions = None
        return cls(implementation, key_valid, is_global & key_valid, segment_ids, positions)

    @property
    def global_valid(self) -> torch.Tensor:
        """[B, G] bool: the slots of `global_positions` that hold a token."""
        return self.global_positions < self.key_valid.size(1)

    def global_segments(self) -> torch.Tensor:
        """[B, G] segment id of each global slot."""
        return self.segment_ids.gather(1, self.global_positions.clamp(max=self.key_valid.size(1) - 1))

    def cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def global_positions_from_mask(is_global: torch.Tensor) -> torch.Tensor | None:
    """[B, G] positions of the global tokens of each row (in order, L in empty slots), G the largest count.

    One host sync (reading G); None when no row has a global token.
    """
    counts = is_global.sum(dim=1)  # [B]
    most = int(counts.max()) if counts.numel() else 0
    if most == 0:
        return None
    length = is_global.size(1)
    # A stable sort puts each row's global positions first, in their order.
    order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :most]  # [B, G]
    filled = torch.arange(most, device=is_global.device) < counts.unsqueeze(1)
    return torch.where(filled, order, length)


# -- attention --------------------------------------------------------------------------------------


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H] -> [B, L, heads, H / heads] (a view)."""
    return x.view(*x.shape[:-1], heads, -1)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)`, [..., nh, Lq, d] each.

    With dropout on the CPU SDPA always takes its math path (its fused CPU kernel has no dropout). That path
    is written out here op for op, so outputs, gradients and random draws are bitwise the same (tested),
    without its guard against query rows that allow no key (two passes over the scores, and their backward):
    every mask of this module allows each query at least one key (its own position, or every key in an
    empty global slot). The attention's forward and backward take about 14% less time (demo shapes, 2-core CPU).
    """
    if not (dropout > 0 and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    factor = math.sqrt(1.0 / math.sqrt(q.size(-1)))  # SDPA scales q and k by sqrt(scale) each
    scores = torch.matmul(q * factor, k.transpose(-2, -1) * factor)
    scores.add_(mask)
    return torch.matmul(fast_dropout(torch.softmax(scores, -1), dropout), v)


def _dense_local(q, k, v, layout: AttentionLayout, w: int, dropout: float) -> torch.Tensor:
    mask = layout.cached(("dense", w, q.dtype), lambda: additive(dense_local_mask(layout, w), q.dtype))
    out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, dropout)  # [B, nh, L, d]
    return out.transpose(1, 2)


def _key_spans(x: torch.Tensor, layout: AttentionLayout, w: int) -> torch.Tensor:
    """The keys (or values) each query block reads, for training: [B, L, nh, d] -> [B * nb, nh, G + span, d], the
    row's global keys, then block i of the padded row and the first 2w positions of block i + 1 (2w <= s). A
    gather would backpropagate through scatter_add (slow on CPU); these slices do by slicing, 2x as fast as pad
    + unfold, whose backward sums the same two overlapping parts (bitwise the same gradients, tested)."""
    batch, length, heads, dim = x.shape
    s = block_size(w)
    nb = math.ceil(length / s)
    blocks = F.pad(x, (0, 0, 0, 0, w, (nb + 1) * s - length - w)).view(batch, nb + 1, s, heads, dim)
    parts = [blocks[:, :-1].transpose(2, 3), blocks[:, 1:, : 2 * w].transpose(2, 3)]  # [B, nb, nh, *, d]
    if layout.global_positions is not None:
        index = layout.global_positions.clamp(max=length - 1)[:, :, None, None].expand(-1, -1, heads, dim)
        parts.insert(0, x.gather(1, index).transpose(1, 2)[:, None].expand(-1, nb, -1, -1, -1))  # [B, nb, nh, G, d]
    return torch.cat(parts, dim=3).reshape(batch * nb, heads, -1, dim)


def _blocked_local(q, k, v, layout: AttentionLayout, w: int, dropout: float) -> torch.Tensor:
    """q, k, v [B, L, nh, d] -> [B, L, nh, d]; each query block sees its span plus the global keys."""
    batch, length, heads, dim = q.shape
    s = block_size(w)
    nb = math.ceil(length / s)
    mask = layout.cached(("blocks", w, q.dtype), lambda: additive(blocked_local_mask(layout, w), q.dtype))

    def keys(x: torch.Tensor) -> torch.Tensor:  # [B, L, nh, d] -> [B * nb, nh, G + span, d]
        if x.requires_grad and torch.is_grad_enabled():
            return _key_spans(x, layout, w)
        columns = layout.cached(("columns", w), lambda: block_columns(layout, w))  # [B * nb * (G + span)]
        flat = x.reshape(batch * length, heads * dim).index_select(0, columns)  # one gather
        return flat.view(batch * nb, -1, heads, dim).transpose(1, 2)

    qb = F.pad(q, (0, 0, 0, 0, 0, nb * s - length)) if length % s else q
    qb = qb.reshape(batch * nb, s, heads, dim).transpose(1, 2)  # [B * nb, nh, s, d]
    # 4-D inputs reach the fused CPU/GPU kernels; 5-D ones take the math path.
    out = _sdpa(qb, keys(k), keys(v), mask.flatten(0, 1), dropout)
    return out.view(batch, nb, heads, s, dim).transpose(2, 3).reshape(batch, nb * s, heads, dim)[:, :length]


def _flex_local(q, k, v, layout: AttentionLayout, w: int) -> torch.Tensor:
    block_mask = layout.cached(("flex", w), lambda: flex_block_mask(layout, w))
    flex = _flex_attention_fn(q.device.type == "cuda")
    out = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)  # [B, nh, L, d]
    return out.transpose(1, 2)


def local_attention(q, k, v, layout: AttentionLayout, w: int, dropout: float = 0.0) -> torch.Tensor:
    """Band + global-key attention of every query with the regular projections: [B, L, nh, d] each -> same."""
    if layout.implementation == "flex_attention":
        return _flex_local(q, k, v, layout, w)
    if uses_blocks(q.size(1), w):
        return _blocked_local(q, k, v, layout, w, dropout)
    return _dense_local(q, k, v, layout, w, dropout)


def fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """`layer(x)` for each layer, as one matrix product over the concatenated weights: [..., H] -> one
    [..., out_i] per layer. The parameters stay the layers' own (gradients flow back through the concatenation),
    so state-dict keys do not change."""
    weight = torch.cat([layer.weight for layer in layers])  # [sum out_i, H]
    biases = [layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features) for layer in layers]
    bias = torch.cat(biases) if any(layer.bias is not None for layer in layers) else None
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


def global_inputs(hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """The rows of the global tokens, [B, L, H] -> [B, G, H] (`layout.global_positions` order; empty slots
    repeat the last token)."""
    length, hidden = hidden_states.shape[1:]
    index = layout.global_positions.clamp(max=length - 1)[:, :, None].expand(-1, -1, hidden)
    return hidden_states.gather(1, index)


def global_rows(
    module: nn.Module, hidden_states: torch.Tensor, layout: AttentionLayout, inputs: torch.Tensor | None = None
) -> torch.Tensor:
    """The self-attention output of the global tokens, [B, L, H] -> [B, G, H] (`layout.global_positions`
    order; empty slots hold values that mean nothing): each global query, with `query_global`, over every
    real key of its sequence with `key_global`/`value_global`. `inputs`: `global_inputs(hidden_states,
    layout)` when the caller has them already.

    With few global tokens per row (G x heads < H) the key and value projections are moved to the query
    side instead of running over every token (the same sums, associated differently):
    q . (W_k x + b_k) = (W_k^T q) . x + q . b_k and sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v sum_j p_j,
    per head. That costs G x heads x L x H instead of 2 x L x H^2: for one global token per history, a
    fraction heads / H of the projections it replaces.
    """
    batch, length, hidden = hidden_states.shape
    heads = module.num_heads
    dropout = module.dropout if module.training else 0.0
    if inputs is None:
        inputs = global_inputs(hidden_states, layout)
    q_glob = _heads(module.query_global(inputs), heads)  # [B, G, nh, d]
    mask = layout.cached(("global", q_glob.dtype), lambda: additive(global_row_mask(layout), q_glob.dtype))
    count = q_glob.size(1)
    if count * heads >= hidden:
        k_glob, v_glob = (_heads(x, heads) for x in fused_linear(hidden_states, module.key_global, module.value_global))
        rows = _sdpa(q_glob.transpose(1, 2), k_glob.transpose(1, 2), v_glob.transpose(1, 2), mask, dropout)  # [B, nh, G, d]
        return rows.transpose(1, 2).reshape(batch, -1, hidden)  # [B, G, H]
    dim = hidden // heads
    key_w, value_w = (layer.weight.view(heads, dim, hidden) for layer in (module.key_global, module.value_global))
    queries = torch.einsum("bgnd,ndh->bgnh", q_glob, key_w).reshape(batch, count * heads, hidden)  # [B, G * nh, H]
    scores = torch.bmm(queries, hidden_states.transpose(1, 2)).view(batch, count, heads, length)  # [B, G, nh, L]
    if module.key_global.bias is not None:
        scores = scores + torch.einsum("bgnd,nd->bgn", q_glob, module.key_global.bias.view(heads, dim))[..., None]
    scores = scores * dim**-0.5 + mask.transpose(1, 2)  # mask [B, 1, G, L] -> [B, G, 1, L]
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)  # half precision: as SDPA, in float32
    probs = fast_dropout(torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(scores.dtype), dropout, module.training)
    mixed = torch.bmm(probs.view(batch, count * heads, length), hidden_states).view(batch, count, heads, hidden)
    rows = torch.einsum("bgnh,ndh->bgnd", mixed, value_w)  # [B, G, nh, d]
    if module.value_global.bias is not None:
        rows = rows + probs.sum(-1)[..., None] * module.value_global.bias.view(heads, dim).to(rows.dtype)
    return rows.reshape(batch, count, hidden).to(q_glob.dtype)  # the dtype SDPA would give (autocast)


def longformer_self_attention(module: nn.Module, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """What `LongformerSelfAttention` computes, from its parameters, for [B, L, H] hidden states -> [B, L, H]."""
    batch, length, hidden = hidden_states.shape
    heads, w = module.num_heads, module.one_sided_attn_window_size
    dropout = module.dropout if module.training else 0.0
    q, k, v = (_heads(x, heads) for x in fused_linear(hidden_states, module.query, module.key, module.value))
    out = local_attention(q, k, v, layout, w, dropout).reshape(batch, length, hidden)  # [B, L, H]
    if layout.global_positions is None:
        return out
    positions = layout.global_positions  # [B, G], L in empty slots
    rows = global_rows(module, hidden_states, layout)  # [B, G, H]
    # Empty slots write into an extra row that is cut off (positions are unique within a row otherwise).
    out = torch.cat([out, out.new_zeros(batch, 1, hidden)], dim=1)
    return out.scatter(1, positions[:, :, None].expand(-1, -1, hidden), rows)[:, :length]
