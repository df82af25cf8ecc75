"""The model card (`README.md`) that every Recformer `save_pretrained` folder gets.

It says what the model is (the method, the size and Recformer fields), what it was trained on and how
well it did when the folder sits in a finetuning run folder (the run's `args.json` and `metrics.json`
beside it, as `<output_dir>/<dataset>/best_model/`), and how to load it. No torch or transformers here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from recformer.io.fileio import atomic_write_text

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# Where the load snippet's folder goes; the snippet runs once this is replaced by the folder's path.
FOLDER_PLACEHOLDER = "path/to/this/folder"

METHOD = (
    "Recformer (Li et al., KDD 2023, *Text Is All You Need: Learning Language Representations for Sequential "
    "Recommendation*) never learns an ID embedding: an item is the text of its attributes (`title: ... brand: "
    "... category: ...`) and a user's history is the sequence of those texts. A Longformer encoder, with an "
    "extra embedding telling which item each token belongs to, reads the whole history; its `<s>` vector is "
    "compared by cosine similarity (divided by a temperature) with each item's own vector. Items never "
    "trained on, even of another domain, need only their text."
)
# Keys of a dev record in metrics.json that say where it was taken, not how well the model did.
RECORD_POSITION = ("stage", "epoch", "step")
CLASS_ROLE = {
    "RecformerModel": "the encoder: history or item text -> vector",
    "RecformerForPretraining": "the encoder with the masked-LM head of pretraining",
    "RecformerForSeqRec": "the encoder with a frozen item table, scoring histories against every item",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_lines(class_name: str, config: Any) -> list[str]:
    windows = sorted(set(config.attention_window)) if isinstance(config.attention_window, list) else [config.attention_window]
    lines = [
        f"`{class_name}`: {CLASS_ROLE.get(class_name, 'a Recformer model')}. Hidden size {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, attention window {'/'.join(map(str, windows))}; up to "
        f"{config.max_item_embeddings - 1} items and {config.max_token_num} tokens per history, "
        f"{config.max_attr_num} attributes of at most {config.max_attr_length} tokens per item; temperature "
        f"{config.temp}."
    ]
    if class_name == "RecformerForSeqRec" and getattr(config, "item_num", 0):
        lines.append(f"Its item table holds {config.item_num} items (the finetuning catalogue, in `smap.json` order).")
    return lines


def _data_lines(run: Path) -> list[str]:
    args = _read_json(run / "args.json")
    if not isinstance(args, dict):
        return ["Not recorded: this folder is not inside a finetuning run folder (no `args.json` beside it)."]
    lines = [f"Finetuned on `{args.get('data_path')}` (a processed dataset folder: leave-one-out splits) from "
             f"`{args.get('pretrain_ckpt')}`."]  # fmt: skip
    settings = {k: args[k] for k in ("num_train_epochs", "learning_rate", "batch_size", "gradient_accumulation_steps",
                                     "finetune_negative_sample_size", "seed") if k in args}  # fmt: skip
    if settings:
        lines.append("Settings: " + ", ".join(f"`--{k} {v}`" for k, v in settings.items()) + "; all flags in the run's "
                     "`args.json`.")  # fmt: skip
    return lines


def _metrics_lines(run: Path) -> list[str]:
    metrics = _read_json(run / "metrics.json")
    if not isinstance(metrics, dict):
        return []
    rows = []
    for key, label in (("zero_shot_test", "zero-shot test (before finetuning)"), ("best_dev", "best dev"),
                       ("test", "test (best dev checkpoint)")):  # fmt: skip
        record = metrics.get(key)
        if isinstance(record, dict):
            values = {k: v for k, v in record.items() if k not in RECORD_POSITION
                      and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
            if "stage" in record and "epoch" in record:
                label += f" (stage {record['stage']}, epoch {record['epoch']})"
            if values:
                rows.append((label, values))
    if not rows:
        return []
    names = list(dict.fromkeys(name for _, values in rows for name in values))
    table = ["| split | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, values in rows:
        table.append(f"| {label} | " + " | ".join(f"{values[n]:.4f}" if n in values else "" for n in names) + " |")
    return ["## Metrics", "", "From the run's `metrics.json` (full ranking over all items, averaged over users):", "",
            *table, ""]  # fmt: skip


def model_card(folder: str | os.PathLike, class_name: str, config: Any) -> str:
    """The card's text for a `save_pretrained` folder of `class_name` with `config` (the run is `folder`'s parent)."""
    run = Path(folder).resolve().parent
    load_class = class_name if class_name in CLASS_ROLE else "RecformerModel"
    return "\n".join([
        "---",
        "library_name: transformers",
        "tags:",
        "- recformer",
        "- sequential-recommendation",
        "---",
        "",
        f"# Recformer: {class_name}",
        "",
        "## Method",
        "",
        METHOD,
        "",
        "## Model",
        "",
        *_model_lines(class_name, config),
        "",
        "## Data",
        "",
        *_data_lines(run),
        "",
        *_metrics_lines(run),
        "## Load",
        "",
        "```python",
        f"from recformer import {load_class}, RecformerTokenizer",
        "",
        f"folder = '{FOLDER_PLACEHOLDER}'",
        f"model = {load_class}.from_pretrained(folder).eval()",
        "tokenizer = RecformerTokenizer.from_pretrained(folder, model.config)  # when the folder has tokenizer files",
        "```",
        "",
        "Also `transformers.AutoModel.from_pretrained(folder)` (the encoder), `AutoTokenizer` and, for the",
        "pretraining model, `AutoModelForPreTraining`, once `recformer.model.modeling` is imported (`from recformer",
        "import RecformerModel` does it): importing it registers the classes under the model type `recformer`.",
        "Recommending from a catalogue of item texts: `recformer.Recommender.from_pretrained(folder, items)`.",
        "",
    ])


def write_model_card(folder: str | os.PathLike, class_name: str, config: Any) -> Path:
    """Write `README.md` into `folder`; returns its path."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, model_card(folder, class_name, config))
    logger.debug("model card %s", path)
    return path
