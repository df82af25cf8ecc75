"""The hand-worked raw files, written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import write_gz
from . import finetune_case, pretrain_case


@pytest.fixture
def finetune_raw(tmp_path) -> tuple[Path, Path]:
    """(review file, meta file) of the finetuning case."""
    return (
        write_gz(tmp_path / "Tiny_5.json.gz", finetune_case.REVIEW_LINES),
        write_gz(tmp_path / "meta_Tiny.json.gz", finetune_case.META_LINES),
    )


@pytest.fixture
def pretrain_raw(tmp_path) -> Path:
    """The folder holding the pretraining case's review and meta files of every category."""
    root = tmp_path / "raw"
    root.mkdir()
    for name, lines in pretrain_case.RAW.items():
        write_gz(root / name, lines)
    return root
