"""Reading checkpoint files safely: weights-only unpickling, state dicts, and what a pretraining run wrote.

Unpickling can run code, so every file is read with `weights_only=True`: tensors, plain containers
and the few Python types a training checkpoint of this project holds (`deepspeed_checkpoint_types`).
DeepSpeed's consolidation utility, which calls `torch.load(weights_only=False)` itself, runs inside
`weights_only_loading`, which forces the same rule on it. Only `trust=True` (the tools'
`--trust_checkpoint` flag) lifts this. `read_training_checkpoint` reads a DeepSpeed folder, a Lightning
`.ckpt` or a consolidated `.bin`.
"""

import contextlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

# defined in .defaults so that the parsers import neither torch nor transformers; importable from here too
from recformer.defaults import TRUST_CHECKPOINT_HELP as TRUST_CHECKPOINT_HELP
from recformer.errors import RecformerError
from recformer.io.checkpoint_keys import unwrap_training_container

logger = logging.getLogger(__name__)

# The weight files a save_pretrained or start-point folder may hold, in the order they are looked for.
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

