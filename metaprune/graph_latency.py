"""The latency lookup table of a traced module's space (`search_spaces.GraphSpace`).

The same idea as `metaprune.latency_table` (ops timed alone once, a candidate priced by lookups,
an overhead and scale fitted on whole subnets), on any graph. Every node of the traced network
is an op. A conv's or linear's time depends on its input and output channels, every other op's
(BN, activations, adds, squeeze-excite gates, concats, gathers, pools) on its output channels.
The counts a tensor can take are exact (each gene adds the channels it keeps there); where a
dimension can take more than `POINTS` counts (a concat of four branches takes hundreds), the op is
timed at `POINTS` of them spread over the range and priced by linear interpolation between them,
so the table stays a few hundred timings on any network. Each probe is the very module the plain
subnet runs (`search_spaces.graph.slice_module`), or the traced function on tensors of its shapes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from tqdm import tqdm

from metaprune.errors import UserError
from metaprune.io import atomic_write_json
from metaprune.latency_table import _calibrate, _calibration_configs, device_kind, refuse_unless_same
from metaprune.timing import device_description, device_sync, measure_ms, torch_threads
from search_spaces import Config
from search_spaces.graph import GraphSpace, KeptGather, slice_module

FORMAT = "metaprune-graph-latency/1"
POINTS = 8  # timed counts per channel dimension of an op, at most


@dataclass(frozen=True)
class _Op:
    """One node of the network: the tensors whose channel counts key its time, and the counts timed."""

    node: str
    name: str  # what it computes and on which full-width shapes: with the counts, its key
    dims: tuple[str, ...]  # tensor (node) names: (input, output) for a conv or linear, (output,) else
    grids: tuple[tuple[int, ...], ...]  # per dim, the counts timed (ascending)

    def key(self, counts: tuple[int, ...]) -> str:
        return f"{self.name} @{'x'.join(map(str, counts))}"

    def points(self) -> list[tuple[int, ...]]:
        return [tuple(p) for p in np.array(np.meshgrid(*self.grids, indexing="ij")).reshape(len(self.grids), -1).T.tolist()]

    def price(self, entries: dict[str, float], counts: tuple[int, ...]) -> float:
        """Linear interpolation between the timed counts (exact where a count was timed)."""
        corners: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
        for grid, c in zip(self.grids, counts):
            i = min(max(int(np.searchsorted(grid, c)), 1), len(grid) - 1) if len(grid) > 1 else 0
            low, high = (grid[i - 1], grid[i]) if len(grid) > 1 else (grid[0], grid[0])
            t = 0.0 if high == low else min(max((c - low) / (high - low), 0.0), 1.0)
            corners = [(p + (low,), w * (1 - t)) for p, w in corners] + [(p + (high,), w * t) for p, w in corners if t > 0]
        return sum(w * entries[self.key(p)] for p, w in corners)


def _description(node: fx.Node, module: nn.Module | None, space: GraphSpace) -> str:
    shapes = [space.shapes.get(a.name) for a in node.all_input_nodes] + [space.shapes.get(node.name)]
    if module is not None:
        what = type(module).__name__
        if isinstance(module, nn.Conv2d):
            dw = "dw" if module.groups == module.in_channels > 1 else f"g{module.groups}"
            what += (
                f" k{module.kernel_size} s{module.stride} p{module.padding} d{module.dilation} {dw} b{module.bias is not None}"
            )
        elif not isinstance(module, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
            what += f"({module.extra_repr()})"
    else:
        constants = [a for a in node.args if not isinstance(a, fx.Node)] + sorted(node.kwargs.items())
        what = f"{getattr(node.target, '__name__', str(node.target))}{constants}"
    return f"{what} {shapes}"


def _reachable(space: GraphSpace, name: str) -> list[int]:
    """Every count tensor `name` can keep: the frozen channels plus what each gene keeps there."""
    parts = space._parts[name]
    sums = {parts.frozen}
    for gene, ranks in parts.genes:
        adds = {int(np.searchsorted(ranks, w)) for w in space.genes[gene].choices}
        sums = {s + a for s in sums for a in adds}
    return sorted(sums)


def _grid(values: list[int]) -> tuple[int, ...]:
    if len(values) <= POINTS:
        return tuple(values)
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, POINTS)).astype(int))
    return tuple(values[i] for i in picks)


def _ops(space: GraphSpace) -> list[_Op]:
    modules = dict(space.module.named_modules())
    ops = []
    for node in space.nodes():
        if node.op not in ("call_module", "call_function", "call_method") or node.name not in space.classes:
            continue
        inputs = [a.name for a in node.all_input_nodes if a.name in space.classes]
        module = modules[str(node.target)] if node.op == "call_module" else None
        two = isinstance(module, (nn.Conv2d, nn.Linear)) and not (isinstance(module, nn.Conv2d) and module.groups > 1)
        dims = (inputs[0], node.name) if two and inputs else (node.name,)
        grids = tuple(_grid(_reachable(space, d)) for d in dims)
        ops.append(_Op(node.name, _description(node, module, space), dims, grids))
    return ops


def _probe(space: GraphSpace, node: fx.Node, op: _Op, counts: tuple[int, ...], batch: int, device: str) -> Callable[[], object]:
    """A call running `node` (the op of `op`) at `counts` on random tensors of its shapes."""
    out_full = space.shapes[node.name][1] if len(space.shapes[node.name]) > 1 else 1
    own = dict(zip(op.dims, counts))

    def channels(arg: fx.Node) -> int:  # an input's count: its own dim, else in proportion to the output's
        full = space.shapes[arg.name][1]
        return own.get(arg.name, max(1, round(full * counts[-1] / out_full)) if full > 1 else 1)

    def tensor(arg: fx.Node) -> torch.Tensor:
        shape = list(space.shapes[arg.name])
        return (
            torch.randn(batch, channels(arg), *shape[2:], device=device) if len(shape) > 1 else torch.randn(batch, device=device)
        )

    args = fx.node.map_arg(node.args, lambda a: tensor(a) if a.name in space.shapes else a)
    kwargs = fx.node.map_arg(node.kwargs, lambda a: tensor(a) if a.name in space.shapes else a)
    if node.op == "call_module":
        full = space.module.get_submodule(str(node.target))
        cin = channels(node.all_input_nodes[0])
        if isinstance(full, KeptGather):  # which channels it picks is the configuration's; how many is what costs
            module: nn.Module = KeptGather(torch.randperm(cin)[: counts[-1]].sort().values).to(device)
        else:
            module = slice_module(full, torch.arange(cin), torch.arange(counts[-1])).eval().to(device)
        return lambda: module(*args, **kwargs)
    if node.op == "call_method":
        return lambda: getattr(args[0], str(node.target))(*args[1:], **kwargs)
    function = node.target
    assert callable(function), node
    return lambda: function(*args, **kwargs)


def _digest(space: GraphSpace) -> str:
    """The space's digest and every tensor's full-width shape (the classes of the data among them)."""
    text = repr((space.digest(), sorted(space.shapes.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class GraphLatencyTable:
    """Measured ms per op and channel counts of one traced space, batch, thread count and device kind."""

    space: GraphSpace
    batch: int
    threads: int
    device: str
    entries: dict[str, float]
    overhead_ms: float = 0.0
    scale: float = 1.0
    runtime: str = "torch"
    device_type: str = "cpu"
    calibration: list[dict[str, Any]] = field(default_factory=list)
    source: str = "(in memory)"
    ops: list[_Op] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ops = _ops(self.space)

    def summed(self, config: Config) -> float:
        counts = self.space.channel_counts(config)
        return sum(op.price(self.entries, tuple(counts[d] for d in op.dims)) for op in self.ops)

    def predict(self, config: Config) -> float:
        return self.overhead_ms + self.scale * self.summed(config)

    def identity(self) -> tuple[str, str, int, int, str]:
        return (self.space.name, _digest(self.space), self.batch, self.threads, self.device_type)

    def check(self, space: GraphSpace, batch: int | None = None, threads: int | None = None, device: str | None = None) -> None:
        refuse_unless_same(self.source, self.identity(), self._wanted(space, batch, threads, device))

    def _wanted(self, space: GraphSpace, batch: int | None, threads: int | None, device: str | None) -> tuple[Any, ...]:
        kind = self.device_type if device is None else device_kind(device)
        return (space.name, _digest(space), batch or self.batch, threads or self.threads, kind)

    def save(self, path: str | Path) -> None:
        names = ("batch", "threads", "device", "device_type", "runtime", "overhead_ms", "scale", "calibration", "entries")
        head = {"format": FORMAT, "space_name": self.space.name, "space_digest": _digest(self.space)}
        atomic_write_json(path, head | {name: getattr(self, name) for name in names})

    @staticmethod
    def load(
        path: str | Path, space: GraphSpace, batch: int | None = None, threads: int | None = None, device: str | None = None
    ) -> GraphLatencyTable:
        """Read a saved table of `space`; a damaged file, or one made for another space, batch, thread count
        or device kind, is a UserError."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            keys = ("batch", "threads", "device", "entries", "overhead_ms", "scale", "runtime", "device_type", "calibration")
            batch_, threads_, device_, entries, overhead, scale, runtime, kind, calibration = (data[k] for k in keys)
            table = GraphLatencyTable(
                space, int(batch_), int(threads_), str(device_), {str(k): float(v) for k, v in entries.items()},
                float(overhead), float(scale), str(runtime), str(kind), list(calibration), str(path),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"latency table {path} is damaged ({reason}); delete it to measure a new one") from exc
        made = (data["space_name"], data["space_digest"], table.batch, table.threads, table.device_type)
        refuse_unless_same(str(path), made, table._wanted(space, batch, threads, device))  # the file's, not `space`'s
        missing = {op.key(p) for op in table.ops for p in op.points()} - set(table.entries)
        if missing:
            raise UserError(
                f"latency table {path} is damaged ({len(missing)} op timings missing); delete it to measure a new one"
            )
        return table


def build_graph_latency_table(
    space: GraphSpace, batch: int, threads: int, device: str = "cpu", warmup: int = 3, runs: int = 10,
    calibration: int = 8, progress: bool = True, seed: int = 0,
) -> GraphLatencyTable:  # fmt: skip
    """Time every op of `space` at its grid of channel counts, then fit the overhead term on whole subnets."""
    if calibration < 2:
        raise ValueError(f"calibration needs at least 2 whole subnets to fit overhead and scale, got {calibration}")
    table = GraphLatencyTable(space, batch, threads, device_description(device), {}, device_type=device_kind(device))
    todo = {op.key(p): (op, p) for op in table.ops for p in op.points()}
    order = np.random.default_rng(seed).permutation(len(todo))  # a busy moment slows a random op, not a run of alike ones
    keys, nodes = sorted(todo), {n.name: n for n in space.nodes()}
    with torch_threads(threads), torch.inference_mode():
        for i in tqdm(order, desc="latency table", unit="op", disable=not progress, dynamic_ncols=True):
            op, counts = todo[keys[i]]
            times = measure_ms(_probe(space, nodes[op.node], op, counts, batch, device), warmup, runs, device_sync(device))
            table.entries[keys[i]] = min(times)
    table.entries = dict(sorted(table.entries.items()))
    _calibrate(table, _calibration_configs(space, calibration, seed), 3 * warmup, 5 * runs, device)
    return table
