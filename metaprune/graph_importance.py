"""Channel importance for a traced module's space: the order in which each gene keeps its channels.

A registered family's trained network is permuted so that prefixes are the important channels
(`metaprune.importance.order_channels`). A traced module's channels can be interleaved (a shuffle
spreads one conv's outputs over two halves), where no permutation of the weights makes every
tensor's kept channels a prefix; so here the weights stay put and the space's `order` changes
(`GraphSpace.with_order`): each gene keeps its highest-scored classes first.

Rankings, as `metaprune.importance` defines them, summed over every conv and linear writing the gene:
  l1       each filter's L1 norm (Li et al., 2017)
  l1_mean  the same divided by the filter's fan-in (a 1x1 shortcut counts as much as a 3x3 conv)
  bn       |gamma| / sqrt(var + eps) of every BatchNorm reading the gene's channels (network slimming)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from search_spaces.graph import GraphSpace, source_of

RANKINGS = ("l1", "l1_mean", "bn")


@torch.no_grad()
def class_scores(space: GraphSpace, model: nn.Module, method: str = "l1") -> np.ndarray:
    """A score per class of `space` from the full network `model` (its weights, the space's graph)."""
    if method not in RANKINGS:
        raise ValueError(f"unknown channel ranking {method!r}; choose one of {', '.join(RANKINGS)}")
    scores = np.zeros(len(space.gene_of), dtype=np.float64)
    modules = dict(model.named_modules())
    for node in space.nodes():
        if node.op != "call_module":
            continue
        module = modules.get(str(node.target))
        if method == "bn" and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_var is not None:
            gamma = module.weight.detach().abs() if module.affine else torch.ones(module.num_features)
            value = gamma.double().cpu() / (module.running_var.detach().double().cpu() + module.eps).sqrt()
            np.add.at(scores, space.classes[source_of(node)], value.numpy())
        elif method != "bn" and isinstance(module, (nn.Conv2d, nn.Linear)) and not _depthwise(module):
            weight = module.weight.detach().double().cpu().flatten(1).abs()
            value = weight.sum(1) if method == "l1" else weight.mean(1)
            np.add.at(scores, space.classes[node.name], value.numpy())
    return scores


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def ordered_space(space: GraphSpace, model: nn.Module, method: str = "l1") -> GraphSpace:
    """`space` keeping each gene's most important classes first (equal scores: the space's own order)."""
    scores = class_scores(space, model, method)
    order = []
    for gene in range(len(space.genes)):  # within each tied group: its classes are one tensor's
        rows = space.segments(gene)
        order.append(np.concatenate([row[np.argsort(-scores[row], kind="stable")] for row in rows]))
    return space.with_order(tuple(order))
