"""Structured L1-norm filter pruning of a trained full network, through its space description.

Where the PruningNet generates the weights of a configuration, this takes them from a trained
full network instead: per gene it keeps the channels whose filters have the largest L1 norm (Li
et al., 2017, "Pruning Filters for Efficient ConvNets"). Channels that one gene couples (a stage's
outputs, joined by residual adds) must be kept or dropped together, so they are ranked together,
by the sum of the norms of their filters in every conv that writes them. The kept channels of a
layer's input are those its producer kept, so every slice follows from the ranking and the
configuration alone, for any registered family.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

import search_spaces as ss


def conv_paths(space: ss.SearchSpace) -> Iterator[tuple[str, ss.ConvLayer]]:
    """Each conv of the space with the module path `build_subnet` gives its ConvBNAct."""
    for layer in space.layers:
        if isinstance(layer, ss.ConvLayer):
            yield f"layers.{layer.name}", layer
        elif isinstance(layer, ss.ResidualBlock):
            for i, conv in enumerate(layer.body):
                yield f"layers.{layer.name}.body.{i}", conv
            if layer.shortcut is not None:
                yield f"layers.{layer.name}.shortcut", layer.shortcut


def _modules(space: ss.SearchSpace, model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by name, checked to be the full network of `space`."""
    modules = dict(model.named_modules())
    for path, spec in conv_paths(space):
        conv = modules.get(f"{path}.conv")
        want = space.base_channels(spec.out_ch)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != want:
            raise ValueError(f"the model is not the full network of space {space.name!r}: {path}.conv should have {want} outputs")
    return modules


def _tensor(modules: dict[str, nn.Module], path: str, name: str) -> torch.Tensor:
    value = getattr(modules[path], name)
    assert isinstance(value, torch.Tensor), f"{path}.{name}"
    return value


def channel_ranking(space: ss.SearchSpace, model: nn.Module) -> dict[str, torch.Tensor]:
    """Per gene: the full network's channel indices, largest summed filter L1 norm first (ties: lower index first)."""
    modules = _modules(space, model)
    scores = {gene.name: torch.zeros(gene.base, dtype=torch.float64) for gene in space.genes}
    for path, spec in conv_paths(space):
        if isinstance(spec.out_ch, str):
            weight = _tensor(modules, f"{path}.conv", "weight").detach()
            scores[spec.out_ch] += weight.abs().flatten(1).sum(1).double().cpu()
    return {name: torch.argsort(score, descending=True, stable=True) for name, score in scores.items()}


def kept_channels(space: ss.SearchSpace, config: ss.Config, ranking: dict[str, torch.Tensor], width: ss.Width) -> torch.Tensor:
    """The full network's channels of `width` a configuration keeps, in their original order."""
    if isinstance(width, int):
        return torch.arange(width)
    return ranking[width][: space.channels(width, config)].sort().values


@torch.no_grad()
def prune(
    space: ss.SearchSpace, model: nn.Module, config: ss.Config, ranking: dict[str, torch.Tensor] | None = None
) -> ss.Network:
    """The plain subnet of `config` holding the full network's weights of its kept channels.

    `ranking` defaults to `channel_ranking` (L1 norm); any other per-gene order may be passed.
    """
    modules = _modules(space, model)
    ranking = channel_ranking(space, model) if ranking is None else ranking
    device = next(model.parameters()).device
    subnet = ss.build_subnet(space, config).to(device)
    targets = dict(subnet.named_modules())

    def keep(width: ss.Width) -> torch.Tensor:
        return kept_channels(space, config, ranking, width).to(device)

    def copy(path: str, name: str, rows: torch.Tensor, columns: torch.Tensor | None = None) -> None:
        value = _tensor(modules, path, name)[rows]
        _tensor(targets, path, name).copy_(value if columns is None else value[:, columns])

    for path, spec in conv_paths(space):
        out_idx = keep(spec.out_ch)
        copy(f"{path}.conv", "weight", out_idx, None if spec.depthwise else keep(spec.in_ch))
        for name in ("weight", "bias", "running_mean", "running_var"):
            copy(f"{path}.bn", name, out_idx)
        _tensor(targets, f"{path}.bn", "num_batches_tracked").copy_(_tensor(modules, f"{path}.bn", "num_batches_tracked"))
    every_class = torch.arange(space.head.num_classes, device=device)
    copy("classifier", "weight", every_class, keep(space.head.in_ch))
    copy("classifier", "bias", every_class)
    return subnet
