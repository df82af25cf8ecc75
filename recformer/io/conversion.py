"""Checkpoint conversions: pure functions over state dicts, and the two pipeline steps built on them.

Two conversions, each driven by a small key map:

* `longformer_to_pretraining`: a Longformer masked-LM state dict (`LongformerForMaskedLM`) ->
  the `RecformerForPretraining` start point. Every matching weight is copied; Longformer's single
  token-type row is repeated into each of Recformer's `token_type_size` rows; the item-position table
  is new (normal, std = `initializer_range`); the LM head is an untied copy (its decoder weight is a
  copy of the word embeddings when the source ties them), with `lm_head.decoder.bias` the same
  tensor as `lm_head.bias`.
* `pretraining_to_released`: a consolidated Lightning / DeepSpeed state dict of the pretraining
  module -> the `RecformerModel` form (no prefix, the released `recformer_ckpt.bin`) and the
  `RecformerForSeqRec` form (`longformer.*` + `lm_head.*`, the released `recformer_seqrec_ckpt.bin`),
  with the word embeddings restored from the start point when they were frozen or are absent.

The two conversions read no files and build no trainable model; target shapes come from a
meta-device model, so they run at longformer-base size on meta tensors in tests. The form rules
they share with loading (position ids, the tied LM-head bias, prefixes) live in `checkpoint.py`.

The file-facing steps: `write_start_point` (what `save_longformer_ckpt.py` does) and
`write_released` (what `convert_pretrain_ckpt.py` does). See docs/design.md for the forms.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recformer.io.checkpoint import _preview
from recformer.io.checkpoint_files import CheckpointError
from recformer.io.checkpoint_keys import (
    LM_DECODER_BIAS_KEY,
    LM_HEAD_PREFIX,
    POSITION_IDS_KEY,
    PREFIX,
    add_encoder_prefix,
    fill_position_ids,
    has_encoder_prefix,
    position_ids,
    strip_wrapper_prefixes,
    tie_lm_head_bias,
)
from recformer.io.folders import check_replaceable
from recformer.io.output_paths import (
    check_not_input,
    check_output_dir,
    check_output_file,
    save_pretrained_folder,
)
from recformer.model.configuration import RecformerConfig

logger = logging.getLogger(__name__)

WORD_EMBEDDINGS_KEY = PREFIX + "embeddings.word_embeddings.weight"
TOKEN_TYPE_KEY = PREFIX + "embeddings.token_type_embeddings.weight"
ITEM_POSITION_KEY = PREFIX + "embeddings.item_position_embeddings.weight"
FULL_POSITION_IDS_KEY = PREFIX + POSITION_IDS_KEY
LM_DECODER_WEIGHT_KEY = "lm_head.decoder.weight"

# Longformer masked-LM key -> how it becomes a Recformer pretraining key. Keys not listed are copied
# under the same name when the target has them. Rules: "repeat_rows" (1 row -> token_type_size rows).
LONGFORMER_RESHAPE_RULES = {TOKEN_TYPE_KEY: "repeat_rows"}
# Source keys with no place in Recformer (its pooler has no parameters).
LONGFORMER_UNUSED_PREFIXES = (PREFIX + "pooler.",)
# Target keys that the source never has and that are made here.
NEW_KEYS = (ITEM_POSITION_KEY,)
# Target keys filled from another source key when absent: a tied decoder is saved once, under the
# word embeddings. (The decoder bias is the LM head bias under a second name: `tie_lm_head_bias`.)
FILL_FROM = {LM_DECODER_WEIGHT_KEY: WORD_EMBEDDINGS_KEY}


class ConversionError(CheckpointError):
    """A state dict that cannot be converted; the message names the keys and shapes."""


@dataclass
class ConversionReport:
    """Which target keys were copied, reshaped, newly made, filled or restored; which source keys were dropped."""

    copied: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    source_tensors: tuple[int, int] | None = None  # (copied, expected) tensors of a Longformer checkpoint
    notes: list[str] = field(default_factory=list)  # how reshaped and new tensors were made

    def lines(self) -> list[str]:
        out = [f"copied: {len(self.copied)} keys"]
        for name in ("reshaped", "new", "filled", "restored", "dropped"):
            keys = getattr(self, name)
            if keys:
                out.append(f"{name}: {len(keys)} {_preview(keys, 12)}")
        return out + self.notes

    def summary(self) -> str:
        return "; ".join(self.lines())


def pretraining_state_shapes(config: RecformerConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every `RecformerForPretraining` state-dict entry, from a meta-device model."""
    from recformer.model.modeling_pretraining import RecformerForPretraining

    with torch.device("meta"):
        model = RecformerForPretraining(RecformerConfig.from_dict(config.to_dict()))
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def _new_normal(shape: torch.Size, std: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if like.device.type == "meta":
        return torch.empty(shape, dtype=like.dtype, device="meta")
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * std).to(dtype=like.dtype, device=like.device)


def longformer_to_pretraining(
    longformer_state: dict[str, torch.Tensor],
    config: RecformerConfig,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Build the `RecformerForPretraining` start point from a `LongformerForMaskedLM` state dict.

    Args:
        longformer_state: `longformer.*` + `lm_head.*` tensors (the decoder weight and bias and the
            position ids may be absent, as in files written by `save_pretrained`).
        config: the Recformer config (Longformer sizes plus the Recformer fields).
        generator: random source for the new item-position table.

    Returns:
        The start-point state dict (every `RecformerForPretraining` key, decoder untied, decoder bias
        sharing the LM head bias tensor) and a report of what was copied, reshaped and made new.

    Raises:
        ConversionError: a source of the wrong size or form, naming the keys and both shapes.
    """
    source = strip_wrapper_prefixes(dict(longformer_state))
    targets = pretraining_state_shapes(config)
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    like = next(iter(source.values()))

    for key, (shape, _dtype) in targets.items():
        if key in NEW_KEYS:
            out[key] = _new_normal(shape, config.initializer_range, source.get(WORD_EMBEDDINGS_KEY, like), generator)
            report.new.append(key)
            continue
        if key == FULL_POSITION_IDS_KEY:
            if key in source and tuple(source[key].shape) == tuple(shape):
                out[key] = source[key].clone()
                report.copied.append(key)
            else:
                out[key] = position_ids(shape[-1], like)
                report.new.append(key)
            continue
        if key == LM_DECODER_BIAS_KEY:
            continue  # set to the LM head bias tensor below
        src_key = key if key in source else FILL_FROM.get(key)
        if src_key not in source:
            missing.append(key)
            continue
        tensor = source[src_key]
        if LONGFORMER_RESHAPE_RULES.get(key) == "repeat_rows" and tensor.dim() == 2 and tensor.shape[0] == 1:
            if tensor.shape[1] != shape[1]:
                mismatched.append(f"{src_key}: checkpoint {tuple(tensor.shape)} vs Recformer config {tuple(shape)}")
                continue
            out[key] = tensor.expand(shape[0], -1).clone()
            report.reshaped.append(key)
            continue
        if tuple(tensor.shape) != tuple(shape):
            mismatched.append(f"{src_key}: checkpoint {tuple(tensor.shape)} vs Recformer config {tuple(shape)}")
            continue
        out[key] = tensor.clone()  # clone: the LM head must not share storage with the word embeddings
        (report.filled if src_key != key else report.copied).append(key)

    if missing or mismatched:
        lines = ["the Longformer checkpoint does not fit the Recformer config:"]
        if missing:
            lines.append(f"  missing keys: {_preview(missing, 20)}")
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:20]))
        raise ConversionError("\n".join(lines))

    report.filled += tie_lm_head_bias(out)  # the decoder bias: one parameter under two names
    used = set(targets) | set(FILL_FROM.values())
    report.dropped = sorted(k for k in source if k not in used)
    unexpected = [k for k in report.dropped if not k.startswith(LONGFORMER_UNUSED_PREFIXES)]
    if unexpected:
        raise ConversionError(
            f"the Longformer checkpoint has keys Recformer has no place for: {_preview(unexpected, 20)} "
            "(expected a LongformerForMaskedLM state dict: 'longformer.*' and 'lm_head.*')"
        )
    return out, report


def _close_to(saved: torch.Tensor, start: torch.Tensor) -> bool:
    """True when `saved` equals `start` up to the rounding of `saved`'s dtype (a frozen weight saved in fp16)."""
    if saved.shape != start.shape or saved.device.type == "meta" or start.device.type == "meta":
        return False
    if saved.dtype.is_floating_point and saved.dtype != start.dtype:
        start = start.to(saved.dtype)
    return bool(torch.equal(saved.float(), start.float()))


def pretraining_to_released(
    state: dict[str, torch.Tensor],
    start_state: dict[str, torch.Tensor] | None = None,
    restore_word_embeddings: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """The `RecformerModel` and `RecformerForSeqRec` forms of a trained pretraining state dict.

    Args:
        state: the consolidated weights of the pretraining module, with or without wrapper prefixes
            (`model.`, `_forward_module.`, `module.`): `longformer.*` + `lm_head.*`.
        start_state: the start point (`longformer_to_pretraining` output, any known prefix form);
            needed when the word embeddings are restored.
        restore_word_embeddings: True to always take the word embeddings from the start point (they
            were frozen), False never; None restores them when absent or when they equal the start
            point's up to the saved dtype's rounding (frozen weights saved in fp16).

    Returns:
        (model_state, seqrec_state, report): `model_state` has no prefix (strict-loads into
        `RecformerModel`); `seqrec_state` is `longformer.*` + the 7 `lm_head.*` keys.
    """
    state = add_encoder_prefix(strip_wrapper_prefixes(dict(state)))
    report = ConversionReport()
    unexpected = [k for k in state if not k.startswith((PREFIX, LM_HEAD_PREFIX))]
    if unexpected or not has_encoder_prefix(state):
        raise ConversionError(
            "not a Recformer pretraining state dict (expected 'longformer.*' and 'lm_head.*' keys, "
            f"with an optional 'model.' prefix); unexpected keys: {_preview(unexpected or list(state), 12)}"
        )
    start = None if start_state is None else add_encoder_prefix(strip_wrapper_prefixes(dict(start_state)))

    saved_words = state.get(WORD_EMBEDDINGS_KEY)
    if restore_word_embeddings is None:
        restore = saved_words is None or (
            start is not None and WORD_EMBEDDINGS_KEY in start and _close_to(saved_words, start[WORD_EMBEDDINGS_KEY])
        )
    else:
        restore = restore_word_embeddings
    if restore:
        if start is None or WORD_EMBEDDINGS_KEY not in start:
            raise ConversionError(
                f"{WORD_EMBEDDINGS_KEY} must be restored from the Longformer start point "
                f"({'absent from the checkpoint' if saved_words is None else 'frozen in training'}), "
                "but no start point with word embeddings was given"
            )
        words = start[WORD_EMBEDDINGS_KEY]
        if saved_words is not None and tuple(saved_words.shape) != tuple(words.shape):
            raise ConversionError(
                f"{WORD_EMBEDDINGS_KEY}: checkpoint {tuple(saved_words.shape)} vs start point {tuple(words.shape)}"
            )
        state[WORD_EMBEDDINGS_KEY] = words
        report.restored.append(WORD_EMBEDDINGS_KEY)

    report.filled += fill_position_ids(state, PREFIX)
    report.filled += tie_lm_head_bias(state)

    model_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    seqrec_state = dict(state)
    report.copied = sorted(k for k in state if k not in report.restored and k not in report.filled)
    return model_state, seqrec_state, report


def to_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp32 (ids and other integer buffers untouched), contiguous, on the CPU."""
    return {
        k: (v.float() if v.is_floating_point() else v).detach().to("cpu").contiguous() for k, v in state.items()
    }


# -- file-facing steps of the pretraining pipeline (`save_longformer_ckpt.py`, `convert_pretrain_ckpt.py`)

MODEL_FILE = "recformer_ckpt.bin"
SEQREC_FILE = "recformer_seqrec_ckpt.bin"
RELEASED_FOLDERS = ("recformer", "recformer_seqrec")  # save_pretrained folders of the two forms
# The flag that lets `save_longformer_ckpt.py` replace a folder it wrote before.
OVERWRITE_FLAG = "--overwrite_output_dir"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers logs errors only inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _pickled_weights(model_name_or_path: str) -> Path | None:
    """A local folder's `pytorch_model.bin` when it is the folder's only weights file (a pickle)."""
    folder = Path(model_name_or_path)
    pickled = folder / "pytorch_model.bin"
    if not (folder.is_dir() and pickled.is_file()):
        return None
    if any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        return None
    return pickled


def build_start_point(
    model_name_or_path: str, config: RecformerConfig, seed: int = 42, trust_checkpoint: bool = False
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Load a Longformer masked-LM (hub id or local folder) and convert it with `longformer_to_pretraining`.

    `from_pretrained` fills every weight the checkpoint lacks with random values and only logs it, so
    a checkpoint of another architecture of the same size (BERT) would "load": any Longformer tensor
    the checkpoint does not provide is refused here, naming the unmatched keys on both sides. The
    report's `source_tensors` says how many of the expected Longformer tensors were copied.

    Raises:
        ConversionError: the checkpoint does not provide the Longformer masked-LM layout (or its shapes
            do not fit `config`); the message names `model_name_or_path` and the keys.
    """
    from transformers import LongformerConfig, LongformerForMaskedLM

    from recformer.io.checkpoint_files import UntrustedCheckpointError, torch_load

    pickled = _pickled_weights(model_name_or_path)
    with quiet_transformers():  # its load report would be noise before the one line said here
        if pickled is None:
            longformer, info = LongformerForMaskedLM.from_pretrained(model_name_or_path, output_loading_info=True)
        else:  # read by the one unpickler of this project, which refuses code-running objects in one line
            try:
                weights = torch_load(pickled, trust=trust_checkpoint)
            except UntrustedCheckpointError as e:
                raise UntrustedCheckpointError(f"{e} (pass --trust_checkpoint only if you made it yourself)") from None
            if not isinstance(weights, dict):
                raise ConversionError(f"{pickled}: not a state dict (a mapping of parameter names to tensors)")
            longformer, info = LongformerForMaskedLM.from_pretrained(
                None, config=LongformerConfig.from_pretrained(model_name_or_path), state_dict=weights,
                output_loading_info=True,
            )  # fmt: skip
    state = longformer.state_dict()
    shared: set[int] = set()
    expected = []  # every tensor once: the tied LM-head decoder is the word embeddings under a second name
    for key, tensor in state.items():
        if tensor.data_ptr() not in shared:
            shared.add(tensor.data_ptr())
            expected.append(key)
    missing = [k for k in expected if k in set(info["missing_keys"])]
    if missing:
        raise ConversionError(
            f"{model_name_or_path}: its weights do not map onto the Longformer masked-LM layout: "
            f"{len(missing)} of {len(expected)} Longformer tensors are not in it {_preview(missing, 6)}; "
            f"its keys with no Longformer place: {_preview(list(info['unexpected_keys']), 6)}"
        )
    generator = torch.Generator().manual_seed(seed)
    try:
        converted, report = longformer_to_pretraining(state, config, generator=generator)
    except ConversionError as e:
        raise ConversionError(f"{model_name_or_path}: {e}") from None
    report.source_tensors = (len(expected), len(expected))
    return converted, report


@dataclass
class StartPoint:
    """What `write_start_point` wrote."""

    file: Path
    folder: Path
    num_keys: int
    report: ConversionReport


def write_start_point(
    model_name_or_path: str,
    output: str | os.PathLike,
    fields: Mapping[str, Any] | None = None,
    seed: int = 42,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    pooler_type: str | None = None,
) -> StartPoint:
    """Convert a Longformer masked-LM into the pretraining start point and write it twice.

    `output` gets the reference file (a `torch.save`d state dict with the reference key names); the
    `save_pretrained` folder beside it (`checkpoint.start_point_folder`) gets config, weights and
    tokenizer, so later steps need no hub access. A local folder of another encoder (BERT, RoBERTa,
    MiniLM, ...) is converted by `backbones.write_backbone_start_point` instead.

    Args:
        model_name_or_path: Longformer masked-LM, hub id or folder (config, weights, tokenizer).
        output: the start-point file.
        fields: Recformer field values (see `configuration.build_config`).
        seed: seed of the new item-position table.
        overwrite: replace the folder beside `output` when recformer wrote it (`--overwrite_output_dir`);
            a folder that recformer did not write is never replaced.
        trust_checkpoint: unpickle a `pytorch_model.bin` fully (see `checkpoint_files.torch_load`).
        pooler_type: `cls` or `avg`; None keeps the config's (Longformer) or takes the source's (others).

    Raises:
        OutputPathError: the output file or folder cannot be written or must not be replaced (named).
    """
    from recformer.io.backbones import source_config, write_backbone_start_point
    from recformer.io.checkpoint import load_checkpoint
    from recformer.io.checkpoint_files import start_point_folder
    from recformer.io.fileio import atomic_torch_save
    from recformer.model.configuration import build_config
    from recformer.model.modeling_pretraining import RecformerForPretraining
    from recformer.model.tokenization import RecformerTokenizer

    local = source_config(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    if local is not None and local.get("model_type") != "longformer":
        return write_backbone_start_point(
            model_name_or_path, output, fields, pooler_type=pooler_type, seed=seed, overwrite=overwrite
        )
    output = check_output_file(output)  # before the (possibly large) input is read
    folder = check_output_dir(start_point_folder(output))
    check_not_input(folder, {"--model_name_or_path": model_name_or_path}, flag="the folder beside --output")
    check_replaceable(folder, overwrite, OVERWRITE_FLAG)
    config = build_config(model_name_or_path, fields)
    if pooler_type is not None:
        config.pooler_type = pooler_type
        config.validate_recformer_fields()
    state, report = build_start_point(model_name_or_path, config, seed=seed, trust_checkpoint=trust_checkpoint)
    model = RecformerForPretraining(config)
    load_checkpoint(model, state)  # validates every key and shape once more
    tokenizer = RecformerTokenizer.from_pretrained(model_name_or_path, config)
    atomic_torch_save(to_float32(state), output)
    save_pretrained_folder(folder, model, tokenizer, replace=overwrite, flag=OVERWRITE_FLAG)
    return StartPoint(file=output, folder=folder, num_keys=len(state), report=report)


@dataclass
class ReleasedCheckpoint:
    """What `write_released` read and wrote."""

    source_form: str
    source_tensors: int
    report: ConversionReport
    model_keys: int
    seqrec_keys: int
    output_dir: Path


def write_released(
    training_checkpoint: str | os.PathLike,
    start_point: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_name_or_path: str | os.PathLike | None = None,
    restore_word_embeddings: bool | None = None,
    trust_checkpoint: bool = False,
) -> ReleasedCheckpoint:
    """Turn what pretraining wrote into the released files, each checked by loading it back.

    Writes `recformer_ckpt.bin` (RecformerModel form), `recformer_seqrec_ckpt.bin` (SeqRec form)
    and the `save_pretrained` folders `recformer/` and `recformer_seqrec/` (config, weights,
    tokenizer) into `output_dir`.

    Args:
        training_checkpoint: a DeepSpeed folder, a Lightning `.ckpt` or a consolidated `.bin`.
        start_point: the start-point file (`write_start_point`); source of frozen word embeddings.
        output_dir: where the released files go.
        model_name_or_path: config + tokenizer folder (default: the folder beside `start_point`).
        restore_word_embeddings: True/False forces it; None restores them when training froze them
            (the checkpoint's hyperparameters say so) or, failing that, when they are unchanged.
        trust_checkpoint: unpickle the training checkpoint fully (see `checkpoint_files.torch_load`).

    Raises:
        CheckpointError: an unreadable or ill-fitting checkpoint, naming the keys.
        FileNotFoundError: no config.json in the config folder.
    """
    from recformer.io.checkpoint import load_checkpoint
    from recformer.io.checkpoint_files import read_state_dict, read_training_checkpoint, start_point_folder
    from recformer.io.fileio import atomic_torch_save
    from recformer.model.modeling import RecformerForSeqRec, RecformerModel
    from recformer.model.tokenization import RecformerTokenizer

    out = check_output_dir(output_dir)  # before the (possibly large) inputs are read
    for name in (MODEL_FILE, SEQREC_FILE):
        check_output_file(out / name)
    for name in RELEASED_FOLDERS:
        check_replaceable(check_output_dir(out / name))  # never one that recformer did not write
    config_dir = Path(model_name_or_path) if model_name_or_path else start_point_folder(start_point)
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{config_dir}: no config.json; pass --model_name_or_path (the folder save_longformer_ckpt.py wrote)"
        )
    config = RecformerConfig.from_pretrained(config_dir)
    state, hparams, form = read_training_checkpoint(training_checkpoint, trust=trust_checkpoint)
    start = read_state_dict(start_point)
    restore = restore_word_embeddings
    if restore is None and "fix_word_embedding" in hparams:
        restore = bool(hparams["fix_word_embedding"])  # what training did, when the checkpoint says
    model_state, seqrec_state, report = pretraining_to_released(state, start, restore_word_embeddings=restore)
    model_state, seqrec_state = to_float32(model_state), to_float32(seqrec_state)
    model = RecformerModel(config)
    load_checkpoint(model, model_state)
    seqrec = RecformerForSeqRec(config)
    load_checkpoint(seqrec, seqrec_state)

    tokenizer = RecformerTokenizer.from_pretrained(str(config_dir), config)
    atomic_torch_save(model_state, out / MODEL_FILE)
    atomic_torch_save(seqrec_state, out / SEQREC_FILE)
    for folder, net in zip(RELEASED_FOLDERS, (model, seqrec)):
        save_pretrained_folder(out / folder, net, tokenizer)
    return ReleasedCheckpoint(
        source_form=form, source_tensors=len(state), report=report, model_keys=len(model_state),
        seqrec_keys=len(seqrec_state), output_dir=out,
    )  # fmt: skip
