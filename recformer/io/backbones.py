"""Start Recformer from a BERT-layout encoder: BERT, RoBERTa, DistilRoBERTa, MiniLM (post-LayerNorm).

Recformer's encoder is Longformer's, and a Longformer layer is a BERT layer with a second (global)
set of query/key/value projections. So a post-LayerNorm BERT-layout encoder maps onto it weight for
weight; `encoder_to_pretraining` does it as a pure function over state dicts, driven by
`ENCODER_KEY_MAP` (and `HEAD_KEY_MAPS` for a masked-LM head when the source has one):

* word embeddings and the embedding LayerNorm: copied;
* positions: the source's learned row of token position p goes to Recformer row
  `pad_token_id + 1 + p` (Recformer numbers real tokens from `pad_token_id + 1`, as RoBERTa does;
  BERT numbers them from 0, RoBERTa from its own `pad_token_id + 1`); the rows below are zero.
  A `max_token_num` beyond the source's positions repeats the learned rows (position extension);
* every layer's query/key/value: copied into both the local and the global projections;
* attention output, intermediate and output dense layers and LayerNorms: copied;
* all `token_type_size` token-type rows: the source's segment-0 vector (zero without a table), so
  any Recformer token type embeds as the source's segment 0;
* item-position table: zero, so a converted model's single item embeds exactly as in the source;
* masked-LM head: copied when the source has one (BERT's `cls.predictions`, RoBERTa's `lm_head`),
  newly initialised otherwise (decoder = a copy of the word embeddings);
* the source's pooler (dense + tanh) and next-sentence head have no place and are dropped.

On single-segment input whose tokens all fit the attention window, the converted encoder's hidden
states equal the source's (tests/test_backbones.py). Architectures whose layers do not fit (pre-
LayerNorm, rotary or relative positions, gated feed-forward, decoders) are refused in one line.

`write_backbone_start_point` is the file-facing step (`save_longformer_ckpt.py` on such a folder):
weights (`.bin`), and beside it the `save_pretrained` folder with config and tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recformer.io.backbone_mapping import FAMILIES, encoder_to_pretraining, position_rows
from recformer.io.conversion import ConversionError
from recformer.io.pipeline_steps import OVERWRITE_FLAG, StartPoint, quiet_transformers
from recformer.model.configuration import REFERENCE_SCRIPT_VALUES, RecformerConfig

logger = logging.getLogger(__name__)

POOLER_TYPES = ("cls", "avg")


# Refused model types, with what differs from a post-LayerNorm BERT layer.
REFUSED_TYPES = {
    "modernbert": "pre-LayerNorm layers, rotary positions and a gated (GeGLU) feed-forward",
    "neobert": "pre-LayerNorm layers, rotary positions and a gated (SwiGLU) feed-forward",
    "nomic_bert": "rotary positions and a gated (SwiGLU) feed-forward",
    "jina_bert": "ALiBi positions and a gated feed-forward",
    "deberta": "disentangled relative-position attention",
    "deberta-v2": "disentangled relative-position attention",
    "electra": "a separate embedding size projected to the hidden size",
    "albert": "factorised embeddings and one layer shared by every depth",
    "distilbert": "another key layout and no token-type table (not mapped)",
    "t5": "an encoder-decoder with relative positions and pre-LayerNorm layers",
}
DECODER_TYPES = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "phi3",
                 "gemma", "gemma2", "gemma3", "opt", "bloom", "falcon", "olmo", "mpt")  # fmt: skip

# -- the source ------------------------------------------------------------------------------------


def refusal_reason(config: Mapping[str, Any]) -> str | None:
    """Why a source config (a config.json dict) cannot start Recformer, or None when it fits."""
    model_type = str(config.get("model_type", ""))
    if model_type in REFUSED_TYPES:
        return f"{model_type} has {REFUSED_TYPES[model_type]}"
    architectures = [str(a) for a in config.get("architectures") or []]
    if model_type in DECODER_TYPES or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return f"{model_type or architectures[0]} is a decoder (causal self-attention), not a bidirectional encoder"
    if model_type not in FAMILIES:
        return f"model_type {model_type!r} is not a BERT-layout encoder Recformer maps (accepted: {', '.join(FAMILIES)})"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return f"this {model_type} is configured as a decoder (is_decoder / add_cross_attention)"
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        return f"this {model_type} uses {kind} position embeddings (only learned absolute positions map)"
    if config.get("rope_theta") or config.get("rotary_emb_base"):
        return f"this {model_type} uses rotary positions"
    if "embedding_size" in config and config["embedding_size"] != config.get("hidden_size"):
        return f"this {model_type} projects embeddings of size {config['embedding_size']} to the hidden size"
    return None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def sentence_transformers_modules(folder: Path) -> list[dict] | None:
    """The modules.json entries of a sentence-transformers folder, or None when it is not one."""
    path = folder / "modules.json"
    if not path.is_file():
        return None
    modules = _read_json(path)
    return modules if isinstance(modules, list) else None


def encoder_folder(folder: str | os.PathLike) -> Path:
    """The folder with the encoder's config and weights: `folder`, or its sentence-transformers
    Transformer module's subfolder."""
    folder = Path(folder)
    for module in sentence_transformers_modules(folder) or []:
        if str(module.get("type", "")).endswith("models.Transformer"):
            return folder / module.get("path", "")
    return folder


def source_pooling(folder: str | os.PathLike) -> tuple[str, str]:
    """(pooler_type, why) as the source was trained: `avg` for a sentence-transformers folder that mean-pools,
    `cls` for one that takes [CLS] and for a plain transformers folder (the masked-LM / [CLS] token).

    Raises:
        ConversionError: a sentence-transformers pooling that Recformer has no pooler for (max, ...).
    """
    folder = Path(folder)
    modules = sentence_transformers_modules(folder)
    if modules is None:
        return "cls", "a transformers folder: the [CLS] token"
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("models.Pooling")), None)
    if pooling is None:
        return "cls", "a sentence-transformers folder without a Pooling module: the [CLS] token"
    where = Path(pooling.get("path", "")) / "config.json"
    settings = _read_json(folder / where)
    modes = [k[len("pooling_mode_"):] for k, v in settings.items() if k.startswith("pooling_mode_") and v is True]
    if modes == ["mean_tokens"]:
        return "avg", f"sentence-transformers mean pooling ({where})"
    if modes == ["cls_token"]:
        return "cls", f"sentence-transformers [CLS] pooling ({where})"
    raise ConversionError(
        f"{folder}: sentence-transformers pooling {modes or 'none'} ({where}) has no Recformer pooler "
        f"(cls, avg); pass pooler_type / --pooler_type to choose one"
    )


def read_source_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a transformers folder: model.safetensors (single or sharded) or pytorch_model.bin."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConversionError(f"{folder}: no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


# -- config, tokenizer and files -------------------------------------------------------------------

# Source config fields that carry over as they are.
COPIED_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range",
)  # fmt: skip


def backbone_config(
    source: Mapping[str, Any],
    special_ids: Mapping[str, int],
    fields: Mapping[str, Any] | None = None,
    pooler_type: str = "cls",
) -> RecformerConfig:
    """The Recformer config of a converted start: the source's sizes, its tokenizer's special ids and
    the Recformer fields (given, else the reference scripts' values; `max_token_num` defaults to
    the smaller of 1024 and the source's learned positions, so nothing is extended unless asked).

    The position table has `pad_token_id + 1 + max(learned positions, max_token_num)` rows (BERT: the
    source's positions + 1).
    """
    family = FAMILIES[source["model_type"]]
    source_pad = int(source.get("pad_token_id") or 0)
    _, learned = position_rows(int(source["max_position_embeddings"]), family, source_pad)
    pad = int(special_ids["pad_token_id"])
    values = {name: (fields or {}).get(name) for name in REFERENCE_SCRIPT_VALUES}
    if values["max_token_num"] is None:
        values["max_token_num"] = min(REFERENCE_SCRIPT_VALUES["max_token_num"], learned)
    for name, reference in REFERENCE_SCRIPT_VALUES.items():
        if values[name] is None:
            values[name] = reference
    layers = int(source["num_hidden_layers"])
    window = values["attention_window"]
    window = list(window) if isinstance(window, (list, tuple)) else [window]
    values["attention_window"] = window[:1] * layers if len(set(window)) == 1 else window  # one window for all
    config = RecformerConfig(
        **{k: source[k] for k in COPIED_CONFIG_FIELDS if k in source},
        **special_ids,
        max_position_embeddings=pad + 1 + max(learned, values["max_token_num"]),
        type_vocab_size=1,
        pooler_type=pooler_type,
        **values,
    )
    config.validate_recformer_fields()
    return config


def special_token_names(vocab: Mapping[str, int], source_tokens: Mapping[str, Any]) -> dict[str, str]:
    """Recformer's special tokens in a source vocabulary: RoBERTa's `<s>`/`</s>`/`<pad>` when it has
    them, else WordPiece's `[CLS]` (bos, cls), `[SEP]` (eos, sep), `[PAD]`, `[UNK]`, `[MASK]`; the
    source tokenizer's own choice (`source_tokens`) where it names one that is in the vocabulary."""
    candidates = {
        "bos_token": ("bos_token", "cls_token", "<s>", "[CLS]"),
        "eos_token": ("eos_token", "sep_token", "</s>", "[SEP]"),
        "sep_token": ("sep_token", "eos_token", "</s>", "[SEP]"),
        "cls_token": ("cls_token", "bos_token", "<s>", "[CLS]"),
        "pad_token": ("pad_token", "<pad>", "[PAD]"),
        "unk_token": ("unk_token", "<unk>", "[UNK]"),
        "mask_token": ("mask_token", "<mask>", "[MASK]"),
    }
    names = {}
    for name, options in candidates.items():
        for option in options:
            token = source_tokens.get(option) if option.endswith("_token") else option
            if isinstance(token, Mapping):
                token = token.get("content")
            if isinstance(token, str) and token in vocab:
                names[name] = token
                break
        else:
            raise ConversionError(f"the source vocabulary has no {name.replace('_', ' ')} (looked for {list(options)})")
    return names


def write_tokenizer_folder(source: Path, folder: Path) -> dict[str, str]:
    """Write the source's tokenizer as one `tokenizer.json` with padding and truncation off, and a
    `tokenizer_config.json` naming Recformer's special tokens explicitly (`special_token_names`).

    Returns the special-token names written."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        loaded = AutoTokenizer.from_pretrained(str(source))
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise ConversionError(f"{source}: its tokenizer has no `tokenizers` backend to convert ({type(loaded).__name__})")
    backend.no_padding()
    backend.no_truncation()
    tokens = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (source / file).is_file():
            tokens.update({k: v for k, v in _read_json(source / file).items() if k.endswith("_token")})
    tokens.update({k: v for k, v in loaded.special_tokens_map.items() if isinstance(v, str)})
    names = special_token_names(backend.get_vocab(with_added_tokens=True), tokens)
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(names, indent=2) + "\n")
    return names


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


def tokenizer_folder(folder: str | os.PathLike) -> Path:
    """Where a source's tokenizer lies: its encoder folder when that has tokenizer files, else `folder`."""
    inner = encoder_folder(folder)
    return inner if any((inner / name).is_file() for name in TOKENIZER_FILES) else Path(folder)


def source_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json dict of a local model folder (or of its sentence-transformers Transformer module), or None."""
    path = encoder_folder(folder) / "config.json"
    return _read_json(path) if path.is_file() else None


def write_backbone_start_point(
    model_name_or_path: str | os.PathLike,
    output: str | os.PathLike,
    fields: Mapping[str, Any] | None = None,
    pooler_type: str | None = None,
    seed: int = 42,
    overwrite: bool = False,
) -> StartPoint:
    """Convert a local BERT-layout encoder folder into the Recformer start point and write it twice, as
    `pipeline_steps.write_start_point` does for a Longformer: the state dict at `output` and the
    `save_pretrained` folder beside it (config, weights, tokenizer).

    Args:
        model_name_or_path: a transformers or sentence-transformers folder (BERT, RoBERTa, MiniLM, ...).
        output: the start-point file.
        fields: Recformer field values (see `backbone_config`).
        pooler_type: `cls` or `avg`; None takes the source's (`source_pooling`).
        seed: seed of a newly initialised masked-LM head.
        overwrite: replace the folder beside `output` when recformer wrote it (`--overwrite_output_dir`);
            a folder that recformer did not write is never replaced.

    Raises:
        ConversionError: an architecture that does not fit (one line naming what differs), weights or a
            tokenizer that do not fit.
    """
    from recformer.io.checkpoint import load_checkpoint
    from recformer.io.checkpoint_files import start_point_folder
    from recformer.io.fileio import atomic_torch_save
    from recformer.io.folders import check_replaceable
    from recformer.io.output_paths import (
        check_not_input,
        check_output_dir,
        check_output_file,
        save_pretrained_folder,
    )
    from recformer.model.modeling_pretraining import RecformerForPretraining
    from recformer.model.tokenization import RecformerTokenizer, check_tokenizer_fits

    root = Path(model_name_or_path)
    output = check_output_file(output)
    folder = check_output_dir(start_point_folder(output))
    check_not_input(folder, {"--model_name_or_path": model_name_or_path}, flag="the folder beside --output")
    check_replaceable(folder, overwrite, OVERWRITE_FLAG)
    source = source_config(root)
    if source is None:
        raise ConversionError(f"{root}: no config.json")
    reason = refusal_reason(source)
    if reason:
        raise ConversionError(f"{root}: cannot start Recformer from it: {reason}")
    if pooler_type is None:
        pooler_type, why = source_pooling(root)
    else:
        why = "given"
    if pooler_type not in POOLER_TYPES:
        raise ConversionError(f"pooler_type must be one of {POOLER_TYPES}, got {pooler_type!r}")
    weights_dir = encoder_folder(root)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_tokenizer_folder(tokenizer_folder(root), Path(tmp))
        tokenizer = RecformerTokenizer.from_pretrained(tmp)
        special_ids = {f"{n}_id": tokenizer.convert_tokens_to_ids(t) for n, t in names.items() if n in ("bos_token", "eos_token", "sep_token", "pad_token")}
        config = backbone_config(source, special_ids, fields, pooler_type)
        tokenizer.config = config
        check_tokenizer_fits(tokenizer, config, str(root))
        state, report = encoder_to_pretraining(
            read_source_weights(weights_dir), source["model_type"], int(source.get("pad_token_id") or 0), config,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        report.notes.insert(0, f"pooler_type {pooler_type}: {why}")
        report.notes.insert(
            0, "tokenizer: " + ", ".join(f"{n.removesuffix('_token')}={t}" for n, t in names.items())
        )
        model = RecformerForPretraining(config)
        load_checkpoint(model, state)
        atomic_torch_save(state, output)
        save_pretrained_folder(folder, model, tokenizer, replace=overwrite, flag=OVERWRITE_FLAG)
    logger.info("start point from %s (%s): %s", root, source["model_type"], report.summary())
    return StartPoint(file=output, folder=folder, num_keys=len(state), report=report)
