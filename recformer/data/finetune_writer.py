"""The finetuning-folder writer: interactions and item texts -> the files of `formats.FINETUNE`.

`build_finetune_dataset` holds the reference semantics (which reviews count, id order, the leave-one-out
split) over records in memory; `kcore_filter` is the optional k-core filter applied before it;
`process_finetune` reads one Amazon 2018 category and writes the folder, `process_finetune_tables` does the
same from RecBole atomic files or CSV/TSV/JSON-lines tables (`tables`). Every format gives the same folder.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recformer.data.amazon import FileStats, gc_paused, iter_reviews, load_meta, resolve_input, sum_file_stats
from recformer.data.formats import FINETUNE, DataFile, StepOutput
from recformer.data.tables import TABLE_FORMATS, TableFields, TableStats, iter_interactions, load_items

logger = logging.getLogger(__name__)


@dataclass
class FinetuneFolderContents:
    """What `process_finetune` writes: the six data files of `formats.FINETUNE` and the counts behind them."""

    umap: dict[str, int]  # reviewerID -> user id
    smap: dict[str, int]  # asin -> item id
    train: dict[int, list[int]]  # user id -> item ids, all but the last two
    val: dict[int, list[int]]  # user id -> [second-to-last item id]
    test: dict[int, list[int]]  # user id -> [last item id]
    meta_data: dict[str, dict[str, str]]  # asin -> {title, brand, category}
    stats: dict[str, Any]

    def files(self) -> list[tuple[DataFile, Any]]:
        """(file, content) pairs, in `FINETUNE.data_files` order."""
        contents = (self.umap, self.smap, self.train, self.val, self.test, self.meta_data)
        return list(zip(FINETUNE.data_files, contents, strict=True))


def _counted_sequences(
    reviews: Iterable[tuple[str, str, int]], position: Mapping[str, int]
) -> tuple[defaultdict[str, list[int]], int]:
    """Each user's counted reviews (those of an asin in `position`) as a flat [pos, time, pos, time, ...]
    list in file order (half the memory of a list of tuples), with the number of reviews not counted.

    The users are in the order of their first counted review."""
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    without_meta = 0
    for user, asin, t in reviews:
        pos = position.get(asin)
        if pos is None:
            without_meta += 1
            continue
        seq = sequences[user]
        seq.append(pos)
        seq.append(t)
    return sequences, without_meta


@dataclass
class _UserSplit:
    """The kept users' ids and leave-one-out sequences, with the counts behind them."""

    umap: dict[str, int] = field(default_factory=dict)  # reviewerID -> user id
    smap_positions: list[int] = field(default_factory=list)  # meta positions in item-id order
    train: dict[int, list[int]] = field(default_factory=dict)
    val: dict[int, list[int]] = field(default_factory=dict)
    test: dict[int, list[int]] = field(default_factory=dict)
    below_min: int = 0
    sampled_out: int = 0
    interactions: int = 0
    duplicates: int = 0


def _split_users(
    sequences: Mapping[str, list[int]], num_items: int, min_seq_len: int, user_sample_rate: float, seed: int
) -> _UserSplit:
    """Keep the eligible users (sampled), number them and their items, and split each sequence, as
    `build_finetune_dataset` describes."""
    rng = random.Random(seed)
    split = _UserSplit()
    item_id = [-1] * num_items  # meta position -> item id, -1 until the item is met
    for user, seq in sequences.items():
        n = len(seq) // 2
        if n < min_seq_len:
            split.below_min += 1
            continue
        if user_sample_rate < 1.0 and rng.random() >= user_sample_rate:
            split.sampled_out += 1
            continue
        uid = split.umap[user] = len(split.umap)
        positions, times = seq[0::2], seq[1::2]
        for pos in positions:  # file order decides the item ids
            if item_id[pos] < 0:
                item_id[pos] = len(split.smap_positions)
                split.smap_positions.append(pos)
        order = sorted(range(n), key=times.__getitem__)  # a stable sort: tied times keep file order
        items = [item_id[positions[i]] for i in order]
        split.train[uid], split.val[uid], split.test[uid] = items[:-2], [items[-2]], [items[-1]]
        split.interactions += n
        split.duplicates += n - len(set(positions))
    return split


@gc_paused()
def build_finetune_dataset(
    reviews: Iterable[tuple[str, str, int]],
    meta: Mapping[str, dict[str, str]],
    min_seq_len: int = 4,
    user_sample_rate: float = 1.0,
    seed: int = 42,
) -> FinetuneFolderContents:
    """Build the finetuning folder's contents from reviews in file order and the item metadata.

    Reference semantics: a review counts only if its asin is in `meta`; users with at least `min_seq_len`
    counted reviews are eligible and, in order of their first counted review, kept with probability
    `user_sample_rate` (``random.Random(seed)``; a rate of 1 keeps everyone and draws nothing). User ids are
    0-based in that order; item ids are 0-based in the order met walking the kept users in that order and
    each user's reviews in file order. Each sequence is then stable-sorted by time (ties keep file order) and
    split leave-one-out. ``meta_data`` is `meta` (every item with a title), as the reference writes it.
    A user's repeated reviews of one item are all kept, as in the reference, and counted
    (``duplicate_reviews``).

    Example: reviews u1:A@5, u2:B@1, u1:C@3, u1:D@3, u1:B@9 with min_seq_len 4 give
    umap {u1: 0}, smap {A: 0, C: 1, D: 2, B: 3}, sequence by time C, D, A, B -> train {0: [1, 2]},
    val {0: [0]}, test {0: [3]}.
    """
    if min_seq_len < 3:
        raise ValueError(f"min_seq_len must be at least 3 for a leave-one-out split, got {min_seq_len}")
    if not 0.0 < user_sample_rate <= 1.0:
        raise ValueError(f"user_sample_rate must be in (0, 1], got {user_sample_rate}")

    # Each meta asin's position: a sequence stores these small shared ints, not one string per review.
    position = {asin: i for i, asin in enumerate(meta)}
    asins = list(meta)
    sequences, without_meta = _counted_sequences(reviews, position)
    split = _split_users(sequences, len(asins), min_seq_len, user_sample_rate, seed)
    umap, interactions = split.umap, split.interactions
    smap = {asins[pos]: sid for sid, pos in enumerate(split.smap_positions)}

    meta_data = {asin: dict(rec) for asin, rec in meta.items()}
    stats = {
        "interactions_without_meta": without_meta,
        "users_with_interactions": len(sequences),
        "users_below_min_seq_len": split.below_min,
        "users_sampled_out": split.sampled_out,
        "users": len(umap),
        "items": len(smap),
        "interactions": interactions,
        "duplicate_reviews": split.duplicates,
        "avg_seq_len": round(interactions / len(umap), 4) if umap else 0.0,
        "meta_data_items": len(meta_data),
        "min_seq_len": min_seq_len,
        "user_sample_rate": user_sample_rate,
        "seed": seed,
    }
    return FinetuneFolderContents(umap, smap, split.train, split.val, split.test, meta_data, stats)


@gc_paused()
def kcore_filter(
    interactions: Iterable[tuple[str, str, Any]], k: int, counted: Callable[[str], bool] = lambda item: True
) -> tuple[list[tuple[str, str, Any]], dict[str, int]]:
    """The interactions (in their order) left when users and items with fewer than `k` interactions are
    removed, again and again until every user and item left has at least `k` (the k-core, as RecBole's
    ``user_inter_num_interval`` / ``item_inter_num_interval`` of ``[k, inf)``).

    Only interactions whose item is `counted` (has text) take part; the others pass through untouched (the
    dataset builder counts and drops them). Repeated interactions of a user with an item each count.

    Returns:
        The kept interactions and counts: ``kcore``, ``kcore_rounds`` (passes until nothing changed),
        ``kcore_removed_interactions``, ``kcore_removed_users``, ``kcore_removed_items``.

    Example: with k = 2, u1:A u1:B u2:A u2:C u3:A -> u3 (one interaction) goes, and so do B and C (one
    each); then u1 and u2 hold one interaction each and go too: nothing is left.
    """
    if k < 1:
        raise ValueError(f"kcore must be at least 1, got {k}")
    rows = list(interactions)
    counts = [counted(item) for _, item, _ in rows]
    keep = list(counts)
    users0 = {u for (u, _, _), c in zip(rows, counts) if c}
    items0 = {i for (_, i, _), c in zip(rows, counts) if c}
    rounds = 0
    while True:
        rounds += 1
        users = Counter(u for (u, _, _), kept in zip(rows, keep) if kept)
        items = Counter(i for (_, i, _), kept in zip(rows, keep) if kept)
        changed = False
        for n, (u, i, _) in enumerate(rows):
            if keep[n] and (users[u] < k or items[i] < k):
                keep[n], changed = False, True
        if not changed:
            break
    # The interactions of items without text were never counted: they are kept for the builder to drop.
    kept_rows = [r for r, kept, c in zip(rows, keep, counts) if kept or not c]
    stats = {
        "kcore": k,
        "kcore_rounds": rounds,
        "kcore_removed_interactions": sum(1 for kept, c in zip(keep, counts) if c and not kept),
        "kcore_removed_users": len(users0) - len(users),
        "kcore_removed_items": len(items0) - len(items),
    }
    return kept_rows, stats


@dataclass(frozen=True)
class FinetuneOptions:
    """Which users and interactions a finetuning folder keeps (see `build_finetune_dataset` and
    `kcore_filter`; `kcore` None: no k-core filter)."""

    min_seq_len: int = 4
    user_sample_rate: float = 1.0
    seed: int = 42
    kcore: int | None = None


def _write_folder(
    output: StepOutput,
    interactions: Iterable[tuple[str, str, Any]],
    meta: Mapping[str, dict[str, str]],
    file_stats: Callable[[], dict[str, Any]],
    options: FinetuneOptions,
    no_user: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Filter (k-core), build the folder's contents, write them through `output`; return the stats.

    `file_stats` is called once `interactions` has been read to the end (the stats of the input files)."""
    kcore_stats: dict[str, int] = {}
    if options.kcore:
        interactions, kcore_stats = kcore_filter(interactions, options.kcore, meta.__contains__)
    data = build_finetune_dataset(interactions, meta, options.min_seq_len, options.user_sample_rate, options.seed)
    if not data.umap:
        raise ValueError(no_user({**data.stats, **kcore_stats}))
    stats = {**file_stats(), **data.stats, **kcore_stats}
    with output:
        for spec, obj in data.files():
            output.write_json(spec, obj)
        output.commit(stats)
    logger.info("wrote %s: %d users, %d items", output.dir, stats["users"], stats["items"])
    return stats


def _no_user_message(
    interaction_file: Any, item_file: Any, min_seq_len: int, verb: str, noun: str, without: str
) -> Callable[[dict[str, Any]], str]:
    """The error when no user qualifies, from the stats (`verb`, `noun`: what interacting and an interaction
    are called)."""

    def message(s: dict[str, Any]) -> str:
        kcore = (
            f"; the {s['kcore']}-core removed {s['kcore_removed_interactions']} interactions"
            if "kcore" in s
            else ""
        )
        return (
            f"{interaction_file}: no user qualifies: {s['users_with_interactions']} users {verb} items of "
            f"{item_file}, {s['users_below_min_seq_len']} of them fewer than {min_seq_len} times, "
            f"{s['users_sampled_out']} sampled out; {s['interactions_without_meta']} {noun} are of items "
            f"{without} there{kcore}"
        )

    return message


def process_finetune(
    file_path: str | os.PathLike,
    meta_file_path: str | os.PathLike,
    output_path: str | os.PathLike,
    min_seq_len: int = 4,
    user_sample_rate: float = 1.0,
    seed: int = 42,
    progress: bool = True,
    kcore: int | None = None,
) -> dict[str, Any]:
    """Read one category's review and meta files and write the finetuning folder; return the stats.

    The folder changes only once everything is written (`formats.StepOutput`): a run that fails or is
    killed before leaves the old folder as it was. `kcore` (None: off) applies `kcore_filter` first.

    Raises:
        FileNotFoundError, IsADirectoryError: an input file is missing or a folder (checked first).
        OutputPathError: the output folder cannot be written (checked before any input is read).
        OSError: a write failed (the path is named).
        ValueError: an input file is unusable, or no user qualifies (the message names the input files).
    """
    file_path, meta_file_path = resolve_input(file_path), resolve_input(meta_file_path)
    output = StepOutput(output_path, FINETUNE.step)
    meta_stats, review_stats = FileStats(str(meta_file_path)), FileStats(str(file_path))
    meta, duplicates = load_meta(meta_file_path, meta_stats, progress)
    reviews = iter_reviews(file_path, review_stats, progress)

    def file_stats() -> dict[str, Any]:
        return {
            **sum_file_stats([review_stats, meta_stats]),
            "reviews": review_stats.to_dict(),
            "meta": {**meta_stats.to_dict(), "duplicate_records": duplicates, "items_with_title": len(meta)},
        }

    options = FinetuneOptions(min_seq_len, user_sample_rate, seed, kcore)
    return _write_folder(
        output, reviews, meta, file_stats, options,
        _no_user_message(file_path, meta_file_path, min_seq_len, "review", "reviews", "without a title"),
    )  # fmt: skip


def process_finetune_tables(
    fmt: str,
    interaction_file: str | os.PathLike,
    item_file: str | os.PathLike,
    output_path: str | os.PathLike,
    fields: TableFields | None = None,
    options: FinetuneOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`process_finetune` for RecBole atomic files (`fmt` ``recbole``: ``.inter`` and ``.item``) or CSV, TSV
    and JSON-lines tables (``csv``), read by `tables`; the folder is the one the Amazon path writes.

    ``meta_data.json`` holds every item of the item table with text, its attributes the text columns
    (`fields.text`); the interactions play the part of the reviews (see `build_finetune_dataset`). `fields`
    None: the columns ``user_id``, ``item_id`` and ``timestamp``, every text column. `options` None: the
    defaults of `FinetuneOptions` (those of `process_finetune`).

    Raises:
        as `process_finetune`; ValueError also for an unknown `fmt` and a missing column (named).
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(TABLE_FORMATS)}")
    fields = fields if fields is not None else TableFields()
    options = options if options is not None else FinetuneOptions()
    interaction_file, item_file = resolve_input(interaction_file), resolve_input(item_file)
    output = StepOutput(output_path, FINETUNE.step)
    item_stats, inter_stats = TableStats(str(item_file)), TableStats(str(interaction_file))
    meta, duplicates = load_items(item_file, fmt, fields, item_stats, progress)
    interactions = list(iter_interactions(interaction_file, fmt, fields, inter_stats, progress))
    file_stats = {
        **sum_file_stats([inter_stats, item_stats]),
        "format": fmt,
        "interaction_file": inter_stats.to_dict(),
        "item_file": {**item_stats.to_dict(), "duplicate_records": duplicates, "items_with_text": len(meta)},
    }
    without = "without text (no row in the item table, or every text column empty)"
    return _write_folder(
        output, interactions, meta, lambda: file_stats, options,
        _no_user_message(interaction_file, item_file, options.min_seq_len, "interact with", "interactions", without),
    )  # fmt: skip
