"""Channel groups of user modules found by tracing (search_spaces.trace): the first step of from_module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import search_spaces as ss
from search_spaces.trace import ChannelGroup, TraceError, channel_groups

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def free(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    return [g for g in groups if g.frozen is None]


def conv_bn(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def test_the_shared_resnet20_has_the_registered_resnet20s_genes() -> None:
    if not (MODELS / "cifar_resnet.py").exists():
        pytest.skip(f"no {MODELS / 'cifar_resnet.py'}")
    sys.path.insert(0, str(MODELS))
    try:
        from cifar_resnet import resnet20  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(MODELS))
    groups = channel_groups(resnet20(), torch.zeros(1, 3, 32, 32))
    space = ss.create_space("resnet20", num_classes=10, in_channels=3, resolution=32)
    assert [g.channels for g in free(groups)] == [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64]
    assert sorted(g.channels for g in free(groups)) == sorted(gene.base for gene in space.genes)
    stage2 = free(groups)[4]  # the residual adds tie the shortcut conv to every block's second conv
    assert stage2.producers == ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    assert [(g.channels, g.frozen) for g in groups if g.frozen] == [(3, "the model's input"), (10, "the model's output")]


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.a, self.b = conv_bn(8, 4), nn.Sequential(conv_bn(8, 6), conv_bn(6, 5))
        self.head = nn.Conv2d(9, 7, 1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.head(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_a_concat_keeps_its_branches_apart_and_the_next_conv_reads_both() -> None:
    groups = free(channel_groups(Inception(), torch.zeros(1, 3, 16, 16)))
    by_producer = {g.producers[0]: g for g in groups}
    assert {name: g.channels for name, g in by_producer.items()} == {"stem.0": 8, "a.0": 4, "b.0.0": 6, "b.1.0": 5, "head": 7}
    assert by_producer["a.0"].consumers == by_producer["b.1.0"].consumers == ["head"]
    assert by_producer["stem.0"].consumers == ["a.0", "b.0.0"] and by_producer["head"].consumers == ["fc"]


class Separable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw, self.pw = conv_bn(3, 8), conv_bn(8, 8, groups=8), conv_bn(8, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw(self.dw(self.stem(x))).mean((2, 3)))


def test_a_depthwise_conv_ties_its_input_to_its_output_and_a_spatial_mean_keeps_the_channels() -> None:
    groups = channel_groups(Separable(), torch.zeros(1, 3, 8, 8))
    (stem,) = [g for g in groups if "stem.0" in g.producers]
    assert stem.frozen is None and stem.producers == ["stem.0", "dw.0"] and stem.consumers == ["dw.0", "pw.0"]
    (pointwise,) = [g for g in groups if "pw.0" in g.producers]
    assert pointwise.frozen is None and pointwise.consumers == ["fc"]


def test_a_mean_over_the_channels_is_not_a_pool() -> None:
    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.out(self.conv(x))
            return y * y.mean(1, keepdim=True)  # (N, 1, H, W): every channel's value mixed

    with pytest.warns(UserWarning) as caught:  # the mean, then the product broadcast over channels
        groups = channel_groups(nn.Sequential(Squeezed(), nn.Conv2d(4, 2, 1)), torch.zeros(1, 3, 4, 4))
    said = [str(w.message).split(" are ")[0] for w in caught]
    assert said == ["channels through mean at 0 (mean)", "channels through mul at 0 (mul)"]
    assert [g.producers for g in groups if g.frozen is None] == [["0.conv"]]


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleDict({"conv": conv_bn(3, 8)})
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.roll(self.block["conv"](x), 1, 1))


def test_an_unknown_op_freezes_its_channels_and_names_the_op_and_where() -> None:
    with pytest.warns(UserWarning, match="roll at ") as caught:
        groups = channel_groups(nn.Sequential(Gated(), nn.Conv2d(4, 6, 1), nn.Conv2d(6, 2, 1)), torch.zeros(1, 3, 8, 8))
    assert len(caught) == 1
    (rolled,) = [g for g in groups if "0.block.conv.0" in g.producers]
    assert rolled.frozen is not None and rolled.frozen.startswith("roll at 0")
    assert [g.producers for g in free(groups)] == [["0.out"], ["1"]]


def test_residual_adds_of_differently_concatenated_tensors_are_frozen() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.out, self.last = nn.Conv2d(6, 5, 1), nn.Conv2d(5, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.last(self.out(torch.cat([self.a(x), self.b(x)], 1) + torch.cat([self.c(x), self.d(x)], 1)))

    groups = channel_groups(Mixed(), torch.zeros(1, 3, 4, 4))  # 2+4 channels added to 3+3: parts that do not line up
    mixed = [g for g in groups if g.producers[:1] in (["a"], ["b"], ["c"], ["d"])]
    assert len(mixed) == 4 and all(g.frozen and "concatenated differently" in g.frozen for g in mixed)
    assert [(g.producers, g.consumers) for g in free(groups)] == [(["out"], ["last"])]


def test_an_untraceable_model_and_one_with_nothing_to_prune_are_one_line_errors() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else -self.conv(x)  # control flow on a value: fx cannot trace it

    with pytest.raises(TraceError, match=r"^torch.fx cannot trace Branchy: ") as error:
        channel_groups(Branchy(), torch.zeros(1, 3, 4, 4))
    assert "\n" not in str(error.value)
    with pytest.raises(TraceError, match="^Sequential has no channel group that can be pruned$"):
        channel_groups(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.zeros(1, 3, 4, 4))
