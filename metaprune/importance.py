"""The rankings of channel importance, and the checks and crops around them; the order itself
is computed on the traced graph (`metaprune.graph_importance`).

Rankings (measured on the CIFAR-10 ResNet-20 in `benchmarks/bench_ranking.py`), each summed over
every conv writing the gene:
  l1       each filter's L1 norm (Li et al., 2017)
  l1_mean  the same divided by the filter's fan-in: a 1x1 shortcut counts as much as a 3x3 body
           conv (raw L1 sums let the 3x3 bodies swamp the shortcuts)
  bn       |gamma| / sqrt(var + eps) of every BatchNorm reading the gene's channels (Liu et al.,
           2017, network slimming)
"""

from __future__ import annotations

import torch
from torch import nn

import search_spaces as ss

RANKINGS = ("l1", "l1_mean", "bn")


def check_full_weights(space: ss.GeneSpace, weights: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming the first tensor of `weights` that is not the space's full network's
    (a missing or extra name, or another shape), with the shape it should have."""
    with torch.device("meta"):
        expected = ss.build_subnet(space, space.largest).state_dict()
    for name, value in expected.items():
        if name not in weights:
            raise ValueError(f"tensor {name!r} is missing (expected shape {tuple(value.shape)})")
        got = weights[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"tensor {name!r} has shape {shape}, expected {tuple(value.shape)}")
    extra = [name for name in weights if name not in expected]
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is not part of the full {space.name!r} network")


@torch.no_grad()
def crop(space: ss.GraphSpace, model: nn.Module, config: ss.Config) -> torch.fx.GraphModule:
    """The plain subnet of `config` holding a full network's weights of the channels the space's
    order keeps first (its most important: `metaprune.graph_importance`)."""
    assert isinstance(model, torch.fx.GraphModule), type(model)
    return ss.build_graph_subnet(space, config, weights=model)
