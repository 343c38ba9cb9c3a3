"""How far can a PruningNet's score be trusted, and how cheap can scoring be?

For configurations spread over the FLOPs range: the proxy top-1 (generated weights + BN
re-estimation, validation images) at several scoring budgets, against the top-1 each configuration
reaches after the benchmark's full fine-tune (its epochs, schedule, seed and distillation, from that
PruningNet's generated weights: `bench_cifar.py` trains them and passes the figures in). Kendall's
tau between the two says whether the proxy ranks networks as training does; the FLOPs alone are
ranked the same way as a baseline, since wider networks both score and train better and a proxy
must beat that to be worth anything. The warm (trained-start) and the cold (from-scratch)
PruningNet are studied on the same configurations.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

import numpy as np

import search_spaces as ss
from metaprune.latency import kendall_tau
from metaprune.pipeline import Run
from metaprune.score import ScorerSpec, build_scorer, calibration_images

# (BN re-estimation images, validation images): about 256, 1,000, 4,000 and 6,000 images per candidate;
# the run's own scoring budget (what its searches use) is measured too
BUDGETS: tuple[tuple[int, int], ...] = ((128, 128), (256, 768), (1024, 3072), (1024, 5000))
CALIB_BATCH = 128
SETTLED = 0.05  # a budget whose tau is within this of the best measured is as good: the rest is noise


def spread_configs(space: ss.SearchSpace, count: int, seed: int) -> list[ss.Config]:
    """One random configuration per equal-width FLOPs bin, from the smallest network to the full one."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(ss.flops(space, space.smallest), ss.flops(space, space.largest), count + 1)
    return [ss.sample_within(space, rng, float(edges[i]), float(edges[i + 1])) for i in range(count)]


def _budget(run: Run, spec: ScorerSpec, calib: int, val: int) -> ScorerSpec:
    """The run's scorer spec with `calib` BN images (whole batches) and the first `val` validation images."""
    data = run.prepared
    images = calibration_images(data.train, calib, run.cfg.data.split_seed).images
    batch = min(CALIB_BATCH, len(images))
    return dataclasses.replace(
        spec,
        calibration=images[: len(images) // batch * batch],
        validation_images=data.val.images[:val],
        validation_labels=data.val.labels[:val],
        score=dataclasses.replace(spec.score, calib_batch_size=batch),
    )


def search_budget(run: Run) -> tuple[int, int]:
    """(BN images, validation images) the run's searches score with."""
    data, score = run.prepared, run.cfg.score
    val = score.val_images if 0 < score.val_images < len(data.val) else len(data.val)
    return min(score.calib_images, len(data.train)), val


def proxy_trust(run: Run, configs: list[ss.Config], truth: list[float], truth_name: str) -> dict[str, Any]:
    """Kendall's tau of the run's PruningNet's proxy against `truth` (one top-1 per configuration) at
    each scoring budget, the FLOPs baseline, the search budget's tau and the recommended budget."""
    if len(configs) != len(truth) or len(configs) < 2:
        raise ValueError(f"need one truth per configuration, at least 2; got {len(configs)} and {len(truth)}")
    space, data = run.space, run.prepared
    flops = [ss.flops(space, c) for c in configs]
    spec = run.scorer_spec()  # the trained PruningNet, loaded once
    searched = search_budget(run)
    wanted = {(min(c, len(data.train)), min(v, len(data.val))) for c, v in BUDGETS} | {searched}
    budgets: list[dict[str, Any]] = []
    for calib, val in sorted(wanted):
        # the search budget is the run's own scorer, exactly as its searches built it
        scorer = build_scorer(spec if (calib, val) == searched else _budget(run, spec, calib, val), run.device)
        proxies, seconds = [], []
        for config in configs:
            began = time.perf_counter()
            proxies.append(scorer(config))
            seconds.append(time.perf_counter() - began)
        budgets.append(
            {
                "calib_images": calib,
                "val_images": val,
                "images": calib + val,
                "searched": (calib, val) == searched,
                "kendall_tau": kendall_tau(proxies, truth),
                "seconds_per_candidate": statistics.median(seconds),
                "proxy_top1": proxies,
            }
        )
    taus = [b["kendall_tau"] for b in budgets if math.isfinite(b["kendall_tau"])]  # nan: a constant proxy or truth
    best = max(taus) if taus else math.nan
    settled = [b for b in budgets if b["kendall_tau"] >= best - SETTLED] or budgets
    recommended = min(settled, key=lambda b: (b["images"], b["val_images"]))
    keys = ("calib_images", "val_images", "kendall_tau", "seconds_per_candidate")
    return {
        "configs": [list(c) for c in configs],
        "flops": flops,
        "truth": truth_name,
        "finetuned_top1": truth,
        "budgets": budgets,
        "kendall_tau_flops": kendall_tau([float(f) for f in flops], truth),
        "search_budget": {k: v for b in budgets if b["searched"] for k, v in b.items() if k in keys},
        "best_kendall_tau": best,
        "recommended": {k: recommended[k] for k in keys},
        "rule": f"the cheapest budget whose tau is within {SETTLED} of the best measured",
    }
