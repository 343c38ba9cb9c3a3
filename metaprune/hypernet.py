"""Making and warm-starting the PruningNet of a space (every space is a traced graph)."""

from __future__ import annotations

from torch import nn

from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.pruningnet import PruningNetConfig
from search_spaces import GeneSpace, GraphSpace

AnyPruningNet = GraphPruningNet


def make_pruningnet(space: GeneSpace, cfg: PruningNetConfig | None = None) -> GraphPruningNet:
    assert isinstance(space, GraphSpace), type(space)
    return GraphPruningNet(space, cfg)


def warm_start(net: GraphPruningNet, trained: nn.Module) -> None:
    """Start `net` from the trained full network (its space holds the importance order; the
    weights stay as trained)."""
    net.warm_from(trained)
