"""The plain subnet of a configuration of a `GraphSpace` (the user's module sliced) and its FLOPs
and params, exactly as thop counts them."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn

from search_spaces._graph_ops import _tensors
from search_spaces._graph_space import GraphSpace, KeptGather
from search_spaces._space import Config


# -- the plain subnet ------------------------------------------------------------------------------
def source_of(node: fx.Node) -> str:
    """The node whose channels a module call reads (its first tensor argument)."""
    return _tensors(node.args)[0].name


def build_graph_subnet(space: GraphSpace, config: Config, weights: fx.GraphModule | None = None) -> fx.GraphModule:
    """The plain module of `config`: the user's module with every conv, BN, linear and gather sliced
    to the kept channels (standard layers only; the full configuration is the user's network).
    `weights`: another full network of this space (trained, importance-ordered) to slice instead."""
    keep = space.kept(config)
    module: fx.GraphModule = copy.deepcopy(space.module if weights is None else weights)
    for node in module.graph.nodes:
        if node.op == "call_module":
            old = module.get_submodule(str(node.target))
            new = slice_module(old, keep[source_of(node)], keep[node.name])
            if new is not old:
                _set_submodule(module, str(node.target), new)
    return module


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@torch.no_grad()
def slice_module(module: nn.Module, kept_in: torch.Tensor, kept_out: torch.Tensor) -> nn.Module:
    """`module` restricted to input positions `kept_in` and output positions `kept_out` (itself when
    it keeps everything)."""
    if _keeps_all(module, kept_in, kept_out):
        return module
    if isinstance(module, nn.Conv2d):
        groups = len(kept_in) if _depthwise(module) else module.groups
        conv = nn.Conv2d(
            len(kept_in), len(kept_out), module.kernel_size, module.stride, module.padding,  # type: ignore[arg-type]
            module.dilation, groups, module.bias is not None, module.padding_mode,  # type: ignore[arg-type]
        )  # fmt: skip
        conv.weight.copy_(module.weight[kept_out][:, conv_inputs(module.in_channels, module.groups, kept_in)])
        if module.bias is not None and conv.bias is not None:
            conv.bias.copy_(module.bias[kept_out])
        return conv.to(module.weight.device, module.weight.dtype)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        new: nn.Module = type(module)(len(kept_in), module.eps, module.momentum, module.affine, module.track_running_stats)
        copy_bn(module, new, kept_in)
        return new.to(next(itertools.chain(module.buffers(), module.parameters())).device)
    if isinstance(module, nn.Linear):
        linear = nn.Linear(len(kept_in), len(kept_out), module.bias is not None)
        linear.weight.copy_(module.weight[kept_out][:, kept_in])
        if module.bias is not None:
            linear.bias.copy_(module.bias[kept_out])
        return linear.to(module.weight.device, module.weight.dtype)
    assert isinstance(module, KeptGather), type(module)
    return KeptGather(gather_index(module.index, kept_in, kept_out))


def _keeps_all(module: nn.Module, kept_in: torch.Tensor, kept_out: torch.Tensor) -> bool:
    if isinstance(module, nn.Conv2d):
        return len(kept_in) == module.in_channels and len(kept_out) == module.out_channels
    if isinstance(module, nn.Linear):
        return len(kept_in) == module.in_features and len(kept_out) == module.out_features
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return len(kept_in) == module.num_features
    if isinstance(module, KeptGather):
        return len(kept_in) == len(kept_out) == len(module.index)
    return True


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.in_channels == conv.groups


def conv_inputs(in_channels: int, groups: int, kept_in: torch.Tensor) -> torch.Tensor:
    """The columns of a conv's weight (its inputs per group) that `kept_in` keeps."""
    if groups > 1 and in_channels == groups:  # depthwise: one input per group
        return torch.zeros(1, dtype=torch.long, device=kept_in.device)
    return kept_in[kept_in < in_channels // groups]  # the analysis keeps the same positions in every group


def gather_index(index: torch.Tensor, kept_in: torch.Tensor, kept_out: torch.Tensor) -> torch.Tensor:
    """A full-width gather's index on kept channels: where each kept output's source lies among the
    kept inputs (the analysis ties each output to its source, so the source is kept)."""
    return torch.searchsorted(kept_in, index.cpu()[kept_out]).to(index.device)


@torch.no_grad()
def copy_bn(source: nn.Module, target: nn.Module, kept: torch.Tensor) -> None:
    """Channels `kept` of `source`'s statistics (and scale and shift) into `target`."""
    assert isinstance(source, nn.modules.batchnorm._BatchNorm) and isinstance(target, nn.modules.batchnorm._BatchNorm)
    if source.running_mean is not None and target.running_mean is not None:
        target.running_mean.copy_(source.running_mean[kept])
        target.running_var.copy_(source.running_var[kept])  # type: ignore[index, union-attr]
        target.num_batches_tracked.copy_(source.num_batches_tracked)  # type: ignore[arg-type, union-attr]
    if source.affine and target.affine:
        target.weight.copy_(source.weight[kept])
        target.bias.copy_(source.bias[kept])
    elif target.affine:  # a plain subnet keeps affine BN for fine-tuning; identity scale/shift changes nothing
        target.weight.fill_(1.0)
        target.bias.zero_()


# -- FLOPs and params, as thop counts them ---------------------------------------------------------
@dataclass(frozen=True)
class _Term:
    """One module call's cost as a function of its kept input and output channels."""

    kind: str
    source: str
    node: str
    module: str = ""  # its path: a module called twice has its params counted once, as thop does
    per_out: int = 1  # spatial size of the output
    per_in: int = 1  # spatial size of the input
    kernel: int = 1
    groups: int = 1
    depthwise: bool = False
    bias: bool = False
    affine: bool = False
    constant: tuple[int, int] = (0, 0)


def count_graph(space: GraphSpace, config: Config) -> tuple[int, int]:
    """FLOPs and params of the plain subnet of `config` at batch 1, exactly as thop counts them:
    only leaf modules thop has a rule for count (functional adds and concats cost nothing)."""
    widths = space.widths(config)
    parts = space._parts
    counted: dict[str, int] = {}

    def channels(name: str) -> int:
        if name not in counted:
            counted[name] = parts[name].count(widths)
        return counted[name]

    if any(channels(name) == 0 for name in space.weighted):
        counted = space.channel_counts(config)  # a forced class (see `kept_classes`)
    flops = params = 0
    seen: set[str] = set()
    for term in _terms(space):
        if term.module not in seen:  # a module called twice has its params counted once, as thop does
            params += _params_of(term, channels)
        seen.add(term.module)
        flops += _flops_of(term, channels)
    return flops, params


def _flops_of(term: _Term, channels: Callable[[str], int]) -> int:
    if term.kind == "constant":
        return term.constant[0]
    cin, cout = channels(term.source), channels(term.node)
    if term.kind == "conv":
        return cout * term.per_out * (1 if term.depthwise else cin // term.groups) * term.kernel
    if term.kind == "linear":
        return cin * cout * term.per_out
    if term.kind == "bn":
        return 2 * cin * term.per_in * (2 if term.affine else 1)
    if term.kind == "adaptive_avg":
        return int((term.per_in / term.per_out + 1) * cout * term.per_out)
    return cout * term.per_out if term.kind == "avg" else 0


def _params_of(term: _Term, channels: Callable[[str], int]) -> int:
    """The params of `term`'s module, as thop counts them."""
    if term.kind == "constant":
        return term.constant[1]
    cin, cout = channels(term.source), channels(term.node)
    if term.kind == "conv":
        per_group = 1 if term.depthwise else cin // term.groups
        return cout * per_group * term.kernel + (cout if term.bias else 0)
    if term.kind == "linear":
        return cin * cout + (cout if term.bias else 0)
    if term.kind == "bn":
        return 2 * cin if term.affine else 0
    return 0


def _terms(space: GraphSpace) -> list[_Term]:
    cached = space.__dict__.get("_terms_cache")
    if cached is None:
        cached = [t for node in space.nodes() if node.op == "call_module" and (t := _term(space, node)) is not None]
        space.__dict__["_terms_cache"] = cached
    return cached


def _term(space: GraphSpace, node: fx.Node) -> _Term | None:
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import zero_ops

    module, path = space.module.get_submodule(str(node.target)), str(node.target)
    source = source_of(node)
    per_out = math.prod(space.shapes[node.name][2:])
    per_in = math.prod(space.shapes[source][2:])
    if isinstance(module, nn.Conv2d):
        kernel = math.prod(module.kernel_size)
        bias = module.bias is not None
        return _Term("conv", source, node.name, path, per_out, per_in, kernel, module.groups, _depthwise(module), bias)
    if isinstance(module, nn.Linear):
        return _Term("linear", source, node.name, path, per_out, per_in, bias=module.bias is not None)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _Term("bn", source, node.name, path, per_out, per_in, affine=module.affine)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _Term("adaptive_avg", source, node.name, path, per_out, per_in)
    if isinstance(module, nn.AvgPool2d):
        return _Term("avg", source, node.name, path, per_out, per_in)
    rule = register_hooks.get(type(module))
    if rule is None or rule is zero_ops:
        return None
    return _Term("constant", source, node.name, path, constant=_thop_constant(module, space.shapes[source]))  # frozen channels


def _thop_constant(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """thop's count of a module whose channels are frozen (its cost does not depend on the config)."""
    from thop import profile

    flops, params = profile(copy.deepcopy(module).eval(), inputs=(torch.zeros((1, *shape[1:])),), verbose=False)
    return int(flops), int(params)
