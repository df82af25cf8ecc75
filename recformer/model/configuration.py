"""Recformer configuration: a Longformer configuration plus the fields Recformer adds, and the one
function that builds it for every command (`build_config`).

Importing this module registers `RecformerConfig` with transformers' `AutoConfig` under the model type
`recformer` (see `register_auto_config`); `recformer.model.modeling` registers the models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoConfig, LongformerConfig

# defined in .args and .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import DEFAULT_MODEL as DEFAULT_MODEL
from recformer.defaults import REFERENCE_SCRIPT_VALUES
from recformer.io.fileio import read_json


class RecformerConfig(LongformerConfig):
    """Configuration of Recformer models.

    As `LongformerConfig`, under its own `model_type` (`recformer`, so that `AutoConfig` and `AutoModel`
    know it), plus the fields below. Config files with `model_type: longformer` (the reference code's
    and this package's before it had its own type, and every Longformer config the commands start from)
    load as well, without a warning: `get_config_dict` reads that type as this one.

    Args:
        token_type_size: rows of the token-type table (`<s>`, key, value, pad).
        max_token_num: tokens kept per sequence (the oldest are cut).
        max_item_embeddings: rows of the item-position table (items + 1 for `<s>`).
        max_attr_num: attributes kept per item, in insertion order.
        max_attr_length: tokens kept per attribute (key tokens + value tokens).
        pooler_type: `cls` (hidden state of `<s>`) or `avg` (masked mean).
        temp: temperature dividing the cosine similarity.
        mlm_weight: weight of each side's MLM loss in pretraining.
        item_num: rows of the SeqRec item table.
        finetune_negative_sample_size: sampled negatives per user in finetuning; <= 0 means the
            full softmax over all items.
        pack_sides: pretraining encodes both sides and their MLM copies in one packed pass (sdpa and
            flex_attention paths; the shorter side laid several to a row) instead of one pass per side.
            The same loss and gradients either way; which is faster depends on the device and the
            lengths of the two sides (`bench/bench_throughput.py` measures both).
    """

    model_type = "recformer"
    # The model types a config file may carry to load into this class: ours, and the one every Recformer
    # config.json had before (the reference code's and this package's), which plain Longformer configs carry too.
    accepted_model_types = ("recformer", "longformer")

    attention_window: list[int] | int = 64
    sep_token_id: int | None = 2
    token_type_size: int = 4
    max_token_num: int = 2048
    max_item_embeddings: int = 32
    max_attr_num: int = 12
    max_attr_length: int = 8
    pooler_type: str = "cls"
    temp: float = 0.05
    mlm_weight: float = 0.1
    item_num: int = 0
    finetune_negative_sample_size: int = 0
    pack_sides: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # A config dict of an accepted older type (`from_dict`, `RecformerConfig(**dict)`) keeps this class's type.
        if kwargs.get("model_type") in self.accepted_model_types:
            del kwargs["model_type"]
        super().__post_init__(**kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[dict, dict]:
        """transformers' `get_config_dict`, with an accepted older `model_type` read as `recformer`
        (`from_pretrained` would otherwise warn that a Longformer config makes a Recformer model)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") in cls.accepted_model_types:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def validate_recformer_fields(self) -> None:
        """Raise a ValueError naming the field when a Recformer field cannot work."""
        if self.pooler_type not in ("cls", "avg"):
            raise ValueError(f"pooler_type must be 'cls' or 'avg', got {self.pooler_type!r}")
        for name in ("max_token_num", "max_item_embeddings", "max_attr_num", "max_attr_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_item_embeddings < 2:
            raise ValueError("max_item_embeddings must be >= 2 (one row for <s>, one per item)")
        if self.max_token_num > self.max_position_embeddings - self.pad_token_id - 1:
            raise ValueError(
                f"max_token_num={self.max_token_num} does not fit the position table "
                f"(max_position_embeddings={self.max_position_embeddings}, pad_token_id={self.pad_token_id})"
            )
        if self.token_type_size < 4:
            raise ValueError(f"token_type_size must be >= 4 (<s>, key, value, pad), got {self.token_type_size}")
        if not self.temp > 0:
            raise ValueError(f"temp must be > 0, got {self.temp}")


def is_recformer_config_dict(config_dict: dict) -> bool:
    """True when a config.json was written by a Recformer model (it carries the Recformer fields; the
    older ones say `model_type: longformer`)."""
    return all(name in config_dict for name in ("max_item_embeddings", "max_attr_num", "max_token_num"))


def register_auto_config() -> None:
    """Make `AutoConfig.from_pretrained` return a `RecformerConfig` for `model_type: recformer`.

    Called once when this module is imported, as transformers' own model modules are registered by
    importing them: without it, a folder this package saved would be unknown to `AutoConfig` (and to
    `AutoTokenizer`, which reads the config). Idempotent (`exist_ok=True`, the same class each time), it
    only adds the `recformer` key, which transformers does not use, and changes nothing else.
    """
    AutoConfig.register(RecformerConfig.model_type, RecformerConfig, exist_ok=True)


register_auto_config()


def offline_flags() -> list[str]:
    """The offline settings in the environment that forbid reaching the Hugging Face hub, as `NAME=value`
    (`HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE`); empty when the hub may be reached."""
    return [f"{name}={os.environ[name]}" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
            if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")]  # fmt: skip


def check_model_source(model_name_or_path: str | os.PathLike, files: tuple[str, ...] = ("config.json",)) -> None:
    """Raise FileNotFoundError, in one line naming `--model_name_or_path`, for a model folder that does
    not exist and cannot be a hub id either (transformers would report it as a malformed repo id), and
    for a hub id while the hub is offline (`offline_flags`) whose `files` (any one of them) the local Hugging
    Face cache does not hold: transformers would fail on it only after a long message, or, without the
    offline setting, after retrying the network."""
    if Path(model_name_or_path).exists():
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(model_name_or_path))
    except HFValidationError:
        raise FileNotFoundError(
            f"{model_name_or_path}: model folder not found (and not a Hugging Face hub id)"
        ) from None
    flags = offline_flags()
    if flags:
        from huggingface_hub import try_to_load_from_cache

        if not any(isinstance(try_to_load_from_cache(str(model_name_or_path), f), str) for f in files):
            raise FileNotFoundError(
                f"{model_name_or_path}: not a local folder, and {' and '.join(flags)} "
                f"forbid{'s' if len(flags) == 1 else ''} downloading it (the Hugging Face cache does not hold it); "
                "pass --model_name_or_path with a local model folder that holds the config and tokenizer"
            )


def build_config(
    model_name_or_path: str | os.PathLike,
    fields: Mapping[str, Any] | None = None,
    *,
    temp: float | None = None,
    mlm_weight: float | None = None,
    finetune_negative_sample_size: int | None = None,
) -> RecformerConfig:
    """The Recformer config of every command, from a Longformer or Recformer config (hub id or folder).

    Each Recformer field (`max_attr_num`, `max_attr_length`, `max_item_embeddings`,
    `attention_window`, `max_token_num`) takes, in this order: the value in `fields` when not None,
    the saved Recformer config's own value, the reference scripts' value (`REFERENCE_SCRIPT_VALUES`).
    A single attention window is repeated for every layer. `temp`, `mlm_weight` and
    `finetune_negative_sample_size` replace the config's value when given.

    Raises:
        ValueError: a field that cannot work (see `RecformerConfig.validate_recformer_fields`).
        FileNotFoundError: `model_name_or_path` is neither a folder nor a hub id.
        OSError: `model_name_or_path` holds no config.
    """
    check_model_source(model_name_or_path)
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(REFERENCE_SCRIPT_VALUES))
    if unknown:
        raise ValueError(f"unknown Recformer fields {unknown}; expected some of {list(REFERENCE_SCRIPT_VALUES)}")
    config = RecformerConfig.from_pretrained(model_name_or_path)
    config_file = Path(model_name_or_path) / "config.json"
    own = config_file.is_file() and is_recformer_config_dict(read_json(config_file))
    for name, reference in REFERENCE_SCRIPT_VALUES.items():
        if fields.get(name) is not None:
            value = fields[name]
        elif own:
            value = getattr(config, name)
        else:
            value = reference
        if name == "attention_window":
            value = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(set(value)) == 1:  # one window for every layer
                value = value[:1] * config.num_hidden_layers
        setattr(config, name, value)
    if temp is not None:
        config.temp = temp
    if mlm_weight is not None:
        config.mlm_weight = mlm_weight
    if finetune_negative_sample_size is not None:
        config.finetune_negative_sample_size = finetune_negative_sample_size
    config.validate_recformer_fields()
    return config


def field_values(args: Any) -> dict[str, Any]:
    """The Recformer field values of parsed arguments or an argument dataclass (None = not given)."""
    return {name: getattr(args, name) for name in REFERENCE_SCRIPT_VALUES}
