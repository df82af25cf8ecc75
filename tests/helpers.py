"""Helpers shared by the tests: loading a command-line script, writing gzip files, the longformer-base
configuration and the reference key list."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from recformer import RecformerConfig

FIXTURES = Path(__file__).parent / "fixtures"
# The reference state-dict keys (RecformerForPretraining, longformer-base sizes) with shapes and dtypes.
KEYS_FILE = FIXTURES / "upstream_state_dict_keys.txt"

# allenai/longformer-base-4096 sizes.
LONGFORMER_BASE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=4098, layer_norm_eps=1e-5, pad_token_id=1, type_vocab_size=1,
)  # fmt: skip
# The Recformer fields every reference script sets.
REFERENCE_FIELDS = dict(max_attr_num=3, max_attr_length=32, max_item_embeddings=51, attention_window=[64] * 12, max_token_num=1024)


def load_cli(path: Path) -> ModuleType:
    """Import a script file as a module, to call its main() (or other functions) in this process."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_gz(path: Path, lines: list[str]) -> Path:
    """Write `lines`, each ended by a newline, gzipped with header time 0 (bytes depend on the lines only)."""
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    return path


def base_config(**overrides) -> RecformerConfig:
    """The config of the released checkpoints: longformer-base sizes plus the reference Recformer fields."""
    return RecformerConfig(**{**LONGFORMER_BASE, **REFERENCE_FIELDS, **overrides})


def reference_keys() -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of the reference key list, in its order."""
    keys = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)  # "[1, 4098] int64"
        keys[name] = (tuple(int(x) for x in shape.strip("[]").split(",")), dtype)
    return keys


class WritesMarker:
    """The payload of a crafted checkpoint: unpickling it creates the file `marker` (code ran)."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_checkpoint(path: Path, marker: Path, like: dict | None = None) -> Path:
    """`torch.save` of `like` (default: a Lightning-like dict) with a `WritesMarker` hidden inside."""
    import torch

    torch.save({**(like or {"state_dict": {}, "epoch": 0}), "callbacks": {"x": WritesMarker(marker)}}, path)
    return path


# A WordPiece vocabulary as BERT-family models have it: no <s>, </s>, <pad>, <mask>.
WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "title", "brand", "red", "shoe", "blue", "##s", "a", "b"]


def wordpiece_tokenizer_folder(folder: Path, pad_and_truncate: bool = True, config: bool = True) -> Path:
    """A tiny BERT-style tokenizer folder built with the `tokenizers` library: `tokenizer.json` (WordPiece,
    padding to 16 and truncation at 16 switched on unless `pad_and_truncate` is False) and, with `config`,
    the `tokenizer_config.json` a BERT model ships (naming [CLS]/[SEP]/[PAD]/[MASK]/[UNK], no bos/eos)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(WORDPIECE_VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    if pad_and_truncate:
        tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
        tok.enable_truncation(max_length=16)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config:
        names = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]")
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **names}))
    return folder


def padded_bpe_tokenizer_folder(folder: Path, vocab_dir: Path) -> Path:
    """The byte-level BPE vocabulary of `vocab_dir` (vocab.json + merges.txt) as a single `tokenizer.json`
    built with the `tokenizers` library, with padding to 128 and truncation at 128 switched on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.enable_padding(pad_id=1, pad_token="<pad>", length=128)
    tok.enable_truncation(max_length=128)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder
