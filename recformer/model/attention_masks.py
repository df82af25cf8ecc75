"""The masks of the fast attention paths (`recformer.model.attention`): which keys each query may see, as
boolean tensors built once per forward pass from an `AttentionLayout` and cached on it, and the key
positions the banded path gathers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from recformer.model.attention import AttentionLayout


def block_size(one_sided_window: int) -> int:
    """Query block length of the banded SDPA path for a window of +-`one_sided_window` keys."""
    return max(2 * one_sided_window, 32)


def dense_local_mask(layout: AttentionLayout, w: int) -> torch.Tensor:
    """[B, 1, L, L] bool: band keys and global keys, real ones, same segment; the diagonal always."""
    length = layout.key_valid.size(1)
    i = torch.arange(length, device=layout.key_valid.device)
    band = (i[:, None] - i[None, :]).abs() <= w  # [L, L]
    allowed = layout.key_valid[:, None, :] & (band[None] | layout.is_global[:, None, :])  # [B, L, L]
    if layout.segment_ids is not None:
        allowed = allowed & (layout.segment_ids[:, :, None] == layout.segment_ids[:, None, :])
    return (allowed | torch.eye(length, dtype=torch.bool, device=allowed.device))[:, None]


def blocked_local_mask(layout: AttentionLayout, w: int) -> torch.Tensor:
    """[B, nb, 1, s, G + s + 2w] bool for the banded path: global columns first, then the block's span."""
    s = block_size(w)
    length = layout.key_valid.size(1)
    nb = math.ceil(length / s)
    span = s + 2 * w
    right = nb * s - length + w
    device = layout.key_valid.device
    a = torch.arange(s, device=device)[:, None]
    c = torch.arange(span, device=device)[None, :]
    band = (c - a >= 0) & (c - a <= 2 * w)  # [s, span]: key c of the span is within +-w of query a
    diagonal = c - a == w  # [s, span]
    # Global keys come in through the global columns, so the band leaves them out (counted once).
    band_key = layout.key_valid & ~layout.is_global if layout.global_positions is not None else layout.key_valid
    band_key = F.pad(band_key, (w, right), value=False).unfold(1, span, s)  # [B, nb, span]
    allowed = band & band_key[:, :, None, :]  # [B, nb, s, span]
    columns = []
    if layout.segment_ids is not None:
        seg_q = F.pad(layout.segment_ids, (0, nb * s - length), value=-1).view(-1, nb, s)  # [B, nb, s]
        seg_k = F.pad(layout.segment_ids, (w, right), value=-1).unfold(1, span, s)  # [B, nb, span]
        allowed = allowed & (seg_q[..., None] == seg_k[:, :, None, :])
    allowed = allowed | diagonal
    if layout.global_positions is not None:
        g = layout.global_valid[:, None, None, :]  # [B, 1, 1, G]
        if layout.segment_ids is not None:
            g = g & (seg_q[..., None] == layout.global_segments()[:, None, None, :])  # [B, nb, s, G]
        columns.append(g.expand(-1, nb, s, -1))
    return torch.cat(columns + [allowed], dim=-1)[:, :, None]


def global_row_mask(layout: AttentionLayout) -> torch.Tensor:
    """[B, 1, G, L] bool: a global query sees every real key of its segment; empty slots see every key."""
    allowed = layout.key_valid[:, None, :].expand(-1, layout.global_positions.size(1), -1)  # [B, G, L]
    if layout.segment_ids is not None:
        allowed = allowed & (layout.global_segments()[:, :, None] == layout.segment_ids[:, None, :])
    return (allowed | ~layout.global_valid[:, :, None])[:, None]


def flex_block_mask(layout: AttentionLayout, w: int):
    from torch.nn.attention.flex_attention import create_block_mask

    key_valid, is_global, segments = layout.key_valid, layout.is_global, layout.segment_ids

    def mask_mod(b, h, q, kv):
        allowed = key_valid[b, kv] & (((q - kv).abs() <= w) | is_global[b, kv])
        if segments is not None:
            allowed = allowed & (segments[b, q] == segments[b, kv])
        return allowed | (q == kv)

    batch, length = key_valid.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=key_valid.device)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, -inf elsewhere: SDPA's CPU kernel converts a boolean mask this way on every call."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def block_columns(layout: AttentionLayout, w: int) -> torch.Tensor:
    """[B * nb * (G + span)] flat key positions each query block reads: the row's global keys, then its span
    (positions past either end are clamped; the mask leaves them out)."""
    batch, length = layout.key_valid.shape
    s = block_size(w)
    nb = math.ceil(length / s)
    device = layout.key_valid.device
    spans = torch.arange(nb, device=device)[:, None] * s - w + torch.arange(s + 2 * w, device=device)[None, :]
    columns = spans.clamp(0, length - 1).expand(batch, -1, -1)  # [B, nb, span]
    if layout.global_positions is not None:
        glob = layout.global_positions.clamp(max=length - 1)[:, None, :].expand(-1, nb, -1)  # [B, nb, G]
        columns = torch.cat([glob, columns], dim=-1)
    rows = torch.arange(batch, device=device)[:, None, None] * length
    return (columns + rows).reshape(-1)  # flat indices into [B * L]
