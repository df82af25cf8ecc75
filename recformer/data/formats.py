"""The processed folders: every file's name and JSON shape, defined once for the writers and the readers.

Finetuning folder (the reference format; `finetune_writer` writes it, `finetune_reader` reads it), one
category with 0-based ids: ``umap.json``, ``smap.json``, ``train.json`` (each user's items but the last
two), ``val.json`` (the second-to-last item), ``test.json`` (the last item), ``meta_data.json`` (every item
of the meta file that has a title; readers keep those in ``smap.json``) and ``stats.json``.

Pretraining folder (`pretrain_writer` writes it, `pretrain_reader` reads it): ``meta_data.json`` from the
meta step; ``train.json`` and ``dev.json`` (one chronological asin list per reviewer and review file) from
the sequence step; and ``stats.json``, which each step writes (the sequence step's replaces the meta step's).

Completion: a step removes its stale stats file first, writes its data files (each atomically) and its stats
file last, so a folder with a stats file holds the complete output of one run of that step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recformer.fileio import atomic_write_json


@dataclass(frozen=True)
class DataFile:
    """One JSON file of a processed folder: its name, its JSON shape and an example of that shape."""

    name: str
    shape: str
    example: str

    def describe(self) -> str:
        """The shape with its example, as error messages quote it after "expected a"."""
        return f"{self.shape} (e.g. {self.example})"


ITEM_META = DataFile(
    "meta_data.json",
    "JSON object mapping each asin to its attributes",
    '{"B0001": {"title": "...", "brand": "...", "category": "..."}}',
)
STATS = DataFile(
    "stats.json", "indented JSON object of what a step read, kept and dropped", '{"users": 2, ...}'
)


@dataclass(frozen=True)
class FinetuneFormat:
    """The files of a finetuning folder."""

    umap: DataFile = DataFile("umap.json", "JSON object {reviewerID: user id}", '{"A2SUAM1J3GNN3B": 0}')
    smap: DataFile = DataFile("smap.json", "JSON object {asin: item id}", '{"B0001": 0, "B0002": 1}')
    train: DataFile = DataFile("train.json", "JSON object {user id: [item ids]}", '{"0": [3, 1, 2]}')
    val: DataFile = DataFile("val.json", "JSON object {user id: [item id]}", '{"0": [0]}')
    test: DataFile = DataFile("test.json", "JSON object {user id: [item id]}", '{"0": [4]}')
    meta_data: DataFile = ITEM_META
    stats: DataFile = STATS

    @property
    def data_files(self) -> tuple[DataFile, ...]:
        """The data files in the order the writer writes them (``stats.json`` comes after)."""
        return (self.umap, self.smap, self.train, self.val, self.test, self.meta_data)


@dataclass(frozen=True)
class PretrainFormat:
    """The files of a pretraining folder."""

    meta_data: DataFile = ITEM_META
    train: DataFile = DataFile("train.json", "JSON list of asin lists", '[["B0001", "B0002"], ...]')
    dev: DataFile = DataFile("dev.json", "JSON list of asin lists", '[["B0001", "B0002"], ...]')
    stats: DataFile = STATS


FINETUNE = FinetuneFormat()
PRETRAIN = PretrainFormat()


def begin_output(output_dir: str | os.PathLike, stats: DataFile = STATS) -> Path:
    """Create the output folder and remove a stale stats file (the completion mark, rewritten last)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (output_dir / stats.name).unlink()
    return output_dir


def finish_output(output_dir: Path, stats: Mapping[str, Any], stats_file: DataFile = STATS) -> None:
    """Write the stats file, the completion mark of the step (after every data file)."""
    atomic_write_json(output_dir / stats_file.name, stats, indent=True)
