"""Benchmark the executors: candidates scored per second in this process and on Ray actors.

Arms, all scoring the same random configurations with the same scorer spec:
  in-process with 2 torch threads and with 1 (`nas.executors.InProcessExecutor`);
  Ray with 1 actor and with 2 actors, one torch thread each (`nas.ray_executor.RayExecutor`).
Ratios (GUIDE section 4: alternate the arms after a warm-up, take medians of adjacent repetitions):
  Ray-1 / in-process (1 thread): what Ray's messaging costs. Aim: >= 0.9.
  Ray-2 / Ray-1: how a second actor scales. Aim: >= 1.7.
Run from the repository root: `python benchmarks/bench_executors.py --data ../shared/data/cifar10`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

import search_spaces
from metaprune.data import ImageData, Normalizer, load_folder, synthetic
from metaprune.graph_pruningnet import GraphPruningNet as PruningNet
from metaprune.pruningnet import PruningNetConfig
from metaprune.score import ScoreConfig, ScorerSpec
from nas.executors import Executor, InProcessExecutor, Task
from nas.ray_executor import RayExecutor

RAY_OVER_IN_PROCESS_AIM = 0.9
TWO_OVER_ONE_AIM = 1.7


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="../shared/data/cifar10",
        help="class-per-folder image dataset holding train/; when absent, synthetic 32x32 images are used instead",
    )
    parser.add_argument("--space", default="resnet20", help="search space name from search_spaces.list_spaces()")
    parser.add_argument("--configs", type=int, default=40, help="random configurations scored per arm and repetition")
    parser.add_argument("--warmup", type=int, default=4, help="configurations each arm scores untimed before the repetitions")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions of every arm, alternating")
    parser.add_argument("--calib-images", type=int, default=1000, help="calibration images for BN re-estimation")
    parser.add_argument("--calib-batch-size", type=int, default=100, help="images per calibration batch")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images scored for top-1")
    parser.add_argument("--val-batch-size", type=int, default=500, help="images per validation batch")
    parser.add_argument("--chunk", type=int, default=2, help="candidates per Ray call")
    parser.add_argument("--seed", type=int, default=0, help="seed for the images, the PruningNet and the configurations")
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON to this file")
    return parser.parse_args(argv)


# -- data, spec and machine ---------------------------------------------------------------------
def load_images(args: argparse.Namespace) -> tuple[ImageData, str]:
    """Calibration + validation images (a seeded subset of the training split), and where they came from."""
    needed = args.calib_images + args.val_images
    if (Path(args.data) / "train").is_dir():
        began = time.perf_counter()
        train = load_folder(args.data).train
        source = f"{args.data} (decoded in {time.perf_counter() - began:.0f} s)"
    else:
        # the benchmark times compute, not accuracy, so synthetic images of the same shape do
        train = synthetic(n=2 * needed, classes=10, size=32, channels=3, seed=args.seed).train
        source = f"synthetic 32x32 (no {args.data}/train folder)"
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    return train.subset(order[:needed]), source


def make_spec(images: ImageData, args: argparse.Namespace) -> ScorerSpec:
    """An untrained PruningNet (scoring costs the same trained or not) and disjoint calibration / validation images."""
    channels, size = images.shape
    space = search_spaces.create_space(args.space, num_classes=len(images.classes), in_channels=channels, resolution=size)
    torch.manual_seed(args.seed)
    config = PruningNetConfig()
    calib = args.calib_images // args.calib_batch_size * args.calib_batch_size  # whole batches, as the pipeline cuts them
    return ScorerSpec(
        space=space.to_dict(),
        pruningnet=config,
        weights=PruningNet(space, config).state_dict(),
        calibration=images.images[:calib],
        validation_images=images.images[args.calib_images :],
        validation_labels=images.labels[args.calib_images :],
        normalizer=Normalizer.fit(images.images),
        score=ScoreConfig(args.calib_images, args.calib_batch_size, args.val_batch_size),
    )


def random_tasks(spec: ScorerSpec, count: int, seed: int) -> list[Task]:
    space = search_spaces.SearchSpace.from_dict(spec.space)
    rng = np.random.default_rng(seed)
    return [Task(trial, search_spaces.sample(space, rng)) for trial in range(count)]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu_count": os.cpu_count(),
    }


# -- arms ---------------------------------------------------------------------------------------
@dataclass
class Arm:
    executor: Executor
    driver_threads: int  # torch threads of this process while the arm runs (Ray actors set their own)


def start_arms(spec: ScorerSpec, chunk: int) -> tuple[dict[str, Arm], dict[str, float]]:
    """Every arm's executor, built once; and how long Ray took to start and to build each pool."""
    began = time.perf_counter()
    # Logical CPUs for both pools at once (1 + 2 actors of 1 thread); only one pool computes at a time.
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    startup = {"ray_init_s": time.perf_counter() - began}
    pools = {}
    for workers in (1, 2):
        began = time.perf_counter()
        pools[workers] = RayExecutor(spec, workers, chunk=chunk, threads=1)
        startup[f"ray_{workers}_pool_ready_s"] = time.perf_counter() - began
    in_process = InProcessExecutor(spec)  # one scorer for both thread counts: only the threads differ
    arms = {
        "in_process_2_threads": Arm(in_process, 2),
        "in_process_1_thread": Arm(in_process, 1),
        "ray_1_worker": Arm(pools[1], 1),
        "ray_2_workers": Arm(pools[2], 1),
    }
    return arms, startup


def run_arm(arm: Arm, tasks: list[Task]) -> tuple[float, dict[int, float]]:
    """Seconds to score every task (until the last result arrives), and the scores."""
    torch.set_num_threads(arm.driver_threads)
    began = time.perf_counter()
    scores = {scored.task.slot: scored.proxy_top1 for scored in arm.executor.score(tasks)}
    return time.perf_counter() - began, scores


def alternate(arms: dict[str, Arm], tasks: list[Task], warmup: list[Task], reps: int) -> tuple[dict[str, list[float]], dict]:
    """Every arm in turn (A B C D A B C D ...) after an untimed warm-up; seconds per repetition and the last scores."""
    for arm in arms.values():
        run_arm(arm, warmup)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    scores: dict[str, dict[int, float]] = {}
    for rep in range(reps):
        for name, arm in arms.items():
            elapsed, scores[name] = run_arm(arm, tasks)
            seconds[name].append(elapsed)
            print(f"repetition {rep + 1}/{reps}: {name} {elapsed:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    return seconds, scores


# -- report -------------------------------------------------------------------------------------
def pair_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Throughput ratios of repetitions run next to each other (seconds of the denominator arm over the numerator's)."""
    return [d / n for n, d in zip(numerator, denominator, strict=True)]


def summarise(ratios: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def score_mismatches(scores: dict[str, dict[int, float]], reference: str) -> dict[str, float]:
    """Largest score difference of each arm from the reference arm (0.0 expected at equal threads)."""
    ref = scores[reference]
    return {name: max(abs(s[t] - ref[t]) for t in ref) for name, s in scores.items()}


def report(args: argparse.Namespace, source: str, seconds: dict[str, list[float]], extra: dict[str, Any]) -> dict[str, Any]:
    rates = {name: round(args.configs / statistics.median(s), 3) for name, s in seconds.items()}
    print(f"\n{'arm':<24}{'candidates/s':>14}{'median s':>10}  seconds per repetition")
    for name, s in seconds.items():
        print(f"{name:<24}{rates[name]:14.2f}{statistics.median(s):10.1f}  {' '.join(f'{x:.1f}' for x in s)}")
    ray_vs_local = summarise(pair_ratios(seconds["ray_1_worker"], seconds["in_process_1_thread"]))
    two_vs_one = summarise(pair_ratios(seconds["ray_2_workers"], seconds["ray_1_worker"]))
    print(f"Ray-1 / in-process (1 thread) = {ray_vs_local['median']:.2f} (aim >= {RAY_OVER_IN_PROCESS_AIM})")
    print(f"Ray-2 / Ray-1 = {two_vs_one['median']:.2f} (aim >= {TWO_OVER_ONE_AIM})")
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": source,
        "space": args.space,
        "configs": args.configs,
        "reps": args.reps,
        "chunk": args.chunk,
        "machine": machine(),
        "candidates_per_s": rates,
        "seconds": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
        "ratio_ray1_over_in_process_1_thread": ray_vs_local,
        "ratio_ray2_over_ray1": two_vs_one,
        "aims": {"ray1_over_in_process": RAY_OVER_IN_PROCESS_AIM, "ray2_over_ray1": TWO_OVER_ONE_AIM},
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = round(os.getloadavg()[0], 2)
    began = time.perf_counter()
    images, source = load_images(args)
    spec = make_spec(images, args)
    tasks, warmup = random_tasks(spec, args.configs, args.seed + 1), random_tasks(spec, args.warmup, args.seed + 2)
    print(f"data: {source}; space {args.space}; {args.configs} configurations x {args.reps} repetitions per arm")
    arms, startup = start_arms(spec, args.chunk)
    try:
        seconds, scores = alternate(arms, tasks, warmup, args.reps)
    finally:
        for arm in arms.values():
            arm.executor.close()
        ray.shutdown()
    print("startup (s): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))
    extra = {
        "startup_s": {k: round(v, 2) for k, v in startup.items()},
        "max_score_difference_from_in_process_1_thread": score_mismatches(scores, "in_process_1_thread"),
        # other work on a shared box is the main noise source; measured before this run adds its own load
        "load_avg_1min_before_run": load_before,
        "load_avg_1min_after_run": round(os.getloadavg()[0], 2),
    }
    result = report(args, source, seconds, extra)
    print(f"\ntotal run time {time.perf_counter() - began:.0f} s")
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
