"""The per-layer latency lookup table of a search space: build, check, save, load, predict.

The MetaPruning paper's latency-constrained search looks every layer up in a table measured once
per space, batch, thread count and device. Here each op (conv-BN-act, a residual add, a pool, the
classifier) is keyed by its signature (kind, channels, kernel, stride, input size, activation), so
layers alike share one measurement, and every signature any configuration can produce is timed
with the very modules `build_subnet` uses. A candidate's latency is then a sum of dict lookups,
corrected by an overhead term fitted to a few whole subnets timed at build time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from tqdm import tqdm

import search_spaces as ss
from metaprune.errors import UserError
from metaprune.io import atomic_write_json
from metaprune.timing import device_description, device_sync, measure_ms, measure_subnets, torch_threads
from search_spaces import Classifier, Config, ConvLayer, MaxPool, ResidualBlock, SearchSpace, Width
from search_spaces._build import activation

FORMAT = "metaprune-latency/1"


_Op = Union[ConvLayer, ResidualBlock, MaxPool, Classifier]  # a ResidualBlock slot stands for its add


@dataclass(frozen=True)
class _Slot:
    """One op of the network; its signature depends on the channel counts of `widths`."""

    op: _Op
    widths: tuple[Width, ...]  # conv: (in, out); add, pool, classifier: (channels,)
    size: int  # input height and width
    template: str  # the signature, with {0} and {1} standing for the channels of `widths`

    def key(self, channels: tuple[int, ...]) -> str:
        return self.template.format(*channels)


def _conv_slot(conv: ConvLayer, size: int) -> _Slot:
    groups = " dw" if conv.depthwise else ""
    template = f"conv {{0}}>{{1}} k{conv.kernel} s{conv.stride}{groups} {size}px {conv.act}"
    return _Slot(conv, (conv.in_ch, conv.out_ch), size, template)


def _slots(space: SearchSpace) -> list[_Slot]:
    """Every op of the network in order, with the input size each sees."""
    slots: list[_Slot] = []
    size = space.resolution
    width: Width = space.in_channels  # what the previous layer gives
    for layer in space.layers:
        if isinstance(layer, ConvLayer):
            slots.append(_conv_slot(layer, size))
            size, width = ss.conv_out_size(size, layer.kernel, layer.stride), layer.out_ch
        elif isinstance(layer, ResidualBlock):
            in_size = size
            for conv in layer.body:
                slots.append(_conv_slot(conv, size))
                size = ss.conv_out_size(size, conv.kernel, conv.stride)
            if layer.shortcut is not None:
                slots.append(_conv_slot(layer.shortcut, in_size))
            slots.append(_Slot(layer, (layer.out_ch,), size, f"add {{0}} {size}px {layer.act}"))
            width = layer.out_ch
        else:
            slots.append(_Slot(layer, (width,), size, f"maxpool {{0}} k{layer.kernel} s{layer.stride} {size}px"))
            size = ss.conv_out_size(size, layer.kernel, layer.stride)
    head = space.head
    return slots + [_Slot(head, (head.in_ch,), size, f"head {{0}}>{head.num_classes} {size}px")]


def _signatures(space: SearchSpace) -> dict[str, tuple[_Slot, tuple[int, ...]]]:
    """Every signature any configuration can produce, with one slot and channels that produce it."""
    found: dict[str, tuple[_Slot, tuple[int, ...]]] = {}
    for slot in _slots(space):
        genes = sorted({w for w in slot.widths if isinstance(w, str)})  # a depthwise conv's in and out: one gene
        for picks in product(*(space.genes[space.gene_index[g]].choices for g in genes)):
            chosen = dict(zip(genes, picks))
            channels = tuple(w if isinstance(w, int) else chosen[w] for w in slot.widths)
            found.setdefault(slot.key(channels), (slot, channels))
    return found


def _one_op_space(op: _Op, channels: tuple[int, ...], size: int) -> SearchSpace:
    """A network holding just `op`, so that `build_subnet` makes exactly the module a subnet runs."""
    if isinstance(op, Classifier):
        return SearchSpace("probe", channels[0], size, (), (), dataclasses.replace(op, in_ch=channels[0]))
    layer = dataclasses.replace(op, in_ch=channels[0], out_ch=channels[1]) if isinstance(op, ConvLayer) else op
    assert isinstance(layer, (ConvLayer, MaxPool)), layer
    return SearchSpace("probe", channels[0], size, (), (layer,), Classifier("fc", channels[-1], 1))


def _probe(slot: _Slot, channels: tuple[int, ...], batch: int, device: str) -> Callable[[], object]:
    """A call running the op of `slot` at `channels` on a random batch."""
    x = torch.randn(batch, channels[0], slot.size, slot.size, device=device)
    if isinstance(slot.op, ResidualBlock):  # the add (and activation) that joins body and shortcut
        y, act = torch.randn_like(x), activation(slot.op.act)
        return lambda: act(x + y)
    net = ss.build_subnet(_one_op_space(slot.op, channels, slot.size), ()).eval()
    net = net if device == "cpu" else net.to(device)  # built on the CPU: `to` would cost as much again
    module = net if isinstance(slot.op, Classifier) else net.layers[0]  # the classifier includes pool + flatten
    return lambda: module(x)


def _space_digest(space: SearchSpace) -> str:
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def device_kind(device: str) -> str:
    """The kind of `device`, "cpu" or "cuda" ("cuda:1" too): a table timed on one prices nothing on the other."""
    return torch.device(device).type


def _legacy_device_kind(description: str) -> str:
    """The kind of a table saved before the kind was part of its identity, from its `device_description`:
    a CPU's reads "<model>, <n> cores, torch <version>", a GPU's "<name>, torch <version>"."""
    return "cpu" if re.search(r", \d+ cores, torch ", description) else "cuda"


def table_file_name(batch: int, threads: int, device: str) -> str:
    """Where a run directory keeps its table: one file per batch, thread count and device kind (a CPU's
    name is the one it had before the kind was part of it, so existing run directories keep theirs)."""
    kind = device_kind(device)
    return f"latency_table-{'' if kind == 'cpu' else kind + '-'}b{batch}-t{threads}.json"


def refuse_unless_same(source: str, made: tuple[Any, ...], wanted: tuple[Any, ...]) -> None:
    """A UserError unless a table measured for `made` (space name, digest, batch, threads, device kind) is `wanted`."""
    if made != wanted:
        raise UserError(
            f"latency table {source} was measured for space {made[0]} (digest {made[1]}), batch {made[2]}, "
            f"threads {made[3]} on {made[4]}, not space {wanted[0]} (digest {wanted[1]}), batch {wanted[2]}, "
            f"threads {wanted[3]} on {wanted[4]}; delete it to measure a new one"
        )


@dataclass
class LatencyTable:
    """Measured ms per op signature of one space, batch, thread count and device kind; `predict` prices a config."""

    space: SearchSpace
    batch: int
    threads: int
    device: str  # `device_description` of the machine that measured
    entries: dict[str, float]  # op signature -> its fastest run in ms
    overhead_ms: float = 0.0  # predicted = overhead_ms + scale * sum of entries, fitted on whole subnets
    scale: float = 1.0
    runtime: str = "torch"
    device_type: str = "cpu"  # `device_kind` of what measured: with space, batch and threads, the table's identity
    calibration: list[dict[str, Any]] = field(default_factory=list)  # the whole subnets the fit used
    source: str = "(in memory)"  # the file it was loaded from, for error messages
    _slots: list[_Slot] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slots = _slots(self.space)

    def keys(self, config: Config) -> list[str]:
        """The signatures of the ops `config` runs, in order."""
        channels = self.space.channels
        return [s.key(tuple(channels(w, config) for w in s.widths)) for s in self._slots]

    def summed(self, config: Config) -> float:
        return sum(self.entries[key] for key in self.keys(config))

    def predict(self, config: Config) -> float:
        """Predicted latency of `config` in ms: dict lookups only, cheap enough for every candidate."""
        return self.overhead_ms + self.scale * self.summed(config)

    def check(self, space: SearchSpace, batch: int | None = None, threads: int | None = None, device: str | None = None) -> None:
        """Raise UserError unless the table was measured for `space` (and `batch`, `threads`, the kind of
        `device` if given)."""
        kind = self.device_type if device is None else device_kind(device)
        made = (self.space.name, _space_digest(self.space), self.batch, self.threads, self.device_type)
        wanted = (space.name, _space_digest(space), batch or self.batch, threads or self.threads, kind)
        refuse_unless_same(self.source, made, wanted)

    def to_dict(self) -> dict[str, Any]:
        names = ("batch", "threads", "device", "device_type", "runtime", "overhead_ms", "scale", "calibration", "entries")
        head = {"format": FORMAT, "space_name": self.space.name, "space_digest": _space_digest(self.space)}
        return head | {"space": self.space.to_dict()} | {name: getattr(self, name) for name in names}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @staticmethod
    def load(
        path: str | Path, space: SearchSpace | None = None, batch: int | None = None, threads: int | None = None,
        device: str | None = None,
    ) -> LatencyTable:  # fmt: skip
        """Read a saved table; a damaged file, or one made for another space/batch/threads/device kind, is a UserError."""
        try:
            data = json.loads(Path(path).read_text())
            table = _table_from_dict(data, str(path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"latency table {path} is damaged ({reason}); delete it to measure a new one") from exc
        if space is not None:
            table.check(space, batch, threads, device)
        return table


def _table_from_dict(data: dict[str, Any], source: str) -> LatencyTable:
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
    space = SearchSpace.from_dict(data["space"])
    if _space_digest(space) != data["space_digest"]:
        raise ValueError("the space does not match its digest")
    entries = {str(k): float(v) for k, v in data["entries"].items()}
    missing = set(_signatures(space)) - set(entries)
    if missing:
        raise ValueError(f"{len(missing)} op signatures missing, e.g. {sorted(missing)[0]!r}")
    description = str(data["device"])
    kind = str(data["device_type"]) if "device_type" in data else _legacy_device_kind(description)
    return LatencyTable(
        space, int(data["batch"]), int(data["threads"]), description, entries, float(data["overhead_ms"]),
        float(data["scale"]), str(data["runtime"]), kind, list(data["calibration"]), source,
    )  # fmt: skip


def build_latency_table(
    space: SearchSpace, batch: int, threads: int, device: str = "cpu", warmup: int = 3, runs: int = 10,
    calibration: int = 8, progress: bool = True, seed: int = 0, passes: int = 2,
) -> LatencyTable:  # fmt: skip
    """Time every op signature of `space` (`runs` in all, over `passes` sweeps), then fit the overhead term."""
    if calibration < 2:
        raise ValueError(f"calibration needs at least 2 whole subnets to fit overhead and scale, got {calibration}")
    with torch_threads(threads), torch.inference_mode():
        entries = _measure_entries(space, batch, device, warmup, -(-runs // passes), passes, seed, progress)
    entries = dict(sorted(entries.items()))
    table = LatencyTable(space, batch, threads, device_description(device), entries, device_type=device_kind(device))
    _calibrate(table, _calibration_configs(space, calibration, seed), 3 * warmup, 5 * runs, device)
    return table


def _measure_entries(
    space: SearchSpace, batch: int, device: str, warmup: int, runs: int, passes: int, seed: int, progress: bool
) -> dict[str, float]:
    """The fastest of `passes` x `runs` timings of every op signature of `space`."""
    signatures, entries = _signatures(space), dict[str, float]()
    widest = {
        key: slot.key(tuple(space.channels(w, space.largest) for w in slot.widths)) for key, (slot, _) in signatures.items()
    }
    rng = np.random.default_rng(seed)
    with tqdm(total=passes * len(signatures), desc="latency table", unit="op", disable=not progress, dynamic_ncols=True) as bar:
        # Each sweep goes in a new random order: a moment when another process steals the CPU then
        # slows a random op instead of a run of similar ones, and rarely the same op in every sweep.
        ordered = sorted(signatures)
        sweeps = [[ordered[i] for i in rng.permutation(len(ordered))] for _ in range(passes)]
        for _ in range(2 * passes):  # then ops far slower than their widest variant were surely slowed so: again
            keys = sweeps.pop() if sweeps else [key for key in sorted(entries) if entries[key] > 1.5 * entries[widest[key]]]
            bar.total = max(bar.total or 0, bar.n + len(keys))
            for key in keys:
                slot, channels = signatures[key]
                times = measure_ms(_probe(slot, channels, batch, device), warmup, runs, device_sync(device))
                entries[key] = min(entries.get(key, math.inf), *times)
                bar.update()
    return entries


def _calibration_configs(space: ss.GeneSpace, count: int, seed: int) -> list[Config]:
    """The extremes, a few uniform widths in between, and random configurations."""
    uniform = [tuple(round(f * (len(g.choices) - 1)) for g in space.genes) for f in (0.25, 0.5, 0.75)]
    rng = np.random.default_rng(seed)
    return [space.largest, space.smallest, *uniform, *(ss.sample(space, rng) for _ in range(count))][:count]


def fit_overhead_and_scale(summed: list[float], measured: list[float]) -> tuple[float, float]:
    """Fit measured = overhead_ms + scale * summed entries; return (overhead_ms, scale).

    Why both terms: the overhead is what op timings leave out and every subnet has alike (module
    calls, identity shortcuts); the scale is what an op loses inside the network, its input and
    weights no longer hot in cache from its own previous run, which grows with the work (scales of
    1.0-1.5 here; the mean residual alone, scale 1, predicted worse at batch 32). A scale outside
    0.5..2, or a fit that prices the smallest subnet at or below zero, means noise swamped the
    timings (a busy machine, first calls): then the mean residual is used where it is an overhead
    (>= 0), and the ratio of the totals where the ops were timed slower than whole subnets, so
    that every prediction stays positive and keeps the order of the sums.
    """
    scale, overhead = (float(v) for v in np.polyfit(summed, measured, 1))
    if not 0.5 <= scale <= 2 or overhead + scale * min(summed) <= 0:
        warnings.warn(f"latency table: whole subnets took {min(measured):.3g}..{max(measured):.3g} ms, their ops "
                      f"{min(summed):.3g}..{max(summed):.3g} ms; is the machine busy?", stacklevel=3)  # fmt: skip
        scale, overhead = 1.0, float(np.mean(np.subtract(measured, summed)))
        if overhead < 0:
            scale, overhead = float(sum(measured) / sum(summed)), 0.0
    return overhead, scale


def _calibrate(table: Any, configs: list[Config], warmup: int, runs: int, device: str) -> None:
    """Fit the table's overhead and scale on whole subnets, the extremes among them."""
    measured = measure_subnets(table.space, configs, table.batch, table.threads, warmup, runs, device)
    summed = [table.summed(c) for c in configs]
    table.overhead_ms, table.scale = fit_overhead_and_scale(summed, measured)
    table.calibration = [{"config": list(c), "measured_ms": m, "summed_ms": s} for c, m, s in zip(configs, measured, summed)]


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b: (concordant - discordant pairs) over the geometric mean of untied pairs."""
    pairs = [(np.sign(x[i] - x[j]), np.sign(y[i] - y[j])) for i, j in combinations(range(len(x)), 2)]
    untied_x, untied_y = sum(a != 0 for a, _ in pairs), sum(b != 0 for _, b in pairs)
    return float(sum(a * b for a, b in pairs) / math.sqrt(untied_x * untied_y)) if untied_x and untied_y else math.nan


def lut_accuracy(
    space: SearchSpace | ss.GraphSpace, table: Any, configs: list[Config], threads: int | None = None, runs: int = 30,
    warmup: int = 10, device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Predicted against measured latency of whole subnets: per config, MAPE, max error, Kendall's tau."""
    measured = measure_subnets(space, configs, table.batch, threads or table.threads, warmup, runs, device)
    predicted = [table.predict(c) for c in configs]
    errors = [100 * (p - m) / m for p, m in zip(predicted, measured)]
    rows = [
        {"config": list(c), "predicted_ms": p, "measured_ms": m, "error_pct": e}
        for c, p, m, e in zip(configs, predicted, measured, errors)
    ]
    mape, worst = float(np.mean(np.abs(errors))), max(abs(e) for e in errors)
    return {"configs": rows, "mape_pct": mape, "max_error_pct": worst, "kendall_tau": kendall_tau(predicted, measured)}
