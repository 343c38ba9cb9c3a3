"""The PruningNet against its extracted subnets, and BN re-estimation against the exact average."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import search_spaces as ss
from metaprune.pruningnet import PruningNet, PruningNetConfig
from metaprune.score import recalibrate_bn

CASES = [(name, size) for name in ss.list_spaces("chain") for size in ss.get_family(name).resolutions]
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
    net = PruningNet(space, PruningNetConfig(hidden=8, bn_affine=affine))
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
        assert type(subnet) is ss.Network and not any(isinstance(m, PruningNet) for m in subnet.modules())
        torch.testing.assert_close(subnet(x), expected, rtol=1e-4, atol=1e-5)


def test_generated_weights_depend_on_width_and_are_cropped() -> None:
    space = ss.create_space("resnet20", resolution=8, width_mult=0.5)
    net = PruningNet(space)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    a, b = space.largest, ss.sample(space, np.random.default_rng(0))
    wa = net.extract(a).layers.stem.conv.weight
    wb = net.extract(b).layers.stem.conv.weight
    assert wb.shape[0] == space.channels("stage1", b) < wa.shape[0]
    assert not torch.allclose(wa[: wb.shape[0]], wb)  # the generator sees the width, not just a crop


def test_each_width_choice_has_its_own_batchnorm() -> None:
    space = ss.create_space("resnet20", resolution=8, width_mult=0.5)
    net = PruningNet(space).train()
    choices = net.net.layers.stem.bn.norms
    before = [n.running_mean.clone() for n in choices]
    config = list(space.smallest)
    net(torch.randn(4, 3, 8, 8), tuple(config))
    changed = [not torch.equal(b, n.running_mean) for b, n in zip(before, choices)]
    assert changed == [True] + [False] * (len(choices) - 1)


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
