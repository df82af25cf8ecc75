"""Recformer: text-only sequential recommendation with a Longformer-derived encoder.

Importing this package loads torch and transformers only (no Lightning, no DeepSpeed).
"""

from .checkpoint import CheckpointError, LoadReport, load_checkpoint, read_state_dict
from .configuration import RecformerConfig
from .metrics import ranking_metrics
from .modeling import (
    RecformerForPretraining,
    RecformerForSeqRec,
    RecformerModel,
    RecformerModelOutput,
    RecformerPretrainingOutput,
)
from .tokenization import RecformerTokenizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "LoadReport",
    "RecformerConfig",
    "RecformerForPretraining",
    "RecformerForSeqRec",
    "RecformerModel",
    "RecformerModelOutput",
    "RecformerPretrainingOutput",
    "RecformerTokenizer",
    "load_checkpoint",
    "ranking_metrics",
    "read_state_dict",
]
