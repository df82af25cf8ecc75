"""Checkpoint forms, the rules that relate them, and loading that never drops weights silently.

Known forms (all produced by the reference code or by this package):

    model      RecformerModel state dict: `embeddings.*`, `encoder.*` (the released `recformer_ckpt.bin`)
    pretrain   `longformer.*` + the 7 `lm_head.*` keys (RecformerForPretraining, and the released
               `recformer_seqrec_ckpt.bin`)
    finetuned  `longformer.*` + `item_embedding.weight` (a finetuned RecformerForSeqRec, `best_model.bin`)
    folder     a `save_pretrained` folder (`model.safetensors` or `pytorch_model.bin`)

Any of them may come inside a training container (a Lightning `.ckpt`'s `state_dict`, a DeepSpeed
model-states file's `module`) and behind wrapper prefixes (`model.`, `module.`, ...). The rules that
relate the forms are one helper each: `unwrap_training_container`, `strip_wrapper_prefixes`,
`detect_form` / `split_encoder` / `add_encoder_prefix`, `fill_position_ids` and `tie_lm_head_bias`.

`load_checkpoint(model, source)` maps any form onto any Recformer model class (`TARGETS` says where
each class keeps its encoder and which extra parts it takes or ignores), and fails with the missing,
unexpected and mis-shaped keys named for anything else. `read_training_checkpoint` reads what a
pretraining run wrote (a DeepSpeed folder, a Lightning `.ckpt` or a consolidated `.bin`).

Unpickling can run code, so every file is read with `weights_only=True`: tensors, plain containers
and the few Python types a training checkpoint of this project holds (`deepspeed_checkpoint_types`).
DeepSpeed's consolidation utility, which calls `torch.load(weights_only=False)` itself, runs inside
`weights_only_loading`, which forces the same rule on it. Only `trust=True` (the tools'
`--trust_checkpoint` flag) lifts this.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# defined in .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import TRUST_CHECKPOINT_HELP as TRUST_CHECKPOINT_HELP
from recformer.errors import RecformerError

logger = logging.getLogger(__name__)

PREFIX = "longformer."
LM_HEAD_PREFIX = "lm_head."
ITEM_TABLE_KEY = "item_embedding.weight"
POSITION_IDS_KEY = "embeddings.position_ids"
POSITION_EMBEDDINGS_KEY = "embeddings.position_embeddings.weight"
LM_BIAS_KEY = "lm_head.bias"
LM_DECODER_BIAS_KEY = "lm_head.decoder.bias"
# Prefixes that training wrappers put in front of the model's own keys (Lightning module attribute,
# DDP / DeepSpeed engine, torch.compile).
WRAPPER_PREFIXES = ("module.", "_forward_module.", "_orig_mod.", "model.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "recformer_ckpt.bin", "best_model.bin")
NEITHER = (
    "is neither a DeepSpeed checkpoint folder, a Lightning .ckpt nor a consolidated state dict (.bin) "
    "of the Recformer pretraining module"
)


class CheckpointError(RecformerError, ValueError):
    """A checkpoint that does not fit the model; the message names the keys."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint holding Python objects whose unpickling could run code; it was not loaded."""


# What `--trust_checkpoint` does and risks (the flag's help on every tool that has it).


@dataclass
class LoadReport:
    """What `load_checkpoint` did."""

    form: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known extra parts the target has no place for
    filled: list[str] = field(default_factory=list)  # known gaps filled by the model (position_ids, tied bias)

    def summary(self) -> str:
        parts = [f"form={self.form}", f"loaded={len(self.loaded)}"]
        if self.ignored:
            parts.append(f"ignored={_preview(self.ignored)}")
        if self.filled:
            parts.append(f"kept from model={_preview(self.filled)}")
        return ", ".join(parts)


def _preview(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"


# -- the rules --------------------------------------------------------------------------------------


def unwrap_training_container(obj: Any) -> tuple[Any, str | None]:
    """The model weights inside a training checkpoint and the container's name (None: not a container).

    Lightning keeps them under `state_dict`, a DeepSpeed model-states file under `module`.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], "Lightning checkpoint"
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        return obj["module"], "DeepSpeed model-states file"
    return obj, None


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove prefixes that every key shares and that come from training wrappers (`model.`, `module.`, ...)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def has_encoder_prefix(state: dict[str, Any]) -> bool:
    """True when the encoder's keys carry the `longformer.` prefix (every form but `model`)."""
    return any(k.startswith(PREFIX) for k in state)


def detect_form(state: dict[str, torch.Tensor]) -> str:
    """Name of the checkpoint form (`model`, `pretrain`, `finetuned`, `encoder`) or `unknown`."""
    keys = set(state)
    if has_encoder_prefix(state):
        if ITEM_TABLE_KEY in keys:
            return "finetuned"
        if any(k.startswith(LM_HEAD_PREFIX) for k in keys):
            return "pretrain"
        return "encoder"
    if any(k.startswith("embeddings.") for k in keys):
        return "model"
    return "unknown"


def _is_head_part(key: str) -> bool:
    return key.startswith(LM_HEAD_PREFIX) or key == ITEM_TABLE_KEY


def split_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the encoder's tensors without prefix, everything else) of any form.

    In the `model` form (no prefix) every key but the LM head and the item table is the encoder's;
    otherwise the encoder's keys are those under `longformer.`.
    """
    if has_encoder_prefix(state):
        encoder = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        return encoder, {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    return {k: v for k, v in state.items() if not _is_head_part(k)}, {k: v for k, v in state.items() if _is_head_part(k)}


def add_encoder_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors with the encoder under `longformer.` (a `model`-form state gets the prefix;
    anything else is returned as it is)."""
    if detect_form(state) != "model":
        return dict(state)
    return {(k if _is_head_part(k) else PREFIX + k): v for k, v in state.items()}


def position_ids(length: int, like: torch.Tensor) -> torch.Tensor:
    """The position-id buffer `[[0, 1, ..., length - 1]]` (int64; on `like`'s device, meta included)."""
    return torch.arange(length, device=like.device).expand((1, -1)).clone()


def fill_position_ids(state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Add `embeddings.position_ids` when absent (newer transformers versions stop saving the buffer).

    It is always `arange(max_position_embeddings)`, sized from the position table. Modifies `state`;
    returns the keys added.
    """
    key, table = prefix + POSITION_IDS_KEY, prefix + POSITION_EMBEDDINGS_KEY
    if key in state or table not in state:
        return []
    state[key] = position_ids(state[table].shape[0], state[table])
    return [key]


def tie_lm_head_bias(state: dict[str, torch.Tensor]) -> list[str]:
    """Fill whichever of `lm_head.bias` / `lm_head.decoder.bias` is absent with the other.

    The LM head's output bias is one parameter saved under both names; files may hold either.
    Modifies `state`; returns the keys added.
    """
    for present, absent in ((LM_BIAS_KEY, LM_DECODER_BIAS_KEY), (LM_DECODER_BIAS_KEY, LM_BIAS_KEY)):
        if present in state and absent not in state:
            state[absent] = state[present]
            return [absent]
    return []


# -- reading files ----------------------------------------------------------------------------------


def deepspeed_checkpoint_types() -> list[type]:
    """The Python types a DeepSpeed ZeRO checkpoint holds besides tensors and plain data.

    Its optimizer-state files keep the loss scaler object, the ZeRO stage enum and the addresses of
    parameter fragments; its model-states file and a Lightning `.ckpt` of this project hold none
    (Lightning saves the hyperparameters as a dict). `tests/test_pretrain_cli.py` checks both on real
    checkpoints.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loading(allowed: Sequence[Any] = ()) -> Iterator[None]:
    """Inside the block every `torch.load` reads tensors, plain containers and the `allowed` types only,
    even a call that asks for `weights_only=False` (torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD on each
    call), so third-party loaders such as DeepSpeed's consolidation cannot unpickle code."""
    saved = {name: os.environ.pop(name, None) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _type_name(t: Any) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _untrusted(names: Sequence[str]) -> str:
    listed = f" ({', '.join(sorted(set(names)))})" if names else ""
    return f"refused: it holds Python objects besides tensors and plain data{listed}, and unpickling them could run code"


NOT_A_CHECKPOINT = "not a complete PyTorch checkpoint file (damaged, truncated or another format)"


def _refused_objects(error: BaseException, path: str | os.PathLike | None) -> list[str] | None:
    """The Python types that weights-only loading refused (None: `error` is not such a refusal)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    names = re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))
    if not names and (path is None or not zipfile.is_zipfile(path)):
        return None  # garbage or a damaged file also fails as an unpickling error
    with contextlib.suppress(Exception):  # every offending type, not only the first
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path) or names
    return names


def unreadable_reason(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why `torch.load` failed, in this project's words (never torch's advice to retry unsafely)."""
    names = _refused_objects(error, path)
    if names is not None:
        return _untrusted(names)
    if path is not None and not zipfile.is_zipfile(path):
        return NOT_A_CHECKPOINT
    first = str(error).strip().split("\n")[0].split(". ")[0]
    detail = f": {first}" if first and "weights_only" not in first else ""
    return f"not a readable PyTorch checkpoint ({type(error).__name__}{detail})"


def refuse_unsafe_objects(path: str | os.PathLike, allowed: Sequence[Any] = ()) -> None:
    """Raise `UntrustedCheckpointError` naming the file and the Python types it would unpickle beyond
    tensors, plain data and `allowed` (reads the pickles only, not the tensors). A folder (DeepSpeed)
    is checked file by file."""
    path = Path(path)
    for f in sorted(path.glob("**/*_states.pt")) if path.is_dir() else [path]:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: loading it says what is wrong
            continue
        unsafe = sorted(set(found) - {_type_name(t) for t in allowed})
        if unsafe:
            raise UntrustedCheckpointError(f"{f}: {_untrusted(unsafe)}")


def training_checkpoint_types(path: str | os.PathLike) -> list[type]:
    """The Python types to allow when reading the training checkpoint at `path` (a file of this project's
    Lightning runs needs none; a DeepSpeed folder needs `deepspeed_checkpoint_types`)."""
    return deepspeed_checkpoint_types() if Path(path).is_dir() else []


def torch_load(path: str | os.PathLike, trust: bool = False, allowed: Sequence[Any] = ()) -> Any:
    """The one place checkpoint files are unpickled: tensors, plain containers and `allowed` types only
    (everything when `trust`).

    Raises:
        UntrustedCheckpointError: the file holds other Python objects (it was not loaded).
        CheckpointError: the file cannot be read (damaged, truncated, not a PyTorch file); names `path`.
    """
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with weights_only_loading(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error, named once
        error = UntrustedCheckpointError if _refused_objects(e, path) is not None else CheckpointError
        raise error(f"{path}: {unreadable_reason(e, path)}") from None


def read_state_dict(source: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, a `save_pretrained` folder, a Lightning `.ckpt`, or a dict."""
    if isinstance(source, dict):
        state = source
        origin = "state dict"
    else:
        path = Path(source)
        origin = str(path)
        if path.is_dir():
            for name in WEIGHT_FILES:
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise CheckpointError(f"{origin}: folder holds none of {', '.join(WEIGHT_FILES)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch_load(path)
    state, _ = unwrap_training_container(state)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{origin}: not a state dict (a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin}: holds no tensors")
    return tensors


def read_training_checkpoint(
    path: str | os.PathLike, trust: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(weights, hyperparameters, form) of what a pretraining run wrote.

    Accepts a DeepSpeed checkpoint folder (its ZeRO shards are consolidated with DeepSpeed's own
    utility, forced to read only tensors, plain data and `deepspeed_checkpoint_types`), a Lightning
    `.ckpt`, a DeepSpeed model-states file or a consolidated state dict.

    Args:
        path: the checkpoint file or folder.
        trust: unpickle everything (`weights_only=False`); only for files the user made.

    Raises:
        UntrustedCheckpointError: a file holds other Python objects (nothing of it was unpickled).
        CheckpointError: anything else, naming the path.
        FileNotFoundError: nothing at `path`.
    """
    path = Path(path)
    if path.is_dir():
        model_states = sorted(path.glob("**/mp_rank_*_model_states.pt"))
        if not model_states:
            raise CheckpointError(f"{path}: {NEITHER} (a folder without DeepSpeed *_model_states.pt files)")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        allowed = training_checkpoint_types(path)
        if not trust:  # names the file; the forced weights-only loading below is what keeps code out
            refuse_unsafe_objects(path, allowed)
        tag = None
        if not (path / "latest").is_file():  # no 'latest' pointer: the one tag folder holding the states
            tags = sorted({p.parent.relative_to(path).as_posix() for p in model_states})
            if len(tags) != 1:
                raise CheckpointError(f"{path}: several DeepSpeed tags {tags} and no 'latest' file")
            tag = tags[0]
        try:
            with contextlib.nullcontext() if trust else weights_only_loading(allowed):
                state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag)
        except pickle.UnpicklingError as e:  # a file the check above could not read
            raise UntrustedCheckpointError(f"{path}: {_untrusted(_refused_objects(e, None) or [])}") from None
        client = torch_load(model_states[0], trust=trust, allowed=allowed)
        return dict(state), dict(client.get("hyper_parameters") or {}), "DeepSpeed checkpoint folder"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        obj = torch_load(path, trust=trust)
    except UntrustedCheckpointError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {NEITHER}: {str(e).removeprefix(f'{path}: ')}") from None
    state, container = unwrap_training_container(obj)
    if container is not None:
        return state, dict(obj.get("hyper_parameters") or {}), container
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj, {}, "consolidated state dict"
    raise CheckpointError(f"{path}: {NEITHER}")


def start_point_folder(output: str | os.PathLike) -> Path:
    """The `save_pretrained` folder written beside a start-point file: `dir/name.bin` -> `dir/name/`."""
    output = Path(output)
    return output.with_name(output.stem)


# -- loading into a model ---------------------------------------------------------------------------

# The extra parts a checkpoint may carry besides the encoder.
LM_HEAD, ITEM_TABLE = "lm_head", "item_table"


def _part(key: str) -> str | None:
    if key.startswith(LM_HEAD_PREFIX):
        return LM_HEAD
    if key == ITEM_TABLE_KEY:
        return ITEM_TABLE
    return None


@dataclass(frozen=True)
class Target:
    """How a model class holds a checkpoint: its encoder's key prefix, the extra parts it loads and
    those it ignores (any other extra key is unexpected)."""

    encoder_prefix: str
    takes: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()


@functools.cache
def _targets() -> dict[type, Target]:
    from recformer.model.modeling import RecformerForSeqRec, RecformerModel
    from recformer.model.modeling_pretraining import RecformerForPretraining

    return {
        RecformerModel: Target("", ignores=(LM_HEAD, ITEM_TABLE)),
        RecformerForSeqRec: Target(PREFIX, takes=(ITEM_TABLE,), ignores=(LM_HEAD,)),
        RecformerForPretraining: Target(PREFIX, takes=(LM_HEAD,), ignores=(ITEM_TABLE,)),
    }


def _target_of(model: nn.Module) -> Target:
    for cls, target in _targets().items():
        if isinstance(model, cls):
            return target
    raise TypeError(f"load_checkpoint expects a Recformer model, got {type(model).__name__}")


def load_checkpoint(model: nn.Module, source: str | os.PathLike | dict, strict_lm_head: bool = True) -> LoadReport:
    """Load any known checkpoint form into a RecformerModel, RecformerForSeqRec or RecformerForPretraining.

    Args:
        model: the target model (its config must match the checkpoint's sizes).
        source: a file, a `save_pretrained` folder, or a state dict.
        strict_lm_head: for RecformerForPretraining, fail when the checkpoint has no LM head.

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys.
    """
    target = _target_of(model)
    state = strip_wrapper_prefixes(read_state_dict(source))
    form = detect_form(state)
    origin = source if not isinstance(source, dict) else "state dict"
    if form == "unknown":
        raise CheckpointError(
            f"{origin}: not a Recformer checkpoint; expected keys like 'embeddings.word_embeddings.weight' "
            f"or 'longformer.embeddings.word_embeddings.weight', found {_preview(list(state))}"
        )
    prefix = target.encoder_prefix
    encoder = model if not prefix else getattr(model, prefix.rstrip("."))
    encoder_state, extra = split_encoder(state)
    report = LoadReport(form=form)
    parts: dict[str, dict[str, torch.Tensor]] = {LM_HEAD: {}, ITEM_TABLE: {}}
    unknown: list[str] = []
    for k, v in extra.items():
        part = _part(k)
        if part in target.takes:
            parts[part][k] = v
        elif part in target.ignores:
            report.ignored.append(k)
        else:
            unknown.append(k)

    # -- encoder --------------------------------------------------------------------------------
    expected = encoder.state_dict()
    report.filled += [prefix + k for k in fill_position_ids(encoder_state)]
    missing = [prefix + k for k in expected if k not in encoder_state]
    unexpected = [k for k in encoder_state if k not in expected]
    shapes_of = {prefix + k: v for k, v in expected.items()}

    # -- LM head --------------------------------------------------------------------------------
    head_state: dict[str, torch.Tensor] = {}
    if LM_HEAD in target.takes:
        head_expected = {k: v for k, v in model.state_dict().items() if k.startswith(LM_HEAD_PREFIX)}
        lm = parts[LM_HEAD]
        if not lm and not strict_lm_head:
            report.filled += list(head_expected)
        else:
            tie_lm_head_bias(lm)
            missing += [k for k in head_expected if k not in lm]
            unexpected += [k for k in lm if k not in head_expected]
            head_state = {k: v for k, v in lm.items() if k in head_expected}
        shapes_of.update(head_expected)
    unexpected += unknown

    mismatched = [
        f"{name}: checkpoint {tuple(v.shape)} vs model {tuple(shapes_of[name].shape)}"
        for name, v in [*((prefix + k, v) for k, v in encoder_state.items()), *head_state.items()]
        if name in shapes_of and tuple(v.shape) != tuple(shapes_of[name].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{origin} ({form} form) does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys: {_preview(missing, 20)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_preview(unexpected, 20)}")
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:20]))
        raise CheckpointError("\n".join(lines))

    # -- copy -----------------------------------------------------------------------------------
    to_load = {k: v for k, v in encoder_state.items() if k in expected}
    encoder.load_state_dict(to_load, strict=False)
    report.loaded += [prefix + k for k in to_load if prefix + k not in report.filled]
    if head_state:
        model.lm_head.load_state_dict({k[len(LM_HEAD_PREFIX) :]: v for k, v in head_state.items()}, strict=False)
        model.lm_head.decoder.bias = model.lm_head.bias  # keep the tie after loading
        report.loaded += list(head_state)
    if ITEM_TABLE in target.takes:
        table = parts[ITEM_TABLE].get(ITEM_TABLE_KEY)
        if table is not None:
            if table.dim() != 2 or table.size(1) != model.config.hidden_size:
                raise CheckpointError(
                    f"{origin}: {ITEM_TABLE_KEY} has shape {tuple(table.shape)}, "
                    f"expected [num_items, {model.config.hidden_size}]"
                )
            model.init_item_embedding(table.to(model.longformer.embeddings.word_embeddings.weight.dtype))
            report.loaded.append(ITEM_TABLE_KEY)
        elif model.item_embedding is not None:
            report.filled.append(ITEM_TABLE_KEY)
    logger.info("loaded %s into %s: %s", origin, type(model).__name__, report.summary())
    return report
