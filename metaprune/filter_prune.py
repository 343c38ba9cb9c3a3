"""Structured filter pruning of a trained full network, through its space description.

Where the PruningNet generates the weights of a configuration, this takes them from a trained
full network instead: per gene it keeps the most important channels (by default the filters with
the largest L1 norm: Li et al., 2017, "Pruning Filters for Efficient ConvNets"). Channels that one
gene couples (a stage's outputs, joined by residual adds) are kept or dropped together. The
network is put in importance order (`metaprune.importance.order_channels`) and cropped, the same
path a warm-started PruningNet's generated weights follow, so the two agree by construction.
"""

from __future__ import annotations

import torch
from torch import nn

import search_spaces as ss
from metaprune.importance import channel_ranking, conv_paths, crop, order_channels

__all__ = ["channel_ranking", "conv_paths", "kept_channels", "prune"]


def kept_channels(space: ss.SearchSpace, config: ss.Config, ranking: dict[str, torch.Tensor], width: ss.Width) -> torch.Tensor:
    """The full network's channels of `width` a configuration keeps, in their original order."""
    if isinstance(width, int):
        return torch.arange(width)
    return ranking[width][: space.channels(width, config)].sort().values


@torch.no_grad()
def prune(
    space: ss.SearchSpace, model: nn.Module, config: ss.Config, ranking: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """The plain subnet of `config` holding the full network's weights of its kept channels
    (most important first).

    `ranking` defaults to `channel_ranking` (L1 norm); any other per-gene order may be passed.
    """
    ranking = channel_ranking(space, model) if ranking is None else ranking
    return crop(space, order_channels(space, model, ranking), config)
