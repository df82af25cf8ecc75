"""The file-facing steps of the pretraining pipeline, built on the conversions of `conversion.py`:
`write_start_point` (what `save_longformer_ckpt.py` does: a Longformer masked-LM, or a BERT-layout
encoder through `backbones`, to the start point) and `write_released` (what `convert_pretrain_ckpt.py`
does: a pretraining run's checkpoint to the released file forms). Every output is checked before the
input is read, written atomically, and never replaces a folder recformer did not write.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recformer.io.checkpoint import _preview
from recformer.io.conversion import (
    ConversionError,
    ConversionReport,
    longformer_to_pretraining,
    pretraining_to_released,
    to_float32,
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
