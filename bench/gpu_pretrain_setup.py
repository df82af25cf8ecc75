"""Inputs for bench/gpu_pretrain_check.sh: a randomly initialised longformer-base-sized masked LM
(saved locally with the tiny tokenizer of tests/fixtures, so no network is needed) and a synthetic
pretraining corpus (meta_data.json, train.json, dev.json) with sequences of up to 50 items.

    python bench/gpu_pretrain_setup.py --work /tmp/gpu_pretrain_check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/synthetic.py

from tests.synthetic import make_longformer_folder, write_corpus  # noqa: E402

TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_tokenizer"
# allenai/longformer-base-4096 sizes; the vocabulary keeps its full size so the LM head costs what it
# costs in the real run.
LONGFORMER_BASE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=4098, attention_window=[512] * 12, layer_norm_eps=1e-5, type_vocab_size=1,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--train_sequences", type=int, default=4000)
    p.add_argument("--dev_sequences", type=int, default=160)
    p.add_argument("--tokenizer_dir", default=str(TINY_TOKENIZER), help="vocab.json + merges.txt to ship with the model")
    args = p.parse_args(argv)
    work = Path(args.work)
    t = time.perf_counter()
    folder = work / "longformer-base-random"
    if not (folder / "config.json").is_file():
        make_longformer_folder(folder, args.tokenizer_dir, **LONGFORMER_BASE)
    paths = write_corpus(work / "data", n_items=args.items, n_train=args.train_sequences, n_dev=args.dev_sequences, max_len=50)
    print(f"setup: {folder} and {paths['train'].parent} in {time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
