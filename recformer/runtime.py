"""One loaded model, ready to run: what finetuning, evaluation, recommending and the `Recommender` build on.

`ModelRuntime` owns the decisions a run makes once, where the model is built and placed (as nanoGPT decides
its attention kernel in the model's constructor, and torchtune's recipes set up the model once):

- the config, the model and its tokenizer (loaded from any checkpoint form, `from_checkpoint`);
- the device, the autocast precision, batching and progress bars (`InferenceSettings`);
- the attention implementation: checked against the device once, at `place`; afterwards only
  `model.running_implementation` answers which kernel a pass runs;
- torch.compile of the encoder (in place: parameter names, hence checkpoints, stay the same);
- the tokenized catalogue and the item table (read from the content-keyed cache or encoded, placed, set
  with `init_item_embedding`).

Nothing downstream repeats this chain: the finetuning loop, `evaluate.py`, `recommend.py` and the
`Recommender` each hold one runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recformer import distributed
from recformer.devices import InferenceSettings
from recformer.inference.evaluation import cached_item_vectors, encode_items, evaluate, pooled_batches
from recformer.io.cache import item_table_path
from recformer.io.checkpoint import LoadReport, load_checkpoint
from recformer.io.fileio import read_json
from recformer.model.attention import configure_attention, resolve_attn_implementation
from recformer.model.configuration import DEFAULT_MODEL, RecformerConfig, build_config
from recformer.model.item_tokens import TokenizedItems, tokenize_catalogue
from recformer.model.modeling import RecformerForSeqRec
from recformer.model.tokenization import TOKENIZER_FILES, RecformerTokenizer, check_tokenizer_fits

logger = logging.getLogger(__name__)



def run_folder_model(checkpoint: str | os.PathLike) -> str | None:
    """The config + tokenizer source of a checkpoint file inside a finetuning run folder (one with
    `args.json`): the run's `best_model/` when it holds a config and tokenizer, else the
    `model_name_or_path` its `args.json` names; None for a checkpoint outside a run folder."""
    path = Path(checkpoint)
    args_file = path.parent / "args.json"
    if not path.is_file() or not args_file.is_file():
        return None
    best = path.parent / "best_model"
    if (best / "config.json").is_file() and any((best / name).is_file() for name in TOKENIZER_FILES):
        return str(best)
    try:
        saved = read_json(args_file).get("model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, str) and saved else None


def model_sources(checkpoint: str | os.PathLike, model_name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """(config source, tokenizer source) of a checkpoint, the one rule of every model command's
    `--model_name_or_path` default: the flag's value when given; else the checkpoint's own: a
    `save_pretrained` folder (with its tokenizer files when it has them), or, for a checkpoint file in
    a finetuning run folder, that run's model (`run_folder_model`); else the default Longformer."""
    if model_name_or_path is not None:
        return str(model_name_or_path), str(model_name_or_path)
    folder = Path(checkpoint)
    if folder.is_dir() and (folder / "config.json").is_file():
        has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
        return str(folder), str(folder) if has_tokenizer else DEFAULT_MODEL
    run_model = run_folder_model(folder)
    if run_model is not None:
        return run_model, run_model
    return DEFAULT_MODEL, DEFAULT_MODEL


def load_model_parts(
    checkpoint: str | os.PathLike,
    model_name_or_path: str | os.PathLike | None = None,
    fields: Mapping[str, Any] | None = None,
    temp: float | None = None,
) -> tuple[RecformerForSeqRec, RecformerTokenizer, LoadReport]:
    """A RecformerForSeqRec with the checkpoint loaded (its item table too, when it has one), its
    tokenizer and the load report. Config and tokenizer come from `model_sources`."""
    config_source, tokenizer_source = model_sources(checkpoint, model_name_or_path)
    config = build_config(config_source, fields, temp=temp)
    config.item_num = 0  # a finetuned folder's config counts its items; the table comes from the weights
    tokenizer = RecformerTokenizer.from_pretrained(tokenizer_source, config)
    check_tokenizer_fits(tokenizer, config, f"{tokenizer_source} (tokenizer) with {config_source} (config)")
    model = RecformerForSeqRec(config)
    report = load_checkpoint(model, checkpoint)
    return model.eval(), tokenizer, report


@dataclass
class ModelRuntime:
    """A RecformerForSeqRec and its tokenizer, placed on a device, with the settings every pass runs with.

    Build it with `place` (a model in hand) or `from_checkpoint`; see the module docstring.
    `items` is the tokenized catalogue once `tokenize` has run.
    """

    model: RecformerForSeqRec
    tokenizer: RecformerTokenizer
    settings: InferenceSettings
    items: TokenizedItems | None = None

    @staticmethod
    def check_attention(attn_implementation: str | None, device: torch.device, training: bool = False) -> str:
        """Refuse at once, before any data is read or any model built, an attention implementation that cannot
        run on `device` (or cannot train there): the same check `place` makes, for commands that want it first.
        Returns the implementation passes on `device` will run ("auto" resolved)."""
        return resolve_attn_implementation(attn_implementation, device, needs_grad=training)

    @classmethod
    def place(
        cls,
        model: RecformerForSeqRec,
        tokenizer: RecformerTokenizer,
        settings: InferenceSettings,
        *,
        attn_implementation: str = "auto",
        compile: bool = False,
        training: bool = False,
    ) -> ModelRuntime:
        """Set and check the attention implementation for the device (and for training: gradients, attention
        dropout), move the model there and compile its encoder when asked. An implementation that cannot run
        stops here, in one line, before any data is read."""
        configure_attention(model, attn_implementation, settings.device, training=training)
        model.to(settings.device)
        if compile:
            model.longformer.compile()  # in place: parameter names (and checkpoints) stay the same
        return cls(model, tokenizer, settings)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        settings: InferenceSettings,
        *,
        model_name_or_path: str | os.PathLike | None = None,
        fields: Mapping[str, Any] | None = None,
        temp: float | None = None,
        attn_implementation: str = "auto",
        compile: bool = False,
    ) -> tuple[ModelRuntime, LoadReport]:
        """Load any checkpoint form (`load_model_parts`) and `place` it; returns the runtime and the load report."""
        model, tokenizer, report = load_model_parts(checkpoint, model_name_or_path, fields, temp)
        runtime = cls.place(model, tokenizer, settings, attn_implementation=attn_implementation, compile=compile)
        return runtime, report

    @property
    def config(self) -> RecformerConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.settings.device

    # -- the catalogue -------------------------------------------------------------------------
    def tokenize(
        self,
        catalogue: Sequence[Mapping[str, Any]],
        keys: Sequence[Hashable] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> TokenizedItems:
        """Tokenize the catalogue once (through the cache in `cache_dir`, written by rank 0 only); kept as `items`."""
        self.items = tokenize_catalogue(
            self.tokenizer, catalogue, keys=keys, cache_dir=cache_dir,
            progress=self.settings.progress and distributed.is_main(), write_cache=distributed.is_main(),
        )  # fmt: skip
        return self.items

    def encode_items(self, items: TokenizedItems | None = None, *, shard: bool = True) -> torch.Tensor:
        """Every item of `items` (default: the catalogue) encoded alone [N, H] float32 on the CPU. With `shard`, in
        a distributed run the batches are split across the ranks and gathered, so every rank must call it."""
        table = self._catalogue() if items is None else items
        return encode_items(self.model.longformer, self.tokenizer, table, self.settings.replace(shard=shard))

    def item_table(
        self,
        checkpoint_hash: str | None = None,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> torch.Tensor:
        """The catalogue's item vectors [N, H]: read from the cache (keyed by the checkpoint's hash, the
        tokenizer, the Recformer fields and the items' attributes) when all three are given and it holds them,
        else encoded (and cached)."""
        path = None
        if cache_dir is not None and checkpoint_hash is not None and catalogue is not None:
            path = item_table_path(cache_dir, checkpoint_hash, self.tokenizer, self.config, catalogue)
        shape = (len(self._catalogue()), self.config.hidden_size)
        return cached_item_vectors(path, self.encode_items, shape=shape)

    def set_item_table(self, vectors: torch.Tensor) -> None:
        """Score against `vectors` [N, H] (`init_item_embedding`), placed on the device."""
        self.model.init_item_embedding(vectors)
        self.model.to(self.device)

    def _catalogue(self) -> TokenizedItems:
        if self.items is None:
            raise RuntimeError("ModelRuntime.tokenize(catalogue) must run before items are encoded or scored")
        return self.items

    # -- passes --------------------------------------------------------------------------------
    def evaluate(
        self, pairs: Sequence[tuple[list[int], int]], ks: Sequence[int], *, exclude_history: bool = False,
        desc: str = "evaluate",
    ) -> dict[str, float]:  # fmt: skip
        """Full-ranking metrics of (history, target) pairs against the item table (`evaluation.evaluate`)."""
        return evaluate(self.model, pairs, self.tokenizer, self._catalogue(), self.settings, ks,
                        exclude_history=exclude_history, desc=desc)  # fmt: skip

    def pooled(
        self, table: Any, sequences: Sequence[Sequence], desc: str = "encode"
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, pooled vectors [n, H]) of sequences of keys of `table`, batch by batch (`pooled_batches`)."""
        return pooled_batches(self.model.longformer, self.tokenizer, table, sequences, self.settings, desc=desc)

    def autocast(self):
        """The autocast context of training passes on this runtime's device and precision."""
        return self.settings.autocast()
