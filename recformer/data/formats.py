"""The processed folders: every file's name and JSON shape, and how a step writes them, defined once for the
writers and the readers.

Finetuning folder (the reference format; `finetune_writer` writes it, `finetune_reader` reads it), one
category with 0-based ids: ``umap.json``, ``smap.json``, ``train.json`` (each user's items but the last
two), ``val.json`` (the second-to-last item), ``test.json`` (the last item), ``meta_data.json`` (every item
of the meta file that has a title; readers keep those in ``smap.json``) and ``stats.json``. Every input
format (Amazon 2018, RecBole atomic files, CSV/TSV/JSON-lines tables) gives this folder; the README's "The
processed finetuning folder" describes it for users.

Pretraining folder (`pretrain_writer` writes it, `pretrain_reader` reads it), written by two steps: the meta
step writes ``meta_data.json`` and ``meta_stats.json``; the interaction step writes ``train.json`` and
``dev.json`` (one chronological asin list per reviewer and review file) and ``interaction_stats.json``.

Completion (`StepOutput`): a step writes each file beside its target first, so a run that fails or is killed
while reading or writing leaves the folder as it was. Only then does it put the files in place: it creates
the step's in-progress marker, renames every file over its target, writes its manifest (the size and
SHA-256 of each file it wrote) and removes the marker. Readers (`read_step_json`) refuse a folder holding the
marker, and a file that differs from the manifest's record, so they see one run's complete output or
nothing. A folder without manifest or marker (written by the original scripts) is read as it is.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recformer.io.fileio import (
    FileDigest,
    StagedFiles,
    atomic_write_bytes,
    atomic_write_text,
    dumps_json,
    fsync_dir,
    parse_json,
    read_bytes,
    remove_stale_temp_files,
)
from recformer.io.output_paths import check_output_dir as check_location


@dataclass(frozen=True)
class DataFile:
    """One JSON file of a processed folder: its name, its JSON shape and an example of that shape."""

    name: str
    shape: str
    example: str

    def describe(self) -> str:
        """The shape with its example, as error messages quote it after "expected a"."""
        return f"{self.shape} (e.g. {self.example})"


@dataclass(frozen=True)
class Step:
    """One processing step: the command, the files it writes into its output folder, and its completion files.

    ``manifest`` (written last) records the size and SHA-256 of every file the step wrote; ``marker`` exists
    only while the step is putting its files in place.
    """

    command: str
    data_files: tuple[DataFile, ...]
    stats: DataFile
    manifest: str

    @property
    def marker(self) -> str:
        return f"{self.manifest}.incomplete"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every name the step writes in its folder."""
        return (*(f.name for f in self.data_files), self.stats.name, self.manifest, self.marker)


ITEM_META = DataFile(
    "meta_data.json",
    "JSON object mapping each asin to its attributes",
    '{"B0001": {"title": "...", "brand": "...", "category": "..."}}',
)


def stats_file(name: str) -> DataFile:
    return DataFile(name, "indented JSON object of what a step read, kept and dropped", '{"users": 2, ...}')


STATS = stats_file("stats.json")


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

    @property
    def step(self) -> Step:
        command = "recformer-process-finetune (finetune_data/process.py)"
        return Step(command, self.data_files, self.stats, "manifest.json")


@dataclass(frozen=True)
class PretrainFormat:
    """The files of a pretraining folder, written by two steps."""

    meta_data: DataFile = ITEM_META
    train: DataFile = DataFile("train.json", "JSON list of asin lists", '[["B0001", "B0002"], ...]')
    dev: DataFile = DataFile("dev.json", "JSON list of asin lists", '[["B0001", "B0002"], ...]')
    meta_stats: DataFile = stats_file("meta_stats.json")
    interaction_stats: DataFile = stats_file("interaction_stats.json")

    @property
    def meta_step(self) -> Step:
        return Step(
            "recformer-pretrain-meta (pretrain_data/meta_data_process.py)",
            (self.meta_data,),
            self.meta_stats,
            "meta_manifest.json",
        )

    @property
    def interaction_step(self) -> Step:
        return Step(
            "recformer-pretrain-interactions (pretrain_data/interaction_data_process.py)",
            (self.train, self.dev),
            self.interaction_stats,
            "interaction_manifest.json",
        )


FINETUNE = FinetuneFormat()
PRETRAIN = PretrainFormat()


def check_output_dir(output_dir: str | os.PathLike, step: Step) -> Path:
    """Check that `step` can write its files into `output_dir`, before any input is read.

    Also deletes the temporary files that a killed run of the step left there.

    Raises:
        OutputPathError: naming the path and the reason (`recformer.io.output_paths.check_output_dir`).
        IsADirectoryError: one of the step's file names is taken by something that is not a file.
    """
    path = check_location(output_dir)
    if not path.exists():
        return path
    for name in step.outputs:
        target = path / name
        if (target.exists() or target.is_symlink()) and not target.is_file():
            raise IsADirectoryError(errno.EISDIR, "exists and is not a file; move it away", str(target))
    remove_stale_temp_files(path, step.outputs)
    return path


class StepOutput:
    """Writes one step's files so that a reader sees the folder's old files or the new ones, never a mix.

    Create it before reading any input (it checks the output folder); write each data file with `open` or
    `write_json` (staged beside its target; the old file stays until `commit`); then `commit` the stats.
    Used as a context manager, files that were not committed are deleted when the block ends.
    """

    def __init__(self, output_dir: str | os.PathLike, step: Step):
        self.dir = check_output_dir(output_dir, step)
        self.step = step
        self._staged = StagedFiles()

    def __enter__(self) -> StepOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._staged.discard()

    def open(self, spec: DataFile) -> IO[bytes]:
        """A context manager: the binary file that becomes ``spec.name`` at `commit`."""
        return self._staged.open(self.dir / spec.name)

    def write_json(self, spec: DataFile, obj: Any) -> None:
        self._staged.write_bytes(self.dir / spec.name, dumps_json(obj))

    def commit(self, stats: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> None:
        """Put every staged file and the stats file in place, then write the manifest (with `inputs`, what the
        step read of another step's output)."""
        self._staged.write_bytes(self.dir / self.step.stats.name, dumps_json(stats, indent=True))
        marker, manifest = self.dir / self.step.marker, self.dir / self.step.manifest
        atomic_write_text(
            marker,
            f"{self.step.command} (process {os.getpid()}) began replacing the files of this folder at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} and removes this file when it is done. While this file is "
            "here the folder mixes files of two runs and is refused: re-run the command.\n",
        )
        fsync_dir(self.dir)
        # The old manifest stays until the new one replaces it: were the marker deleted by hand after a kill,
        # the files already renamed would still differ from it.
        digests = self._staged.commit()
        record = {
            "command": self.step.command,
            "files": {p.name: {"size": d.size, "sha256": d.sha256} for p, d in digests.items()},
        }
        if inputs:
            record["inputs"] = dict(inputs)
        atomic_write_bytes(manifest, dumps_json(record, indent=True))
        marker.unlink()
        fsync_dir(self.dir)


def _read_manifest(folder: Path, step: Step, error: type[Exception]) -> dict[str, Any] | None:
    """The manifest of `step` in `folder` (None when there is none: the original scripts wrote the folder),
    after refusing a folder whose last run of `step` stopped while putting its files in place."""
    marker = folder / step.marker
    if marker.exists():
        raise error(
            f"{folder}: incomplete: a run of {step.command} stopped while replacing its files ({marker.name} "
            "is still there); re-run it"
        )
    path = folder / step.manifest
    if not path.is_file():
        return None
    manifest = parse_json(read_bytes(path), path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and type(v.get("size")) is int and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        raise error(
            f"{path}: not a manifest of {step.command} (expected {{'files': {{name: {{size, sha256}}}}}})"
        )
    return manifest


def check_step_folder(folder: str | os.PathLike, step: Step, error: type[Exception] = ValueError) -> None:
    """Refuse (raise `error` naming the folder) a folder whose last run of `step` did not finish."""
    _read_manifest(Path(folder), step, error)


def read_step_bytes(
    path: str | os.PathLike, step: Step, error: type[Exception] = ValueError
) -> tuple[bytes, dict[str, Any] | None]:
    """A file that `step` writes, with its folder's manifest, refused (`error`, naming the file) when the step
    did not finish or the file is not the one the manifest records."""
    path = Path(path)
    manifest = _read_manifest(path.parent, step, error)
    data = read_bytes(path)
    expected = manifest["files"].get(path.name) if manifest is not None else None
    if expected is not None and FileDigest.of(data) != FileDigest(expected["size"], expected["sha256"]):
        raise error(
            f"{path}: is not the file that {step.manifest} beside it records (size or SHA-256 differ): the "
            f"folder mixes files of different runs; re-run {step.command} (or delete {step.manifest} if the "
            "file was edited on purpose)"
        )
    return data, manifest


def read_step_json(path: str | os.PathLike, step: Step, error: type[Exception] = ValueError) -> Any:
    """`read_step_bytes`, parsed as JSON (malformed JSON raises a ValueError naming the file)."""
    return parse_json(read_step_bytes(path, step, error)[0], path)
