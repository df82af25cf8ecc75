"""Recommend the next items for users' histories with any checkpoint (zero-shot, finetuned, new items).

Input: JSON lines {"user": ..., "history": [id or {attributes}, ...]}, oldest item first; an id must
be in the catalogue (--items) or the saved index (--index_dir); an attribute dict is an item never
seen before (cold start). Output: JSON lines {"user": ..., "items": [...], "scores": [...]} in input
order, best first, written atomically; --with_text adds "texts": [...], each item's text from --items
(its attribute values joined by " | "), to judge the recommendations at a glance. Items already in a
history are not recommended to it unless --keep_history is given. k < 1 is refused; k larger than the
catalogue is clipped to its size with a warning.

Example:
    python recommend.py --ckpt pretrain_ckpt/recformer_seqrec_ckpt.bin --items finetune_data/Scientific/meta_data.json \\
        --index_dir index/scientific --input histories.jsonl --output recs.jsonl --k 10
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from recformer.argparsing import build_parser as build_args_parser
from recformer.argparsing import parse_command_line
from recformer.args import RecommendArgs
from recformer.cli import argument_error, run_command
from recformer.inference.inputs import HistoryLine, InputError, item_text, read_histories, read_items
from recformer.io.fileio import atomic_open
from recformer.io.folders import check_replaceable
from recformer.io.output_paths import STDOUT, check_not_input, check_output_file

if TYPE_CHECKING:  # torch and transformers load in main, after the arguments are parsed
    from recformer.inference.recommender import Recommender

# Users encoded and scored per step while the output is written.
USERS_PER_BLOCK = 4096


def build_parser() -> argparse.ArgumentParser:
    return build_args_parser(RecommendArgs, __doc__)


def open_index(args: RecommendArgs) -> tuple[Recommender, str]:
    """The recommender and a note for the summary: a saved index (new or changed --items added and saved
    back), or a new index from --ckpt and --items (saved to --index_dir when given).

    The whole read-modify-write of --index_dir holds its lock (`folders.folder_lock`): a second run on
    the same index waits, then loads what the first saved and adds its own items to it.
    """
    from recformer.io.folders import folder_lock, recover_folder

    if not args.index_dir:
        return _open_index(args, None)
    index = Path(args.index_dir)
    with folder_lock(index):
        recover_folder(index)  # a save killed between its two renames: the complete index is put back first
        return _open_index(args, index)


def _open_index(args: RecommendArgs, index: Path | None) -> tuple[Recommender, str]:
    from recformer.inference.index_files import META_FILE
    from recformer.inference.recommender import Recommender
    from recformer.model.configuration import field_values

    common = dict(device=args.device, batch_size=args.batch_size, attn_implementation=args.attn_implementation,
                  progress=args.progress, compile=args.compile)  # fmt: skip
    if index is not None and (index / META_FILE).is_file():
        if args.items:  # new items are saved back: an index folder recformer did not write is refused before any work
            check_replaceable(index)
        rec = Recommender.load(index, args.ckpt, args.model_name_or_path, field_values(args), **common)
        note = f"index {index}"
        if args.items:
            added, updated = rec.add_items(args.items)
            if added or updated:
                rec.save(index, dtype=args.index_dtype or rec.saved_dtype)
            note += f" ({added} items added, {updated} re-encoded)"
        return rec, note
    if index is not None and index.exists() and (not index.is_dir() or any(index.iterdir())):
        raise ValueError(f"--index_dir {index}: exists and is not a saved index (no {META_FILE}); not overwriting it")
    if args.ckpt is None or args.items is None:
        raise ValueError(f"--ckpt and --items are required to build an index (--index_dir {index} holds none yet)")
    rec = Recommender.from_pretrained(
        args.ckpt, args.items, args.model_name_or_path, cache_dir=args.cache_dir, fields=field_values(args), **common
    )
    note = "index built"
    if index is not None:
        rec.save(index, dtype=args.index_dtype or "float32")
        note = f"index written to {index}"
    return rec, note


def known_histories(lines: list[HistoryLine], rec: Recommender, path: str, on_unknown: str) -> tuple[list[list], int]:
    """Each line's history without the ids the index lacks (`skip`), and how many were dropped; with
    `error` the first unknown id stops the run, naming its line."""
    out, skipped = [], 0
    for line in lines:
        kept = []
        for position, element in enumerate(line.history):
            if isinstance(element, dict) or element in rec:
                kept.append(element)
            elif on_unknown == "skip":
                skipped += 1
            else:
                raise InputError(
                    f"{path} line {line.line}, history item {position}: unknown item id {element!r} (not in the "
                    "index; add it to --items, give its attributes instead, or pass --on_unknown skip)"
                )
        out.append(kept)
    return out, skipped


def catalogue_texts(items: str) -> dict[str, str]:
    """id -> the item's text (`inputs.item_text`) for every item of the catalogue file."""
    ids, attrs = read_items(items)
    return {i: item_text(a) for i, a in zip(ids, attrs)}


@contextlib.contextmanager
def open_output(output: str) -> Iterator[IO[bytes]]:
    """The standard output for `-`, else the file written atomically (`fileio.atomic_open`)."""
    if output == STDOUT:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_open(output, "wb") as f:
        yield f


def write_recommendations(
    output: str,
    lines: list[HistoryLine],
    histories: list[list],
    rec: Recommender,
    k: int,
    exclude: bool,
    progress: bool,
    texts: dict[str, str] | None = None,
) -> None:
    """Recommend for every line, in blocks of users, into `output` (renamed into place when complete); with
    `texts`, each line also gets the recommended items' texts (None for an id `texts` lacks)."""
    from tqdm.auto import tqdm

    from recformer.io.fileio import dumps_json

    rec.progress = False  # one bar for the whole run instead of one per block
    with open_output(output) as f, tqdm(total=len(lines), desc="recommend", unit="user", disable=not progress) as bar:
        for start in range(0, len(lines), USERS_PER_BLOCK):
            block = range(start, min(start + USERS_PER_BLOCK, len(lines)))
            todo = [i for i in block if histories[i]]
            recs = dict(zip(todo, rec.recommend([histories[i] for i in todo], k, exclude_history=exclude))) if todo else {}
            for i in block:
                pairs = recs.get(i, [])
                record = {"user": lines[i].user, "items": [p[0] for p in pairs], "scores": [p[1] for p in pairs]}
                if texts is not None:
                    record["texts"] = [texts.get(p[0]) for p in pairs]
                f.write(dumps_json(record) + b"\n")
            bar.update(len(block))


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(RecommendArgs, build_parser(), argv)
    if (code := argument_error(args)) is not None:
        return code
    return run_command(lambda: recommend(args))


def recommend(args: RecommendArgs) -> int:
    # torch and transformers load only now: --help and bad flags answer at once
    from recformer.devices import keep_freed_memory

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    keep_freed_memory()
    if args.output != STDOUT:  # before any input is read
        check_not_input(args.output, {"--input": args.input, "--items": args.items})
        args.output = str(check_output_file(args.output))
    lines = read_histories(args.input)  # every line checked before any work
    rec, note = open_index(args)
    k = rec.clip_k(args.k)
    histories, skipped = known_histories(lines, rec, args.input, args.on_unknown)
    texts = catalogue_texts(args.items) if args.with_text else None
    write_recommendations(args.output, lines, histories, rec, k, not args.keep_history, args.progress, texts)
    empty = sum(1 for h in histories if not h)
    summary = f"{len(lines)} users, {len(rec)} items, top {k}, {time.perf_counter() - start:.1f} s; {note}"
    if args.on_unknown == "skip":
        summary += f"; {skipped} unknown ids skipped" + (f", {empty} users left with no item got none" if empty else "")
    print(f"{summary}; output: {args.output}", file=sys.stderr if args.output == STDOUT else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
