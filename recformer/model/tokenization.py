"""Recformer tokenizer: items (attribute -> text dicts) and item sequences to model inputs.

An item's layout: each attribute's key and value are tokenized separately (no special tokens, no leading
space), concatenated and cut to `max_attr_length`; the first `max_attr_num` attributes are kept. A
sequence's layout (which items, in which order, cut where, padded how) is `layout.SequenceLayout`, which
`RecformerTokenizer.layout` gives for the tokenizer's config.

The backend's padding and truncation are always off (a `tokenizer.json` may switch them on; items
would then come back padded to a fixed length, every item alike). A vocabulary without RoBERTa's
special tokens (WordPiece) uses its own `[CLS]`/`[SEP]`/`[PAD]`/`[MASK]`/`[UNK]` instead of new tokens
past the embedding table. `check_tokenizer_fits` is the one check, run wherever a tokenizer meets a
model, that every id the tokenizer can produce has a row in the model's embedding table.

Attribute keys and values may be any JSON value or odd type; `value_to_text` states how each becomes
text (None is empty, lone surrogates become U+FFFD, ...), so no value reaches the Rust tokenizer in a
form it rejects. An item that is not a dict is refused with a TypeError naming it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.models.roberta.tokenization_roberta import RobertaTokenizer

from recformer.errors import RecformerError
from recformer.io.fileio import read_json
from recformer.model.configuration import RecformerConfig, check_model_source, is_recformer_config_dict
from recformer.model.layout import TOKEN_TYPE_KEY, TOKEN_TYPE_VALUE, SequenceLayout

logger = logging.getLogger(__name__)

Item = Mapping[str, Any]
TokenizedItem = tuple[Sequence[int], Sequence[int]]  # (input_ids, token_type_ids)


# The files a tokenizer is read from, one of which a tokenizer folder must hold.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")
# RoBERTa's special-token defaults and the WordPiece token that stands in for each when the vocabulary
# lacks it: <s> starts a sequence as [CLS] does, </s> ends it as [SEP] does.
SPECIAL_TOKEN_DEFAULTS = {
    "bos_token": ("<s>", "[CLS]"),
    "eos_token": ("</s>", "[SEP]"),
    "sep_token": ("</s>", "[SEP]"),
    "cls_token": ("<s>", "[CLS]"),
    "unk_token": ("<unk>", "[UNK]"),
    "pad_token": ("<pad>", "[PAD]"),
    "mask_token": ("<mask>", "[MASK]"),
}
# Text every catalogue's attribute names look like; a vocabulary that encodes none of it is no vocabulary.
PROBE_TEXT = "title brand category price"


class TokenizerError(RecformerError, ValueError):
    """A tokenizer that cannot serve the model: no tokenizer files, a vocabulary of special tokens only,
    or ids past the model's embedding table."""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it (a string or an AddedToken dict) -> its text."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _folder_vocabulary(folder: Path) -> tuple[set[str], dict[str, str]]:
    """(every token of a tokenizer folder's vocabulary and added tokens, the special tokens its
    tokenizer_config.json / special_tokens_map.json name); unreadable files count as empty."""
    vocab: set[str] = set()
    try:
        if (folder / "tokenizer.json").is_file():
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            model_vocab = data.get("model", {}).get("vocab") or {}
            vocab |= set(model_vocab) if isinstance(model_vocab, Mapping) else {v[0] for v in model_vocab}
            vocab |= {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, Mapping)}
        elif (folder / "vocab.json").is_file():
            vocab |= set(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
        elif (folder / "vocab.txt").is_file():
            vocab |= {line.rstrip("\n") for line in (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()}
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return set(), {}
    named: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8")) if (folder / name).is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data, Mapping):
            named.update({k: t for k in SPECIAL_TOKEN_DEFAULTS if (t := _token_text(data.get(k))) is not None})
    return vocab, named


def special_token_arguments(folder: str | os.PathLike, given: Mapping[str, Any]) -> dict[str, str]:
    """Special-token arguments for loading `folder`: for each special token (`SPECIAL_TOKEN_DEFAULTS`)
    not in `given` whose token (as the folder's config names it, else RoBERTa's) is not in the
    vocabulary while its WordPiece stand-in is, the stand-in; so that no special token is added past
    the vocabulary (and the model's embedding table)."""
    vocab, named = _folder_vocabulary(Path(folder))
    out = {}
    for name, (default, stand_in) in SPECIAL_TOKEN_DEFAULTS.items():
        token = named.get(name, default)
        if name not in given and vocab and token not in vocab and stand_in in vocab:
            out[name] = stand_in
    return out


def check_tokenizer_source(name: str | os.PathLike) -> None:
    """Raise TokenizerError, in one line, for a source that can only give an empty tokenizer: a folder
    without tokenizer files, or a hub id while offline that the local Hugging Face cache does not hold."""
    path = Path(name)
    if path.is_dir():
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise TokenizerError(
                f"{path}: no tokenizer files (expected {', '.join(TOKENIZER_FILES[:-1])} or {TOKENIZER_FILES[-1]}); "
                "copy the tokenizer of the model it was built from into it, or pass the folder that has it"
            )
        return
    try:
        check_model_source(name, TOKENIZER_FILES)
    except FileNotFoundError as e:
        raise TokenizerError(str(e)) from None


def clean_text(text: str) -> str:
    """`text` with lone surrogates (which cannot be encoded as UTF-8) replaced by U+FFFD; a surrogate pair
    written as two code units becomes its character. Any other text is returned as it is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def value_to_text(value: Any) -> str:
    """Attribute key or value as text that the tokenizer accepts, for any JSON value or odd type.

    None -> ''; str -> itself, lone surrogates replaced by U+FFFD (`clean_text`); bytes -> UTF-8
    decoded, invalid bytes replaced by U+FFFD; list / tuple -> the elements' text joined by spaces
    (None elements skipped); anything else (numbers, booleans, dicts) -> str(value), cleaned.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return " ".join(value_to_text(v) for v in value if v is not None)
    return clean_text(str(value))


def check_item(item: Any, name: Any) -> None:
    """Raise a TypeError naming the item (`name`: its position or key) unless it is an attribute dict."""
    if not isinstance(item, Mapping):
        raise TypeError(f"item {name!r}: expected a dict of attribute -> text, got {type(item).__name__}")


def _is_pretokenized_item(x: Any) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) == 2
        and all(isinstance(part, (list, tuple)) for part in x)
        and all(isinstance(t, int) for part in x for t in part)
    )


def _is_item(x: Any) -> bool:
    return isinstance(x, Mapping) or _is_pretokenized_item(x)


class RecformerTokenizer(RobertaTokenizer):
    """Longformer's byte-level BPE tokenizer (the fast `tokenizers` backend) plus Recformer's layout.

    Load with `RecformerTokenizer.from_pretrained(path_or_hub_id, config)`; the Recformer fields
    (`max_attr_num`, `max_attr_length`, `max_item_embeddings`, `max_token_num`) are read from that
    config at call time, per instance. Without a config, a folder's own Recformer config.json is used
    (so `AutoTokenizer.from_pretrained(folder)` of a saved folder gets its fields), else the defaults. Distinct items are tokenized once (an LRU cache keyed by the
    kept attributes and the two attribute limits).
    """

    item_cache_size = 200_000

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: RecformerConfig | None = None, **kwargs):
        """Load a tokenizer folder or hub id, with the backend's padding and truncation off and WordPiece
        special tokens standing in for missing RoBERTa ones (see the module docstring).

        Raises:
            TokenizerError: a folder without tokenizer files, a hub id offline and not cached, or a
                vocabulary that encodes no text (only special tokens), each in one line naming it.
        """
        check_tokenizer_source(pretrained_model_name_or_path)
        if Path(pretrained_model_name_or_path).is_dir():
            kwargs = {**special_token_arguments(pretrained_model_name_or_path, kwargs), **kwargs}
        tokenizer = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if config is None:
            config_file = Path(pretrained_model_name_or_path) / "config.json"
            if config_file.is_file() and is_recformer_config_dict(read_json(config_file)):
                config = RecformerConfig.from_pretrained(pretrained_model_name_or_path)
        tokenizer.config = config if config is not None else RecformerConfig()
        tokenizer.plain_backend()
        special = set(tokenizer.all_special_ids)
        if not any(i not in special for i in tokenizer._tokenizer.encode(PROBE_TEXT, add_special_tokens=False).ids):
            raise TokenizerError(
                f"{pretrained_model_name_or_path}: the tokenizer has {len(tokenizer)} tokens and encodes no text "
                f"({PROBE_TEXT!r} gives no token but special ones); its vocabulary files are missing or empty"
            )
        return tokenizer

    def plain_backend(self):
        """The backend tokenizer, with padding and truncation switched off when something switched them on."""
        backend = self._tokenizer
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        return backend

    # -- configuration -------------------------------------------------------------------------
    @property
    def config(self) -> RecformerConfig:
        config = self.__dict__.get("_recformer_config")
        if config is None:
            config = self.__dict__["_recformer_config"] = RecformerConfig()
        return config

    @config.setter
    def config(self, config: RecformerConfig) -> None:
        self.__dict__["_recformer_config"] = config

    @property
    def layout(self) -> SequenceLayout:
        """The sequence layout of this tokenizer's special tokens and current config."""
        return SequenceLayout.from_config(self.config, self.bos_token_id, self.pad_token_id)

    def _item_cache(self) -> OrderedDict:
        cache = self.__dict__.get("_recformer_item_cache")
        if cache is None:
            cache = self.__dict__["_recformer_item_cache"] = OrderedDict()
        return cache

    # -- items ---------------------------------------------------------------------------------
    def item_tokenize(self, text: Any) -> list[int]:
        """Token ids of `text` alone (any value, as `value_to_text` makes it text): no special tokens,
        no leading space."""
        return self.plain_backend().encode(value_to_text(text), add_special_tokens=False).ids

    def _item_key(self, item: Item) -> tuple:
        attrs = list(item.items())[: self.config.max_attr_num]
        return (
            self.config.max_attr_num,
            self.config.max_attr_length,
            tuple((value_to_text(k), value_to_text(v)) for k, v in attrs),
        )

    def _layout_item(self, key: tuple, encodings: list[list[int]]) -> tuple[list[int], list[int]]:
        """Concatenate (key tokens + value tokens) per attribute, each pair cut to max_attr_length."""
        max_len = self.config.max_attr_length
        input_ids: list[int] = []
        token_type_ids: list[int] = []
        for i in range(len(key[2])):
            name_ids, value_ids = encodings[2 * i], encodings[2 * i + 1]
            input_ids += (name_ids + value_ids)[:max_len]
            token_type_ids += ([TOKEN_TYPE_KEY] * len(name_ids) + [TOKEN_TYPE_VALUE] * len(value_ids))[:max_len]
        return input_ids, token_type_ids

    def tokenize_items(self, items: Iterable[Item], use_cache: bool = True) -> list[tuple[list[int], list[int]]]:
        """`(input_ids, token_type_ids)` for each item, tokenizing the distinct uncached ones in one batch."""
        items = list(items)
        for i, item in enumerate(items):
            check_item(item, i)
        keys = [self._item_key(item) for item in items]
        cache = self._item_cache() if use_cache else OrderedDict()
        todo = list(dict.fromkeys(k for k in keys if k not in cache))
        if todo:
            texts = [text for key in todo for pair in key[2] for text in pair]
            backend = self.plain_backend()
            encodings = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)] if texts else []
            pos = 0
            for key in todo:
                n = 2 * len(key[2])
                ids, types = self._layout_item(key, encodings[pos : pos + n])
                pos += n
                cache[key] = (tuple(ids), tuple(types))
        out = []
        for key in keys:
            ids, types = cache[key]
            if use_cache:
                cache.move_to_end(key)
            out.append((list(ids), list(types)))
        if use_cache:
            while len(cache) > self.item_cache_size:
                cache.popitem(last=False)
        return out

    def encode_item(self, item: Item) -> tuple[list[int], list[int]]:
        """`(input_ids, token_type_ids)` of one item (see the module docstring for the layout)."""
        return self.tokenize_items([item])[0]

    # -- sequences -----------------------------------------------------------------------------
    def _tokenized(self, items: Sequence[Item | TokenizedItem]) -> list[TokenizedItem]:
        raw = [i for i, item in enumerate(items) if isinstance(item, Mapping)]
        out: list[Any] = list(items)
        if raw:
            for i, enc in zip(raw, self.tokenize_items(items[i] for i in raw)):
                out[i] = enc
        for i, item in enumerate(out):
            if not _is_pretokenized_item(item):
                raise TypeError(
                    f"item {i} of the sequence is neither an attribute dict nor an (input_ids, token_type_ids) pair"
                )
        return out

    def encode(self, items: Sequence[Item | TokenizedItem], encode_item: bool = True) -> dict[str, list[int]]:
        """Lay out one sequence of items (oldest first) without padding (`layout.SequenceLayout`)."""
        layout = self.layout
        items = layout.kept(items)
        return layout.encode(self._tokenized(items) if encode_item else items)

    def padding(self, item_batch: Sequence[Mapping[str, list[int]]], pad_to_max: bool = False) -> dict[str, list[list[int]]]:
        """Right-pad encoded sequences to the longest (or to `max_token_num`); the inputs are not modified."""
        return self.layout.pad(item_batch, self.config.max_token_num if pad_to_max else None)

    def batch_encode(self, item_batch: Sequence[Sequence[Item | TokenizedItem]], encode_item: bool = True, pad_to_max: bool = False):
        """Encode and pad a batch of sequences (a list of lists of items)."""
        if encode_item:  # tokenize every distinct item of the batch in one call
            flat = [item for seq in item_batch for item in seq if isinstance(item, Mapping)]
            self.tokenize_items(flat)
        return self.padding([self.encode(seq, encode_item) for seq in item_batch], pad_to_max=pad_to_max)

    def __call__(self, items, pad_to_max: bool = False, return_tensor: bool = False, **kwargs):
        """Encode one sequence (a list of items) or a batch (a list of sequences).

        Items are attribute dicts or pre-tokenized `(input_ids, token_type_ids)` pairs. A batch is
        padded; a single sequence is not. With `return_tensor=True` the fields are LongTensors
        ([B, L] for a batch, [L] for one sequence; the model accepts both).
        """
        if kwargs:  # plain-text tokenization, as the underlying Longformer tokenizer does it
            return super().__call__(items, **kwargs)
        if isinstance(items, str):
            raise TypeError("RecformerTokenizer takes items (attribute dicts) or sequences of items, not a string")
        items = list(items)
        is_single = len(items) == 0 or all(_is_item(x) for x in items)
        inputs = self.encode(items) if is_single else self.batch_encode(items, pad_to_max=pad_to_max)
        if return_tensor:
            return {name: torch.tensor(value, dtype=torch.long) for name, value in inputs.items()}
        return inputs


def check_tokenizer_fits(tokenizer: RecformerTokenizer, config: Any, where: str = "") -> None:
    """Raise TokenizerError, in one line, when the tokenizer can give an id at or beyond the model's
    `config.vocab_size` (a special token or a vocabulary entry with no row in the embedding table).

    The one check wherever a tokenizer meets a model (finetune, evaluate, recommend, pretrain, the
    Recommender); `where` names the model or folder in the message.
    """
    vocab_size = int(config.vocab_size)
    prefix = f"{where}: " if where else ""
    special = {token: i for token, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)}
    beyond = {token: i for token, i in special.items() if i is None or not 0 <= i < vocab_size}
    if beyond:
        listed = ", ".join(f"{token!r} has id {i}" for token, i in beyond.items())
        raise TokenizerError(
            f"{prefix}special tokens past the model's vocab_size {vocab_size}: {listed}; "
            "use the tokenizer the model was trained with"
        )
    top = max(tokenizer.get_vocab().values(), default=-1)
    if top >= vocab_size:
        raise TokenizerError(
            f"{prefix}the tokenizer has {len(tokenizer)} tokens (ids up to {top}) but the model's vocab_size is "
            f"{vocab_size}; use the tokenizer the model was trained with"
        )


def build_bpe_tokenizer(texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 2000, min_frequency: int = 2) -> str:
    """Train a small byte-level BPE tokenizer on `texts` and save it in the Longformer format.

    The folder gets `vocab.json`, `merges.txt` and the tokenizer config, with RoBERTa's special
    tokens at RoBERTa's ids (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3) and `<mask>` last, so
    `RecformerTokenizer.from_pretrained(output_dir, config)` loads it like Longformer's.
    """
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        show_progress=False,
    )
    bpe.add_special_tokens(["<mask>"])
    os.makedirs(output_dir, exist_ok=True)
    bpe.save_model(str(output_dir))
    tokenizer = RobertaTokenizer(
        vocab=os.path.join(output_dir, "vocab.json"), merges=os.path.join(output_dir, "merges.txt")
    )
    tokenizer.save_pretrained(str(output_dir))
    return str(output_dir)


def register_auto_tokenizer() -> None:
    """Make `AutoTokenizer.from_pretrained(folder)` of a Recformer folder (`model_type: recformer`) return a
    `RecformerTokenizer` with the folder's Recformer fields.

    Called once when this module is imported, as `configuration.register_auto_config` and
    `modeling.register_auto_models` are (transformers registers its own classes the same way, by importing
    their modules). Idempotent (`exist_ok=True`); it maps `RecformerConfig` only.
    """
    AutoTokenizer.register(RecformerConfig, tokenizer_class=RecformerTokenizer, exist_ok=True)


register_auto_tokenizer()
