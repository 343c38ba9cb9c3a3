"""Structured filter pruning of a trained full network, on its traced graph.

Where the PruningNet generates the weights of a configuration, this takes them from a trained
full network instead: per gene it keeps the most important channels (by default the filters with
the largest L1 norm: Li et al., 2017, "Pruning Filters for Efficient ConvNets"). Channels that one
gene couples (a stage's outputs, joined by residual adds) are kept or dropped together, scored by
every conv writing them. The space is put in importance order (`metaprune.graph_importance`) and
the trained network sliced to the configuration (`metaprune.importance.crop`): the same path a
warm-started PruningNet's generated weights follow, so the two agree by construction.
"""

from __future__ import annotations

import torch
from torch import fx, nn

import search_spaces as ss
from metaprune.graph_importance import ordered_space
from metaprune.importance import check_full_weights, crop


def full_network(space: ss.GraphSpace, model: nn.Module) -> fx.GraphModule:
    """The space's traced full network holding `model`'s weights (the same state-dict layout); a
    ValueError naming the first tensor that does not fit."""
    try:
        check_full_weights(space, model.state_dict())
    except ValueError as exc:
        raise ValueError(f"the model is not the full network of space {space.name!r}: {exc}") from None
    network = ss.build_subnet(space, space.largest)
    network.load_state_dict(model.state_dict())
    return network.eval()


@torch.no_grad()
def prune(space: ss.GraphSpace, model: nn.Module, config: ss.Config, method: str = "l1") -> fx.GraphModule:
    """The plain subnet of `config` holding the full network's weights of the channels `method`
    ranks first in each gene (kept in their original order)."""
    network = full_network(space, model)
    return crop(ordered_space(space, network, method), network, config)
