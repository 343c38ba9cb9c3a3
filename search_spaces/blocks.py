"""The field's lightweight blocks as plain `nn.Module`s, for the families in `search_spaces.zoo`.

They are ordinary PyTorch: `from_module` traces them like any user's code, so a family needs no
search-space description of its own (its genes are the free channel groups the trace finds).
Every conv is followed by batch norm, even where the original paper had none (NIN, SqueezeNet):
a PruningNet's candidates are scored after BatchNorm re-calibration, which needs the layers.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> batch norm -> activation (none when `act` is None)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def mlpconv(cin: int, widths: tuple[int, int, int], kernel: int, stride: int = 1) -> nn.Sequential:
    """NIN's block: one spatial conv, then two 1x1 convs (the "micro network" shared over positions)."""
    first, second, third = widths
    return nn.Sequential(conv_bn(cin, first, kernel, stride), conv_bn(first, second, 1), conv_bn(second, third, 1))


class Inception(nn.Module):
    """GoogLeNet's block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (the 5x5 factored, as Inception-v2 does) |
    3x3 max pool -> 1x1, concatenated. Each branch's output is its own gene: the next conv's kept
    inputs are the union of what each part keeps, at that part's offset."""

    def __init__(self, cin: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, b1, 1)
        self.branch2 = nn.Sequential(conv_bn(cin, b2[0], 1), conv_bn(b2[0], b2[1], 3))
        self.branch3 = nn.Sequential(conv_bn(cin, b3[0], 1), conv_bn(b3[0], b3[1], 3), conv_bn(b3[1], b3[1], 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, b4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class Fire(nn.Module):
    """SqueezeNet's module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = conv_bn(cin, squeeze, 1)
        self.expand1x1 = conv_bn(squeeze, expand1x1, 1)
        self.expand3x3 = conv_bn(squeeze, expand3x3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel g*k + i moves to i*groups + g (a fixed permutation)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit. Stride 1: split the channels in halves, transform one, concat, shuffle;
    stride 2: both halves come from the whole input (one through a depthwise conv), then concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        self.branch1 = (
            nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
            if stride > 1
            else nn.Identity()
        )
        inner = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(inner, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(changed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as MobileNetV3 has it: pooled -> 1x1 -> ReLU -> 1x1 -> hard sigmoid, a
    gate multiplied into the input (the gate's channels and the input's are one group)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class Bneck(nn.Module):
    """MobileNetV3's bottleneck: 1x1 expand, depthwise k x k, optional squeeze-excite, 1x1 project,
    a residual add when the shape allows."""

    def __init__(self, cin: int, kernel: int, expand: int, cout: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == cin else [conv_bn(cin, expand, 1, act=act)]
        layers.append(conv_bn(expand, expand, kernel, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcite(expand, make_divisible(expand // 4)))
        layers.append(conv_bn(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def make_divisible(channels: float, divisor: int = 8) -> int:
    """MobileNet's rounding: the nearest multiple of `divisor`, never below 90% of `channels`."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded
