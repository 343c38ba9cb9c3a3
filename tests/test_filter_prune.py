"""L1-norm filter pruning on the traced graph, and uniform width scaling at a FLOPs budget."""

from __future__ import annotations

import numpy as np
import pytest
import thop
import torch

import search_spaces as ss
from metaprune import filter_prune
from metaprune.graph_importance import ordered_space


def _trained_like(space: ss.GeneSpace, seed: int = 0) -> torch.nn.Module:
    """A full network with random weights and non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = ss.fresh_subnet(space, space.largest)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _node(space: ss.GraphSpace, target: str) -> str:
    return next(n.name for n in space.nodes() if n.op == "call_module" and n.target == target)


@pytest.mark.parametrize("family", ["resnet20", "mobilenet_v2"])
def test_pruning_to_the_full_width_keeps_the_function_and_the_ranking_is_a_real_order(family: str) -> None:
    space = ss.create_space(family, 10, 3, 32, 0.5)
    full = _trained_like(space)
    pruned = filter_prune.prune(space, full, space.largest).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x), atol=1e-5, rtol=1e-5)
    ordered = ordered_space(space, full)
    assert any(not np.array_equal(a, b) for a, b in zip(ordered.order, space.order))


def test_the_filters_with_the_smallest_l1_norm_go_first() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    full = _trained_like(space)
    conv = full.get_submodule("layers.s1b0.body.0.conv")  # writes gene s1b0_mid alone
    doomed = [1, 4, 6]
    with torch.no_grad():
        conv.weight[doomed] *= 1e-3
    gene = space.gene_index["s1b0_mid"]
    config = list(space.largest)
    config[gene] = space.genes[gene].choices.index(space.genes[gene].base - len(doomed))
    pruned = filter_prune.prune(space, full, tuple(config))
    kept = [c for c in range(space.genes[gene].base) if c not in doomed]
    expected = conv.weight[kept]  # the kept filters, in their order, reading every input of stage1
    torch.testing.assert_close(pruned.get_submodule("layers.s1b0.body.0.conv").weight, expected, rtol=0, atol=0)


def test_coupled_channels_are_ranked_by_every_conv_that_writes_them() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    full = _trained_like(space)
    writers = ["layers.stem.conv"] + [f"layers.s1b{b}.body.1.conv" for b in range(3)]  # the stem, each block's second conv
    expected = sum(full.get_submodule(p).weight.detach().abs().flatten(1).sum(1).double() for p in writers)
    classes = space.classes[_node(space, "layers.stem.conv")]  # stage1's channel c is class classes[c]
    order = ordered_space(space, full).order[space.gene_index["stage1"]]
    assert np.array_equal(order, classes[torch.argsort(expected, descending=True, stable=True).numpy()])


def test_a_pruned_subnet_has_the_configuration_s_flops_by_thop() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    config = ss.sample(space, np.random.default_rng(3))
    pruned = filter_prune.prune(space, _trained_like(space), config)
    macs, _ = thop.profile(pruned, inputs=(torch.zeros(1, 3, 32, 32),), verbose=False)
    assert int(macs) == ss.flops(space, config)


def test_a_model_of_another_space_is_refused() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 0.5)
    other = ss.build_subnet(space, space.smallest)
    with pytest.raises(ValueError, match="not the full network of space 'resnet20': tensor 'layers.stem.conv.weight' has shape"):
        filter_prune.prune(space, other, space.smallest)


@pytest.mark.parametrize("family", ["resnet20", "resnet56", "mobilenet_v2"])
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_uniform_scaling_reaches_a_flops_target_within_two_percent(family: str, target: float) -> None:
    space = ss.create_space(family, 10, 3, 32, 1.0)
    full = ss.flops(space, space.largest)
    config = ss.uniform_within(space, target * full)
    assert 0.98 * target * full <= ss.flops(space, config) <= target * full
    scales = [gene.choices[c] / gene.base for gene, c in zip(space.genes, config)]
    assert max(scales) - min(scales) < 0.1  # uniform: every gene at about the same fraction of its width


def test_uniform_scaling_is_monotonic_and_refuses_an_unreachable_budget() -> None:
    space = ss.create_space("resnet20", 10, 3, 32, 1.0)
    counts = [ss.flops(space, ss.uniform(space, s)) for s in np.linspace(0, 1, 21)]
    assert counts == sorted(counts) and ss.uniform(space, 1.0) == space.largest
    with pytest.raises(ValueError, match="below the narrowest uniform network"):
        ss.uniform_within(space, 10)
