"""Recformer: text-only sequential recommendation with a Longformer-derived encoder.

The public names are loaded on first use, so `import recformer.data` (data processing) does not
pay for torch and transformers. Nothing here imports Lightning or DeepSpeed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": ".io.checkpoint_files",
    "LoadReport": ".io.checkpoint",
    "load_checkpoint": ".io.checkpoint",
    "read_state_dict": ".io.checkpoint_files",
    "RecformerConfig": ".model.configuration",
    "ranking_metrics": ".metrics",
    "RecformerForPretraining": ".model.modeling_pretraining",
    "RecformerForSeqRec": ".model.modeling",
    "RecformerModel": ".model.modeling",
    "RecformerModelOutput": ".model.layers",
    "RecformerPretrainingOutput": ".model.layers",
    "Recommender": ".inference.recommender",
    "RecformerTokenizer": ".model.tokenization",
}

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
    "Recommender",
    "load_checkpoint",
    "ranking_metrics",
    "read_state_dict",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from recformer.inference.recommender import Recommender
    from recformer.io.checkpoint import LoadReport, load_checkpoint
    from recformer.io.checkpoint_files import CheckpointError, read_state_dict
    from recformer.metrics import ranking_metrics
    from recformer.model.configuration import RecformerConfig
    from recformer.model.layers import RecformerModelOutput, RecformerPretrainingOutput
    from recformer.model.modeling import RecformerForSeqRec, RecformerModel
    from recformer.model.modeling_pretraining import RecformerForPretraining
    from recformer.model.tokenization import RecformerTokenizer
