"""Names and defaults that the argument parsers need, importable without torch or transformers.

`recformer.args` builds every command's parser from these, so `--help` and argument errors answer
before the model libraries load (`bench/bench_startup.py`); the modules that use them at run time
(`configuration`, `attention`, `devices`, `checkpoint`) import them from here.
"""

from __future__ import annotations

import os

# The Longformer every reference script starts from.
DEFAULT_MODEL = "allenai/longformer-base-4096"

# What every reference script sets on top of the Longformer config (3 attributes of at most 32
# tokens per item, 50 items + `<s>`, window 64 in every layer, 1024 tokens per sequence).
REFERENCE_SCRIPT_VALUES = {
    "max_attr_num": 3,
    "max_attr_length": 32,
    "max_item_embeddings": 51,
    "attention_window": [64] * 12,
    "max_token_num": 1024,
}

# The names `config._attn_implementation` takes (transformers' names), "auto" first: the default.
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flex_attention")
# Names transformers knows that Recformer accepts only to refuse, with the reason.
REFUSED_IMPLEMENTATIONS = {
    "flash_attention_2": (
        "attn_implementation='flash_attention_2' cannot run Recformer: flash-attn has no global tokens, "
        "which Recformer's <s> needs; use 'sdpa', 'flex_attention' or 'auto'"
    ),
}



def check_attn_name(name: str) -> None:
    """Raise a ValueError (one line, listing the valid names) for an unknown or refused attention name."""
    if name in REFUSED_IMPLEMENTATIONS:
        raise ValueError(REFUSED_IMPLEMENTATIONS[name])
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {name!r}; valid names: {', '.join(ATTN_IMPLEMENTATIONS)}")


# Lightning precisions the pretraining command offers.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")

TRUST_CHECKPOINT_HELP = (
    "unpickle checkpoint files fully (torch.load weights_only=False) instead of reading only tensors, plain "
    "data and the few Python types a Lightning or DeepSpeed checkpoint of this project holds; a crafted file "
    "runs any code it likes while it loads, so use it only for files you made yourself"
)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else `os.cpu_count()`)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def capped_workers(wanted: int) -> int:
    """`wanted` workers, or fewer on a machine with fewer cores (the default of the worker flags)."""
    return min(wanted, available_cores())
