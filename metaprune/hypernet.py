"""Either PruningNet: a registered family's (`metaprune.pruningnet`) or a traced module's
(`metaprune.graph_pruningnet`), made and warm-started by the kind of space."""

from __future__ import annotations

from typing import Union

from torch import nn

from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.pruningnet import PruningNet, PruningNetConfig
from metaprune.pruningnet import warm_start as warm_start_chain
from search_spaces import GeneSpace, GraphSpace, SearchSpace

AnyPruningNet = Union[PruningNet, GraphPruningNet]


def make_pruningnet(space: GeneSpace, cfg: PruningNetConfig | None = None) -> AnyPruningNet:
    if isinstance(space, GraphSpace):
        return GraphPruningNet(space, cfg)
    assert isinstance(space, SearchSpace), type(space)
    return PruningNet(space, cfg)


def warm_start(net: AnyPruningNet, ordered: nn.Module) -> None:
    """Start `net` from the trained full network (importance-ordered; a traced module's space holds
    the order itself, its weights stay as trained)."""
    if isinstance(net, GraphPruningNet):
        net.warm_from(ordered)
    else:
        warm_start_chain(net, ordered)
