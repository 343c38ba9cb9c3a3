"""The PruningNet's settings and its weight generator; the network itself, on any traced graph
(every registered family and the user's own module), is `metaprune.graph_pruningnet`.

Every conv and linear owns a generator, Linear(2, hidden) -> ReLU -> Linear(hidden, numel of the
full-width weight), fed with that layer's input and output scales (kept channels / full width).

Why one full-width BatchNorm per layer, sliced, and not one per width choice (as the chain code
before it had): with non-affine BNs, the default, training normalises with batch statistics either
way, and the search re-calibrates every candidate's running statistics; only affine parameters
(`bn_affine`, which a warm start needs) are then shared across widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PruningNetConfig:
    hidden: int = 32  # width of each generator's hidden layer (the paper: 32 or 64)
    bn_affine: bool = False  # BN with learnable scale/shift; the paper found False stabler
    # (a warm start needs True: the trained BN's scale and shift are part of the trained function)


class _Generator(nn.Module):
    """Linear -> ReLU -> Linear producing a flattened full-width weight.

    The output bias starts as a Kaiming-initialised weight and the output matrix small, so a new
    PruningNet starts out generating a conventionally initialised network for every width. The
    hidden activations are scaled by 1/sqrt(hidden): an SGD step on the output matrix then moves
    the generated weight about as far as a step on a plain weight, so the learning rates of
    ordinary training carry over (unscaled, the effective rate is several times higher).
    """

    def __init__(self, inputs: int, hidden: int, shape: tuple[int, ...], std: float) -> None:
        super().__init__()
        self.shape = shape
        numel = math.prod(shape)
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, numel)
        self.gain = 1.0 / math.sqrt(hidden)
        with torch.no_grad():
            self.out.bias.normal_(0.0, std)
            self.out.weight.normal_(0.0, std)

    def forward(self, scales: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(scales)) * self.gain).view(self.shape)
