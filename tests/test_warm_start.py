"""Starting from the trained network: importance order, the warm PruningNet, channel multiples."""

from __future__ import annotations

import numpy as np
import pytest
import thop
import torch

import search_spaces as ss
from metaprune import filter_prune
from metaprune.graph_importance import RANKINGS, class_scores, ordered_space
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.importance import crop
from metaprune.pruningnet import PruningNetConfig
from tests.test_filter_prune import _trained_like as trained_like  # random weights, non-trivial BN

FAMILIES = ss.list_spaces("described")
SMALL = {"resnet50": 0.125, "mobilenet_v2": 0.25, "mobilenet_v1": 0.25}  # every family at a size that runs in a second


def space_of(family: str, multiple: int = 1) -> ss.GraphSpace:
    return ss.create_space(family, 10, 3, 32, SMALL.get(family, 0.5), multiple)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", RANKINGS)
def test_the_importance_order_keeps_each_genes_best_scored_channels_first(family: str, method: str) -> None:
    space = space_of(family)
    model = trained_like(space)
    ordered, scores = ordered_space(space, model, method), class_scores(space, model, method)
    assert any(not np.array_equal(a, b) for a, b in zip(ordered.order, space.order))  # a real permutation
    for gene in range(len(space.genes)):
        for row in ordered.segments(gene):  # each tied group ranked on its own
            assert (np.diff(scores[row]) <= 0).all()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(outputs(crop(ordered, model, ordered.largest), x), outputs(model, x), atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_before_training_a_warm_pruningnet_generates_the_l1_pruned_trained_network(family: str) -> None:
    space = space_of(family)
    model = trained_like(space)
    net = GraphPruningNet(ordered_space(space, model), PruningNetConfig(hidden=8, bn_affine=True))
    net.warm_from(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(net.extract(space.largest), x), outputs(model, x), atol=1e-5, rtol=1e-5)
    rng = np.random.default_rng(0)
    for _ in range(8):  # the extraction itself is checked on 20 configurations in tests/test_pruningnet.py
        config = ss.sample(space, rng)
        generated, pruned = net.extract(config), filter_prune.prune(space, model, config)
        torch.testing.assert_close(outputs(generated, x), outputs(pruned, x), atol=1e-5, rtol=1e-5)
        # the same kept channels: each generated conv's filters are the trained filters pruning keeps
        generated_w = dict(generated.named_parameters())
        for name, weight in pruned.named_parameters():
            torch.testing.assert_close(generated_w[name], weight, atol=0, rtol=0)


def test_a_warm_start_needs_affine_batchnorms_and_the_space_s_full_network() -> None:
    space = space_of("resnet20")
    with pytest.raises(ValueError, match="bn_affine"):
        GraphPruningNet(space, PruningNetConfig(8, bn_affine=False)).warm_from(trained_like(space))
    with pytest.raises(ValueError, match="'layers.s1b3.body.0.conv.weight' is not part of the full 'resnet20' network"):
        GraphPruningNet(space, PruningNetConfig(8, bn_affine=True)).warm_from(trained_like(space_of("resnet56")))
    narrower = trained_like(ss.create_space("resnet20", 10, 3, 32, 0.25))
    with pytest.raises(ValueError, match=r"'layers.stem.conv.weight' has shape \(4, 3, 3, 3\), expected \(8, 3, 3, 3\)"):
        GraphPruningNet(space, PruningNetConfig(8, bn_affine=True)).warm_from(narrower)


def test_a_described_familys_crop_takes_the_prefix_of_every_tensor() -> None:
    space = space_of("resnet50")  # with its tied bottleneck widths
    model = trained_like(space)
    config = ss.sample(space, np.random.default_rng(4))
    sub = crop(space, model, config)
    full = model.state_dict()
    for name, value in sub.state_dict().items():
        assert torch.equal(value, full[name][tuple(slice(0, n) for n in value.shape)] if value.dim() else full[name])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("multiple", [4, 8, 16])
def test_channel_multiples_round_every_choice_and_keep_the_full_width(family: str, multiple: int) -> None:
    plain, rounded = space_of(family), space_of(family, multiple)
    for gene, before in zip(rounded.genes, plain.genes):
        assert gene.base == before.base and gene.choices[-1] == gene.base
        assert all(c % multiple == 0 for c in gene.choices[:-1]), gene
        # every width of the paper's grid has a rounded neighbour within half a multiple (or the smallest one)
        assert all(min(abs(c - r) for r in gene.choices) <= max(multiple / 2, gene.choices[0] - c) for c in before.choices)
        assert len(gene.choices) <= len(before.choices)
    assert ss.flops(rounded, rounded.largest) == ss.flops(plain, plain.largest)
    for config in [ss.sample(rounded, np.random.default_rng(i)) for i in range(5)]:
        subnet = ss.build_subnet(rounded, config).eval()
        macs, params = thop.profile(subnet, (torch.zeros(1, 3, 32, 32),), verbose=False)
        assert (int(macs), int(params)) == (ss.flops(rounded, config), ss.params(rounded, config))


def test_a_channel_multiple_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="channel multiple must be >= 1, got 0"):
        ss.create_space("resnet20", channel_multiple=0)
