"""Analytic FLOPs (multiply-adds) and parameter counts, following thop's counting rules.

thop counts, per leaf module at batch 1: Conv2d out_numel * (in / groups) * k * k (bias not
counted); affine BatchNorm 4 * numel; ReLU and max pooling 0; AdaptiveAvgPool2d
(pooled_area + 1) * out_numel; Linear in_features * out_features. Residual adds are functional
and not counted. The tests check these formulas against thop on every registered space.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces._space import Config, ConvLayer, GeneSpace, MaxPool, ResidualBlock, SearchSpace, conv_out_size


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params)


def _conv_cost(space: SearchSpace, conv: ConvLayer, config: Config, size: int) -> tuple[Cost, int]:
    cin, cout = space.channels(conv.in_ch, config), space.channels(conv.out_ch, config)
    per_group_in = 1 if conv.depthwise else cin
    out_size = conv_out_size(size, conv.kernel, conv.stride)
    out_numel = cout * out_size * out_size
    weights = cout * per_group_in * conv.kernel * conv.kernel
    flops = out_numel * per_group_in * conv.kernel * conv.kernel + 4 * out_numel  # conv + affine BN
    return Cost(flops, weights + 2 * cout), out_size


def count(space: GeneSpace, config: Config) -> Cost:
    """FLOPs and params of the plain subnet of `config`, exactly as thop counts them."""
    from search_spaces.graph import GraphSpace, count_graph

    if isinstance(space, GraphSpace):
        return Cost(*count_graph(space, config))
    assert isinstance(space, SearchSpace), type(space)
    config = space.validate(config)
    size, total = space.resolution, Cost(0, 0)
    for layer in space.layers:
        if isinstance(layer, ConvLayer):
            cost, size = _conv_cost(space, layer, config, size)
            total += cost
        elif isinstance(layer, ResidualBlock):
            in_size = size
            for conv in layer.body:
                cost, size = _conv_cost(space, conv, config, size)
                total += cost
            if layer.shortcut is not None:
                total += _conv_cost(space, layer.shortcut, config, in_size)[0]
        elif isinstance(layer, MaxPool):
            size = conv_out_size(size, layer.kernel, layer.stride)
    features = space.channels(space.head.in_ch, config)
    classes = space.head.num_classes
    pool = (size * size + 1) * features
    return total + Cost(pool + features * classes, features * classes + classes)


def flops(space: GeneSpace, config: Config) -> int:
    return count(space, config).flops


def params(space: GeneSpace, config: Config) -> int:
    return count(space, config).params
