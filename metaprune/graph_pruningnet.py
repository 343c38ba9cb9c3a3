"""The PruningNet, on any traced graph: every registered family and the user's own module
(`search_spaces.from_module`); its settings and generator are in `metaprune.pruningnet`.

The graph is copied and every conv and linear replaced by a generating layer (a generator
fed with its input and output scales, kept channels / full width, producing the full-width weight);
under a configuration each takes the rows and columns of its kept channels, which need not be a
prefix (importance order, concatenated branches, shuffles). Each BatchNorm keeps full-width
statistics and uses the kept channels' slice: configurations share one set of statistics, which the
search re-calibrates per candidate anyway. `warm=True` starts every generator at the user's
trained weight (output bias = that weight, output matrix zero) and every BN at the trained BN: each
configuration's generated network is then the user's network structurally pruned to it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from metaprune.importance import check_full_weights
from metaprune.pruningnet import PruningNetConfig, _Generator
from search_spaces import Config
from search_spaces.graph import GraphSpace, KeptGather, conv_inputs, copy_bn, gather_index, source_of


class _Sliced(nn.Module):
    """A layer of the graph PruningNet: `activate` gives it its kept input and output channels."""

    kept_in: torch.Tensor
    kept_out: torch.Tensor

    def activate(self, kept_in: torch.Tensor, kept_out: torch.Tensor) -> None:
        self.kept_in, self.kept_out = kept_in.to(self.device), kept_out.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def plain(self) -> nn.Module:
        """The standard layer this one is under the active configuration."""
        raise NotImplementedError


class GeneratedConv(_Sliced):
    def __init__(self, conv: nn.Conv2d, hidden: int, warm: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.full_groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        shape = tuple(conv.weight.shape)
        fan_out = conv.out_channels * math.prod(conv.kernel_size) // conv.groups
        self.generator = _Generator(2, hidden, shape, math.sqrt(2.0 / fan_out))
        self.bias = None if conv.bias is None else nn.Parameter(torch.zeros(conv.out_channels))
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.ones(2), persistent=False)
        self.register_buffer("kept_in", torch.arange(conv.in_channels), persistent=False)
        self.register_buffer("kept_out", torch.arange(conv.out_channels), persistent=False)
        if warm:
            self.warm(conv)

    @torch.no_grad()
    def warm(self, conv: nn.Module) -> None:
        assert isinstance(conv, nn.Conv2d)
        if tuple(conv.weight.shape) != self.generator.shape:
            raise ValueError(f"a conv weight of shape {tuple(conv.weight.shape)} cannot start a {self.generator.shape} generator")
        self.generator.out.bias.copy_(conv.weight.flatten())
        self.generator.out.weight.zero_()  # generated = trained for every width until it learns otherwise
        if self.bias is not None and conv.bias is not None:
            self.bias.copy_(conv.bias)

    def activate(self, kept_in: torch.Tensor, kept_out: torch.Tensor) -> None:
        super().activate(kept_in, kept_out)
        full = torch.tensor([self.in_channels, self.out_channels], dtype=self.scales.dtype)
        self.scales = (torch.tensor([len(kept_in), len(kept_out)], dtype=self.scales.dtype) / full).to(self.device)

    @property
    def groups(self) -> int:
        return len(self.kept_in) if self.full_groups == self.in_channels > 1 else self.full_groups

    def weight(self) -> torch.Tensor:
        columns = conv_inputs(self.in_channels, self.full_groups, self.kept_in)
        return self.generator(self.scales)[self.kept_out][:, columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[self.kept_out]
        return F.conv2d(x, self.weight(), bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def plain(self) -> nn.Module:
        conv = nn.Conv2d(
            len(self.kept_in), len(self.kept_out), self.kernel_size, self.stride, self.padding,  # type: ignore[arg-type]
            self.dilation, self.groups, self.bias is not None, device=self.device,  # type: ignore[arg-type]
        )  # fmt: skip
        conv.weight.copy_(self.weight())
        if self.bias is not None and conv.bias is not None:
            conv.bias.copy_(self.bias[self.kept_out])
        return conv


class GeneratedLinear(_Sliced):
    def __init__(self, linear: nn.Linear, hidden: int, warm: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.generator = _Generator(2, hidden, tuple(linear.weight.shape), 1.0 / math.sqrt(linear.in_features))
        self.bias = None if linear.bias is None else nn.Parameter(torch.zeros(linear.out_features))
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.ones(2), persistent=False)
        self.register_buffer("kept_in", torch.arange(linear.in_features), persistent=False)
        self.register_buffer("kept_out", torch.arange(linear.out_features), persistent=False)
        if warm:
            self.warm(linear)

    @torch.no_grad()
    def warm(self, linear: nn.Module) -> None:
        assert isinstance(linear, nn.Linear)
        if tuple(linear.weight.shape) != self.generator.shape:
            shape = tuple(linear.weight.shape)
            raise ValueError(f"a linear weight of shape {shape} cannot start a {self.generator.shape} generator")
        self.generator.out.bias.copy_(linear.weight.flatten())
        self.generator.out.weight.zero_()
        if self.bias is not None and linear.bias is not None:
            self.bias.copy_(linear.bias)

    def activate(self, kept_in: torch.Tensor, kept_out: torch.Tensor) -> None:
        super().activate(kept_in, kept_out)
        full = torch.tensor([self.in_features, self.out_features], dtype=self.scales.dtype)
        self.scales = (torch.tensor([len(kept_in), len(kept_out)], dtype=self.scales.dtype) / full).to(self.device)

    def weight(self) -> torch.Tensor:
        return self.generator(self.scales)[self.kept_out][:, self.kept_in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), None if self.bias is None else self.bias[self.kept_out])

    @torch.no_grad()
    def plain(self) -> nn.Module:
        linear = nn.Linear(len(self.kept_in), len(self.kept_out), self.bias is not None, device=self.device)
        linear.weight.copy_(self.weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias[self.kept_out])
        return linear


class SlicedBatchNorm(_Sliced):
    """A full-width BatchNorm used on the kept channels; training updates their statistics only."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, affine: bool, warm: bool) -> None:
        super().__init__()
        self.norm = type(norm)(norm.num_features, norm.eps, norm.momentum, affine)
        if warm:
            copy_bn(norm, self.norm, torch.arange(norm.num_features))
        self.register_buffer("kept_in", torch.arange(norm.num_features), persistent=False)
        self.kept_out = self.kept_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, kept = self.norm, self.kept_in
        assert n.running_mean is not None and n.running_var is not None and n.num_batches_tracked is not None
        weight = None if n.weight is None else n.weight[kept]
        bias = None if n.bias is None else n.bias[kept]
        if not self.training:
            return F.batch_norm(x, n.running_mean[kept], n.running_var[kept], weight, bias, False, 0.0, n.eps)
        with torch.no_grad():
            n.num_batches_tracked += 1
        momentum = 1.0 / float(n.num_batches_tracked) if n.momentum is None else n.momentum
        mean, var = n.running_mean[kept], n.running_var[kept]  # copies: batch_norm updates them in place
        out = F.batch_norm(x, mean, var, weight, bias, True, momentum, n.eps)
        with torch.no_grad():
            n.running_mean[kept], n.running_var[kept] = mean, var
        return out

    @torch.no_grad()
    def plain(self) -> nn.Module:
        norm = type(self.norm)(len(self.kept_in), self.norm.eps, self.norm.momentum, True, device=self.device)
        copy_bn(self.norm, norm, self.kept_in)
        return norm


class GatherLayer(_Sliced):
    """A `KeptGather` whose index follows the configuration (the full-width index is its state)."""

    def __init__(self, gather: KeptGather) -> None:
        super().__init__()
        self.full: torch.Tensor
        self.register_buffer("full", gather.index.clone(), persistent=False)
        self.register_buffer("index", gather.index.clone(), persistent=False)

    def activate(self, kept_in: torch.Tensor, kept_out: torch.Tensor) -> None:
        self.index = gather_index(self.full, kept_in, kept_out).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def plain(self) -> nn.Module:
        return KeptGather(self.index)


class GraphPruningNet(nn.Module):
    """`forward(x, config)` runs the network of `config` of a `GraphSpace` with generated weights."""

    def __init__(self, space: GraphSpace, cfg: PruningNetConfig | None = None, warm: bool = False) -> None:
        super().__init__()
        self.space, self.cfg = space, cfg or PruningNetConfig()
        if warm and not self.cfg.bn_affine:
            raise ValueError("a warm-started PruningNet needs affine BatchNorms (bn_affine=True)")
        self.net: fx.GraphModule = copy.deepcopy(space.module)
        self.calls: list[tuple[str, str, str]] = []  # (module path, its input node, its output node)
        for node in self.net.graph.nodes:
            if node.op != "call_module":
                continue
            path, module = str(node.target), self.net.get_submodule(str(node.target))
            layer = self._layer(module, warm)
            if layer is not module:
                _replace(self.net, path, layer)
            if isinstance(layer, _Sliced):
                self.calls.append((path, source_of(node), node.name))
        self.config = self.set_config(space.largest)

    def _layer(self, module: nn.Module, warm: bool) -> nn.Module:
        if isinstance(module, nn.Conv2d):
            return GeneratedConv(module, self.cfg.hidden, warm)
        if isinstance(module, nn.Linear):
            return GeneratedLinear(module, self.cfg.hidden, warm)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return SlicedBatchNorm(module, self.cfg.bn_affine, warm)
        if isinstance(module, KeptGather):
            return GatherLayer(module)
        return module

    def set_config(self, config: Config) -> Config:
        self.config = self.space.validate(config)
        keep = self.space.kept(self.config)
        for path, source, out in self.calls:
            layer = self.net.get_submodule(path)
            assert isinstance(layer, _Sliced)
            layer.activate(keep[source], keep[out])
        return self.config

    @torch.no_grad()
    def warm_from(self, trained: nn.Module) -> None:
        """Start every generator at `trained`'s weight and every BN at its statistics: a full network
        of this space (the user's, trained), so each configuration generates it pruned."""
        if not self.cfg.bn_affine:
            raise ValueError("a warm-started PruningNet needs affine BatchNorms (bn_affine=True)")
        check_full_weights(self.space, trained.state_dict())
        sources = dict(trained.named_modules())
        for path, _, _ in self.calls:
            layer, source = self.net.get_submodule(path), sources.get(path)
            if isinstance(layer, (GeneratedConv, GeneratedLinear)):
                assert isinstance(source, (nn.Conv2d, nn.Linear)), path
                layer.warm(source)
            elif isinstance(layer, SlicedBatchNorm):
                assert isinstance(source, nn.modules.batchnorm._BatchNorm), path
                copy_bn(source, layer.norm, torch.arange(source.num_features))

    def forward(self, x: torch.Tensor, config: Config | None = None) -> torch.Tensor:
        if config is not None and tuple(config) != self.config:
            self.set_config(config)
        return self.net(x)

    @torch.no_grad()
    def extract(self, config: Config) -> fx.GraphModule:
        """The plain subnet of `config` holding the generated weights (standard layers only)."""
        self.set_config(config)
        subnet = copy.deepcopy(self.net)
        for path, module in list(subnet.named_modules()):
            if isinstance(module, _Sliced):
                _replace(subnet, path, module.plain())
        return subnet


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
