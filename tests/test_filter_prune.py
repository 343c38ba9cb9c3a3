"""L1-norm filter pruning through the space description, and uniform width scaling at a FLOPs budget."""

from __future__ import annotations

import numpy as np
import pytest
import thop
import torch

import search_spaces as ss
from metaprune import filter_prune


def _trained_like(space: ss.SearchSpace, seed: int = 0) -> torch.nn.Module:
    """A full network with random weights and non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = ss.build_subnet(space, space.largest)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("family", ["resnet20", "mobilenet_v2"])
def test_pruning_to_the_full_width_reorders_channels_without_changing_the_function(family: str) -> None:
    space = ss.create_space(family, 10, 3, 32, 0.5)
    full = _trained_like(space)
    pruned = filter_prune.prune(space, full, space.largest).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x), atol=1e-4, rtol=1e-4)
    # the ranking really permutes channels here: the network above is a reordering, not a copy
    ranking = filter_prune.channel_ranking(space, full)
    assert any(not torch.equal(order, torch.arange(len(order))) for order in ranking.values())


def test_the_filters_with_the_smallest_l1_norm_go_first() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    full = _trained_like(space)
    conv = dict(full.named_modules())["layers.s1b0.body.0.conv"]  # writes gene s1b0_mid alone
    doomed = [1, 4, 6]
    with torch.no_grad():
        conv.weight[doomed] *= 1e-3
    gene = space.gene_index["s1b0_mid"]
    config = list(space.largest)
    config[gene] = space.genes[gene].choices.index(space.genes[gene].base - len(doomed))
    ranking = filter_prune.channel_ranking(space, full)
    kept = filter_prune.kept_channels(space, tuple(config), ranking, "s1b0_mid")
    assert sorted(set(range(space.genes[gene].base)) - set(kept.tolist())) == doomed
    pruned = filter_prune.prune(space, full, tuple(config))
    # the kept filters, most important first, reading their inputs in the input gene's order
    rows = ranking["s1b0_mid"][: len(kept)]
    expected = conv.weight[rows][:, ranking["stage1"]]
    torch.testing.assert_close(dict(pruned.named_modules())["layers.s1b0.body.0.conv"].weight, expected)


def test_coupled_channels_are_ranked_by_every_conv_that_writes_them() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    full = _trained_like(space)
    modules = dict(full.named_modules())
    writers = [p for p, spec in filter_prune.conv_paths(space) if spec.out_ch == "stage1"]
    assert len(writers) == 4  # the stem and the second conv of each of the stage's three blocks
    expected = sum(modules[f"{p}.conv"].weight.detach().abs().flatten(1).sum(1).double() for p in writers)
    order = filter_prune.channel_ranking(space, full)["stage1"]
    assert torch.equal(order, torch.argsort(expected, descending=True, stable=True))


def test_a_pruned_subnet_has_the_configuration_s_flops_by_thop() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    config = ss.sample(space, np.random.default_rng(3))
    pruned = filter_prune.prune(space, _trained_like(space), config)
    macs, _ = thop.profile(pruned, inputs=(torch.zeros(1, 3, 32, 32),), verbose=False)
    assert int(macs) == ss.flops(space, config)


def test_a_model_of_another_space_is_refused() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    other = ss.build_subnet(space, space.smallest)
    with pytest.raises(ValueError, match="not the full network"):
        filter_prune.prune(space, other, space.smallest)


@pytest.mark.parametrize("family", ["resnet20", "resnet56", "mobilenet_v2"])
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_uniform_scaling_reaches_a_flops_target_within_two_percent(family: str, target: float) -> None:
    space = ss.create_space(family, 10, 3, 32, 1.0)
    full = ss.flops(space, space.largest)
    config = ss.uniform_within(space, target * full)
    assert 0.98 * target * full <= ss.flops(space, config) <= target * full
    scales = [space.scale(gene.name, config) for gene in space.genes]
    assert max(scales) - min(scales) < 0.1  # uniform: every gene at about the same fraction of its width


def test_uniform_scaling_is_monotonic_and_refuses_an_unreachable_budget() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 1.0)
    counts = [ss.flops(space, ss.uniform(space, s)) for s in np.linspace(0, 1, 21)]
    assert counts == sorted(counts) and ss.uniform(space, 1.0) == space.largest
    with pytest.raises(ValueError, match="below the narrowest uniform network"):
        ss.uniform_within(space, 10)
