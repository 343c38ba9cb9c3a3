"""Search spaces of user modules (`search_spaces.from_module`) and their PruningNet: for every
pattern, the extracted subnet equals the PruningNet's output, thop counts what the space says, the
full width is the user's network, and ONNX Runtime runs the subnet."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from thop import profile
from torch import nn

import search_spaces as ss
from metaprune.graph_pruningnet import GraphPruningNet
from metaprune.pruningnet import PruningNetConfig
from tests.graph_models import MODELS, WithUnknownOp, conv_bn

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def space_of(name: str) -> tuple[nn.Module, ss.GraphSpace, int]:
    cls, size = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # trained-looking BN statistics, so that slicing them is checked too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        space = ss.from_module(model, torch.zeros(1, 3, size, size))
    return model, space, size


def configs(space: ss.GraphSpace, n: int, seed: int = 0) -> list[ss.Config]:
    rng = np.random.default_rng(seed)
    return [space.smallest, space.largest] + [ss.sample(space, rng) for _ in range(n - 2)]


def thop_count(model: nn.Module, size: int) -> tuple[int, int]:
    flops, params = profile(model, inputs=(torch.zeros(1, 3, size, size),), verbose=False)
    return int(flops), int(params)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_full_width_subnet_is_the_users_network_and_thop_counts_every_configuration(name: str) -> None:
    model, space, size = space_of(name)
    x = torch.randn(4, 3, size, size)
    full = ss.build_graph_subnet(space, space.largest).eval()
    torch.testing.assert_close(full(x), model(x), rtol=0, atol=1e-5)
    assert ss.count(space, space.largest) == ss.Cost(*thop_count(model, size))
    for config in configs(space, 20):
        subnet = ss.build_graph_subnet(space, config).eval()
        assert ss.count(space, config) == ss.Cost(*thop_count(subnet, size)), space.describe(config)
        assert subnet(x).shape == model(x).shape
    assert ss.flops(space, space.smallest) < ss.flops(space, space.largest)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_extracted_subnet_equals_the_pruningnets_output_for_20_configurations(name: str) -> None:
    _, space, size = space_of(name)
    torch.manual_seed(1)
    net = GraphPruningNet(space, PruningNetConfig(hidden=8, bn_affine=True))
    x = torch.randn(4, 3, size, size)
    net.train()
    for config in configs(space, 4, seed=5):  # move the running statistics away from their start
        net(x, config)
    net.eval()
    outputs = []
    for config in configs(space, 20):
        expected = net(x, config)
        subnet = net.extract(config).eval()
        assert not any(isinstance(m, GraphPruningNet) for m in subnet.modules())
        torch.testing.assert_close(subnet(x), expected, rtol=0, atol=1e-5)
        assert ss.count(space, config) == ss.Cost(*thop_count(subnet, size))
        outputs.append(expected)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)  # the smallest differs from the largest


@pytest.mark.parametrize("name", ["resnet18", "shufflenetv2", "densenet", "mobilenetv3_se"])
def test_a_warm_started_pruningnet_generates_the_users_network_pruned_to_each_configuration(name: str) -> None:
    _, space, size = space_of(name)
    net = GraphPruningNet(space, PruningNetConfig(hidden=8, bn_affine=True), warm=True).eval()
    x = torch.randn(2, 3, size, size)
    for config in configs(space, 5):
        torch.testing.assert_close(net(x, config), ss.build_graph_subnet(space, config).eval()(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_runs_the_subnet_and_matches_pytorch(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    _, space, size = space_of(name)
    config = configs(space, 3, seed=2)[2]
    subnet = ss.build_graph_subnet(space, config).eval()
    x = torch.randn(2, 3, size, size)
    path = tmp_path / "subnet.onnx"
    torch.onnx.export(subnet, (x,), str(path), input_names=["x"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, subnet(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_split_and_shuffle_keep_some_of_every_half_so_no_conv_is_left_without_input() -> None:
    _, space, size = space_of("shufflenetv2")
    assert len(space.genes) == 14 and not space.frozen.keys() - {"the model's input", "the model's output"}
    counts = space.channel_counts(space.smallest)
    assert min(counts[name] for name in space.weighted) >= 1
    assert any(isinstance(m, ss.graph.KeptGather) for m in space.module.modules())


def test_the_shared_resnet20_gives_the_registered_resnet20s_genes_flops_and_outputs() -> None:
    if not (SHARED_MODELS / "cifar_resnet.py").exists():
        pytest.skip(f"no {SHARED_MODELS / 'cifar_resnet.py'}")
    sys.path.insert(0, str(SHARED_MODELS))
    try:
        from cifar_resnet import resnet20  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SHARED_MODELS))
    model = resnet20().eval()
    model.load_state_dict(torch.load(SHARED_MODELS / "resnet20_cifar10.pt", map_location="cpu", weights_only=True))
    space = ss.from_module(model, torch.zeros(1, 3, 32, 32))
    registered = ss.create_space("resnet20", num_classes=10, in_channels=3, resolution=32)
    names = {"conv1": "stage1", "layer2.0.downsample.0": "stage2", "layer3.0.downsample.0": "stage3"}
    names |= {f"layer{s}.{b}.conv1": f"s{s}b{b}_mid" for s in (1, 2, 3) for b in range(3)}
    assert {names[g.name]: g.choices for g in space.genes} == {g.name: g.choices for g in registered.genes}
    where = [space.gene_index[graph] for graph in sorted(names, key=lambda n: registered.gene_index[names[n]])]
    network = ss.build_subnet(registered, registered.largest)
    network.load_state_dict(torch.load(SHARED_MODELS / "resnet20_cifar10.metaprune.pt", map_location="cpu", weights_only=True))
    x = torch.randn(4, 3, 32, 32)
    rng = np.random.default_rng(0)
    for config in [registered.smallest, registered.largest] + [ss.sample(registered, rng) for _ in range(8)]:
        graph_config = tuple(config[where.index(i)] for i in range(len(space.genes)))
        assert ss.count(space, graph_config) == ss.count(registered, config)
        expected = _prefix_pruned(network, registered, config).eval()(x)
        torch.testing.assert_close(ss.build_graph_subnet(space, graph_config).eval()(x), expected, rtol=0, atol=1e-4)


def _prefix_pruned(network: nn.Module, space: ss.SearchSpace, config: ss.Config) -> nn.Module:
    """The registered subnet of `config` holding the first channels of the full network's weights."""
    subnet = ss.build_subnet(space, config)
    shapes = {k: v.shape for k, v in subnet.state_dict().items()}
    subnet.load_state_dict({k: v[tuple(slice(0, n) for n in shapes[k])] for k, v in network.state_dict().items()})
    return subnet


def test_an_unknown_op_freezes_the_channels_it_touches_and_the_warning_names_it() -> None:
    with pytest.warns(UserWarning, match=r"channels through roll at the model's forward \(roll\) are kept whole"):
        space = ss.from_module(WithUnknownOp(), torch.zeros(1, 3, 8, 8))
    assert [(g.name, g.base) for g in space.genes] == [("a.0", 8), ("c.0", 16)]  # b's output goes through roll
    assert "roll at the model's forward (roll)" in space.frozen


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else x


def test_an_untraceable_model_and_one_with_nothing_to_prune_get_one_line_errors() -> None:
    with pytest.raises(ss.TraceError, match=r"^torch.fx cannot trace Branchy: [^\n]+$"):
        ss.from_module(Branchy(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ss.TraceError, match=r"^Sequential has no channel group that can be pruned$"):
        ss.from_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ss.TraceError, match=r"^Linear fails on an input of shape \(1, 3, 8, 8\): [^\n]+$"):
        ss.from_module(nn.Linear(5, 2), torch.zeros(1, 3, 8, 8))
