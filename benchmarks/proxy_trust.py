"""How far can the PruningNet's score be trusted, and how cheap can scoring be?

For configurations spread over the FLOPs range: the proxy top-1 (generated weights + BN
re-estimation, validation images) at several scoring budgets, against the validation top-1 after
a short identical fine-tune of each. Kendall's tau between the two says whether the proxy ranks
networks as training does; the FLOPs alone are ranked the same way as a baseline, since wider
networks both score and train better and a proxy must beat that to be worth anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from typing import Any

import numpy as np

import search_spaces as ss
from metaprune.latency import kendall_tau
from metaprune.pipeline import RECORD, Run
from metaprune.score import Batch, Scorer, ScorerSpec, build_scorer, calibration_images, fixed_batches, top1
from metaprune.train import train

# (BN re-estimation images, validation images): about 256, 1,000, 4,000 and 6,000 images per candidate
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


def finetuned_top1(run: Run, scorer: Scorer, validation: list[Batch], config: ss.Config, epochs: int) -> float:
    """Validation top-1 of `config` after `epochs` of the run's fine-tune from its generated weights
    (BN re-estimated by the run's scorer); resumable."""
    data = run.prepared
    settings = dataclasses.replace(run.cfg.finetune, epochs=epochs)
    meta = {"config": list(config), "finetune": dataclasses.asdict(settings), "seed": run.cfg.seed, "score": run.meta(RECORD)}
    digest = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    model = scorer.subnet(config)
    train(
        model, lambda x, step: model(x), data.train, data.normalizer, settings, seed=run.cfg.seed,
        checkpoint=run.dir / "bench" / "trust" / f"{digest}.pt", flip=run.cfg.data.flip, device=run.device,
        desc="trust fine-tune", progress=run.cfg.progress, meta=meta,
    )  # fmt: skip
    return top1(model, validation)


def proxy_trust(run: Run, count: int, epochs: int, seed: int) -> dict[str, Any]:
    """Kendall's tau of the proxy at each scoring budget, the FLOPs baseline, and the recommended budget."""
    space = run.space
    configs = spread_configs(space, count, seed)
    flops = [ss.flops(space, c) for c in configs]
    spec, data = run.scorer_spec(), run.prepared  # the trained PruningNet, loaded once
    validation = fixed_batches(data.val, data.normalizer, spec.score.eval_batch_size, run.device)
    truth = [finetuned_top1(run, build_scorer(spec, run.device), validation, c, epochs) for c in configs]
    budgets = []
    for calib, val in sorted({(min(c, len(data.train)), min(v, len(data.val))) for c, v in BUDGETS}):
        scorer = build_scorer(_budget(run, spec, calib, val), run.device)
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
                "kendall_tau": kendall_tau(proxies, truth),
                "seconds_per_candidate": statistics.median(seconds),
                "proxy_top1": proxies,
            }
        )
    best = max(b["kendall_tau"] for b in budgets)
    recommended = min((b for b in budgets if b["kendall_tau"] >= best - SETTLED), key=lambda b: b["images"])
    return {
        "configs": [list(c) for c in configs],
        "flops": flops,
        "finetune_epochs": epochs,
        "finetuned_val_top1": truth,
        "budgets": budgets,
        "kendall_tau_flops": kendall_tau([float(f) for f in flops], truth),
        "recommended": {k: recommended[k] for k in ("calib_images", "val_images", "kendall_tau", "seconds_per_candidate")},
        "rule": f"the cheapest budget whose tau is within {SETTLED} of the best measured",
    }
