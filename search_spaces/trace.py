"""Which channels of a user's own module must be pruned together: the first step of `from_module`.

The module is traced with torch.fx (symbolic trace, then shape propagation on an example input).
Every tensor's channel dimension is a list of *parts*, one per concatenated source; each part is a
slot of union-find. Ops that need equal channels (an add, a mul, a depthwise conv's input and output,
BatchNorm and the elementwise ops around it) join their slots; a concat lists its inputs' parts side
by side. Each resulting class is one channel group, and each free group becomes one gene.

A group stays fixed (not a gene) when it holds the model's input or output channels, or when an op
the analysis does not know touches it. In the second case a warning names the op and its module path.

Not handled yet (these groups are frozen, with a warning): channel split/chunk, channel shuffle,
grouped convs that are not depthwise, and a flatten that is not over 1x1 maps.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

ELEMENTWISE_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid, nn.GELU, nn.LeakyReLU,
    nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.relu6,
    torch.nn.functional.hardswish, torch.nn.functional.silu, torch.nn.functional.sigmoid,
    torch.nn.functional.hardsigmoid, torch.nn.functional.gelu, torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}  # fmt: skip
JOINING_FUNCTIONS = {operator.add, operator.mul, torch.add, torch.mul}  # equal channels in, the same out
ELEMENTWISE_METHODS = {"relu", "sigmoid", "contiguous", "clone"}
RESHAPES = {torch.flatten, "flatten", "view", "reshape", "squeeze"}  # (N, C, 1, 1) -> (N, C) keeps the channels
REDUCTIONS = {torch.mean, "mean", torch.amax, "amax"}  # over the spatial dims only: a global pool


class TraceError(ValueError):
    """The module cannot be traced or has nothing to prune; the message is one line."""


@dataclass
class ChannelGroup:
    """Channels that must keep the same count: every member's channel dimension holds them."""

    channels: int
    producers: list[str] = field(default_factory=list)  # modules writing these channels (conv / linear outputs)
    consumers: list[str] = field(default_factory=list)  # modules reading them (conv / linear inputs)
    frozen: str | None = None  # why the group is not a gene (None: it is one)


class _Slots:
    """Union-find over channel slots, each with its channel count and the reason it is frozen."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.frozen: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}
        self.consumers: dict[int, list[str]] = {}

    def new(self, channels: int) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        return len(self.parent) - 1

    def find(self, slot: int) -> int:
        while self.parent[slot] != slot:
            self.parent[slot] = self.parent[self.parent[slot]]
            slot = self.parent[slot]
        return slot

    def join(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a

    def freeze(self, slot: int, reason: str) -> None:
        self.frozen.setdefault(slot, reason)

    def groups(self) -> list[ChannelGroup]:
        found: dict[int, ChannelGroup] = {}
        for slot in range(len(self.parent)):
            root = self.find(slot)
            group = found.setdefault(root, ChannelGroup(self.channels[root]))
            group.producers += self.producers.get(slot, [])
            group.consumers += self.consumers.get(slot, [])
            if slot in self.frozen and group.frozen is None:
                group.frozen = self.frozen[slot]
        return [g for g in found.values() if g.producers or g.consumers]


Parts = list[int]  # a tensor's channel dimension: slots side by side


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of `model` (free ones first, in the order their first producer runs)."""
    graph = _traced(model, example_input)
    slots, parts = _Slots(), dict[fx.Node, Parts]()
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            parts[node] = [slots.new(_channels(node))]
            slots.freeze(parts[node][0], "the model's input")
        elif node.op == "output":
            for source in _tensor_args(node.args[0], parts):
                for slot in parts[source]:
                    slots.freeze(slot, "the model's output")
        elif node.op in ("call_module", "call_function", "call_method"):
            parts[node] = _visit(node, modules, parts, slots)
    groups = slots.groups()
    if not any(g.frozen is None for g in groups):
        raise TraceError(f"{type(model).__name__} has no channel group that can be pruned")
    return sorted(groups, key=lambda g: g.frozen is not None)


def _traced(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds; the user needs the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {first}") from None
    with torch.no_grad():
        ShapeProp(graph).propagate(example_input)
    return graph


def _shape(node: fx.Node) -> torch.Size | None:
    """The shape ShapeProp recorded for `node`'s output (None: not a tensor)."""
    return getattr(node.meta.get("tensor_meta"), "shape", None)


def _channels(node: fx.Node) -> int:
    shape = _shape(node)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else 0


def _tensor_args(args: object, parts: dict[fx.Node, Parts]) -> list[fx.Node]:
    """The nodes with channels among `args` (nested in tuples, lists and dicts), in order."""
    if isinstance(args, fx.Node):
        return [args] if args in parts else []
    if isinstance(args, (tuple, list)):
        return [node for item in args for node in _tensor_args(item, parts)]
    if isinstance(args, dict):
        return [node for item in args.values() for node in _tensor_args(item, parts)]
    return []


def _visit(node: fx.Node, modules: dict[str, nn.Module], parts: dict[fx.Node, Parts], slots: _Slots) -> Parts:
    """The parts of `node`'s output, joining or freezing slots as its op requires."""
    inputs = _tensor_args(node.args, parts) + _tensor_args(node.kwargs, parts)
    module = modules.get(str(node.target)) if node.op == "call_module" else None
    if isinstance(module, nn.Conv2d):
        return _conv(node, module, inputs[0], parts, slots)
    if isinstance(module, nn.Linear):
        return _linear(node, parts[inputs[0]], slots)
    if (
        isinstance(module, ELEMENTWISE_MODULES)
        or node.target in ELEMENTWISE_FUNCTIONS
        or (node.op == "call_method" and node.target in ELEMENTWISE_METHODS)
    ):
        return parts[inputs[0]]
    if node.target in JOINING_FUNCTIONS and len(inputs) == 2 and _channels(inputs[0]) == _channels(inputs[1]):
        return _joined(parts[inputs[0]], parts[inputs[1]], node, slots)
    if node.target is torch.cat and _cat_dim(node) == 1:
        return [slot for source in node.args[0] for slot in parts[source]]  # type: ignore[union-attr, index]
    if inputs and _keeps_channels(node, inputs[0]):
        return parts[inputs[0]]
    return _unknown(node, inputs, parts, slots)


def _conv(node: fx.Node, conv: nn.Conv2d, source: fx.Node, parts: dict[fx.Node, Parts], slots: _Slots) -> Parts:
    name, inputs = str(node.target), parts[source]
    if conv.groups == 1:
        for slot in inputs:
            slots.consumers.setdefault(slot, []).append(name)
        out = slots.new(conv.out_channels)
        slots.producers[out] = [name]
        return [out]
    if conv.groups == conv.in_channels == conv.out_channels:  # depthwise: output channel c reads input channel c
        for slot in inputs:
            slots.consumers.setdefault(slot, []).append(name)
            slots.producers.setdefault(slot, []).append(name)
        return inputs
    return _unknown(node, [source], parts, slots, f"grouped conv (groups={conv.groups})")


def _linear(node: fx.Node, inputs: Parts, slots: _Slots) -> Parts:
    for slot in inputs:
        slots.consumers.setdefault(slot, []).append(str(node.target))
    out = slots.new(_channels(node))
    slots.producers[out] = [str(node.target)]
    return [out]


def _joined(a: Parts, b: Parts, node: fx.Node, slots: _Slots) -> Parts:
    if [slots.channels[s] for s in a] != [slots.channels[s] for s in b]:  # parts that do not line up
        for slot in a + b:
            slots.freeze(slot, f"{node.target} of tensors concatenated differently ({node.name})")
        return a
    for x, y in zip(a, b):
        slots.join(x, y)
    return a


def _unknown(node: fx.Node, inputs: list[fx.Node], parts: dict[fx.Node, Parts], slots: _Slots, what: str = "") -> Parts:
    """Freeze every channel the op touches, and say which op and where."""
    op = what or (node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target)))
    reason = f"{op} at {_path(node)}"
    warnings.warn(f"channels through {reason} are kept whole: the channel analysis does not know that op", stacklevel=3)
    for source in inputs:
        for slot in parts.get(source, []):
            slots.freeze(slot, reason)
    out = slots.new(_channels(node))
    slots.freeze(out, reason)
    return [out]


def _cat_dim(node: fx.Node) -> int:
    """The concatenated dimension, counted from the front (-99 when it is not a constant)."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ndim = len(_shape(node) or ())
    return (dim + ndim if dim < 0 else dim) if isinstance(dim, int) else -99


def _keeps_channels(node: fx.Node, source: fx.Node) -> bool:
    """A reshape of 1x1 maps to (N, C), or a mean / max over the spatial dims: channel c stays c."""
    out, given = _shape(node), _shape(source)
    if out is None or given is None or len(given) < 3 or tuple(out[:2]) != tuple(given[:2]) or _numel(out[2:]) != 1:
        return False
    if node.target in RESHAPES:
        return _numel(given[2:]) == 1
    if node.target in REDUCTIONS:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else dims
        return isinstance(dims, (list, tuple)) and all(isinstance(d, int) and d % len(given) >= 2 for d in dims)
    return False


def _numel(dims: object) -> int:
    return int(torch.Size(dims).numel())  # type: ignore[arg-type]


def _path(node: fx.Node) -> str:
    """Where the op is in the user's module: its module path (fx records the module stack)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return f"{next(reversed(stack))} ({node.name})" if stack else f"the model's forward ({node.name})"
