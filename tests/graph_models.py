"""Small user-style modules, one per pattern `search_spaces.from_module` must handle. Written as a
user would write them (torchvision's structure and names where it has the model), narrow so that
the tests stay fast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


class BasicBlock(nn.Module):  # torchvision's, with its shared ReLU and `downsample`
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stem, max pool, 2-2-2-2 basic blocks) at 1/8 width."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers, inplanes = [], width
        for i, planes in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, 1 if i == 0 else 2), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):  # torchvision's MobileNetV2 block
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [] if expand_ratio == 1 else [conv_bn(inp, hidden, 1, act=nn.ReLU6)]
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 layout (inverted residuals, ReLU6, dropout + linear head), shortened."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        setting = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1)]
        features: list[nn.Module] = [conv_bn(3, 8, 3, 1, act=nn.ReLU6)]
        inp = 8
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(conv_bn(inp, 64, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Inception(nn.Module):
    """A GoogLeNet-style block: 1x1, 1x1 -> 3x3, 1x1 -> 3x3 -> 3x3 and pool -> 1x1, concatenated."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch1 = conv_bn(16, 8, 1)
        self.branch2 = nn.Sequential(conv_bn(16, 6, 1), conv_bn(6, 10))
        self.branch3 = nn.Sequential(conv_bn(16, 4, 1), conv_bn(4, 6), conv_bn(6, 6))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(16, 4, 1))
        self.head = conv_bn(28, 24, 1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)
        return self.fc(self.head(x).mean((2, 3)))


class Fire(nn.Module):  # SqueezeNet's
    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(inplanes, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1's layout (Fire modules, biased convs, a conv classifier, no linear layer)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 8, 12, 12),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(24, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:  # torchvision's
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleUnit(nn.Module):  # torchvision's ShuffleNetV2 InvertedResidual
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride, branch = stride, oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(inp, inp, 3, stride, groups=inp, act=nn.Identity), conv_bn(inp, branch, 1))
        else:
            self.branch1 = nn.Sequential()
        cin = inp if stride > 1 else branch
        self.branch2 = nn.Sequential(
            conv_bn(cin, branch, 1),
            conv_bn(branch, branch, 3, stride, groups=branch, act=nn.Identity),
            conv_bn(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2's stages (a downsampling unit, then units that split, concat and shuffle)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 12)
        self.stage2 = nn.Sequential(ShuffleUnit(12, 24, 2), ShuffleUnit(24, 24, 1), ShuffleUnit(24, 24, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1))
        self.conv5 = conv_bn(48, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


class SqueezeExcite(nn.Module):  # torchvision's SqueezeExcitation, as MobileNetV3 uses it
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MobileNetV3Block(nn.Module):
    """MobileNetV3's bneck: expand (hardswish), depthwise, squeeze-excite, project, residual add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.Hardswish)
        self.expand = conv_bn(16, 48, 1, act=nn.Hardswish)
        self.depthwise = conv_bn(48, 48, 3, groups=48, act=nn.Hardswish)
        self.se = SqueezeExcite(48, 12)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseNet(nn.Module):
    """A DenseNet-style block: each layer reads the concat of the stem and every earlier layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(12 + 6 * i), nn.ReLU(), nn.Conv2d(12 + 6 * i, 6, 3, 1, 1)) for i in range(3)
        )
        self.transition = nn.Sequential(nn.BatchNorm2d(30), nn.ReLU(), nn.Conv2d(30, 16, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        x = self.transition(torch.cat(features, 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGG(nn.Module):
    """A VGG-style net with the classic head: flatten 2x2 maps, then two linear layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2), conv_bn(8, 16), conv_bn(16, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_max_pool2d(self.features(x), 2), 1))


class WithUnknownOp(nn.Module):
    """A conv chain with an op the analysis does not know (torch.roll) in the middle."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 8), conv_bn(8, 12), conv_bn(12, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.roll(self.b(self.a(x)), 1, dims=1)
        return self.fc(self.c(x).mean((2, 3)))


class SharedBlock(nn.Module):
    """One conv block applied twice (weights shared), then a head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem, self.block, self.out = conv_bn(3, 8), conv_bn(8, 8), conv_bn(8, 12)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.block(self.stem(x)))
        return self.fc(self.out(x).amax((2, 3)))


MODELS: dict[str, tuple[type[nn.Module], int]] = {  # model, input size
    "resnet18": (ResNet18, 32),
    "mobilenetv2": (MobileNetV2, 16),
    "inception": (Inception, 12),
    "squeezenet": (SqueezeNet, 32),
    "shufflenetv2": (ShuffleNetV2, 16),
    "mobilenetv3_se": (MobileNetV3Block, 12),
    "densenet": (DenseNet, 12),
    "vgg": (VGG, 16),
    "unknown_op": (WithUnknownOp, 8),
    "shared_block": (SharedBlock, 8),
}
