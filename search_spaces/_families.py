"""The registered families. Each is a function from data shape to a space description."""

from __future__ import annotations

from search_spaces import zoo
from search_spaces._registry import register_module, register_space
from search_spaces._space import Classifier, ConvLayer, Gene, Layer, MaxPool, ResidualBlock, SearchSpace, Width


def _w(channels: int, width_mult: float) -> int:
    return max(1, int(channels * width_mult + 0.5))


def _small_input(resolution: int) -> bool:
    """CIFAR-style stem (no early downsampling) for small images, ImageNet-style otherwise."""
    return resolution < 96


@register_space("resnet20", resolutions=(32,))
def resnet20(num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """ResNet-20 (basic blocks, 3 stages of 3) for 32x32 inputs."""
    return _resnet_basic("resnet20", 3, num_classes, in_channels, resolution, width_mult)


@register_space("resnet56", resolutions=(32,))
def resnet56(num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """ResNet-56 (basic blocks, 3 stages of 9) for 32x32 inputs."""
    return _resnet_basic("resnet56", 9, num_classes, in_channels, resolution, width_mult)


def _resnet_basic(name: str, blocks: int, num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """Genes: each stage's output width (shared across its residual adds), each block's inner width.

    Downsampling shortcuts are 1x1 conv + BN ("option B"): the parameter-free zero-padding of the
    original CIFAR ResNet ("option A") cannot follow a searched output width.
    """
    genes: list[Gene] = []
    layers: list[Layer] = []
    for s, width in enumerate((16, 32, 64), start=1):
        genes.append(Gene.from_scales(f"stage{s}", _w(width, width_mult)))
    layers.append(ConvLayer("stem", in_channels, "stage1", 3, 1))
    prev: Width = "stage1"
    for s in range(1, 4):
        stage: Width = f"stage{s}"
        for b in range(blocks):
            stride = 2 if s > 1 and b == 0 else 1
            mid = f"s{s}b{b}_mid"
            genes.append(Gene.from_scales(mid, genes[s - 1].base))
            body = (ConvLayer(f"s{s}b{b}_conv1", prev, mid, 3, stride), ConvLayer(f"s{s}b{b}_conv2", mid, stage, 3, 1, act=None))
            shortcut = ConvLayer(f"s{s}b{b}_down", prev, stage, 1, stride, act=None) if prev != stage else None
            layers.append(ResidualBlock(f"s{s}b{b}", body, shortcut, act="relu"))
            prev = stage
    return SearchSpace(name, in_channels, resolution, tuple(genes), tuple(layers), Classifier("fc", "stage3", num_classes))


@register_space("resnet50", resolutions=(224, 32))
def resnet50(num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """ResNet-50 (bottlenecks 3-4-6-3); 7x7 stem + max pool at 224, a 3x3 stem for small inputs."""
    genes = [Gene.from_scales("stem", _w(64, width_mult))]
    small = _small_input(resolution)
    layers: list[Layer] = [ConvLayer("stem", in_channels, "stem", 3 if small else 7, 1 if small else 2)]
    if not small:
        layers.append(MaxPool("stem_pool", 3, 2))
    prev: Width = "stem"
    for s, (blocks, mid_base, out_base) in enumerate(((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)), 1):
        out: Width = _w(out_base, width_mult)  # the last stage's output is fixed, as in the paper
        if s < 4:
            genes.append(Gene.from_scales(f"stage{s}", _w(out_base, width_mult)))
            out = f"stage{s}"
        for b in range(blocks):
            stride = 2 if s > 1 and b == 0 else 1
            mid = f"s{s}b{b}_mid"
            genes.append(Gene.from_scales(mid, _w(mid_base, width_mult)))
            body = (
                ConvLayer(f"s{s}b{b}_conv1", prev, mid, 1, 1),
                ConvLayer(f"s{s}b{b}_conv2", mid, mid, 3, stride),
                ConvLayer(f"s{s}b{b}_conv3", mid, out, 1, 1, act=None),
            )
            shortcut = ConvLayer(f"s{s}b{b}_down", prev, out, 1, stride, act=None) if b == 0 else None
            layers.append(ResidualBlock(f"s{s}b{b}", body, shortcut, act="relu"))
            prev = out
    return SearchSpace("resnet50", in_channels, resolution, tuple(genes), tuple(layers), Classifier("fc", prev, num_classes))


@register_space("mobilenet_v1", resolutions=(224, 32))
def mobilenet_v1(num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """MobileNetV1: every pointwise layer a gene (depthwise in = out), the last one fixed."""
    small = _small_input(resolution)
    widths = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    strides = (1, 1 if small else 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
    genes = [Gene.from_scales("conv0", _w(32, width_mult))]
    layers: list[Layer] = [ConvLayer("conv0", in_channels, "conv0", 3, 1 if small else 2)]
    prev: Width = "conv0"
    for i, (width, stride) in enumerate(zip(widths, strides), start=1):
        out: Width = _w(width, width_mult)
        if i < len(widths):
            genes.append(Gene.from_scales(f"conv{i}", _w(width, width_mult)))
            out = f"conv{i}"
        layers.append(ConvLayer(f"dw{i}", prev, prev, 3, stride, depthwise=True))
        layers.append(ConvLayer(f"pw{i}", prev, out, 1, 1))
        prev = out
    return SearchSpace("mobilenet_v1", in_channels, resolution, tuple(genes), tuple(layers), Classifier("fc", prev, num_classes))


@register_space("mobilenet_v2", resolutions=(224, 32))
def mobilenet_v2(num_classes: int, in_channels: int, resolution: int, width_mult: float) -> SearchSpace:
    """MobileNetV2: a stage's blocks share the output gene (residual adds); each expansion is free."""
    small = _small_input(resolution)
    settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 1 if small else 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    genes = [Gene.from_scales("stem", _w(32, width_mult))]
    layers: list[Layer] = [ConvLayer("stem", in_channels, "stem", 3, 1 if small else 2, act="relu6")]
    prev: Width = "stem"
    prev_base = genes[0].base
    for s, (expand, width, blocks, first_stride) in enumerate(settings, start=1):
        stage = f"stage{s}"
        genes.append(Gene.from_scales(stage, _w(width, width_mult)))
        for b in range(blocks):
            stride = first_stride if b == 0 else 1
            body: list[ConvLayer] = []
            hidden: Width = prev
            if expand != 1:
                hidden = f"s{s}b{b}_expand"
                genes.append(Gene.from_scales(hidden, prev_base * expand))
                body.append(ConvLayer(f"s{s}b{b}_expand", prev, hidden, 1, 1, act="relu6"))
            body.append(ConvLayer(f"s{s}b{b}_dw", hidden, hidden, 3, stride, depthwise=True, act="relu6"))
            body.append(ConvLayer(f"s{s}b{b}_project", hidden, stage, 1, 1, act=None))
            if prev == stage:
                layers.append(ResidualBlock(f"s{s}b{b}", tuple(body)))
            else:
                layers.extend(body)
            prev, prev_base = stage, _w(width, width_mult)
    # The last 1x1 conv is searchable and scales with width_mult (torchvision keeps it at 1280).
    genes.append(Gene.from_scales("last", _w(1280, width_mult)))
    layers.append(ConvLayer("last", prev, "last", 1, 1, act="relu6"))
    return SearchSpace(
        "mobilenet_v2", in_channels, resolution, tuple(genes), tuple(layers), Classifier("fc", "last", num_classes)
    )


# The field's lightweight blocks: plain modules (`search_spaces.zoo`), traced per data shape.
for _name, _builder in (
    ("nin", zoo.nin),
    ("vgg11", zoo.vgg11),
    ("vgg16", zoo.vgg16),
    ("inception", zoo.inception),
    ("squeezenet", zoo.squeezenet),
    ("shufflenet_v2", zoo.shufflenetv2),
    ("mobilenet_v3", zoo.mobilenetv3),
):
    register_module(_name, _builder, resolutions=(32, 224))
