"""Dropout with torch's own random draws, drawn faster on CPUs where torch draws them one at a time.

`F.dropout` on the CPU draws its keep mask with `bernoulli_(1 - p)`. Except on Intel CPUs (where torch
hands it to MKL), that runs torch's serial path: per element, a double from two 32-bit outputs of the
generator's Mersenne Twister, kept when it is below 1 - p. `uniform_` on a float64 tensor draws the very
same doubles from the same generator, faster (no per-element Bernoulli transform), and one vectorised
comparison turns them into the same mask. The mask is then scaled and applied as `F.dropout` does, so
outputs, gradients and the generator's state afterwards are bitwise those of `F.dropout` (tested).

Whether the two draws agree is checked once per process on a private generator (`uniform_draws_match`);
where they do not (MKL's Bernoulli, another torch), and off the CPU, `dropout` is `F.dropout`. In the
demo's finetuning the masks were about a quarter of a training step on a 2-core AMD CPU; this draws
them about a fifth faster.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# Long enough to cross the chunks a parallel Bernoulli (MKL's) would split it into.
_CHECK_ELEMENTS = 4099


@functools.cache
def uniform_draws_match() -> bool:
    """Whether `uniform_` on float64 compared with 1 - p gives `bernoulli_(1 - p)`'s mask and leaves the
    generator where `bernoulli_` leaves it (torch's serial CPU path): checked on private generators."""
    keep = 0.9
    expected_gen, got_gen = torch.Generator().manual_seed(20231), torch.Generator().manual_seed(20231)
    expected = torch.empty(_CHECK_ELEMENTS).bernoulli_(keep, generator=expected_gen)
    got = torch.empty(_CHECK_ELEMENTS, dtype=torch.float64).uniform_(generator=got_gen).lt_(keep).float()
    return torch.equal(expected, got) and torch.equal(expected_gen.get_state(), got_gen.get_state())


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, bitwise, with the mask drawn through `uniform_` where that is faster
    and gives the same draws (see the module docstring)."""
    fast = training and 0 < p < 1 and x.device.type == "cpu" and not torch.compiler.is_compiling()
    if not (fast and uniform_draws_match()):
        return F.dropout(x, p, training)
    keep = 1.0 - p
    # F.dropout: noise = empty_like(x).bernoulli_(keep); noise.div_(keep); x * noise (same layout, same order)
    noise = torch.empty_like(x, dtype=torch.float64).uniform_().lt_(keep).to(x.dtype)
    return x * noise.div_(keep)


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout` (bitwise the same; see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> None:
    """Replace every `nn.Dropout` inside `model` by `Dropout` (same probability; no state to carry)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, Dropout(child.p, child.inplace))
