"""The lightweight families of the field as plain `nn.Module`s, registered in `search_spaces._families`.

Each builder takes the data's shape (`num_classes`, `in_channels`, `resolution`) and a
`width_mult`, and gives a small-input stem (no early downsampling) below 96 pixels and the
paper's ImageNet stem otherwise. A family is this code and nothing else: `from_module` traces it,
so its genes, FLOPs, PruningNet and subnets all come from the generic graph machinery.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.blocks import Bneck, Fire, Inception, ShuffleUnit, conv_bn, make_divisible, mlpconv


def _w(channels: int, width_mult: float, multiple: int = 1) -> int:
    return max(multiple, int(channels * width_mult / multiple + 0.5) * multiple)


def _small(resolution: int) -> bool:
    return resolution < 96


class _Net(nn.Module):
    """features -> global average pool -> flatten -> head, the shape every family here shares."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.pool, self.head = features, nn.AdaptiveAvgPool2d(1), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def nin(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """Network in Network (Lin et al., 2014): mlpconv blocks, the last one's 1x1 conv giving one map
    per class, global average pooling, no fully connected layer."""
    w = lambda c: _w(c, width_mult)  # noqa: E731
    if _small(resolution):  # the paper's CIFAR-10 net
        features = nn.Sequential(
            mlpconv(in_channels, (w(192), w(160), w(96)), 5), nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5),
            mlpconv(w(96), (w(192), w(192), w(192)), 5), nn.AvgPool2d(3, 2, 1), nn.Dropout(0.5),
            mlpconv(w(192), (w(192), w(192), num_classes), 3),
        )  # fmt: skip
    else:  # the paper's ImageNet net
        features = nn.Sequential(
            mlpconv(in_channels, (w(96), w(96), w(96)), 11, 4), nn.MaxPool2d(3, 2),
            mlpconv(w(96), (w(256), w(256), w(256)), 5), nn.MaxPool2d(3, 2),
            mlpconv(w(256), (w(384), w(384), w(384)), 3), nn.MaxPool2d(3, 2), nn.Dropout(0.5),
            mlpconv(w(384), (w(1024), w(1024), num_classes), 3),
        )  # fmt: skip
    return _Net(features, nn.Identity())


_VGG = {"vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
        "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")}  # fmt: skip


def _vgg(layout: tuple[int | str, ...], num_classes: int, in_channels: int, resolution: int, width_mult: float) -> nn.Module:
    """VGG with batch norm: 3x3 stacks between max pools. Small inputs end in one linear layer on the
    pooled 512 maps (the usual CIFAR VGG); large ones in VGG's 7x7 x 512 -> 4096 -> 4096 head."""
    layers: list[nn.Module] = []
    cin = in_channels
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(conv_bn(cin, _w(int(item), width_mult)))
            cin = _w(int(item), width_mult)
    if _small(resolution):
        return _Net(nn.Sequential(*layers), nn.Linear(cin, num_classes))
    hidden = _w(4096, width_mult)
    head = nn.Sequential(
        nn.Linear(cin * 49, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(1), head)


def vgg11(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """VGG-11 (configuration A, 8 convs) with batch norm."""
    return _vgg(_VGG["vgg11"], num_classes, in_channels, resolution, width_mult)


def vgg16(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """VGG-16 (configuration D, 13 convs) with batch norm."""
    return _vgg(_VGG["vgg16"], num_classes, in_channels, resolution, width_mult)


# GoogLeNet's table: 1x1, (3x3 reduce, 3x3), (5x5 reduce, 5x5), pool proj; "M" a 3x3 stride-2 max pool
_GOOGLENET: tuple[tuple[int, tuple[int, int], tuple[int, int], int] | str, ...] = (
    (64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64), "M",
    (192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
    (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128), "M",
    (256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128),
)  # fmt: skip


def inception(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """GoogLeNet (Szegedy et al., 2015) with batch norm and without the auxiliary heads: nine
    Inception blocks (3a ... 5b), each four concatenated branches."""
    w = lambda c: _w(c, width_mult)  # noqa: E731
    if _small(resolution):
        layers: list[nn.Module] = [conv_bn(in_channels, w(192))]
    else:
        layers = [conv_bn(in_channels, w(64), 7, 2), nn.MaxPool2d(3, 2, 1), conv_bn(w(64), w(64), 1)]
        layers += [conv_bn(w(64), w(192)), nn.MaxPool2d(3, 2, 1)]
    cin = w(192)
    for item in _GOOGLENET:
        if isinstance(item, str):
            layers.append(nn.MaxPool2d(3, 2, 1))
            continue
        b1, (r3, b3), (r5, b5), b4 = item
        layers.append(Inception(cin, w(b1), (w(r3), w(b3)), (w(r5), w(b5)), w(b4)))
        cin = w(b1) + w(b3) + w(b5) + w(b4)
    return _Net(nn.Sequential(*layers), nn.Sequential(nn.Dropout(0.4), nn.Linear(cin, num_classes)))


# SqueezeNet 1.1: (squeeze, expand) per Fire module, "M" a 3x3 stride-2 max pool (ceil mode)
_SQUEEZENET = ((16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256))


def squeezenet(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """SqueezeNet 1.1 (Iandola et al., 2016) with batch norm: Fire modules, a 1x1 conv classifier, global
    average pooling, no linear layer. Small inputs get a stride-1 stem."""
    w = lambda c: _w(c, width_mult)  # noqa: E731
    layers: list[nn.Module] = [conv_bn(in_channels, w(64), 3, 1 if _small(resolution) else 2), nn.MaxPool2d(3, 2, ceil_mode=True)]
    cin = w(64)
    for item in _SQUEEZENET:
        if isinstance(item, str):
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            continue
        squeeze, expand = item
        layers.append(Fire(cin, w(squeeze), w(expand), w(expand)))
        cin = 2 * w(expand)
    layers += [nn.Dropout(0.5), nn.Conv2d(cin, num_classes, 1), nn.ReLU(inplace=True)]
    return _Net(nn.Sequential(*layers), nn.Identity())


def shufflenetv2(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """ShuffleNetV2 1.0x (Ma et al., 2018): stages of 4, 8, 4 units (each stage opens with a stride-2
    unit), a 1x1 conv to 1024, global pooling, a linear layer. Small inputs: stride-1 stem, no max pool."""
    stem = _w(24, width_mult)
    layers: list[nn.Module] = [conv_bn(in_channels, stem, 3, 1 if _small(resolution) else 2)]
    if not _small(resolution):
        layers.append(nn.MaxPool2d(3, 2, 1))
    cin = stem
    for repeats, width in ((4, 116), (8, 232), (4, 464)):
        cout = _w(width, width_mult, 2)  # the unit halves it
        layers += [ShuffleUnit(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(repeats)]
        cin = cout
    last = _w(1024, width_mult)
    layers.append(conv_bn(cin, last, 1))
    return _Net(nn.Sequential(*layers), nn.Linear(last, num_classes))


# MobileNetV3-Small: kernel, expansion, output, squeeze-excite, hardswish, stride
_MOBILENETV3 = (
    (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1), (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
)  # fmt: skip


def mobilenetv3(num_classes: int = 10, in_channels: int = 3, resolution: int = 32, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV3-Small (Howard et al., 2019): bottlenecks with squeeze-excite and hardswish, a 1x1
    conv to 576, pooling, a 1024 hardswish layer, a linear classifier. Small inputs: the stem and the
    first bottleneck keep the resolution (three stride-2 stages remain, 32 -> 4)."""
    w = lambda c: make_divisible(c * width_mult)  # noqa: E731
    small = _small(resolution)
    layers: list[nn.Module] = [conv_bn(in_channels, w(16), 3, 1 if small else 2, act=nn.Hardswish)]
    cin = w(16)
    for i, (kernel, expand, cout, se, hardswish, stride) in enumerate(_MOBILENETV3):
        act = nn.Hardswish if hardswish else nn.ReLU
        layers.append(Bneck(cin, kernel, w(expand), w(cout), se, act, 1 if small and i == 0 else stride))
        cin = w(cout)
    layers.append(conv_bn(cin, w(576), 1, act=nn.Hardswish))
    head = nn.Sequential(nn.Linear(w(576), w(1024)), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(w(1024), num_classes))
    return _Net(nn.Sequential(*layers), head)
