"""The PruningNet: one hypernetwork that generates the weights of any configuration of a space.

Every conv and the classifier own a generator, Linear(d, hidden) -> ReLU -> Linear(hidden, numel
of the full-width weight), fed with that layer's own width scales (channels / full width). The
generated full-width weight is cropped to the candidate's channels (`W[:out, :in]`). Each conv's
output keeps one BatchNorm per width choice: statistics of different widths never mix.

`warm_start` starts it from a trained full network put in importance order: every generator's
output bias becomes the trained weight and its output matrix zero, every per-choice BN the
trained BN's prefix, so before any training each configuration's generated network is the
structured-pruned trained network (what `filter_prune.prune` gives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import Classifier, Config, ConvLayer, Network, SearchSpace, Width, build_subnet


@dataclass
class PruningNetConfig:
    hidden: int = 32  # width of each generator's hidden layer (the paper: 32 or 64)
    bn_affine: bool = False  # per-choice BN with learnable scale/shift; the paper found False stabler
    # (a warm start needs True: the trained BN's scale and shift are part of the trained function)


class _Generator(nn.Module):
    """Linear -> ReLU -> Linear producing a flattened full-width weight.

    The output bias starts as a Kaiming-initialised weight and the output matrix small, so a new
    PruningNet starts out generating a conventionally initialised network for every width. The
    hidden activations are scaled by 1/sqrt(hidden): an SGD step on the output matrix then moves
    the generated weight about as far as a step on a plain weight, so the learning rates of
    ordinary training carry over (unscaled, the effective rate is several times higher).
    """

    def __init__(self, inputs: int, hidden: int, shape: tuple[int, ...], std: float) -> None:
        super().__init__()
        self.shape = shape
        numel = math.prod(shape)
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, numel)
        self.gain = 1.0 / math.sqrt(hidden)
        with torch.no_grad():
            self.out.bias.normal_(0.0, std)
            self.out.weight.normal_(0.0, std)

    def forward(self, scales: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(scales)) * self.gain).view(self.shape)


class _Dynamic(nn.Module):
    """A layer whose active widths are set from a configuration before each forward."""

    def activate(self, space: SearchSpace, config: Config) -> None:
        raise NotImplementedError


def _scales(space: SearchSpace, config: Config, widths: tuple[Width, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([space.scale(w, config) for w in widths], dtype=like.dtype, device=like.device)


class GeneratedConv2d(_Dynamic):
    def __init__(self, spec: ConvLayer, space: SearchSpace, hidden: int) -> None:
        super().__init__()
        self.spec = spec
        full_out, full_in = space.base_channels(spec.out_ch), space.base_channels(spec.in_ch)
        shape = (full_out, 1 if spec.depthwise else full_in, spec.kernel, spec.kernel)
        fan_out = full_out * spec.kernel * spec.kernel // (full_out if spec.depthwise else 1)
        self.generator = _Generator(2, hidden, shape, math.sqrt(2.0 / fan_out))
        self.in_channels, self.out_channels = full_in, full_out
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.ones(2), persistent=False)

    def activate(self, space: SearchSpace, config: Config) -> None:
        self.in_channels = space.channels(self.spec.in_ch, config)
        self.out_channels = space.channels(self.spec.out_ch, config)
        self.scales = _scales(space, config, (self.spec.in_ch, self.spec.out_ch), self.scales)

    def weight(self) -> torch.Tensor:
        full = self.generator(self.scales)
        return full[: self.out_channels, : 1 if self.spec.depthwise else self.in_channels].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.in_channels if self.spec.depthwise else 1
        return F.conv2d(x, self.weight(), None, self.spec.stride, self.spec.kernel // 2, 1, groups)


class GeneratedLinear(_Dynamic):
    def __init__(self, spec: Classifier, space: SearchSpace, hidden: int) -> None:
        super().__init__()
        self.spec = spec
        full_in = space.base_channels(spec.in_ch)
        self.generator = _Generator(1, hidden, (spec.num_classes, full_in), 1.0 / math.sqrt(full_in))
        self.bias = nn.Parameter(torch.zeros(spec.num_classes))
        self.in_features = full_in
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.ones(1), persistent=False)

    def activate(self, space: SearchSpace, config: Config) -> None:
        self.in_features = space.channels(self.spec.in_ch, config)
        self.scales = _scales(space, config, (self.spec.in_ch,), self.scales)

    def weight(self) -> torch.Tensor:
        return self.generator(self.scales)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class ChoiceBatchNorm2d(_Dynamic):
    """One BatchNorm per width choice of the conv's output; the active one is used."""

    def __init__(self, spec: ConvLayer, space: SearchSpace, affine: bool) -> None:
        super().__init__()
        self.spec = spec
        width = spec.out_ch
        choices = (width,) if isinstance(width, int) else space.genes[space.gene_index[width]].choices
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=affine) for c in choices)
        self.active = len(choices) - 1

    def activate(self, space: SearchSpace, config: Config) -> None:
        width = self.spec.out_ch
        self.active = 0 if isinstance(width, int) else config[space.gene_index[width]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.active](x)


class _GeneratingFactory:
    def __init__(self, space: SearchSpace, cfg: PruningNetConfig) -> None:
        self.space, self.cfg = space, cfg

    def conv(self, spec: ConvLayer) -> nn.Module:
        return GeneratedConv2d(spec, self.space, self.cfg.hidden)

    def bn(self, spec: ConvLayer) -> nn.Module:
        return ChoiceBatchNorm2d(spec, self.space, self.cfg.bn_affine)

    def linear(self, spec: Classifier) -> nn.Module:
        return GeneratedLinear(spec, self.space, self.cfg.hidden)


class PruningNet(nn.Module):
    """`forward(x, config)` runs the network of `config` with generated weights."""

    def __init__(self, space: SearchSpace, cfg: PruningNetConfig | None = None) -> None:
        super().__init__()
        self.space = space
        self.cfg = cfg or PruningNetConfig()
        self.net = Network(space, _GeneratingFactory(space, self.cfg))
        self.config = self.set_config(space.largest)

    def set_config(self, config: Config) -> Config:
        self.config = self.space.validate(config)
        for module in self.net.modules():
            if isinstance(module, _Dynamic):
                module.activate(self.space, self.config)
        return self.config

    def forward(self, x: torch.Tensor, config: Config | None = None) -> torch.Tensor:
        if config is not None and tuple(config) != self.config:
            self.set_config(config)
        return self.net(x)

    @torch.no_grad()
    def extract(self, config: Config) -> Network:
        """The plain subnet of `config` holding the generated weights and that width's BN state."""
        self.set_config(config)
        device = next(self.parameters()).device
        with torch.device("meta"):  # skip the random init: every tensor is overwritten below
            subnet = build_subnet(self.space, self.config)
        subnet = subnet.to_empty(device=device)
        targets = dict(subnet.named_modules())  # both trees come from one builder: names match
        for name, source in self.net.named_modules():
            target = targets.get(name)
            if isinstance(source, (GeneratedConv2d, GeneratedLinear)):
                assert isinstance(target, (nn.Conv2d, nn.Linear)), name
                target.weight.copy_(source.weight())
            if isinstance(source, GeneratedLinear):
                assert isinstance(target, nn.Linear) and target.bias is not None
                target.bias.copy_(source.bias)
            if isinstance(source, ChoiceBatchNorm2d):
                norm = source.norms[source.active]
                assert isinstance(norm, nn.BatchNorm2d) and isinstance(target, nn.BatchNorm2d), name
                _copy_bn(norm, target)
        return subnet


@torch.no_grad()
def warm_start(net: PruningNet, ordered: nn.Module) -> None:
    """Start `net` from `ordered`, the space's full network with its channels in importance order
    (`metaprune.importance.order_channels`)."""
    if not net.cfg.bn_affine:
        raise ValueError("a warm-started PruningNet needs affine per-choice BatchNorms (bn_affine=True)")
    from metaprune.importance import check_full_weights

    check_full_weights(net.space, ordered.state_dict())
    sources = dict(ordered.named_modules())
    for name, module in net.net.named_modules():
        source = sources.get(name)
        if isinstance(module, (GeneratedConv2d, GeneratedLinear)):
            assert isinstance(source, (nn.Conv2d, nn.Linear)), name
            if tuple(source.weight.shape) != module.generator.shape:
                raise ValueError(f"{name}.weight has shape {tuple(source.weight.shape)}, expected {module.generator.shape}")
            module.generator.out.bias.copy_(source.weight.flatten())
            module.generator.out.weight.zero_()  # generated = trained for every width until it learns otherwise
        if isinstance(module, GeneratedLinear):
            assert isinstance(source, nn.Linear) and source.bias is not None, name
            module.bias.copy_(source.bias)
        if isinstance(module, ChoiceBatchNorm2d):
            assert isinstance(source, nn.BatchNorm2d), name
            for norm in module.norms:
                assert isinstance(norm, nn.BatchNorm2d)
                _copy_bn(source, norm)


def _copy_bn(source: nn.BatchNorm2d, target: nn.BatchNorm2d) -> None:
    """Copy the first `target.num_features` channels of `source` (all of them when sizes agree)."""
    width = target.num_features
    assert width <= source.num_features
    for buffer in ("running_mean", "running_var"):
        getattr(target, buffer).copy_(getattr(source, buffer)[:width])
    assert target.num_batches_tracked is not None and source.num_batches_tracked is not None
    target.num_batches_tracked.copy_(source.num_batches_tracked)
    if source.affine:
        target.weight.copy_(source.weight[:width])
        target.bias.copy_(source.bias[:width])
    else:  # the subnet keeps affine BN for fine-tuning; identity scale/shift gives the same output
        target.weight.fill_(1.0)
        target.bias.zero_()
