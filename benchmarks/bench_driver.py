"""Benchmark the search driver's overhead per candidate as a share of scoring one candidate.

Driver overhead is everything the driver does for a trial besides waiting for its score: the
searcher's ask (TPE and NSGA-II read the whole study), the FLOPs constraint check, and recording
(Optuna journal, one append + fsync per result). It is measured by running each searcher for
`--trials` trials (default 1,000) against an executor that answers at once with a synthetic
score, so the driver's own time is all that is left; the per-trial cost is averaged over the last
`--tail` trials, when about 1,000 trials are recorded. Scoring cost is measured with the real
scorer (generated weights, BN re-estimation, validation) on the same machine, in the same run.

Run from the repository root:

    python benchmarks/bench_driver.py --data ../shared/data/cifar10 --out benchmarks/results_driver.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces as ss  # noqa: E402
from metaprune.data import Normalizer, load_folder, split, synthetic  # noqa: E402
from metaprune.graph_pruningnet import GraphPruningNet as PruningNet  # noqa: E402
from metaprune.pruningnet import PruningNetConfig  # noqa: E402
from metaprune.score import ScoreConfig, ScorerSpec, build_scorer, calibration_images  # noqa: E402
from nas.evolution import EvolutionConfig  # noqa: E402
from nas.executors import Scored, Task  # noqa: E402
from nas.search import drive_search  # noqa: E402
from nas.searchers import SEARCHERS, make_searcher  # noqa: E402
from nas.storage import Storage  # noqa: E402
from nas.study import StudyRecord  # noqa: E402

AIM = 0.05


class InstantExecutor:
    """Answers at once with a smooth synthetic score, so that searchers behave as on real scores."""

    def __init__(self, space: ss.SearchSpace) -> None:
        self.space = space

    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        for task in tasks:
            widths = np.array(self.space.encode(task.config))
            yield Scored(task, float(100 * np.sqrt(widths).mean() - 20 * widths.std()), "instant")

    def close(self) -> None:
        pass


def scoring_seconds(space: ss.SearchSpace, data_path: str, calib: int, val: int, count: int) -> tuple[float, str]:
    """Median seconds to score one random candidate with the real scorer, and the data used."""
    if Path(data_path, "train").is_dir():
        train, source = load_folder(data_path).train, f"CIFAR-10 at {data_path}"
    else:
        train, source = synthetic(n=calib + val + 100, classes=10, size=32, seed=0).train, "synthetic 32x32 (no data folder)"
    rest, validation = split(train, val, 0)
    images = calibration_images(rest, calib, 0).images
    torch.manual_seed(0)
    spec = ScorerSpec(
        space.to_dict(), PruningNetConfig(), PruningNet(space).state_dict(), images[: calib // 100 * 100],
        validation.images, validation.labels, Normalizer.fit(rest.images[:5000]), ScoreConfig(calib, 100, 500),
    )  # fmt: skip
    scorer = build_scorer(spec)
    rng = np.random.default_rng(0)
    configs = [ss.sample(space, rng) for _ in range(count + 1)]
    scorer(configs[0])  # warm-up
    times = []
    for config in configs[1:]:
        began = time.perf_counter()
        scorer(config)
        times.append(time.perf_counter() - began)
    return statistics.median(times), source


def driver_seconds(space: ss.SearchSpace, searcher: str, trials: int, tail: int, population: int) -> dict[str, float]:
    """Per-trial driver seconds over the last `tail` trials of a `trials`-trial search."""
    cfg = EvolutionConfig(population=population, generations=trials // population)
    window = (0.0, 0.5 * ss.flops(space, space.largest))
    with tempfile.TemporaryDirectory() as tmp:
        searcher_ = make_searcher(searcher, space, cfg, window, batch=10)
        record = StudyRecord(Storage("", Path(tmp)), searcher, "", space, {"bench": 1}, searcher_.directions, {}, window)
        outcome = drive_search(searcher_, record, InstantExecutor(space), trials, progress=False)
    done, late_trials, late_seconds = 0, 0, 0.0
    for count, driver, _ in outcome.rounds:
        done += count
        if done > trials - tail:
            late_trials, late_seconds = late_trials + count, late_seconds + driver
    return {
        "trials": outcome.trials,
        "mean_ms_per_trial": 1000 * outcome.driver_seconds / max(outcome.trials, 1),
        "tail_ms_per_trial": 1000 * late_seconds / max(late_trials, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar10", help="class-per-folder dataset (synthetic when absent)")
    parser.add_argument("--trials", type=int, default=1000, help="trials per searcher")
    parser.add_argument("--tail", type=int, default=200, help="the last trials whose driver cost is reported")
    parser.add_argument("--population", type=int, default=50, help="population (evolution, NSGA-II)")
    parser.add_argument("--calib", type=int, default=1000, help="BN re-estimation images per candidate")
    parser.add_argument("--val", type=int, default=5000, help="validation images per candidate")
    parser.add_argument("--score-samples", type=int, default=8, help="candidates timed for the scoring cost")
    parser.add_argument("--searchers", default=",".join(SEARCHERS), help="comma-separated searchers to time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = ss.create_space("resnet20", num_classes=10, in_channels=3, resolution=32)
    load = os.getloadavg()[0]
    score_s, source = scoring_seconds(space, args.data, args.calib, args.val, args.score_samples)
    print(f"scoring one candidate: {score_s * 1000:.0f} ms (median of {args.score_samples}; {source})")
    rows = {}
    for searcher in args.searchers.split(","):
        result = driver_seconds(space, searcher, args.trials, args.tail, args.population)
        result["share_of_scoring"] = result["tail_ms_per_trial"] / 1000 / score_s
        rows[searcher] = result
        print(
            f"{searcher:>10}: driver {result['tail_ms_per_trial']:.1f} ms/trial over the last {args.tail} "
            f"(mean {result['mean_ms_per_trial']:.1f}) = {100 * result['share_of_scoring']:.2f}% of scoring (aim < {AIM:.0%})"
        )
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "load_avg_1min_before_run": load,
        },  # fmt: skip
        "scoring": {"ms_per_candidate": score_s * 1000, "data": source, "calib_images": args.calib, "val_images": args.val},
        "driver": rows,
        "aim_share": AIM,
    }
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
