"""`from_module`: trace, analyse (`_graph_ops`), and turn the channel classes into genes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from search_spaces._graph_build import source_of
from search_spaces._graph_ops import _Analysis, _shape, _visit
from search_spaces._graph_space import WEIGHTED, GraphSpace, KeptGather, TraceError
from search_spaces._space import Gene


def from_module(
    model: nn.Module,
    example_input: torch.Tensor,
    name: str | None = None,
    scales: tuple[float, ...] | None = None,
    genes: dict[str, str] | None = None,
    only_named: bool = False,
) -> GraphSpace:
    """The search space of `model`: one gene per free channel group, its choices `scales` of its size
    (the paper's 0.10 ... 1.00 by default). `model` keeps its weights: they are the full width.
    A gene is named after the first module writing it; `genes` (module path -> name) names the
    genes those modules write and puts them first, in that order (`GraphSpace.with_gene_names`)."""
    graph = _trace(model, example_input)
    analysis = _Analysis(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fx's own warnings about untraced attributes
        modules = analysis.modules
    for node in graph.graph.nodes:
        _visit(node, modules, analysis)
    _warn_unknown(analysis.unknown)
    space = _space(name or type(model).__name__, graph, analysis, tuple(example_input.shape), scales)
    return space.with_gene_names(genes, only_named) if genes else space


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
