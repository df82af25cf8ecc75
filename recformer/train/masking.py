"""Whole-word MLM masking of padded input ids for pretraining, per token in Python or vectorised with numpy.

Both ways draw from the `random.Random` they are given in the same order (per row: one shuffle of the
row's words, then one `random()` per masked token, plus a `randrange` for each random replacement), so
they return the same tensors for the same generator state. The vectorised way keeps Python work per
word and per chosen token, and finds words, positions and replacements with numpy passes over the batch.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from recformer.model.tokenization import RecformerTokenizer


def _is_punctuation(ch: str) -> bool:
    """BERT's punctuation test: the ASCII symbol ranges plus every Unicode `P*` category."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def wordpiece_continuation(tokenizer: Any) -> str | None:
    """The continuation prefix ('##') of a WordPiece tokenizer backend, None for any other vocabulary."""
    from tokenizers.models import WordPiece

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    return model.continuing_subword_prefix if isinstance(model, WordPiece) else None


class WholeWordMasker:
    """Whole-word MLM masking on padded input ids, as the reference pretraining collator does it.

    A word is a BPE group: a token whose text does not begin with a space (byte-level 'Ġ') and whose
    first character is not punctuation continues the previous word. With a WordPiece vocabulary (a
    start converted from BERT), a token continues the previous word when it begins with the
    continuation prefix ('##'). Every token but `<s>`/`</s>`
    is a candidate (padding too: the reference pads before masking), words are taken in random order
    until round(padded length * probability) tokens are covered, and special tokens among them
    (padding, `<unk>`, `<mask>`) are then left out. Each chosen token becomes `<mask>` with
    probability 0.8, a random token with 0.1, or stays. Labels are -100 where nothing was chosen.

    `vectorised=False` runs the per-token Python loops (the reference way; same results, slower).
    """

    def __init__(
        self,
        tokenizer: RecformerTokenizer,
        mlm_probability: float = 0.15,
        max_predictions: int = 512,
        vectorised: bool = True,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.mlm_probability = mlm_probability
        self.max_predictions = max_predictions
        self.vectorised = vectorised
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        self.skipped_ids = {tokenizer.bos_token_id, tokenizer.eos_token_id}
        self.special_ids = set(tokenizer.all_special_ids)
        prefix = wordpiece_continuation(tokenizer)
        if prefix is not None:
            self.continues_word = [bool(tok) and tok.startswith(prefix) for tok in tokens]
        else:
            self.continues_word = [
                bool(tok) and not tok.startswith("\u0120") and not _is_punctuation(tok[0]) for tok in tokens
            ]
        self._continues = np.array(self.continues_word, dtype=bool)
        self._skipped = np.array(sorted(self.skipped_ids), dtype=np.int64)
        self._special = np.array(sorted(self.special_ids), dtype=np.int64)

    def budget(self, length: int) -> int:
        """Tokens to mask in a row padded to `length` tokens."""
        return min(self.max_predictions, max(1, int(round(length * self.mlm_probability))))

    def words(self, ids: Sequence[int]) -> list[list[int]]:
        """Positions of each candidate word of one row."""
        words: list[list[int]] = []
        for i, tid in enumerate(ids):
            if tid in self.skipped_ids:
                continue
            if words and self.continues_word[tid]:
                words[-1].append(i)
            else:
                words.append([i])
        return words

    def __call__(self, input_ids: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (masked input ids, labels), both [B, L]; `input_ids` is not modified."""
        if self.vectorised:
            return self._mask_vectorised(input_ids, rng)
        return self._mask_per_token(input_ids, rng)

    def _mask_per_token(self, input_ids: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        masked = input_ids.clone()
        labels = torch.full_like(input_ids, -100)
        rows = input_ids.tolist()
        for b, ids in enumerate(rows):
            words = self.words(ids)
            rng.shuffle(words)
            budget = self.budget(len(ids))
            chosen: list[int] = []
            for word in words:
                if len(chosen) >= budget:
                    break
                if len(chosen) + len(word) > budget:
                    continue
                chosen.extend(word)
            for i in chosen:
                if ids[i] in self.special_ids:
                    continue
                labels[b, i] = ids[i]
                r = rng.random()
                if r < 0.8:
                    masked[b, i] = self.mask_token_id
                elif r < 0.9:
                    masked[b, i] = rng.randrange(self.vocab_size)
        return masked, labels

    def _flat_words(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every candidate word of a [B, L] batch, row by row: (flat positions of the candidate tokens [C],
        index in them of each word's first token [W], tokens per word [W], words per row [B])."""
        batch, length = ids.shape
        candidate = ~np.isin(ids, self._skipped)
        earlier = (np.cumsum(candidate, axis=1) - candidate) > 0  # a candidate before it in its row
        starts_word = candidate & ~(self._continues[ids] & earlier)
        positions = np.flatnonzero(candidate)
        first = np.flatnonzero(starts_word.reshape(-1)[positions])
        sizes = np.diff(np.append(first, len(positions)))
        per_row = np.bincount(positions[first] // max(length, 1), minlength=batch)
        return positions, first, sizes, per_row

    def _mask_vectorised(self, input_ids: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        ids = input_ids.detach().cpu().numpy()
        words = self._flat_words(ids)
        positions, first, sizes, per_row = words
        flat_ids = ids.reshape(-1)
        kept = ~np.isin(flat_ids[positions], self._special)  # candidate tokens that can take a label
        counted = np.zeros(len(positions) + 1, dtype=np.int64)
        np.cumsum(kept, out=counted[1:])
        labelled = (counted[first + sizes] - counted[first]).tolist()  # maskable tokens per word
        size_list = sizes.tolist()
        budget = self.budget(ids.shape[1])
        picked: list[int] = []  # global word indices, row by row in the order chosen
        draws: list[float] = []
        replacements: list[int] = []
        offset = 0
        for count in per_row.tolist():
            order = list(range(offset, offset + count))
            rng.shuffle(order)
            taken = 0
            row_picked = []
            for word in order:
                if taken >= budget:
                    break
                if taken + size_list[word] > budget:
                    continue
                taken += size_list[word]
                row_picked.append(word)
            picked += row_picked
            for _ in range(sum(labelled[w] for w in row_picked)):
                r = rng.random()
                draws.append(r)
                if 0.8 <= r < 0.9:
                    replacements.append(rng.randrange(self.vocab_size))
            offset += count
        return self._apply(input_ids, words, kept, picked, (draws, replacements))

    def _apply(
        self,
        input_ids: torch.Tensor,
        words: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        kept: np.ndarray,
        picked: list[int],
        drawn: tuple[list[float], list[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked ids and labels from the chosen words (`_flat_words` of the batch, global indices
        `picked`) and the draws made for their maskable tokens (`random()` each, `randrange` replacements)."""
        positions, first, sizes, _ = words
        draws, replacements = drawn
        words_picked = np.asarray(picked, dtype=np.int64)
        lengths = sizes[words_picked]
        starts = np.repeat(first[words_picked] - (np.cumsum(lengths) - lengths), lengths)
        chosen = starts + np.arange(int(lengths.sum()), dtype=np.int64)  # indices into `positions`, in order
        chosen = positions[chosen[kept[chosen]]]
        flat_ids = input_ids.detach().cpu().reshape(-1).numpy()
        masked = flat_ids.copy()
        labels = np.full_like(flat_ids, -100)
        labels[chosen] = flat_ids[chosen]
        r = np.asarray(draws, dtype=np.float64)
        masked[chosen[r < 0.8]] = self.mask_token_id
        masked[chosen[(r >= 0.8) & (r < 0.9)]] = np.asarray(replacements, dtype=flat_ids.dtype)
        shape = input_ids.shape
        return torch.from_numpy(masked).reshape(shape), torch.from_numpy(labels).reshape(shape)
