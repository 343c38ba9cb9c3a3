"""Benchmark the PruningNet's costs as ratios to plain-network baselines (GUIDE section 4).

1. Training: one PruningNet SGD step (full configuration, and a random configuration per step as
   in real training) over one SGD step of the plain full-width network, same batch.
   Aim: full-configuration ratio at most 1.5x.
2. Scoring: `Scorer(config)` (extract, BN re-estimation, top-1) over a bare eval-mode forward of the
   extracted subnet over the same calibration and validation images. Aim: at most 1.3x.

The timed things alternate (A B A B ...) after a warm-up, and medians are compared, so load from
other processes on a shared machine hits both sides alike. Absolute times are printed only as context.
Run from the repository root: `python benchmarks/bench_pruningnet.py --data ../shared/data/cifar10`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
from metaprune.data import ImageData, Normalizer, load_folder, synthetic
from metaprune.graph_pruningnet import GraphPruningNet as PruningNet  # noqa: E402
from metaprune.score import Scorer, fixed_batches, recalibrate_bn, top1
from search_spaces import Config, SearchSpace

TRAIN_AIM = 1.5
SCORE_AIM = 1.3

Phases = dict[str, float]  # phase name -> seconds, for one repetition of one timed thing
Timed = Callable[[], Phases]


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="../shared/data/cifar10",
        help="class-per-folder image dataset holding train/ and test/; when absent, synthetic 32x32 images are used instead",
    )
    parser.add_argument(
        "--train-subset",
        type=int,
        default=5000,
        help="training images kept (seeded random subset); training batch, calibration and validation images come from it",
    )
    parser.add_argument("--space", default="resnet20", help="search space name from search_spaces.list_spaces()")
    parser.add_argument("--batch-size", type=int, default=128, help="images per training step (part 1)")
    parser.add_argument("--train-reps", type=int, default=20, help="timed training steps per variant (part 1)")
    parser.add_argument("--train-warmup", type=int, default=3, help="untimed training steps per variant before timing")
    parser.add_argument("--calib-images", type=int, default=1000, help="calibration images for BN re-estimation (part 2)")
    parser.add_argument("--calib-batch-size", type=int, default=100, help="images per calibration batch")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images scored for top-1 (part 2)")
    parser.add_argument("--val-batch-size", type=int, default=500, help="images per validation batch")
    parser.add_argument(
        "--configs",
        type=int,
        default=4,
        help="random configurations scored (part 2), FLOPs in [--flops-min, --flops-fraction] x full",
    )
    parser.add_argument("--flops-fraction", type=float, default=0.5, help="FLOPs ceiling of the scored configurations, of full")
    parser.add_argument("--flops-min", type=float, default=0.0, help="FLOPs floor of the scored configurations, of full")
    parser.add_argument("--score-reps", type=int, default=5, help="timed scorings (and bare forwards) per configuration")
    parser.add_argument("--score-warmup", type=int, default=1, help="untimed scorings per configuration before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value, fixed for the whole run")
    parser.add_argument("--seed", type=int, default=0, help="seed for the subset, the models and the configurations")
    parser.add_argument("--skip-train", action="store_true", help="skip part 1 (training step ratio)")
    parser.add_argument("--skip-score", action="store_true", help="skip part 2 (scoring ratio)")
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON to this file")
    args = parser.parse_args(argv)
    needed = max(args.batch_size, args.calib_images + args.val_images)
    if args.train_subset < needed:
        parser.error(f"--train-subset {args.train_subset} is below the {needed} images needed (batch, calibration + validation)")
    return args


# -- data and machine ---------------------------------------------------------------------------
def load_images(args: argparse.Namespace) -> tuple[ImageData, str]:
    """A seeded random subset of the training split, and a description of where it came from."""
    if (Path(args.data) / "train").is_dir():
        began = time.perf_counter()
        train = load_folder(args.data).train
        source = f"{args.data} (decoded in {time.perf_counter() - began:.0f} s)"
    else:
        # the benchmark times compute, not accuracy, so synthetic images of the same shape do
        train = synthetic(n=2 * args.train_subset, classes=10, size=32, channels=3, seed=args.seed).train
        source = f"synthetic 32x32 (no {args.data}/train folder)"
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    return train.subset(order[: min(args.train_subset, len(train))]), source


def machine(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }


# -- timing -------------------------------------------------------------------------------------
def alternate(timed: dict[str, Timed], reps: int, warmup: int) -> dict[str, list[Phases]]:
    """Run every timed thing in turn (A B C A B C ...), `warmup` untimed rounds first."""
    for _ in range(warmup):
        for fn in timed.values():
            fn()
    results: dict[str, list[Phases]] = {name: [] for name in timed}
    for _ in range(reps):
        for name, fn in timed.items():
            results[name].append(fn())
    return results


def median_phases(samples: list[Phases]) -> Phases:
    """Median of each phase and of the total (the total's median, not the sum of phase medians)."""
    phases = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    phases["total"] = statistics.median(sum(s.values()) for s in samples)
    return phases


def pair_ratios(numerator: list[Phases], denominator: list[Phases]) -> list[float]:
    """Ratios of totals of repetitions run next to each other: they share the machine's load at that moment."""
    return [sum(n.values()) / sum(d.values()) for n, d in zip(numerator, denominator, strict=True)]


def summarise(ratios: list[float]) -> dict[str, float]:
    """Median and interquartile range: a wide range says the machine was too busy to trust the median."""
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


class Clock:
    """Splits one repetition into named phases."""

    def __init__(self) -> None:
        self.phases: Phases = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


# -- part 1: training step ----------------------------------------------------------------------
def sgd(model: nn.Module) -> torch.optim.Optimizer:
    # nesterov as metaprune.train uses it; either way both arms pay the same per-parameter update
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)


def train_step(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Timed:
    """One fwd + bwd + SGD step, timed by phase; `forward` may pick a configuration each call."""
    optimizer = sgd(model)
    model.train()

    def step() -> Phases:
        clock = Clock()
        loss = F.cross_entropy(forward(x), y)
        clock.lap("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.lap("backward")
        optimizer.step()
        clock.lap("optimizer")
        return clock.phases

    return step


def bench_training(space: SearchSpace, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    plain = search_spaces.build_subnet(space, space.largest)
    full_net, random_net = PruningNet(space), PruningNet(space)
    rng = np.random.default_rng(args.seed)
    timed = {
        "plain": train_step(plain, plain, x, y),
        "pruningnet_full": train_step(full_net, lambda batch: full_net(batch, space.largest), x, y),
        "pruningnet_random": train_step(random_net, lambda batch: random_net(batch, search_spaces.sample(space, rng)), x, y),
    }
    runs = alternate(timed, args.train_reps, args.train_warmup)
    return {
        "median_s": {name: median_phases(samples) for name, samples in runs.items()},
        "params": {"plain": count_params(plain), "pruningnet": count_params(full_net)},
        "ratio_full": summarise(pair_ratios(runs["pruningnet_full"], runs["plain"])),
        "ratio_random": summarise(pair_ratios(runs["pruningnet_random"], runs["plain"])),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- part 2: scoring ----------------------------------------------------------------------------
@dataclass
class ScoreData:
    calibration: list[torch.Tensor]
    validation: list[tuple[torch.Tensor, torch.Tensor]]


def score_data(images: ImageData, args: argparse.Namespace) -> ScoreData:
    """Disjoint calibration and validation images from the subset, normalised once like the pipeline does."""
    normalizer = Normalizer.fit(images.images)
    calib = images.subset(torch.arange(args.calib_images))
    val = images.subset(torch.arange(args.calib_images, args.calib_images + args.val_images))
    calibration = [x for x, _ in fixed_batches(calib, normalizer, args.calib_batch_size, "cpu")]
    return ScoreData(calibration, fixed_batches(val, normalizer, args.val_batch_size, "cpu"))


def bare_forward(subnet: nn.Module, data: ScoreData) -> Timed:
    """The floor: the extracted subnet's eval forward over exactly the images scoring touches."""

    def run() -> Phases:
        clock = Clock()
        subnet.eval()
        with torch.no_grad():
            for x in data.calibration:
                subnet(x)
            for x, _ in data.validation:
                subnet(x)
        clock.lap("forward")
        return clock.phases

    return run


def scoring(scorer: Scorer, config: Config) -> Timed:
    """`Scorer(config)` as the search calls it; the result is the one timed for the ratio."""

    def run() -> Phases:
        clock = Clock()
        scorer(config)
        clock.lap("score")
        return clock.phases

    return run


def scoring_pieces(pruningnet: PruningNet, config: Config, data: ScoreData) -> Timed:
    """The same steps as `Scorer`, split, to show where its time beyond the bare forward goes."""

    def run() -> Phases:
        clock = Clock()
        subnet = pruningnet.extract(config)
        clock.lap("extract")
        recalibrate_bn(subnet, data.calibration)
        clock.lap("recalibrate")
        top1(subnet, data.validation)
        clock.lap("top1")
        return clock.phases

    return run


def scored_configs(space: SearchSpace, args: argparse.Namespace) -> list[Config]:
    rng = np.random.default_rng(args.seed + 1)
    full = search_spaces.flops(space, space.largest)
    return [
        search_spaces.sample_within(space, rng, args.flops_min * full, args.flops_fraction * full) for _ in range(args.configs)
    ]


def bench_scoring(space: SearchSpace, data: ScoreData, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    pruningnet = PruningNet(space).eval()
    scorer = Scorer(pruningnet, data.calibration, data.validation)
    full_flops = search_spaces.flops(space, space.largest)
    per_config, ratios = [], []
    for config in scored_configs(space, args):
        timed = {
            "score": scoring(scorer, config),
            # BN already re-estimated, so the floor runs on realistic activations, not an untrained net's
            "bare": bare_forward(scorer.subnet(config), data),
            "pieces": scoring_pieces(pruningnet, config, data),
        }
        runs = alternate(timed, args.score_reps, args.score_warmup)
        ratios += pair_ratios(runs["score"], runs["bare"])
        medians = {name: median_phases(samples) for name, samples in runs.items()}
        per_config.append(
            {
                "flops_fraction": search_spaces.flops(space, config) / full_flops,
                "median_s": medians,
                "ratio": medians["score"]["total"] / medians["bare"]["total"],
            }
        )
    return {"configs": per_config, "ratio": summarise(ratios)}


# -- report -------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{1000 * seconds:9.1f}"


def spread(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.2f} (median of adjacent pairs; interquartile {ratio['q1']:.2f}-{ratio['q3']:.2f})"


def print_training(result: dict[str, Any]) -> None:
    print("\nPart 1: training step (median ms per step; ratio column: of the medians)")
    print(f"{'variant':<20}{'forward':>9}{'backward':>9}{'optim':>9}{'total':>9}{'ratio':>8}")
    base = result["median_s"]["plain"]["total"]
    for name, m in result["median_s"].items():
        print(f"{name:<20}{ms(m['forward'])}{ms(m['backward'])}{ms(m['optimizer'])}{ms(m['total'])}{m['total'] / base:8.2f}")
    params = result["params"]
    print(f"parameters: plain {params['plain']:,}, PruningNet {params['pruningnet']:,}")
    print(f"ratio PruningNet full / plain = {spread(result['ratio_full'])} (aim <= {TRAIN_AIM})")
    print(f"ratio PruningNet random / plain = {spread(result['ratio_random'])}")


def print_scoring(result: dict[str, Any]) -> None:
    print("\nPart 2: scoring one candidate (median ms per candidate; ratio column: of the medians)")
    print(f"{'flops':>6}{'bare':>9}{'score':>9}{'ratio':>7}  |{'extract':>9}{'recal':>9}{'top1':>9}")
    for c in result["configs"]:
        m = c["median_s"]
        pieces = m["pieces"]
        print(
            f"{c['flops_fraction']:6.2f}{ms(m['bare']['total'])}{ms(m['score']['total'])}{c['ratio']:7.2f}  |"
            f"{ms(pieces['extract'])}{ms(pieces['recalibrate'])}{ms(pieces['top1'])}"
        )
    print(f"ratio score / bare forward = {spread(result['ratio'])} (aim <= {SCORE_AIM})")


def rounded(ratio: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in ratio.items()}


def summary(args: argparse.Namespace, source: str, train: dict[str, Any] | None, score: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": source,
        "space": args.space,
        "machine": machine(args.threads),
        # other work on a shared box is the main noise source; measured before this run adds its own load
        "load_avg_1min_before_run": args.load_before_run,
    }
    if train is not None:
        out["train_ratio_full"] = rounded(train["ratio_full"])
        out["train_ratio_random"] = rounded(train["ratio_random"])
        out["train_aim"] = TRAIN_AIM
        out["train_plain_ms"] = round(1000 * train["median_s"]["plain"]["total"], 1)
    if score is not None:
        out["score_ratio"] = rounded(score["ratio"])
        out["score_aim"] = SCORE_AIM
        out["score_config_ratios"] = [round(c["ratio"], 3) for c in score["configs"]]
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.load_before_run = round(os.getloadavg()[0], 2)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    images, source = load_images(args)
    channels, size = images.shape
    space = search_spaces.create_space(args.space, num_classes=len(images.classes), in_channels=channels, resolution=size)
    print(f"data: {source}; {len(images)} images used; space {args.space}; torch threads {args.threads}")
    train = score = None
    if not args.skip_train:
        normalizer = Normalizer.fit(images.images)
        x, y = normalizer(images.images[: args.batch_size]), images.labels[: args.batch_size]
        train = bench_training(space, x, y, args)
        print_training(train)
    if not args.skip_score:
        score = bench_scoring(space, score_data(images, args), args)
        print_scoring(score)
    result = summary(args, source, train, score)
    print(f"\ntotal run time {time.perf_counter() - began:.0f} s")
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
