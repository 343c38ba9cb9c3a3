"""Every described family (a chain description, traced): the traced space keeps the description's
genes, FLOPs and outputs, analytic costs equal thop, operators stay valid, the description
round-trips through JSON (the module families of `search_spaces.zoo`: `tests/test_zoo.py`)."""

from __future__ import annotations

import numpy as np
import pytest
import thop
import torch

import search_spaces as ss
from search_spaces._registry import create_description
from tests.test_graph import _prefix_pruned

CASES = [(name, size) for name in ss.list_spaces("described") for size in ss.get_family(name).resolutions]


def configs(space: ss.GeneSpace, count: int, seed: int = 0) -> list[ss.Config]:
    rng = np.random.default_rng(seed)
    return [space.largest, space.smallest] + [ss.sample(space, rng) for _ in range(count - 2)]


@pytest.mark.parametrize(("name", "size"), CASES)
def test_the_traced_family_keeps_its_descriptions_genes_flops_and_outputs(name: str, size: int) -> None:
    """What the chain code gave before the families moved onto the graph: the description's genes
    (names, order, choices, ties), the FLOPs thop counts on the description's subnet, and the output
    of that subnet holding the first channels of the full network's weights."""
    width = 0.25 if size > 32 else 0.5
    space = ss.create_space(name, 10, 3, size, width, channel_multiple=4)
    described = create_description(name, 10, 3, size, width, channel_multiple=4)
    assert [(g.name, g.base, g.choices) for g in space.genes] == [(g.name, g.base, g.choices) for g in described.genes]
    torch.manual_seed(0)
    for module in space.module.modules():  # trained-like statistics: a prefix of them must carry over
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2), module.weight.data.uniform_(0.5, 1.5)
    network = ss.build_subnet(described, described.largest)
    network.load_state_dict(space.module.state_dict())
    x = torch.randn(2, 3, min(size, 64), min(size, 64))
    for config in configs(described, 20):
        subnet = ss.build_subnet(described, config).eval()
        macs, params = thop.profile(subnet, (torch.zeros(1, 3, size, size),), verbose=False)
        assert (ss.flops(space, config), ss.params(space, config)) == (int(macs), int(params)), config
        assert ss.count(described, config) == ss.count(space, config)  # the description's own count too
        expected = _prefix_pruned(network, described, config).eval()(x)
        torch.testing.assert_close(ss.build_subnet(space, config).eval()(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_space_round_trips_through_json(name: str, size: int) -> None:
    space = create_description(name, num_classes=7, in_channels=1, resolution=size, width_mult=1.0)
    assert ss.SearchSpace.from_dict(__import__("json").loads(space.to_json())) == space
    config = configs(space, 3)[2]
    assert space.from_channels(space.describe(config)) == config
    widths = space.describe(config)  # each gene's channel count over its full width, computed here
    assert space.encode(config) == [widths[gene.name] / gene.base for gene in space.genes]
    assert space.encode(space.largest) == [1.0] * len(space.genes)


@pytest.mark.parametrize("name", ss.list_spaces())
def test_operators_respect_window_and_validity(name: str) -> None:
    space = ss.create_space(name, resolution=32)
    full = ss.flops(space, space.largest)
    rng = np.random.default_rng(1)
    for budget in (0.25, 0.5):
        for _ in range(10):
            config = ss.sample_within(space, rng, 0.0, budget * full)
            assert ss.flops(space, config) <= budget * full
            assert space.validate(ss.mutate(space, config, rng, 0.5)) is not None
            other = ss.sample(space, rng)
            child = ss.crossover(space, config, other, rng)
            assert all(c in (a, b) for c, a, b in zip(child, config, other))


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.5), (0.2, 0.25), (0.0, 0.12)])
def test_sample_within_lands_in_narrow_windows(low: float, high: float) -> None:
    space = ss.create_space("mobilenet_v2", resolution=32)
    full = ss.flops(space, space.largest)
    rng = np.random.default_rng(2)
    for _ in range(20):
        assert low * full <= ss.flops(space, ss.sample_within(space, rng, low * full, high * full)) <= high * full


def test_mutation_resamples_about_prob_of_genes() -> None:
    space = ss.create_space("resnet56")
    rng = np.random.default_rng(0)
    changed = [sum(a != b for a, b in zip(space.largest, ss.mutate(space, space.largest, rng, 0.1))) for _ in range(400)]
    # a resampled gene may land on its old value (1 in ~16 choices), so slightly under 10% change
    assert 0.07 < np.mean(changed) / len(space.genes) < 0.11


def test_gene_choices_follow_the_paper() -> None:
    gene = ss.Gene.from_scales("g", 1000)
    assert len(gene.choices) == 31 and gene.choices[0] == 100 and gene.choices[-1] == 1000
    assert ss.Gene.from_scales("small", 16).choices == tuple(range(2, 17))  # rounding merges duplicates


def test_budget_below_smallest_is_rejected() -> None:
    space = ss.create_space("resnet20")
    with pytest.raises(ValueError, match="below the smallest configuration"):
        ss.check_window(space, 0, ss.flops(space, space.smallest) - 1)


def test_bad_configs_and_spaces_are_rejected() -> None:
    space = ss.create_space("resnet20")
    with pytest.raises(ValueError, match="genes"):
        space.validate((0,))
    with pytest.raises(ValueError, match="outside"):
        space.validate(tuple([99] * len(space.genes)))
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        ss.create_space("nope")
    with pytest.raises(ValueError, match="identity shortcut"):
        ss.SearchSpace(
            "bad", 3, 8, (ss.Gene.from_scales("a", 8), ss.Gene.from_scales("b", 8)),
            (ss.ConvLayer("stem", 3, "a"), ss.ResidualBlock("r", (ss.ConvLayer("c", "a", "b"),))),
            ss.Classifier("fc", "b", 2),
        )  # fmt: skip


def test_families_adapt_to_data_shape() -> None:
    space = ss.create_space("mobilenet_v2", num_classes=3, in_channels=1, resolution=8, width_mult=0.25)
    out = ss.build_subnet(space, space.largest)(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 3)
