"""What pretraining and finetuning share about optimisation: AdamW parameter groups."""

from __future__ import annotations

from typing import Any

from torch import nn

# Parameter names that get no weight decay (biases and LayerNorm weights, as in the reference).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group and a no-decay group (biases, LayerNorm weights)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(nd in name for nd in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
