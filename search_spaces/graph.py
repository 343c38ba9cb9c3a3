"""A search space from any traced module: `from_module(model, example_input)` -> `GraphSpace`.

The module is traced with torch.fx (symbolic trace, then shape propagation on the example input;
torch.export would also do, but fx keeps the user's module tree and names, which the plain subnet,
the weight files and every message use). Then every channel of every tensor is one element of a
union-find, and each op ties the channels it must keep together:

  - an add or mul of equal channel counts ties them one to one (a residual add, a squeeze-excite
    gate); a broadcast over channels (a gate of one channel) ties nothing;
  - a depthwise conv ties input channel c to its output channels; a grouped conv ties the same
    position of every group, so that every group keeps as many channels;
  - BatchNorm, activations, pools, dropout, a global mean and a flatten pass channels through (a
    flatten of H x W maps gives each channel H * W features);
  - a concat lists its inputs' channels side by side; a split or chunk, a channel shuffle
    (`view -> transpose -> view` or `channel_shuffle`) and a channel slice pick channels by index:
    each becomes a `KeptGather` in the graph, which under a configuration picks the kept ones.

Each class of the union-find is one channel (or one per group). Classes written by the same convs
and linears form one gene; its choices are scales of its size. A class is frozen (always kept)
when it holds the model's input or outputs, or when an op the analysis does not know touches it:
then a warning names the op and its module path.

A configuration keeps, of each gene, the classes ranked first (`GraphSpace.order`, the identity
until an importance ranking sets it), and every tensor keeps the positions whose class is kept. So
the plain subnet of a configuration is the user's module with every conv, BN and linear sliced to
those positions: the full-width subnet is the user's network itself.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from search_spaces._space import Config, Gene, GeneSpace


class TraceError(ValueError):
    """The module cannot be traced or has nothing to prune; the message is one line."""


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


WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)  # sliced by the plain subnet


class KeptGather(nn.Module):
    """Output channel j is input channel `index[j]`: a split, a shuffle or a slice, on kept channels.
    The index is not state (the configuration gives it), so the state dict is the user's."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.index: torch.Tensor
        self.register_buffer("index", index.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


# -- the space -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """A tensor's classes by gene: `frozen` always-kept positions, and per gene the ranks its positions
    hold (kept when rank < the gene's choice). Counting kept channels is a search per gene."""

    frozen: int
    genes: tuple[tuple[int, np.ndarray], ...]  # (gene index, sorted ranks, one per position)

    def count(self, widths: np.ndarray) -> int:
        return self.frozen + sum(int(np.searchsorted(ranks, widths[g])) for g, ranks in self.genes)


@dataclass(frozen=True, eq=False)
class GraphSpace(GeneSpace):
    """A network as a traced graph: its full-width module (the user's weights), genes, and for every
    tensor the class of each channel. Build, count and generate from these alone."""

    name: str
    module: fx.GraphModule  # full width; splits and shuffles already `KeptGather`s
    example_shape: tuple[int, ...]
    genes: tuple[Gene, ...]
    classes: dict[str, np.ndarray]  # node name -> class per channel position
    gene_of: np.ndarray  # class -> its gene (-1: frozen)
    order: tuple[np.ndarray, ...]  # per gene, its classes in the order they are kept
    frozen: dict[str, str] = field(default_factory=dict)  # "op at path" -> why, for every frozen group
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # node name -> full-width shape
    weighted: tuple[str, ...] = ()  # the tensors a conv, BN or linear reads or writes: never empty
    recipe: dict[str, Any] = field(default_factory=dict)  # how to rebuild it elsewhere (`search_spaces.user`)

    @property
    def in_channels(self) -> int:
        return self.example_shape[1]

    @property
    def resolution(self) -> int:
        return self.example_shape[-1]

    def with_recipe(self, recipe: dict[str, Any]) -> GraphSpace:
        return replace(self, recipe=recipe)

    def digest(self) -> str:
        """A digest of the traced code, the input shape and the genes (not the weights, not the order)."""
        text = repr((self.module.code, self.example_shape[1:], [(g.name, g.base, g.choices) for g in self.genes]))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- which channels a configuration keeps ---------------------------------------------------
    def widths(self, config: Config) -> np.ndarray:
        """Classes kept per gene."""
        return np.array([g.choices[c] for g, c in zip(self.genes, self.validate(config))], dtype=np.int64)

    def kept_classes(self, config: Config) -> np.ndarray:
        """A mask over classes: frozen ones and each gene's first `choice` in `order`, plus, where a
        conv, BN or linear would get no channel at all (a split half whose genes all landed in the
        other half), the first-ranked class of that tensor."""
        keep = self.gene_of < 0
        for gene, width in zip(self.order, self.widths(config)):
            keep[gene[:width]] = True
        for name in self.weighted:
            classes = self.classes[name]
            if len(classes) and not keep[classes].any():
                keep[classes[np.argmin(self._rank[classes])]] = True
        return keep

    @property
    def _rank(self) -> np.ndarray:
        """Each class's position in its gene's order (frozen classes: -1)."""
        rank = self.__dict__.get("_rank_cache")
        if rank is None:
            rank = np.full(len(self.gene_of), -1, dtype=np.int64)
            for gene in self.order:
                rank[gene] = np.arange(len(gene))
            self.__dict__["_rank_cache"] = rank
        return rank

    def kept(self, config: Config) -> dict[str, torch.Tensor]:
        """Node name -> the positions its tensor keeps (ascending)."""
        keep = self.kept_classes(config)
        return {name: torch.from_numpy(np.flatnonzero(keep[c])) for name, c in self.classes.items()}

    def with_order(self, order: tuple[np.ndarray, ...]) -> GraphSpace:
        """The space keeping each gene's classes in `order` (an importance ranking, most important first)."""
        for gene, (old, new) in enumerate(zip(self.order, order)):
            if sorted(old.tolist()) != sorted(np.asarray(new).tolist()):
                raise ValueError(f"order of gene {self.genes[gene].name!r} is not a permutation of its classes")
        return replace(self, order=tuple(np.asarray(o, dtype=np.int64) for o in order))

    @property
    def _parts(self) -> dict[str, Parts]:
        cached = self.__dict__.get("_parts_cache")
        if cached is None:
            rank = self._rank
            cached = {}
            for name, c in self.classes.items():
                g = self.gene_of[c]
                genes = tuple((int(i), np.sort(rank[c[g == i]])) for i in np.unique(g[g >= 0]))
                cached[name] = Parts(int((g < 0).sum()), genes)
            self.__dict__["_parts_cache"] = cached
        return cached

    def channel_counts(self, config: Config) -> dict[str, int]:
        """Node name -> its tensor's kept channels."""
        widths = self.widths(config)
        counts = {name: parts.count(widths) for name, parts in self._parts.items()}
        if any(counts[name] == 0 for name in self.weighted):  # rare: the forced classes change counts
            keep = self.kept_classes(config)
            counts = {name: int(keep[c].sum()) for name, c in self.classes.items()}
        return counts

    def nodes(self) -> Iterator[fx.Node]:
        return iter(self.module.graph.nodes)


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


def from_module(
    model: nn.Module,
    example_input: torch.Tensor,
    name: str | None = None,
    scales: tuple[float, ...] | None = None,
) -> GraphSpace:
    """The search space of `model`: one gene per free channel group, its choices `scales` of its size
    (the paper's 0.10 ... 1.00 by default). `model` keeps its weights: they are the full width."""
    graph = _trace(model, example_input)
    analysis = _Analysis(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fx's own warnings about untraced attributes
        modules = analysis.modules
    for node in graph.graph.nodes:
        _visit(node, modules, analysis)
    _warn_unknown(analysis.unknown)
    return _space(name or type(model).__name__, graph, analysis, tuple(example_input.shape), scales)


def _warn_unknown(unknown: dict[str, str]) -> None:
    """One warning per op the analysis does not know, naming up to three places it is used."""
    by_op: dict[str, list[str]] = {}
    for where, op in unknown.items():
        by_op.setdefault(op, []).append(where.split(" at ", 1)[1])
    for op, places in by_op.items():
        more = f" and {len(places) - 3} more" if len(places) > 3 else ""
        warnings.warn(
            f"channels through {op} at {', '.join(places[:3])}{more} are kept whole: the channel analysis does not know that op",
            stacklevel=3,
        )


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds; the user needs the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {first}") from None
    was_training = graph.training
    graph.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(example_input)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"{type(model).__name__} fails on an input of shape {tuple(example_input.shape)}: {first}") from None
    graph.train(was_training)
    return graph


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


# -- from the analysis to the space ----------------------------------------------------------------
def _space(
    name: str, graph: fx.GraphModule, a: _Analysis, example_shape: tuple[int, ...], scales: tuple[float, ...] | None
) -> GraphSpace:
    roots = a.channels.roots()
    frozen_roots = {int(roots[x]): why for x, why in a.channels.frozen.items()}
    producer_sets: dict[int, list[str]] = {}  # class -> the nodes writing it, in graph order
    for node, out in a.producers.items():
        for root in np.unique(roots[out]).tolist():
            producer_sets.setdefault(root, []).append(node.name)
    genes: dict[tuple[str, ...], list[int]] = {}  # producers -> their classes, ordered by position
    for out in a.producers.values():
        for root in dict.fromkeys(roots[out].tolist()):
            if root not in frozen_roots and root in producer_sets:
                genes.setdefault(tuple(producer_sets[root]), [])
                if root not in genes[tuple(producer_sets[root])]:
                    genes[tuple(producer_sets[root])].append(root)
    classes_of = {int(r): i for i, r in enumerate(np.unique(roots))}
    gene_of = np.full(len(classes_of), -1, dtype=np.int64)
    gene_list: list[Gene] = []
    order: list[np.ndarray] = []
    names: set[str] = set()
    for producers, members in genes.items():
        if len(members) < 2:
            continue  # a single channel has nothing to choose
        target = str(_node(graph, producers[0]).target)
        gene_name = target if target not in names else f"{target}#{len(gene_list)}"
        names.add(gene_name)
        index = len(gene_list)
        gene_list.append(Gene.from_scales(gene_name, len(members), scales))
        ids = np.array([classes_of[m] for m in _spread(members, roots, a.splits)], dtype=np.int64)
        gene_of[ids] = index
        order.append(ids)
    if not gene_list:
        raise TraceError(f"{name} has no channel group that can be pruned")
    _rewrite_gathers(graph, a)
    classes = {node.name: np.array([classes_of[int(r)] for r in roots[ids]], dtype=np.int64) for node, ids in _tensor_ids(a)}
    shapes = {n.name: s for n in graph.graph.nodes if (s := _shape(n)) is not None}
    reasons = {why: why for why in frozen_roots.values()}
    weighted = tuple(
        dict.fromkeys(
            name
            for n in graph.graph.nodes
            if n.op == "call_module" and isinstance(graph.get_submodule(str(n.target)), WEIGHTED)
            for name in (source_of(n), n.name)
        )
    )
    return GraphSpace(name, graph, example_shape, tuple(gene_list), classes, gene_of, tuple(order), reasons, shapes, weighted)


def _spread(members: list[int], roots: np.ndarray, splits: list[tuple[np.ndarray, tuple[np.ndarray, ...]]]) -> list[int]:
    """The gene's classes in keeping order: by position, but where a split (ShuffleNet's halves)
    divides them, taking from each part in turn, so that a narrow choice keeps some of every part
    rather than filling the first and leaving a conv with no input."""
    for ids, parts in splits:
        where = {root: (rank, p) for p, part in enumerate(parts) for rank, root in enumerate(_in_gene(roots[ids[part]], members))}
        if len({p for _, p in where.values()}) > 1:
            return sorted(members, key=lambda m: where.get(m, (len(members), 0)))
    return members


def _in_gene(roots: np.ndarray, members: list[int]) -> list[int]:
    chosen = set(members)
    return list(dict.fromkeys(r for r in roots.tolist() if r in chosen))


def _node(graph: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in graph.graph.nodes if n.name == name)


def _tensor_ids(a: _Analysis) -> Iterator[tuple[fx.Node, np.ndarray]]:
    for node, ids in a.ids.items():
        if isinstance(ids, np.ndarray):
            yield node, ids


def _rewrite_gathers(graph: fx.GraphModule, a: _Analysis) -> None:
    """Replace each split output, shuffle and slice by a `KeptGather` of its source (the ops it
    replaces become dead code), so that pruning only has to set each gather's index."""
    replaced: dict[fx.Node, fx.Node] = {}
    for node, (source, index) in a.gathers.items():
        module_name = f"kept_gather_{node.name}"
        graph.add_submodule(module_name, KeptGather(torch.from_numpy(index)))
        with graph.graph.inserting_after(node):
            gather = graph.graph.call_module(module_name, (replaced.get(source, source),))
        replaced[node] = gather
        gather.meta = dict(node.meta)
        node.replace_all_uses_with(gather)
        a.ids[gather] = a.ids.pop(node)
        graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    alive = set(graph.graph.nodes)
    for node in [n for n in a.ids if n not in alive]:
        a.ids.pop(node)


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
        if term.module in seen:
            params -= _params_of(term, channels)
        seen.add(term.module)
        if term.kind == "constant":
            flops, params = flops + term.constant[0], params + term.constant[1]
            continue
        cin, cout = channels(term.source), channels(term.node)
        if term.kind == "conv":
            per_group = 1 if term.depthwise else cin // term.groups
            flops += cout * term.per_out * per_group * term.kernel
            params += cout * per_group * term.kernel + (cout if term.bias else 0)
        elif term.kind == "linear":
            flops += cin * cout * term.per_out
            params += cin * cout + (cout if term.bias else 0)
        elif term.kind == "bn":
            flops += 2 * cin * term.per_in * (2 if term.affine else 1)
            params += 2 * cin if term.affine else 0
        elif term.kind == "adaptive_avg":
            flops += int((term.per_in / term.per_out + 1) * cout * term.per_out)
        elif term.kind == "avg":
            flops += cout * term.per_out
    return flops, params


def _params_of(term: _Term, channels: Callable[[str], int]) -> int:
    """The params `count_graph` adds for `term` (taken back for a module's second call)."""
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
