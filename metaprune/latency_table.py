"""What both ends of a latency table share: its file name and identity check, its fit to whole
subnets, and the check of its predictions against measured subnets. The table itself, one timing
per node of the traced graph and channel counts, is `metaprune.graph_latency`.

The MetaPruning paper's latency-constrained search looks every layer up in a table measured once
per space, batch, thread count and device, so that searchers price thousands of candidates for
free; a candidate's latency is a sum of lookups, corrected by an overhead and a scale fitted to a
few whole subnets timed at build time.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np
import torch

import search_spaces as ss
from metaprune.errors import UserError
from metaprune.timing import measure_subnets
from search_spaces import Config


def device_kind(device: str) -> str:
    """The kind of `device`, "cpu" or "cuda" ("cuda:1" too): a table timed on one prices nothing on the other."""
    return torch.device(device).type


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
    space: ss.GraphSpace, table: Any, configs: list[Config], threads: int | None = None, runs: int = 30,
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
