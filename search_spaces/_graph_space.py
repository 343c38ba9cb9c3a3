"""A traced module's search space: `GraphSpace` (genes, and the class of every channel of every
tensor), what a configuration keeps, and `KeptGather`, the index op splits and shuffles become."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from search_spaces._space import Config, Gene, GeneSpace


class TraceError(ValueError):
    """The module cannot be traced or has nothing to prune; the message is one line."""


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

    def with_gene_names(self, names: dict[str, str], only: bool = False) -> GraphSpace:
        """The space with the genes written by the modules `names` keys (module paths) renamed to its
        values and put first, in that order; the rest keep their names and follow in graph order, or
        with `only`, are frozen (kept whole). Paths given one name tie their genes: each keeps the
        same count (a bottleneck's two inner convs, as a description may have it). How a family
        described elsewhere keeps its gene names, fixed widths and configurations once traced."""
        merged: dict[str, list[int]] = {}  # new name -> the genes it ties, in the order given
        for path, new_name in names.items():
            gene = self._gene_written_by(path, new_name)
            other = next((n for n, genes in merged.items() if gene in genes and n != new_name), None)
            if other is not None:
                raise ValueError(f"gene {new_name!r}: {path!r} writes the gene already named {other!r}")
            if gene not in merged.setdefault(new_name, []):
                merged[new_name].append(gene)
        for new_name, tied in merged.items():
            if len({(self.genes[g].base, self.genes[g].choices) for g in tied}) > 1:
                widths = ", ".join(f"{self.genes[g].name} ({self.genes[g].base})" for g in tied)
                raise ValueError(f"gene {new_name!r} ties genes of different widths: {widths}")
        named = {g for tied in merged.values() for g in tied}
        rest = [g for g in range(len(self.genes)) if g not in named]
        groups = [(name, tied) for name, tied in merged.items()] + ([] if only else [(self.genes[g].name, [g]) for g in rest])
        new_index = np.full(len(self.genes) + 1, -1, dtype=np.int64)  # the last entry: frozen (-1) stays frozen
        for index, (_, tied) in enumerate(groups):
            new_index[tied] = index
        genes = tuple(replace(self.genes[tied[0]], name=name) for name, tied in groups)
        if len({g.name for g in genes}) != len(genes):
            raise ValueError(f"gene names are not unique after renaming: {[g.name for g in genes]}")
        frozen = dict(self.frozen)
        for g in rest if only else []:
            why = f"the width {self.genes[g].name} writes, fixed by the description"
            frozen[why] = why
        order = tuple(np.concatenate([self.order[g] for g in tied]) for _, tied in groups)
        return replace(self, genes=genes, gene_of=new_index[self.gene_of], order=order, frozen=frozen)

    def _gene_written_by(self, path: str, new_name: str) -> int:
        writers = [n for n in self.nodes() if n.op == "call_module" and n.target == path]
        if not writers:
            raise ValueError(f"gene {new_name!r}: the traced module has no layer {path!r}")
        genes = np.unique(self.gene_of[self.classes[writers[0].name]])
        genes = genes[genes >= 0]
        if len(genes) != 1:
            raise ValueError(f"gene {new_name!r}: {path!r} writes {len(genes)} genes, not one")
        return int(genes[0])

    def segments(self, gene: int) -> np.ndarray:
        """The gene's classes in keeping order, one row per tied group (one row unless tied)."""
        return self.order[gene].reshape(-1, self.genes[gene].base)

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
        for gene, width in enumerate(self.widths(config)):
            keep[self.segments(gene)[:, :width]] = True
        for name in self.weighted:
            classes = self.classes[name]
            if len(classes) and not keep[classes].any():
                keep[classes[np.argmin(self._rank[classes])]] = True
        return keep

    @property
    def _rank(self) -> np.ndarray:
        """Each class's position in its gene's order, in its tied group (frozen classes: -1)."""
        rank = self.__dict__.get("_rank_cache")
        if rank is None:
            rank = np.full(len(self.gene_of), -1, dtype=np.int64)
            for gene in range(len(self.genes)):
                segments = self.segments(gene)
                rank[segments] = np.arange(segments.shape[1])
            self.__dict__["_rank_cache"] = rank
        return rank

    def kept(self, config: Config) -> dict[str, torch.Tensor]:
        """Node name -> the positions its tensor keeps (ascending)."""
        keep = self.kept_classes(config)
        return {name: torch.from_numpy(np.flatnonzero(keep[c])) for name, c in self.classes.items()}

    def with_order(self, order: tuple[np.ndarray, ...]) -> GraphSpace:
        """The space keeping each gene's classes in `order` (an importance ranking, most important first;
        a tied gene's groups one after the other, as `segments` has them)."""
        for gene, new in enumerate(order):
            base = self.genes[gene].base
            old_rows, new_rows = self.segments(gene), np.asarray(new).reshape(-1, base)
            if old_rows.shape != new_rows.shape or (np.sort(old_rows, axis=1) != np.sort(new_rows, axis=1)).any():
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
