"""The finetuning-folder reader: the files of `formats.FINETUNE`, validated before any training.

Reads ``train.json``, ``val.json``, ``test.json``, ``smap.json`` and ``meta_data.json`` (``umap.json`` is
not needed) of a folder written by `finetune_writer` or of the released processed data.

Dev input is the train sequence with the val item as target; test input is train + val with the
test item as target.

A folder that `finetune_writer` was still writing, or whose files are not the ones its manifest records, is
refused (`formats.read_step_json`); a folder without a manifest (written by the original scripts) is read as
it is. Refused at load time too, naming the file: a val or test file without any target, a user with more
than one target (the format holds one), an item whose metadata is empty.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recformer.data.formats import FINETUNE, DataFile, check_step_folder, read_step_json
from recformer.errors import RecformerError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


class DataError(RecformerError, ValueError):
    """Bad finetuning data; the message names the file and the offending user, item or key."""


@dataclass
class FinetuneData:
    """A finetuning folder as read and validated by `load_finetune_data`."""

    train: dict[str, list[int]]
    val: dict[str, list[int]]
    test: dict[str, list[int]]
    item2id: dict[str, int]
    items: list[dict]  # attribute dict per item id, in id order
    name: str

    @property
    def num_items(self) -> int:
        return len(self.items)

    def train_sequences(self) -> list[list[int]]:
        return list(self.train.values())

    def dev_pairs(self) -> list[tuple[list[int], int]]:
        """(history = train sequence, target = val item) per user with a val item."""
        return [(self.train[u], v[0]) for u, v in self.val.items() if v]

    def test_pairs(self) -> list[tuple[list[int], int]]:
        """(history = train + val, target = test item) per user with a test item."""
        return [(self.train[u] + self.val.get(u, []), t[0]) for u, t in self.test.items() if t]


def _read_sequences(
    path: Path, spec: DataFile, num_items: int, item_map: str, targets: bool
) -> dict[str, list[int]]:
    """One split file {user: [item ids]}, every id checked against the `num_items` ids of `item_map`.

    A target file (`targets`: val, test) holds at most one item per user and at least one in all; a train
    file holds at least one item per user.
    """
    data = _read_file(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a {spec.describe()}, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the dataset is empty (no users)")
    out: dict[str, list[int]] = {}
    for user, seq in data.items():
        if not isinstance(seq, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in seq):
            raise DataError(f"{path}: user {user}: expected a list of integer item ids, got {seq!r:.80}")
        if not seq and not targets:
            raise DataError(f"{path}: user {user} has an empty sequence")
        if targets and len(seq) > 1:
            raise DataError(
                f"{path}: user {user} has {len(seq)} target items {seq!r:.80}; expected a {spec.describe()}"
            )
        for i in seq:
            if not 0 <= i < num_items:
                raise DataError(
                    f"{path}: user {user}: item id {i} is not in the item map "
                    f"(ids 0..{num_items - 1} from {item_map})"
                )
        out[str(user)] = seq
    if targets and not any(out.values()):
        raise DataError(
            f"{path}: no user has a target item (every list is empty); expected a {spec.describe()}"
        )
    return out


def _read_file(path: Path) -> object:
    """A file of a finetuning folder, refused when the folder is incomplete or mixes runs (`DataError`)."""
    return read_step_json(path, FINETUNE.step, DataError)


def load_finetune_data(
    data_path: str | Path,
    train_file: str = FINETUNE.train.name,
    dev_file: str = FINETUNE.val.name,
    test_file: str = FINETUNE.test.name,
    item2id_file: str = FINETUNE.smap.name,
    meta_file: str = FINETUNE.meta_data.name,
) -> FinetuneData:
    """Read and validate a processed finetuning folder.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names it).
        DataError: a file is malformed or disagrees with another; the message names the file and the key.
            Also a folder that a processing run stopped writing, or whose files differ from its manifest.
    """
    root = Path(data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    paths = {
        name: root / f
        for name, f in (
            ("train", train_file),
            ("dev", dev_file),
            ("test", test_file),
            ("item2id", item2id_file),
            ("meta", meta_file),
        )
    }
    check_step_folder(root, FINETUNE.step, DataError)
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
    item2id = _read_file(paths["item2id"])
    meta = _read_file(paths["meta"])
    if not isinstance(item2id, dict) or not item2id:
        raise DataError(f"{paths['item2id']}: expected a non-empty {FINETUNE.smap.describe()}")
    if not isinstance(meta, dict):
        raise DataError(f"{paths['meta']}: expected a {FINETUNE.meta_data.describe()}")
    ids = sorted(item2id.values())
    if ids != list(range(len(ids))):
        dup = [i for i, c in Counter(item2id.values()).items() if c > 1]
        raise DataError(
            f"{paths['item2id']}: item ids must be 0..{len(ids) - 1} without gaps or repeats"
            + (f" (id {dup[0]} appears twice)" if dup else "")
        )
    items: list[dict] = [{} for _ in ids]
    for asin, i in item2id.items():
        attrs = meta.get(asin)
        if not isinstance(attrs, dict):
            raise DataError(
                f"{paths['item2id']}: item {asin!r} (id {i}) has no entry in {paths['meta'].name}"
            )
        if not attrs:
            raise DataError(
                f"{paths['meta']}: item {asin!r} (id {i}) has no attributes ({{}}): it has no text"
            )
        items[i] = attrs
    n, item_map = len(items), paths["item2id"].name
    train = _read_sequences(paths["train"], FINETUNE.train, n, item_map, targets=False)
    val = _read_sequences(paths["dev"], FINETUNE.val, n, item_map, targets=True)
    test = _read_sequences(paths["test"], FINETUNE.test, n, item_map, targets=True)
    for path, split in ((paths["dev"], val), (paths["test"], test)):
        for user in split:
            if user not in train:
                raise DataError(f"{path}: user {user} has no sequence in {paths['train'].name}")
    logger.info(
        "%s: %d users, %d items, %d train interactions",
        root.name,
        len(train),
        len(items),
        sum(len(s) for s in train.values()),
    )
    return FinetuneData(train=train, val=val, test=test, item2id=item2id, items=items, name=root.name)


def popularity_scores(sequences: list[list[int]], num_items: int) -> torch.Tensor:
    """Interaction count of every item in `sequences` [N] (the popularity baseline's scores).

    torch is imported here, not at the top, so that reading data stays torch-free.
    """
    import torch

    counts = torch.zeros(num_items, dtype=torch.float64)  # [N]
    flat = torch.tensor([i for s in sequences for i in s], dtype=torch.long)
    if flat.numel():
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    return counts
