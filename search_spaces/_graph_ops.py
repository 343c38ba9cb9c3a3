"""The channel analysis of `from_module`, op by op: union-find over every channel of every tensor,
and what each op it knows ties, passes through, gathers or freezes."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from search_spaces._graph_space import WEIGHTED

# -- ops the analysis knows ------------------------------------------------------------------------
PASS_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid, nn.GELU,
    nn.LeakyReLU, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)  # fmt: skip
PASS_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.hardswish, F.silu, F.sigmoid, F.hardsigmoid, F.gelu,
    F.leaky_relu, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, operator.neg,
}  # fmt: skip
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "relu_", "sigmoid_", "hardswish", "neg"}
ELEMENTWISE = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub,
               operator.iadd, operator.imul, "add", "mul", "sub", "add_", "mul_"}  # fmt: skip
FLATTENS = {torch.flatten, "flatten"}
RESHAPES = {"view", "reshape", torch.reshape}
REDUCTIONS = {torch.mean, "mean", torch.amax, "amax"}
SPLITS = {torch.chunk, "chunk", torch.split, "split"}
TRANSPOSES = {torch.transpose, "transpose"}
METADATA = {"size", "dim", getattr, "ndimension"}
SHUFFLES = {torch.channel_shuffle, F.channel_shuffle, torch.native_channel_shuffle}


# -- analysis --------------------------------------------------------------------------------------
class _Channels:
    """Union-find over every channel of every tensor; each element may carry why it is frozen."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}

    def new(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            x, y = self.find(x), self.find(y)
            if x != y:
                self.parent[max(x, y)] = min(x, y)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for x in ids.tolist():
            self.frozen.setdefault(x, reason)

    def roots(self) -> np.ndarray:
        return np.array([self.find(x) for x in range(len(self.parent))], dtype=np.int64)


@dataclass
class _Analysis:
    graph: fx.GraphModule
    channels: _Channels = field(default_factory=_Channels)
    ids: dict[fx.Node, Any] = field(default_factory=dict)  # node -> channel ids (or a tuple of them, or a 5-d view)
    producers: dict[fx.Node, np.ndarray] = field(default_factory=dict)  # conv / linear node -> its output ids
    gathers: dict[fx.Node, tuple[fx.Node, np.ndarray]] = field(default_factory=dict)  # node -> (source, index)
    unknown: dict[str, str] = field(default_factory=dict)  # "op at path" -> op
    splits: list[tuple[np.ndarray, tuple[np.ndarray, ...]]] = field(default_factory=list)  # (source ids, parts)
    calls: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # weighted module -> its first call's ids

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.graph.named_modules())


@dataclass(frozen=True)
class _View5:
    """A (N, a, b, H, W) view of a (N, C, H, W) tensor, the middle of a channel shuffle."""

    source: fx.Node
    index: np.ndarray  # (a, b) positions of the source


def _shape(node: Any) -> tuple[int, ...] | None:
    """The shape ShapeProp recorded for `node`'s output (None: not a tensor)."""
    if not isinstance(node, fx.Node):
        return None
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _path(node: fx.Node) -> str:
    """Where the op is in the user's module: its module path (fx records the module stack)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return f"{next(reversed(stack))} ({node.name})" if stack else f"the model's forward ({node.name})"


def _arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(keyword, default)


def _tensors(args: Any) -> list[fx.Node]:
    if isinstance(args, fx.Node):
        return [args]
    if isinstance(args, (tuple, list)):
        return [n for a in args for n in _tensors(a)]
    if isinstance(args, dict):
        return [n for a in args.values() for n in _tensors(a)]
    return []


def _visit(node: fx.Node, modules: dict[str, nn.Module], a: _Analysis) -> None:
    """Record the channel ids of `node`'s output, tying or freezing channels as its op requires."""
    shape = _shape(node)
    if node.op == "placeholder":
        a.ids[node] = a.channels.new(shape[1] if shape and len(shape) >= 2 else 0)
        a.channels.freeze(a.ids[node], "the model's input")
        return
    if node.op == "output":
        for source in _tensors(node.args):
            if isinstance(a.ids.get(source), np.ndarray):
                a.channels.freeze(a.ids[source], "the model's output")
        return
    if node.op == "get_attr":
        a.ids[node] = _fresh_frozen(a, shape, f"the tensor {node.target} of the module")
        return
    if shape is None and (node.target in METADATA or not any(n in a.ids for n in _tensors((node.args, node.kwargs)))):
        return  # a shape query or arithmetic on one: the code reading it follows the pruned sizes
    module = modules.get(str(node.target)) if node.op == "call_module" else None
    if module is None and node.op != "call_module" and not any(n in a.ids for n in _tensors((node.args, node.kwargs))):
        a.ids[node] = _fresh_frozen(a, shape, f"a tensor made in forward at {_path(node)}")
        return
    handled = _known(node, module, a)
    if handled is None:
        _unknown(node, a)
        return
    a.ids[node] = handled
    if isinstance(module, WEIGHTED) and isinstance(handled, np.ndarray):  # a module called twice slices once
        ids_in = a.ids[_tensors(node.args)[0]]
        first = a.calls.setdefault(str(node.target), (ids_in, handled))
        a.channels.join(first[0], ids_in)
        a.channels.join(first[1], handled)


def _fresh_frozen(a: _Analysis, shape: tuple[int, ...] | None, reason: str) -> np.ndarray:
    ids = a.channels.new(shape[1] if shape and len(shape) >= 2 else 0)
    a.channels.freeze(ids, reason)
    return ids


def _unknown(node: fx.Node, a: _Analysis, what: str = "") -> None:
    """Freeze every channel the op touches, and say which op and where."""
    op = what or _name(node.target)
    where = f"{op} at {_path(node)}"
    a.unknown[where] = op
    for source in _tensors((node.args, node.kwargs)):
        ids = a.ids.get(source)
        for part in ids if isinstance(ids, tuple) else (ids,):
            if isinstance(part, np.ndarray):
                a.channels.freeze(part, where)
            elif isinstance(part, _View5):
                a.channels.freeze(a.ids[part.source], where)
    a.ids[node] = _fresh_frozen(a, _shape(node), where)


def _known(node: fx.Node, module: nn.Module | None, a: _Analysis) -> Any:
    """The ids of `node`'s output, or None when the analysis does not know its op."""
    inputs = [n for n in _tensors((node.args, node.kwargs)) if n in a.ids]
    if not inputs:
        return None
    first = inputs[0]
    ids = a.ids[first]
    if isinstance(module, nn.Conv2d):
        return _conv(node, module, ids, a)
    if isinstance(module, nn.Linear):
        return _linear(node, ids, a) if len(_shape(first) or ()) == 2 else None
    if (
        isinstance(module, PASS_MODULES)
        or node.target in PASS_FUNCTIONS
        or (node.op == "call_method" and node.target in PASS_METHODS)
    ):
        return ids if isinstance(ids, np.ndarray) or (isinstance(ids, _View5) and node.target == "contiguous") else None
    if isinstance(module, nn.Flatten) or node.target in FLATTENS:
        return _flatten(node, first, ids)
    if node.target in ELEMENTWISE:
        return _elementwise(node, a)
    if node.target is torch.cat:
        return _cat(node, a)
    if node.target in REDUCTIONS:
        return ids if _spatial_reduction(node, first) and isinstance(ids, np.ndarray) else None
    if node.target in SPLITS:
        return _split(node, first, a)
    if node.target is operator.getitem:
        return _getitem(node, a)
    if node.target in RESHAPES:
        return _reshape(node, first, ids, a)
    if node.target in TRANSPOSES and isinstance(ids, _View5):
        dims = sorted(d % 5 for d in (_arg(node, 1, "dim0"), _arg(node, 2, "dim1")))
        return _View5(ids.source, ids.index.T) if dims == [1, 2] else None
    if node.target in SHUFFLES or isinstance(module, nn.ChannelShuffle):
        groups = module.groups if isinstance(module, nn.ChannelShuffle) else _arg(node, 1, "groups")
        channels = len(ids)
        index = np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)
        return _gather(node, first, index, a)
    return None


def _conv(node: fx.Node, conv: nn.Conv2d, ids: Any, a: _Analysis) -> np.ndarray | None:
    if not isinstance(ids, np.ndarray) or conv.padding_mode != "zeros":
        return None
    groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
    out = a.channels.new(cout)
    per_in, per_out = cin // groups, cout // groups
    if groups > 1 and per_in == 1:  # depthwise (with a multiplier): output c * m + t reads input c
        a.channels.join(np.repeat(ids, per_out), out)
        return out  # it writes no new channels: its input's gene goes on through it
    if groups > 1:  # every group keeps as many channels: position j of each group goes together
        grid_in, grid_out = ids.reshape(groups, per_in), out.reshape(groups, per_out)
        for g in range(1, groups):
            a.channels.join(grid_in[0], grid_in[g])
            a.channels.join(grid_out[0], grid_out[g])
    a.producers[node] = out
    return out


def _linear(node: fx.Node, ids: Any, a: _Analysis) -> np.ndarray | None:
    if not isinstance(ids, np.ndarray):
        return None
    out = a.channels.new(_shape(node)[1])  # type: ignore[index]
    a.producers[node] = out
    return out


def _flatten(node: fx.Node, first: fx.Node, ids: Any) -> np.ndarray | None:
    given, out = _shape(first), _shape(node)
    start = _arg(node, 1, "start_dim", 1) if node.op != "call_module" else 1
    if not isinstance(ids, np.ndarray) or given is None or out is None or start != 1 or len(out) != 2:
        return None
    return np.repeat(ids, math.prod(given[2:]))  # feature c * HW + i is channel c at pixel i


def _elementwise(node: fx.Node, a: _Analysis) -> np.ndarray | None:
    """An add or mul: equal channel counts are tied; a side of one channel (a spatial gate) or a
    scalar broadcasts over the channels and ties nothing."""
    out = _shape(node)
    tensors = [x for x in (*node.args[:2], *node.kwargs.values()) if isinstance(x, fx.Node)]
    if out is None or len(out) < 2 or not all(isinstance(a.ids.get(x), np.ndarray) for x in tensors):
        return None
    shapes = [_shape(x) or () for x in tensors]
    if any(len(shape) != len(out) for shape in shapes):  # another rank: a broadcast the analysis cannot follow
        return None
    full = [x for x, shape in zip(tensors, shapes) if shape[1] == out[1]]
    if any(shape[1] not in (1, out[1]) for shape in shapes):
        return None
    for other in full[1:]:
        a.channels.join(a.ids[full[0]], a.ids[other])
    return a.ids[full[0]]


def _cat(node: fx.Node, a: _Analysis) -> np.ndarray | None:
    sources = _arg(node, 0, "tensors")
    dim, ndim = _arg(node, 1, "dim", 0), len(_shape(node) or ())
    if not isinstance(dim, int) or dim % max(ndim, 1) != 1 or not all(isinstance(a.ids.get(s), np.ndarray) for s in sources):
        return None
    return np.concatenate([a.ids[s] for s in sources])


def _spatial_reduction(node: fx.Node, source: fx.Node) -> bool:
    given = _shape(source)
    dims = _arg(node, 1, "dim")
    dims = [dims] if isinstance(dims, int) else dims
    return (
        given is not None
        and len(given) >= 3
        and isinstance(dims, (list, tuple))
        and all(isinstance(d, int) and d % len(given) >= 2 for d in dims)
    )


def _split(node: fx.Node, first: fx.Node, a: _Analysis) -> tuple[np.ndarray, ...] | None:
    ids, given = a.ids[first], _shape(first)
    dim = _arg(node, 2, "dim", 0)
    if not isinstance(ids, np.ndarray) or given is None or not isinstance(dim, int) or dim % len(given) != 1:
        return None
    size = _arg(node, 1, "chunks" if _name(node.target) == "chunk" else "split_size_or_sections")
    positions = np.arange(len(ids))
    if _name(node.target) == "chunk" and isinstance(size, int):
        step = -(-len(ids) // size)
        parts = tuple(positions[i : i + step] for i in range(0, len(ids), step))
    elif _name(node.target) != "chunk" and isinstance(size, int):
        parts = tuple(positions[i : i + size] for i in range(0, len(ids), size))
    elif isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
        parts = tuple(np.split(positions, np.cumsum(size)[:-1]))
    else:
        return None
    a.splits.append((ids, parts))
    return parts


def _getitem(node: fx.Node, a: _Analysis) -> np.ndarray | None:
    source, key = node.args
    parts = a.ids.get(source)  # type: ignore[arg-type]
    if isinstance(parts, tuple) and isinstance(key, int):  # one output of a split: pick those positions
        assert isinstance(source, fx.Node)
        tensor = _tensors(source.args)[0]
        return _gather(node, tensor, parts[key], a)
    if isinstance(parts, np.ndarray) and isinstance(key, tuple) and len(key) >= 2 and key[0] == slice(None):
        if isinstance(key[1], slice) and all(k == slice(None) or k is Ellipsis for k in key[2:]):
            assert isinstance(source, fx.Node)
            return _gather(node, source, np.arange(len(parts))[key[1]], a)
    return None


def _reshape(node: fx.Node, first: fx.Node, ids: Any, a: _Analysis) -> Any:
    given, out = _shape(first), _shape(node)
    if given is None or out is None:
        return None
    literal = [x for x in node.args[1:] if isinstance(x, int) and x != -1]
    if isinstance(ids, np.ndarray) and len(given) == 4 and len(out) == 5 and out[3:] == given[2:]:
        return _View5(first, np.arange(given[1]).reshape(out[1], out[2]))  # the start of a channel shuffle
    if isinstance(ids, _View5) and len(given) == 5 and len(out) == 4 and out[2:] == given[3:]:
        return _gather(node, ids.source, ids.index.reshape(-1), a)  # its end: a permutation of the source
    if isinstance(ids, np.ndarray) and len(out) == 2 and out[0] == given[0] and given[1] not in literal:
        if len(given) == 4 and not any(x == out[1] for x in literal):
            return np.repeat(ids, math.prod(given[2:]))
        if len(given) == 2:
            return ids
    return None


def _gather(node: fx.Node, source: fx.Node, index: np.ndarray, a: _Analysis) -> np.ndarray | None:
    ids = a.ids.get(source)
    if not isinstance(ids, np.ndarray):
        return None
    a.gathers[node] = (source, np.asarray(index, dtype=np.int64))
    return ids[index]
