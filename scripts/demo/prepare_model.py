"""Demo step: a small tokenizer trained on the demo item texts and a small random Longformer.

Writes, into --output_dir, what `--model_name_or_path` expects: the tokenizer in Longformer's format
(vocab.json, merges.txt, tokenizer files) and a LongformerForMaskedLM (config + weights) that
save_longformer_ckpt.py turns into a Recformer start point, exactly as it does for
allenai/longformer-base-4096.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import LongformerConfig, LongformerForMaskedLM

from recformer.model.tokenization import RecformerTokenizer, build_bpe_tokenizer


def item_texts(meta_files: list[Path]):
    for path in meta_files:
        for attrs in json.loads(path.read_text(encoding="utf-8")).values():
            for key, value in attrs.items():
                yield key
                yield str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--meta_files", nargs="+", required=True, type=Path, help="meta_data.json files to learn the vocabulary from")
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--vocab_size", type=int, default=3000)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_hidden_layers", type=int, default=2)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--intermediate_size", type=int, default=256)
    p.add_argument("--attention_window", type=int, default=32)
    p.add_argument("--max_token_num", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    for path in a.meta_files:
        if not path.is_file():
            raise SystemExit(f"error: {path}: file not found")
    build_bpe_tokenizer(list(item_texts(a.meta_files)), a.output_dir, vocab_size=a.vocab_size, min_frequency=2)
    tokenizer = RecformerTokenizer.from_pretrained(str(a.output_dir))
    torch.manual_seed(a.seed)
    config = LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=a.hidden_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads,
        intermediate_size=a.intermediate_size,
        max_position_embeddings=a.max_token_num + 2,
        attention_window=[a.attention_window] * a.num_hidden_layers,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LongformerForMaskedLM(config).save_pretrained(a.output_dir)
    print(f"demo model folder: {a.output_dir} (vocabulary {len(tokenizer)}, hidden {a.hidden_size}, "
          f"{a.num_hidden_layers} layers, window {a.attention_window})")


if __name__ == "__main__":
    main()
