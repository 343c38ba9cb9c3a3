"""The PruningNet against its extracted subnets, and BN re-estimation against the exact average."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import search_spaces as ss
from metaprune.graph_pruningnet import GraphPruningNet, _Sliced
from metaprune.pruningnet import PruningNetConfig
from metaprune.score import recalibrate_bn

CASES = [(name, size) for name in ss.list_spaces("described") for size in ss.get_family(name).resolutions]
# Full-size generators of the ImageNet networks need gigabytes (32x every weight); the generic code
# path is the same at a quarter width and 64x64 inputs, which keeps the suite within minutes on CPU.
SMALL = {"resnet50": 0.25, "mobilenet_v1": 0.25, "mobilenet_v2": 0.25}


def randomise_bn(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)


AFFINE_CASES = [(name, size, False) for name, size in CASES] + [("resnet20", 32, True), ("mobilenet_v2", 32, True)]


@pytest.mark.parametrize(("name", "size", "affine"), AFFINE_CASES)
def test_extracted_subnet_equals_pruningnet(name: str, size: int, affine: bool) -> None:
    size = min(size, 64)
    space = ss.create_space(name, num_classes=10, in_channels=3, resolution=size, width_mult=SMALL.get(name, 1.0))
    torch.manual_seed(0)
    net = GraphPruningNet(space, PruningNetConfig(hidden=8, bn_affine=affine))
    with torch.no_grad():
        randomise_bn(net, 1)
        for p in net.parameters():  # move off the initial values so generators really depend on width
            p.add_(0.01 * torch.randn_like(p))
    net.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(3)
    for config in [space.largest] + [ss.sample(space, rng) for _ in range(19)]:
        expected = net(x, config)
        subnet = net.extract(config).eval()
        assert not any(isinstance(m, _Sliced) for m in subnet.modules())  # standard layers only
        torch.testing.assert_close(subnet(x), expected, rtol=1e-4, atol=1e-5)


def test_generated_weights_depend_on_width_and_are_cropped() -> None:
    space = ss.create_space("resnet20", resolution=8, width_mult=0.5)
    net = GraphPruningNet(space)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    a, b = space.largest, ss.sample(space, np.random.default_rng(0))
    wa = net.extract(a).get_submodule("layers.stem.conv").weight
    wb = net.extract(b).get_submodule("layers.stem.conv").weight
    assert wb.shape[0] == space.describe(b)["stage1"] < wa.shape[0]
    assert not torch.allclose(wa[: wb.shape[0]], wb)  # the generator sees the width, not just a crop


def test_training_a_configuration_updates_the_statistics_of_its_kept_channels_only() -> None:
    """One full-width BatchNorm per layer, sliced: with non-affine BNs (the default) training is what
    one BatchNorm per width choice gives (batch statistics), and the search re-calibrates the
    running statistics of every candidate anyway."""
    space = ss.create_space("resnet20", resolution=8, width_mult=0.5)
    net = GraphPruningNet(space).train()
    norm = net.net.get_submodule("layers.stem.bn").norm
    before = norm.running_mean.clone()
    net(torch.randn(4, 3, 8, 8), space.smallest)
    kept = space.describe(space.smallest)["stage1"]
    changed = (norm.running_mean != before).tolist()
    assert changed == [True] * kept + [False] * (len(changed) - kept)


def test_recalibrate_bn_gives_the_exact_average_of_batches() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3))
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(5)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        outs = [model[0](x) for x in batches]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, variances)
    assert bn.momentum == 0.3 and not bn.training
